-- The secret store. A value is stored only encrypted (ChaCha20-Poly1305):
-- `ciphertext` under the key named by `key_id` with its own random
-- `nonce`, bound to (tenant_id, id, version) as associated data, so a
-- ciphertext copied onto another row does not decrypt.
CREATE TABLE secrets (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    version BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_by_user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (tenant_id, name)
);
