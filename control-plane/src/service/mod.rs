//! The service layer: the product's rules over the store. Domain types in and
//! out, `Result<T, ServiceError>`; it never sees protobuf or tonic.

mod agent_mcp;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod identity;
pub mod live;
pub mod quotas;
pub mod rights;
pub mod runtimes;
pub mod sealing;
pub mod secret_store;
pub mod secrets;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oma_proto::ids::{RuntimeId, TenantId, TokenId, UserId};
use oma_proto::model::Role;
use oma_proto::validate::{self, ValidationError};

use crate::store::rows::Page;
use crate::store::{AsStoreError, Store, StoreError};

/// Why a service call failed. Mapped to a gRPC status in exactly one place
/// (`grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Something the call depends on (a machine) went away mid-call.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// "<what> <id> not found" — the same answer whether the row does not
    /// exist or belongs to another tenant.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ServiceError::NotFound(format!("{what} {id} not found"))
    }
}

impl AsStoreError for ServiceError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            ServiceError::Store(e) => Some(e),
            _ => None,
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// A person or service authenticated by an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub role: Role,
    pub token_id: TokenId,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuses members.
    pub fn require_admin(&self, what: &str) -> ServiceResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "{what} needs the admin role; ask an admin of your tenant"
            )))
        }
    }

    /// The audit log's actor string.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user_id)
    }
}

/// A paired machine authenticated by its machine token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub tenant_id: TenantId,
    pub runtime_id: RuntimeId,
    pub machine_id: String,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(Caller),
    Machine(Machine),
}

/// Tunables of the service layer.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Lifetime of a connect code when the request does not say.
    pub default_connect_code_ttl: Duration,
    /// What one tenant may hold.
    pub quotas: quotas::Quotas,
    /// Most `WatchSession` streams one tenant may hold open at once.
    pub max_watchers_per_tenant: usize,
    /// The key of the secret store; `None`: the secret store is off (its
    /// calls are FAILED_PRECONDITION).
    pub secrets_key: Option<sealing::SecretsKey>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            default_connect_code_ttl: Duration::from_secs(600),
            quotas: quotas::Quotas::default(),
            max_watchers_per_tenant: 1000,
            secrets_key: None,
        }
    }
}

/// The live state shared by all clones of the service.
pub(crate) struct LiveState {
    pub registry: live::registry::Registry,
    pub hub: Arc<live::hub::Hub>,
    pub event_log: live::event_log::EventLog,
    pub watchers: Arc<live::watchers::Watchers>,
    pub diffs: Arc<live::diffs::Diffs>,
}

/// The service: one per process, shared by every gRPC handler.
#[derive(Clone)]
pub struct Service {
    pub(crate) store: Store,
    pub(crate) config: ServiceConfig,
    pub(crate) live_config: live::LiveConfig,
    pub(crate) live: Arc<LiveState>,
}

impl Service {
    /// Starts the service and its event writer; needs a tokio runtime.
    pub fn new(store: Store, config: ServiceConfig, live_config: live::LiveConfig) -> Self {
        let hub = Arc::new(live::hub::Hub::default());
        let event_log = live::event_log::EventLog::start(store.clone(), hub.clone());
        let watchers = Arc::new(live::watchers::Watchers::new(config.max_watchers_per_tenant));
        Service {
            store,
            config,
            live_config,
            live: Arc::new(LiveState {
                registry: live::registry::Registry::default(),
                hub,
                event_log,
                watchers,
                diffs: Arc::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Paging input as the service takes it.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub page_size: u32,
    pub page_token: String,
}

impl PageRequest {
    /// Validates and turns the opaque token back into a keyset cursor.
    pub(crate) fn to_page(&self) -> ServiceResult<Page> {
        let limit = validate::page_size(self.page_size)?;
        let after_id = if self.page_token.is_empty() {
            None
        } else {
            let bad = || {
                ValidationError::new(
                    "page.page_token",
                    "is not a page token this server issued; start again without it",
                )
            };
            let bytes = URL_SAFE_NO_PAD.decode(&self.page_token).map_err(|_| bad())?;
            Some(String::from_utf8(bytes).map_err(|_| bad())?)
        };
        Ok(Page { limit, after_id })
    }
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Paged<T> {
    pub(crate) fn from_rows(rows: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> Self {
        let (items, next) = crate::store::rows::finish_page(rows, page, id);
        Paged {
            items,
            next_page_token: next.map(|n| URL_SAFE_NO_PAD.encode(n)).unwrap_or_default(),
        }
    }

    /// The same page with each item converted (rows to domain types).
    pub(crate) fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
        }
    }
}

/// A stored time (ms since the epoch) as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A stored time as RFC 3339 UTC, for messages.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
