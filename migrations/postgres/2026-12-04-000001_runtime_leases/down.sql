ALTER TABLE runtimes DROP COLUMN lease_expires_at;
ALTER TABLE runtimes DROP COLUMN replica_id;
