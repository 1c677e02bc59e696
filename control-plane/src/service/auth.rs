//! Authentication: bearer token → [`Principal`]. Revocation and expiry take
//! effect on the next request: nothing is cached.

use oma_proto::ids::{RuntimeId, TenantId, TokenId, UserId};
use oma_proto::model::Role;

use super::secrets::{self, Bearer};
use super::{Caller, Machine, Principal, Service, ServiceError, ServiceResult};
use crate::store::{now_ms, rows};

/// `last_used_at` is written at most this often per token, so reads do not
/// each cost a write.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

impl Service {
    /// Checks an `authorization` header value (`Bearer <token>`).
    pub async fn authenticate(&self, header: Option<&str>) -> ServiceResult<Principal> {
        let unauthenticated = |m: &str| ServiceError::Unauthenticated(m.to_owned());
        let header = header.ok_or_else(|| {
            unauthenticated(
                "missing credentials: send `authorization: Bearer <token>` (omactl: set a context with a token)",
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("the authorization header must be `Bearer <token>`"))?
            .trim();
        let bearer = secrets::parse_bearer(token).ok_or_else(|| {
            unauthenticated("the bearer token is malformed: expected an `oma_…` or `sk_machine_…` token")
        })?;
        match bearer {
            Bearer::Api { token_id, secret } => {
                let secret = secret.to_owned();
                self.store
                    .read("authenticate", move |conn| {
                        let invalid = || unauthenticated("the token is unknown, revoked or expired");
                        let (token, user) = rows::get_token_for_auth(conn, &token_id)?.ok_or_else(invalid)?;
                        if !secrets::hash_matches(&secret, &token.secret_hash) {
                            return Err(invalid());
                        }
                        let now = now_ms();
                        if token.revoked_at.is_some() {
                            return Err(unauthenticated("the token was revoked; create a new one"));
                        }
                        if token.expires_at.is_some_and(|at| at <= now) {
                            return Err(unauthenticated("the token has expired; create a new one"));
                        }
                        if token.last_used_at.is_none_or(|at| now - at >= LAST_USED_GRANULARITY_MS) {
                            rows::touch_token(conn, &token.id, now)?;
                        }
                        let role = Role::parse_stored(&user.role).ok_or_else(|| {
                            ServiceError::Internal(format!("user {} has unknown role {:?}", user.id, user.role))
                        })?;
                        Ok(Principal::User(Caller {
                            tenant_id: TenantId::from_trusted(token.tenant_id),
                            user_id: UserId::from_trusted(user.id),
                            role,
                            token_id: TokenId::from_trusted(token.id),
                        }))
                    })
                    .await
            }
            Bearer::Machine { runtime_id, secret } => {
                let secret = secret.to_owned();
                self.store
                    .read("authenticate", move |conn| {
                        let invalid = || {
                            unauthenticated(
                                "the machine token is unknown or revoked (the runtime was deleted); pair again with `oma-agent setup`",
                            )
                        };
                        let runtime = rows::get_runtime_for_auth(conn, &runtime_id)?.ok_or_else(invalid)?;
                        if !secrets::hash_matches(&secret, &runtime.token_hash) {
                            return Err(invalid());
                        }
                        Ok(Principal::Machine(Machine {
                            tenant_id: TenantId::from_trusted(runtime.tenant_id),
                            runtime_id: RuntimeId::from_trusted(runtime.id),
                            machine_id: runtime.machine_id,
                        }))
                    })
                    .await
            }
        }
    }
}
