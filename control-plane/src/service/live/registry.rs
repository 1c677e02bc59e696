//! Live runtime streams. One per runtime: a newer stream supersedes the
//! older, which is told so and closed.

use std::collections::HashMap;
use std::sync::Mutex;

use oma_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames queued to one runtime. Bounded: a runtime that stops reading
/// makes senders wait, never the process grow.
pub const OUTBOUND_CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct LiveRuntime {
    pub epoch: i64,
    pub instance_id: String,
    pub tx: mpsc::Sender<pb::ControlFrame>,
    pub cancel: CancellationToken,
}

#[derive(Default)]
pub struct Registry {
    runtimes: Mutex<HashMap<String, LiveRuntime>>,
}

impl Registry {
    /// Registers a stream and returns the one it replaced.
    pub fn register(&self, runtime_id: &str, live: LiveRuntime) -> Option<LiveRuntime> {
        self.runtimes
            .lock()
            .expect("registry lock")
            .insert(runtime_id.to_owned(), live)
    }

    /// Removes the stream if it is still the one of `epoch`.
    pub fn unregister(&self, runtime_id: &str, epoch: i64) -> bool {
        let mut runtimes = self.runtimes.lock().expect("registry lock");
        if runtimes.get(runtime_id).is_some_and(|l| l.epoch == epoch) {
            runtimes.remove(runtime_id);
            true
        } else {
            false
        }
    }

    pub fn get(&self, runtime_id: &str) -> Option<LiveRuntime> {
        self.runtimes.lock().expect("registry lock").get(runtime_id).cloned()
    }

    /// Ends a runtime's stream (the runtime was deleted).
    pub fn disconnect(&self, runtime_id: &str) {
        if let Some(live) = self.runtimes.lock().expect("registry lock").remove(runtime_id) {
            live.cancel.cancel();
        }
    }

    pub fn is_current(&self, runtime_id: &str, epoch: i64) -> bool {
        self.runtimes
            .lock()
            .expect("registry lock")
            .get(runtime_id)
            .is_some_and(|l| l.epoch == epoch)
    }
}
