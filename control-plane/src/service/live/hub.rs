//! Fan-out of committed events to watchers. A watcher that falls behind is
//! told it lagged and re-reads from the log: no watcher can slow the writer,
//! the runtime stream, or another watcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oma_proto::pb;
use tokio::sync::broadcast;

/// Events buffered per session for live watchers before a slow one lags.
const CHANNEL_CAPACITY: usize = 1024;

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, broadcast::Sender<Arc<pb::SessionEvent>>>>,
}

impl Hub {
    pub fn subscribe(&self, session_id: &str) -> broadcast::Receiver<Arc<pb::SessionEvent>> {
        let mut sessions = self.sessions.lock().expect("hub lock");
        sessions
            .entry(session_id.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Publishes committed events of one session, in seq order.
    pub fn publish(&self, session_id: &str, events: &[Arc<pb::SessionEvent>]) {
        let mut sessions = self.sessions.lock().expect("hub lock");
        if let Some(sender) = sessions.get(session_id) {
            if sender.receiver_count() == 0 {
                sessions.remove(session_id);
                return;
            }
            for event in events {
                // An error only means every receiver has gone.
                let _ = sender.send(event.clone());
            }
        }
    }

    /// Ends every watch of a session (it was deleted).
    pub fn close(&self, session_id: &str) {
        self.sessions.lock().expect("hub lock").remove(session_id);
    }
}
