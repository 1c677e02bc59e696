//! Fan-out of committed events to watchers: one ring of recent events per
//! watched session, bounded by count and by bytes. Publishing never waits:
//! a watcher that falls out of the ring is told it lagged and re-reads from
//! the log, so no watcher can slow the writer, the runtime stream, or another
//! watcher, and a session pins at most [`RING_BYTES`] (or its one newest
//! event, when that alone is larger) however its watchers behave.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use oma_proto::pb;
use prost::Message as _;
use tokio::sync::watch;

/// Most events kept per watched session.
const RING_EVENTS: usize = 1024;
/// Most encoded bytes kept per watched session.
pub const RING_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Feed>>,
}

/// A watched session: its ring, and the bell rung after each publish (the
/// bell's end tells watchers the session is gone).
struct Feed {
    ring: Arc<Mutex<Ring>>,
    bell: watch::Sender<()>,
}

/// Consecutive events (seq n, n+1, …), so a seq finds its slot by offset.
#[derive(Default)]
struct Ring {
    events: VecDeque<(Arc<pb::SessionEvent>, usize)>,
    bytes: usize,
}

enum Slot {
    Found(Arc<pb::SessionEvent>),
    /// Older than the ring: read it from the log.
    Gone,
    /// Not published yet.
    Ahead,
}

impl Ring {
    fn push(&mut self, event: Arc<pb::SessionEvent>) {
        if self.events.back().is_some_and(|(last, _)| last.seq + 1 != event.seq) {
            // Not the next seq (cannot happen with a gapless log): start over
            // so offsets stay exact; watchers behind re-read the log.
            self.events.clear();
            self.bytes = 0;
        }
        let size = event.encoded_len();
        self.bytes += size;
        self.events.push_back((event, size));
        while self.events.len() > 1 && (self.events.len() > RING_EVENTS || self.bytes > RING_BYTES) {
            if let Some((_, size)) = self.events.pop_front() {
                self.bytes -= size;
            }
        }
    }

    fn slot(&self, seq: u64) -> Slot {
        let Some((first, _)) = self.events.front() else {
            return Slot::Ahead;
        };
        if seq < first.seq {
            return Slot::Gone;
        }
        match self.events.get((seq - first.seq) as usize) {
            Some((event, _)) => Slot::Found(event.clone()),
            None => Slot::Ahead,
        }
    }
}

/// What a watcher gets next.
pub enum Next {
    Event(Arc<pb::SessionEvent>),
    /// The wanted event left the ring: read from the log.
    Lagged,
    /// The session was deleted.
    Closed,
}

/// One watcher's view of a session's feed.
pub struct Subscription {
    hub: Arc<Hub>,
    session_id: String,
    ring: Arc<Mutex<Ring>>,
    bell: watch::Receiver<()>,
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, session_id: &str) -> Subscription {
        let mut sessions = self.sessions.lock().expect("hub lock");
        let feed = sessions.entry(session_id.to_owned()).or_insert_with(|| Feed {
            ring: Arc::default(),
            bell: watch::channel(()).0,
        });
        Subscription {
            hub: self.clone(),
            session_id: session_id.to_owned(),
            ring: feed.ring.clone(),
            bell: feed.bell.subscribe(),
        }
    }

    /// Publishes committed events of one session, in seq order.
    pub fn publish(&self, session_id: &str, events: &[Arc<pb::SessionEvent>]) {
        let sessions = self.sessions.lock().expect("hub lock");
        if let Some(feed) = sessions.get(session_id) {
            let mut ring = feed.ring.lock().expect("ring lock");
            for event in events {
                ring.push(event.clone());
            }
            drop(ring);
            feed.bell.send_replace(());
        }
    }

    /// Ends every watch of a session (it was deleted).
    pub fn close(&self, session_id: &str) {
        self.sessions.lock().expect("hub lock").remove(session_id);
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        self.sessions.lock().expect("hub lock").len()
    }
}

impl Subscription {
    /// Waits for the event `seq`.
    pub async fn next(&mut self, seq: u64) -> Next {
        loop {
            // Mark the bell seen before looking, so a publish in between
            // rings again.
            self.bell.borrow_and_update();
            match self.ring.lock().expect("ring lock").slot(seq) {
                Slot::Found(event) => return Next::Event(event),
                Slot::Gone => return Next::Lagged,
                Slot::Ahead => {}
            }
            if self.bell.changed().await.is_err() {
                return Next::Closed;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The last watcher gone: free the ring now, not at a publish that
        // may never come.
        let mut sessions = self.hub.sessions.lock().expect("hub lock");
        if let Some(feed) = sessions.get(&self.session_id)
            && Arc::ptr_eq(&feed.ring, &self.ring)
            && feed.bell.receiver_count() <= 1
        {
            sessions.remove(&self.session_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(seq: u64, bytes: usize) -> Arc<pb::SessionEvent> {
        Arc::new(pb::SessionEvent {
            session_id: "ses_1".into(),
            seq,
            turn_id: "x".repeat(bytes),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_watcher_reads_published_events_and_lags_out_of_the_ring() {
        let hub = Arc::new(Hub::default());
        let mut sub = hub.subscribe("ses_1");
        hub.publish("ses_1", &[event(1, 10), event(2, 10)]);
        assert!(matches!(sub.next(1).await, Next::Event(e) if e.seq == 1));
        assert!(matches!(sub.next(2).await, Next::Event(e) if e.seq == 2));
        // Far more bytes than the ring keeps: the oldest are dropped.
        let big: Vec<_> = (3..13).map(|s| event(s, RING_BYTES / 4)).collect();
        hub.publish("ses_1", &big);
        assert!(matches!(sub.next(3).await, Next::Lagged));
        assert!(matches!(sub.next(12).await, Next::Event(e) if e.seq == 12));
        let ring = sub.ring.lock().unwrap();
        assert!(ring.bytes <= RING_BYTES && ring.events.len() < 10, "{}", ring.bytes);
    }

    #[tokio::test]
    async fn a_waiting_watcher_wakes_on_publish_and_on_close() {
        let hub = Arc::new(Hub::default());
        let mut sub = hub.subscribe("ses_1");
        let publisher = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publisher.publish("ses_1", &[event(1, 1)]);
        });
        assert!(matches!(sub.next(1).await, Next::Event(_)));
        hub.close("ses_1");
        assert!(matches!(sub.next(2).await, Next::Closed));
    }

    #[tokio::test]
    async fn one_oversized_event_still_passes_and_the_last_watcher_frees_the_ring() {
        let hub = Arc::new(Hub::default());
        let mut a = hub.subscribe("ses_1");
        let b = hub.subscribe("ses_1");
        hub.publish("ses_1", &[event(1, RING_BYTES + 1)]);
        assert!(matches!(a.next(1).await, Next::Event(_)));
        drop(a);
        assert_eq!(hub.watched(), 1, "another watcher still holds the feed");
        drop(b);
        assert_eq!(hub.watched(), 0);
    }
}
