//! Watching a session: its log first, then live events as they are stored,
//! with no gap and no duplicate.
//!
//! Limits: the log is replayed in pages of at most [`REPLAY_PAGE_BYTES`].
//! A watch has no queue and no task of its own: the gRPC layer polls it
//! when the client's HTTP/2 window has room, and it then takes the next
//! event from the log or straight from the hub's ring. So a live event goes
//! from the commit to the client's connection without another task in
//! between, and a client that never reads holds nothing: the ring moves on
//! without it, and it re-reads the log once it reads again. It blocks
//! neither the writer, nor the runtime stream, nor another watcher.
//!
//! A watch ends with UNAUTHENTICATED as soon as its token is revoked or
//! expires, or its user is deleted (see [`crate::service::live::watchers`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use oma_proto::ids::SessionId;
use oma_proto::pb;
use prost::Message as _;

use crate::service::live::hub::{Next, Subscription};
use crate::service::live::watchers::WatchGuard;
use crate::service::{Caller, Service, ServiceError, ServiceResult, rights};
use crate::store::event_rows::{self, EventRow};
use crate::store::rows;
use crate::store::{Store, now_ms};

/// Most events per log read when replaying.
const REPLAY_PAGE: i64 = 2000;
/// Most payload bytes per log read when replaying (a larger event is read
/// alone).
pub const REPLAY_PAGE_BYTES: usize = 4 << 20;

type Events = Pin<Box<dyn Stream<Item = ServiceResult<Arc<pb::SessionEvent>>> + Send>>;

/// The events of one watch, as the gRPC layer sends them.
pub struct WatchStream {
    events: Events,
    ended: Pin<Box<dyn Future<Output = String> + Send>>,
    // Deregisters the watch when the stream is dropped.
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
        // Before the next event: once the right is gone, nothing more goes
        // out.
        if let Poll::Ready(reason) = this.ended.as_mut().poll(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(ServiceError::Unauthenticated(reason))));
        }
        match this.events.as_mut().poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

fn is_turn_end(event: &pb::SessionEvent) -> bool {
    matches!(event.kind, Some(pb::session_event::Kind::TurnEnded(_)))
}

/// Where one watch is: the seq it wants next, and whether that comes from
/// the log (replaying) or the hub (live).
struct Reader {
    store: Store,
    session_id: String,
    until_turn_end: bool,
    live: Subscription,
    next: u64,
    /// Read from the log, not yet delivered.
    page: VecDeque<EventRow>,
    replaying: bool,
    /// The watch is complete (the awaited turn ended, or an error went
    /// out).
    over: bool,
}

impl Reader {
    /// The next event; `None` when the watch is complete or the session
    /// deleted.
    async fn next_event(&mut self) -> Option<ServiceResult<Arc<pb::SessionEvent>>> {
        if self.over {
            return None;
        }
        loop {
            if let Some(row) = self.page.pop_front() {
                return Some(match pb::SessionEvent::decode(row.payload.as_slice()) {
                    Ok(event) => Ok(self.deliver(Arc::new(event))),
                    Err(e) => {
                        self.over = true;
                        Err(ServiceError::Internal(format!(
                            "stored event {} of session {} does not decode: {e}",
                            row.seq, self.session_id
                        )))
                    }
                });
            }
            if self.replaying {
                // The log, page by page, until it is exhausted.
                match self.read_page().await {
                    Ok(page) if page.is_empty() => self.replaying = false,
                    Ok(page) => self.page = page.into(),
                    Err(e) => {
                        self.over = true;
                        return Some(Err(e));
                    }
                }
                continue;
            }
            // Live, until this watch falls out of the hub's ring.
            match self.live.next(self.next).await {
                Next::Event(event) => return Some(Ok(self.deliver(event))),
                Next::Lagged => {
                    metrics::counter!("oma_watch_lagged_total").increment(1);
                    self.replaying = true;
                }
                Next::Closed => return None,
            }
        }
    }

    fn deliver(&mut self, event: Arc<pb::SessionEvent>) -> Arc<pb::SessionEvent> {
        self.next = event.seq + 1;
        if self.until_turn_end && is_turn_end(&event) {
            self.over = true;
        }
        event
    }

    async fn read_page(&self) -> ServiceResult<Vec<EventRow>> {
        let sid = self.session_id.clone();
        let from = self.next as i64;
        self.store
            .read("watch_page", move |conn| {
                Ok::<_, ServiceError>(event_rows::events_page(
                    conn,
                    &sid,
                    from,
                    REPLAY_PAGE,
                    REPLAY_PAGE_BYTES,
                )?)
            })
            .await
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

        // Subscribe before reading the log so nothing committed in between
        // is missed.
        let reader = Reader {
            store: self.store.clone(),
            session_id: session_id.to_string(),
            until_turn_end,
            live: self.live.hub.subscribe(session_id.as_str()),
            next: from_seq.max(1),
            page: VecDeque::new(),
            replaying: true,
            over: false,
        };
        let events = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next_event().await?;
            Some((item, reader))
        });
        Ok(WatchStream {
            events: Box::pin(events),
            ended: Box::pin(guard.ended()),
            _guard: guard,
            done: false,
        })
    }
}
