-- Bytes of stored events per session, kept with last_seq, so a tenant's
-- stored total (its quota) is a sum over its sessions, not a scan of the log.
ALTER TABLE sessions ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
