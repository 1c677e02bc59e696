ALTER TABLE sessions DROP COLUMN workspace;
