//! Watching a session: its log first, then live events as they are stored,
//! with no gap and no duplicate.
//!
//! Limits: a watch queues at most [`WATCH_BUFFER`] events and
//! [`WATCH_BUFFER_BYTES`] bytes for its client, and replays the log in pages
//! of at most [`REPLAY_PAGE_BYTES`]. A client that never reads stalls only its
//! own watch: its task waits on its own queue while the hub's ring moves on
//! (it re-reads the log once it lags), so it blocks neither the writer, nor
//! the runtime stream, nor another watcher.
//!
//! A watch ends with UNAUTHENTICATED as soon as its token is revoked or
//! expires, or its user is deleted (see [`super::watchers`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use oma_proto::ids::SessionId;
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::hub::{Next, Subscription};
use super::watchers::WatchGuard;
use crate::service::{Caller, Service, ServiceError, ServiceResult, rights};
use crate::store::rows::{self, EventRow};
use crate::store::{Store, now_ms};

/// Events a watch may have queued before it waits for its client.
const WATCH_BUFFER: usize = 256;
/// Bytes (encoded) a watch may have queued before it waits for its client;
/// a larger event still goes, alone.
pub const WATCH_BUFFER_BYTES: usize = 8 << 20;
/// Most events per log read when replaying.
const REPLAY_PAGE: i64 = 2000;
/// Most payload bytes per log read when replaying (a larger event is read
/// alone).
pub const REPLAY_PAGE_BYTES: usize = 4 << 20;

/// A queued event holds its share of the byte budget until the client takes
/// it.
type Queued = (ServiceResult<Arc<pb::SessionEvent>>, Option<OwnedSemaphorePermit>);

/// The events of one watch, as the gRPC layer sends them.
pub struct WatchStream {
    events: mpsc::Receiver<Queued>,
    ended: Pin<Box<dyn Future<Output = String> + Send>>,
    // Deregisters the watch, and stops its task, when the stream is dropped.
    _guard: WatchGuard,
    done: bool,
}

impl Stream for WatchStream {
    type Item = ServiceResult<Arc<pb::SessionEvent>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Before the queue: once the right is gone, nothing more goes out.
        if let Poll::Ready(reason) = this.ended.as_mut().poll(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(ServiceError::Unauthenticated(reason))));
        }
        match this.events.poll_recv(cx) {
            // Dropping the permit gives its bytes back to the budget.
            Poll::Ready(Some((item, _permit))) => Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn is_turn_end(event: &pb::SessionEvent) -> bool {
    matches!(event.kind, Some(pb::session_event::Kind::TurnEnded(_)))
}

/// The task that fills one watch's queue.
struct Producer {
    store: Store,
    session_id: String,
    until_turn_end: bool,
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

impl Producer {
    /// Returns when the watch is complete, the session deleted, or the
    /// client gone.
    async fn run(self, mut live: Subscription, from_seq: u64) {
        let mut next = from_seq.max(1);
        loop {
            // The log, page by page, until it is exhausted.
            loop {
                let page = match self.page(next).await {
                    Ok(page) => page,
                    Err(e) => return self.fail(e).await,
                };
                if page.is_empty() {
                    break;
                }
                for row in page {
                    let event = match pb::SessionEvent::decode(row.payload.as_slice()) {
                        Ok(event) => Arc::new(event),
                        Err(e) => {
                            return self
                                .fail(ServiceError::Internal(format!(
                                    "stored event {} of session {} does not decode: {e}",
                                    row.seq, self.session_id
                                )))
                                .await;
                        }
                    };
                    next = event.seq + 1;
                    if !self.deliver(event).await {
                        return;
                    }
                }
            }
            // Live, until this watch falls out of the hub's ring.
            loop {
                match live.next(next).await {
                    Next::Event(event) => {
                        next = event.seq + 1;
                        if !self.deliver(event).await {
                            return;
                        }
                    }
                    Next::Lagged => break,
                    Next::Closed => return,
                }
            }
        }
    }

    async fn page(&self, from: u64) -> ServiceResult<Vec<EventRow>> {
        let sid = self.session_id.clone();
        self.store
            .read("watch_page", move |conn| {
                Ok::<_, ServiceError>(rows::events_page(
                    conn,
                    &sid,
                    from as i64,
                    REPLAY_PAGE,
                    REPLAY_PAGE_BYTES,
                )?)
            })
            .await
    }

    /// Queues one event once the budget has room for it; false when the
    /// watch is over (the client left, or the awaited turn ended).
    async fn deliver(&self, event: Arc<pb::SessionEvent>) -> bool {
        let ends = self.until_turn_end && is_turn_end(&event);
        let bytes = event.encoded_len().min(WATCH_BUFFER_BYTES) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(bytes).await else {
            return false;
        };
        self.tx.send((Ok(event), Some(permit))).await.is_ok() && !ends
    }

    async fn fail(&self, error: ServiceError) {
        let _ = self.tx.send((Err(error), None)).await;
    }
}

impl Service {
    /// Streams the session's events from `from_seq`: the log first, then
    /// live ones, with no gap and no duplicate.
    pub async fn watch_session(
        &self,
        caller: &Caller,
        session_id: SessionId,
        from_seq: u64,
        until_turn_end: bool,
    ) -> ServiceResult<WatchStream> {
        // Registered before the token is read again below: a revocation that
        // commits after that read finds this watch and ends it.
        let guard = self.live.watchers.register(caller)?;
        let c = caller.clone();
        let sid = session_id.clone();
        let expires_at = self
            .store
            .read("watch_session", move |conn| {
                rights::session_to_see(conn, &c, &sid)?;
                let token = rows::get_token(conn, c.tenant_id.as_str(), c.token_id.as_str())?
                    .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|at| at > now_ms()))
                    .ok_or_else(|| ServiceError::Unauthenticated("the token is unknown, revoked or expired".into()))?;
                Ok::<_, ServiceError>(token.expires_at)
            })
            .await?;
        if let Some(at) = expires_at {
            guard.expire_after(Duration::from_millis((at - now_ms()).max(0) as u64));
        }

        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        // Subscribe before reading the log so nothing committed in between
        // is missed.
        let live = self.live.hub.subscribe(session_id.as_str());
        let producer = Producer {
            store: self.store.clone(),
            session_id: session_id.to_string(),
            until_turn_end,
            tx: tx.clone(),
            budget: Arc::new(Semaphore::new(WATCH_BUFFER_BYTES)),
        };
        let cancel = guard.cancel_token();
        tokio::spawn(async move {
            // Ends with the watch (revoked, expired, deleted, dropped) or as
            // soon as the client goes, even while no event comes.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tx.closed() => {}
                _ = producer.run(live, from_seq) => {}
            }
        });
        Ok(WatchStream {
            events: rx,
            ended: Box::pin(guard.ended()),
            _guard: guard,
            done: false,
        })
    }
}
