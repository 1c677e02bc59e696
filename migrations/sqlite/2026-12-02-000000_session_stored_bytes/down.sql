ALTER TABLE sessions DROP COLUMN stored_bytes;
