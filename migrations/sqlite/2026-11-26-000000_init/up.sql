-- Times are milliseconds since the Unix epoch (BIGINT) so both backends
-- share one schema shape; ids are prefixed UUIDv7 strings.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id, id);

CREATE TABLE connect_codes (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    owner_user_id TEXT NOT NULL REFERENCES users(id),
    created_by_user_id TEXT NOT NULL,
    code_hash BLOB NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    runtime_id TEXT
);

CREATE TABLE runtimes (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    owner_user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    token_hash BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    status_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    agent_version TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    manifest BLOB NOT NULL,
    connection_epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runtimes_tenant ON runtimes (tenant_id, id);

CREATE TABLE agents (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    runtime_id TEXT,
    version BIGINT NOT NULL,
    created_by_user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    agent_id TEXT NOT NULL,
    runtime_id TEXT NOT NULL,
    acp_agent_id TEXT NOT NULL,
    created_by_user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    agent_version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    acp_session_id TEXT,
    -- The running turn and its encoded Prompt frame, resent to the machine
    -- after a reconnect (the machine runs a turn id at most once).
    current_turn_id TEXT,
    current_prompt BLOB,
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX sessions_tenant ON sessions (tenant_id, id);
CREATE INDEX sessions_agent ON sessions (tenant_id, agent_id, id);

CREATE TABLE session_events (
    session_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Permission requests of ACP agents: each is decided exactly once.
CREATE TABLE permission_requests (
    session_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    option_ids TEXT NOT NULL,
    reject_option_id TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    option_id TEXT,
    PRIMARY KEY (session_id, request_id)
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
CREATE INDEX audit_log_target ON audit_log (tenant_id, target_id, id);
