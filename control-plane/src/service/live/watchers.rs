//! The live watches: who holds each one, so that revoking a token or
//! deleting a user ends that principal's watches at once, and how many each
//! tenant holds, so that one tenant cannot take every stream slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::{Caller, ServiceError, ServiceResult};

/// How a watch is told to end, and why.
struct Ending {
    cancel: CancellationToken,
    reason: OnceLock<String>,
}

impl Ending {
    fn end(&self, reason: &str) {
        let _ = self.reason.set(reason.to_owned());
        self.cancel.cancel();
    }
}

struct Entry {
    tenant_id: String,
    user_id: String,
    token_id: String,
    ending: Arc<Ending>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    live: HashMap<u64, Entry>,
    per_tenant: HashMap<String, usize>,
}

pub struct Watchers {
    inner: Mutex<Inner>,
    max_per_tenant: usize,
}

/// One registered watch; dropping it deregisters the watch and stops what
/// serves it.
pub struct WatchGuard {
    watchers: Arc<Watchers>,
    id: u64,
    ending: Arc<Ending>,
}

impl Watchers {
    pub fn new(max_per_tenant: usize) -> Watchers {
        Watchers {
            inner: Mutex::default(),
            max_per_tenant,
        }
    }

    /// Registers a watch of `caller`, unless its tenant already holds the
    /// most allowed.
    pub fn register(self: &Arc<Self>, caller: &Caller) -> ServiceResult<WatchGuard> {
        let mut inner = self.inner.lock().expect("watchers lock");
        let count = inner.per_tenant.entry(caller.tenant_id.to_string()).or_default();
        if *count >= self.max_per_tenant {
            return Err(ServiceError::ResourceExhausted(format!(
                "this tenant already has {} open session watches, the most allowed (--max-watchers-per-tenant); close one and retry",
                self.max_per_tenant
            )));
        }
        *count += 1;
        inner.next_id += 1;
        let id = inner.next_id;
        let ending = Arc::new(Ending {
            cancel: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        inner.live.insert(
            id,
            Entry {
                tenant_id: caller.tenant_id.to_string(),
                user_id: caller.user_id.to_string(),
                token_id: caller.token_id.to_string(),
                ending: ending.clone(),
            },
        );
        metrics::gauge!("oma_watches_open").set(inner.live.len() as f64);
        drop(inner);
        Ok(WatchGuard {
            watchers: self.clone(),
            id,
            ending,
        })
    }

    fn end_where(&self, matches: impl Fn(&Entry) -> bool, reason: &str) -> usize {
        let inner = self.inner.lock().expect("watchers lock");
        let mut ended = 0;
        for entry in inner.live.values().filter(|e| matches(e)) {
            entry.ending.end(reason);
            ended += 1;
        }
        ended
    }

    /// Ends every watch opened with the token (it was revoked).
    pub fn end_token(&self, token_id: &str) -> usize {
        self.end_where(
            |e| e.token_id == token_id,
            "the token of this watch was revoked; watch again with a valid token",
        )
    }

    /// Ends every watch of the user (it was deleted).
    pub fn end_user(&self, tenant_id: &str, user_id: &str) -> usize {
        self.end_where(
            |e| e.tenant_id == tenant_id && e.user_id == user_id,
            "the user of this watch was deleted",
        )
    }

    #[cfg(test)]
    fn open(&self, tenant_id: &str) -> usize {
        let inner = self.inner.lock().expect("watchers lock");
        inner.per_tenant.get(tenant_id).copied().unwrap_or(0)
    }
}

impl WatchGuard {
    /// Ends the watch when its token expires, `after` from now.
    pub fn expire_after(&self, after: Duration) {
        let ending = self.ending.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    ending.end("the token of this watch expired; create a new token and watch again");
                }
                _ = ending.cancel.cancelled() => {}
            }
        });
    }

    /// Stops when the watch must end (also when the guard is dropped).
    #[cfg(test)]
    pub fn cancel_token(&self) -> CancellationToken {
        self.ending.cancel.clone()
    }

    /// Resolves, with the sentence to end the stream with, when the watch is
    /// ended by a revocation, a deletion or its token's expiry.
    pub fn ended(&self) -> impl Future<Output = String> + Send + 'static {
        let ending = self.ending.clone();
        async move {
            ending.cancel.cancelled().await;
            ending
                .reason
                .get()
                .cloned()
                .unwrap_or_else(|| "the watch was ended".to_owned())
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.ending.cancel.cancel();
        let mut inner = self.watchers.inner.lock().expect("watchers lock");
        if let Some(entry) = inner.live.remove(&self.id)
            && let Some(count) = inner.per_tenant.get_mut(&entry.tenant_id)
        {
            *count -= 1;
            if *count == 0 {
                inner.per_tenant.remove(&entry.tenant_id);
            }
        }
        metrics::gauge!("oma_watches_open").set(inner.live.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use oma_proto::ids::{TenantId, TokenId, UserId};
    use oma_proto::model::Role;

    use super::*;

    fn caller(tenant: &str, user: &str, token: &str) -> Caller {
        Caller {
            tenant_id: TenantId::from_trusted(tenant.into()),
            user_id: UserId::from_trusted(user.into()),
            role: Role::Member,
            token_id: TokenId::from_trusted(token.into()),
        }
    }

    #[tokio::test]
    async fn the_cap_is_per_tenant_and_freed_on_drop() {
        let watchers = Arc::new(Watchers::new(2));
        let a = caller("ten_a", "usr_1", "tok_1");
        let first = watchers.register(&a).unwrap();
        let _second = watchers.register(&a).unwrap();
        let refused = watchers.register(&a).err().unwrap();
        assert!(matches!(refused, ServiceError::ResourceExhausted(_)), "{refused}");
        // Another tenant is not affected.
        let _other = watchers.register(&caller("ten_b", "usr_2", "tok_2")).unwrap();
        drop(first);
        assert_eq!(watchers.open("ten_a"), 1);
        watchers.register(&a).unwrap();
    }

    #[tokio::test]
    async fn revocation_deletion_and_expiry_end_only_their_watches() {
        let watchers = Arc::new(Watchers::new(10));
        let by_token = watchers.register(&caller("ten_a", "usr_1", "tok_1")).unwrap();
        let same_user = watchers.register(&caller("ten_a", "usr_1", "tok_9")).unwrap();
        let bystander = watchers.register(&caller("ten_a", "usr_2", "tok_2")).unwrap();
        assert_eq!(watchers.end_token("tok_1"), 1);
        assert!(by_token.ended().await.contains("revoked"));
        assert!(!same_user.cancel_token().is_cancelled());
        assert_eq!(watchers.end_user("ten_a", "usr_1"), 2);
        assert!(same_user.ended().await.contains("deleted"));
        assert!(!bystander.cancel_token().is_cancelled());

        let expiring = watchers.register(&caller("ten_a", "usr_3", "tok_3")).unwrap();
        expiring.expire_after(Duration::from_millis(10));
        assert!(expiring.ended().await.contains("expired"));
        assert!(!bystander.cancel_token().is_cancelled());
    }
}
