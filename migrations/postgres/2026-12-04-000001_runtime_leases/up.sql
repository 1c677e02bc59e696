-- Which control-plane replica holds the runtime's stream, and until when
-- (Unix ms) its lease runs; the replica renews it while the stream lives.
-- A replica that starts marks offline only the runtimes of its own earlier
-- life and those whose lease ran out; every replica sweeps expired leases.
ALTER TABLE runtimes ADD COLUMN replica_id TEXT;
ALTER TABLE runtimes ADD COLUMN lease_expires_at BIGINT;
