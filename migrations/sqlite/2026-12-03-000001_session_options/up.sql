-- What the session's ACP agent offers and has selected (JSON: mode_id,
-- modes, model_id, models), as the machine last reported it; and what the
-- session was asked to start in (empty: the agent's own default).
ALTER TABLE sessions ADD COLUMN options TEXT;
ALTER TABLE sessions ADD COLUMN mode_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN model_id TEXT NOT NULL DEFAULT '';
