-- The workspace a session works in, as the control plane resolved it at
-- creation (JSON: workspace_id, mode, base_ref, branch); NULL: the
-- session's private folder on the machine.
ALTER TABLE sessions ADD COLUMN workspace TEXT;
