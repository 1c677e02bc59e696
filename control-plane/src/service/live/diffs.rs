//! Diffs asked of machines and not yet fully answered: which runtime owes
//! which request id, and where its chunks go.
//!
//! A machine can only answer requests made of it (the key includes its
//! runtime id) and only up to the size asked for: anything else it sends
//! is dropped, so it can neither feed another caller's diff nor grow the
//! server's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oma_proto::pb;
use tokio::sync::mpsc;

/// One request: where chunks go and how many bytes may still come.
struct Pending {
    tx: mpsc::UnboundedSender<pb::DiffChunk>,
    bytes_left: u64,
}

#[derive(Default)]
pub struct Diffs {
    pending: Mutex<HashMap<(String, String), Pending>>,
}

/// Removes its request when dropped (the caller went away, or it ended).
pub struct DiffGuard {
    diffs: Arc<Diffs>,
    key: (String, String),
}

impl Drop for DiffGuard {
    fn drop(&mut self) {
        self.diffs.pending.lock().expect("diffs lock").remove(&self.key);
    }
}

impl Diffs {
    /// Expects chunks of `request_id` from `runtime_id`, at most `max_bytes`.
    pub fn expect(
        self: &Arc<Self>,
        runtime_id: &str,
        request_id: &str,
        max_bytes: u64,
    ) -> (DiffGuard, mpsc::UnboundedReceiver<pb::DiffChunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = (runtime_id.to_owned(), request_id.to_owned());
        self.pending.lock().expect("diffs lock").insert(
            key.clone(),
            Pending {
                tx,
                bytes_left: max_bytes,
            },
        );
        (
            DiffGuard {
                diffs: self.clone(),
                key,
            },
            rx,
        )
    }

    /// A chunk from `runtime_id`: passed on if that runtime owes this
    /// request and it fits; the request ends with its last chunk (or when
    /// the machine sends more than was asked).
    pub fn deliver(&self, runtime_id: &str, chunk: pb::DiffChunk) -> bool {
        let key = (runtime_id.to_owned(), chunk.request_id.clone());
        let mut pending = self.pending.lock().expect("diffs lock");
        let Some(entry) = pending.get_mut(&key) else {
            return false;
        };
        let len = chunk.data.len() as u64;
        if len > entry.bytes_left {
            pending.remove(&key);
            return false;
        }
        entry.bytes_left -= len;
        let last = chunk.last;
        let sent = entry.tx.send(chunk).is_ok();
        if last || !sent {
            pending.remove(&key);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(request: &str, data: &[u8], last: bool) -> pb::DiffChunk {
        pb::DiffChunk {
            request_id: request.into(),
            data: data.to_vec(),
            last,
            ..Default::default()
        }
    }

    #[test]
    fn only_the_asked_runtime_answers_and_only_up_to_the_size() {
        let diffs = Arc::new(Diffs::default());
        let (_guard, mut rx) = diffs.expect("rt_a", "d1", 4);
        assert!(!diffs.deliver("rt_b", chunk("d1", b"evil", true)), "another runtime");
        assert!(!diffs.deliver("rt_a", chunk("d2", b"x", true)), "another request");
        assert!(diffs.deliver("rt_a", chunk("d1", b"abc", false)));
        assert!(!diffs.deliver("rt_a", chunk("d1", b"de", false)), "past the size asked");
        assert!(!diffs.deliver("rt_a", chunk("d1", b"", true)), "the request ended");
        assert_eq!(rx.try_recv().unwrap().data, b"abc");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_dropped_guard_forgets_the_request() {
        let diffs = Arc::new(Diffs::default());
        let (guard, _rx) = diffs.expect("rt_a", "d1", 100);
        drop(guard);
        assert!(!diffs.deliver("rt_a", chunk("d1", b"x", true)));
    }
}
