ALTER TABLE sessions DROP COLUMN model_id;
ALTER TABLE sessions DROP COLUMN mode_id;
ALTER TABLE sessions DROP COLUMN options;
