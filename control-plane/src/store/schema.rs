//! The tables, shared by both backends (see `migrations/`).

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        role -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Text,
        tenant_id -> Text,
        user_id -> Text,
        name -> Text,
        secret_hash -> Binary,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    connect_codes (id) {
        id -> Text,
        tenant_id -> Text,
        owner_user_id -> Text,
        created_by_user_id -> Text,
        code_hash -> Binary,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        runtime_id -> Nullable<Text>,
    }
}

diesel::table! {
    runtimes (id) {
        id -> Text,
        tenant_id -> Text,
        owner_user_id -> Text,
        name -> Text,
        machine_id -> Text,
        token_hash -> Binary,
        created_at -> BigInt,
        status -> Text,
        status_at -> BigInt,
        last_seen_at -> Nullable<BigInt>,
        agent_version -> Text,
        os -> Text,
        arch -> Text,
        manifest -> Binary,
        connection_epoch -> BigInt,
        replica_id -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    agents (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        spec -> Text,
        runtime_id -> Nullable<Text>,
        version -> BigInt,
        created_by_user_id -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        tenant_id -> Text,
        agent_id -> Text,
        runtime_id -> Text,
        acp_agent_id -> Text,
        created_by_user_id -> Text,
        title -> Text,
        status -> Text,
        agent_version -> BigInt,
        spec -> Text,
        acp_session_id -> Nullable<Text>,
        current_turn_id -> Nullable<Text>,
        current_prompt -> Nullable<Binary>,
        last_seq -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        stored_bytes -> BigInt,
        workspace -> Nullable<Text>,
        options -> Nullable<Text>,
        mode_id -> Text,
        model_id -> Text,
    }
}

diesel::table! {
    session_events (session_id, seq) {
        session_id -> Text,
        seq -> BigInt,
        created_at -> BigInt,
        payload -> Binary,
    }
}

diesel::table! {
    permission_requests (session_id, request_id) {
        session_id -> Text,
        request_id -> Text,
        tenant_id -> Text,
        option_ids -> Text,
        reject_option_id -> Nullable<Text>,
        created_at -> BigInt,
        decided_at -> Nullable<BigInt>,
        decided_by -> Nullable<Text>,
        option_id -> Nullable<Text>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        tenant_id -> Text,
        actor -> Text,
        action -> Text,
        target_id -> Text,
        detail -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    secrets (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        kind -> Text,
        version -> BigInt,
        key_id -> Text,
        nonce -> Binary,
        ciphertext -> Binary,
        created_by_user_id -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    users,
    api_tokens,
    connect_codes,
    runtimes,
    agents,
    sessions,
    session_events,
    permission_requests,
    audit_log,
    secrets,
);
