//! Live runtime streams. One per runtime: a newer stream supersedes the
//! older, which is told so and closed.
//!
//! Every frame to a runtime goes through its [`Outbound`] queue, bounded by
//! count and by bytes. A send waits at most the send timeout for room: a
//! runtime that takes nothing for that long has stopped reading, so its
//! stream is ended. No caller (a PromptSession, an ack, a permission answer)
//! ever waits longer on one machine, and what was queued for it is freed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::service::ServiceError;

/// Frames queued to one runtime.
pub const OUTBOUND_CAPACITY: usize = 1024;

/// Bytes of encoded frames queued to one runtime. The largest message: any
/// frame fits into an empty queue (a larger one waits for the whole budget).
pub const OUTBOUND_BYTES: usize = oma_proto::MAX_MESSAGE_BYTES;

/// How long a send to a runtime waits for room in its queue by default.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct LiveRuntime {
    pub epoch: i64,
    pub instance_id: String,
    pub outbound: Outbound,
    /// Ends the stream (the same token as the outbound queue's).
    pub cancel: CancellationToken,
}

/// Why a frame was not queued to a runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("runtime {0} has no live stream")]
    NotConnected(String),
    #[error("the stream of runtime {0} has ended")]
    Closed(String),
    #[error(
        "runtime {runtime_id} took no frame for {timeout:?}: it stopped reading its stream, which was ended; retry after it reconnects"
    )]
    TimedOut { runtime_id: String, timeout: Duration },
}

impl From<SendError> for ServiceError {
    fn from(e: SendError) -> Self {
        ServiceError::FailedPrecondition(e.to_string())
    }
}

/// A queued frame holds its bytes of the budget until the stream takes it.
struct Queued {
    frame: pb::ControlFrame,
    _bytes: OwnedSemaphorePermit,
}

/// The sending side of a runtime's queue.
#[derive(Clone)]
pub struct Outbound {
    runtime_id: Arc<str>,
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    timeout: Duration,
    cancel: CancellationToken,
    /// The frame the stream ends with (Superseded), sent after the cancel
    /// in place of whatever was still queued.
    last: Arc<Mutex<Option<pb::ControlFrame>>>,
}

/// A runtime's queue: the sender for everyone, and the frames for the
/// stream's response. `cancel` ends both.
pub fn outbound(runtime_id: &str, timeout: Duration, cancel: CancellationToken) -> (Outbound, OutboundFrames) {
    let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let last = Arc::new(Mutex::new(None));
    let sender = Outbound {
        runtime_id: runtime_id.into(),
        tx,
        bytes: Arc::new(Semaphore::new(OUTBOUND_BYTES)),
        timeout,
        cancel: cancel.clone(),
        last: last.clone(),
    };
    let frames = OutboundFrames {
        first: None,
        rx,
        cancelled: Box::pin(cancel.cancelled_owned()),
        last,
        done: false,
    };
    (sender, frames)
}

impl Outbound {
    /// Queues a frame, waiting at most the send timeout for room (by count
    /// and by bytes). When the time runs out the runtime has stopped
    /// reading: its stream is ended and every other sender stops waiting.
    pub async fn send(&self, mut frame: pb::ControlFrame) -> Result<(), SendError> {
        let closed = || SendError::Closed(self.runtime_id.to_string());
        if self.cancel.is_cancelled() {
            return Err(closed());
        }
        // Clamped: a frame larger than the budget waits for all of it.
        let cost = frame.encoded_len().clamp(1, OUTBOUND_BYTES) as u32;
        // Room now, the common case (every ack): no timer needed.
        if let Ok(bytes) = self.bytes.clone().try_acquire_many_owned(cost) {
            match self.tx.try_send(Queued { frame, _bytes: bytes }) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
                Err(mpsc::error::TrySendError::Full(queued)) => frame = queued.frame,
            }
        }
        let queue = async {
            let bytes = self
                .bytes
                .clone()
                .acquire_many_owned(cost)
                .await
                .map_err(|_| closed())?;
            self.tx
                .send(Queued { frame, _bytes: bytes })
                .await
                .map_err(|_| closed())
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(closed()),
            queued = tokio::time::timeout(self.timeout, queue) => match queued {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        runtime_id = &*self.runtime_id,
                        timeout = ?self.timeout,
                        "the runtime took no frame in time; ending its stream"
                    );
                    self.cancel.cancel();
                    Err(SendError::TimedOut {
                        runtime_id: self.runtime_id.to_string(),
                        timeout: self.timeout,
                    })
                }
            },
        }
    }

    /// Ends the stream with `frame` as its last frame; what is still queued
    /// is dropped.
    pub fn end_with(&self, frame: pb::ControlFrame) {
        *self.last.lock().expect("outbound lock") = Some(frame);
        self.cancel.cancel();
    }

    /// Ends the stream; what is still queued is dropped.
    pub fn end(&self) {
        self.cancel.cancel();
    }
}

/// The frames of a runtime's stream response: first the one set with
/// [`OutboundFrames::lead_with`], then the queue in order, until every
/// sender is gone or the stream is ended (then only the last frame given to
/// [`Outbound::end_with`], if any).
pub struct OutboundFrames {
    first: Option<pb::ControlFrame>,
    rx: mpsc::Receiver<Queued>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    last: Arc<Mutex<Option<pb::ControlFrame>>>,
    done: bool,
}

impl OutboundFrames {
    /// Puts `frame` ahead of everything queued (Welcome: the stream is
    /// registered before it is built, so others may queue frames already).
    pub fn lead_with(&mut self, frame: pb::ControlFrame) {
        self.first = Some(frame);
    }

    fn finish(&mut self) -> Poll<Option<pb::ControlFrame>> {
        self.done = true;
        // Frees the queued frames and wakes the senders now.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        Poll::Ready(self.last.lock().expect("outbound lock").take())
    }
}

impl Stream for OutboundFrames {
    type Item = pb::ControlFrame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::ControlFrame>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return self.finish();
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        match self.rx.poll_recv(cx) {
            // The frame's bytes go back to the budget here.
            Poll::Ready(Some(queued)) => Poll::Ready(Some(queued.frame)),
            Poll::Ready(None) => self.finish(),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    runtimes: Mutex<HashMap<String, LiveRuntime>>,
}

impl Registry {
    /// Registers a stream and returns the one it replaced.
    pub fn register(&self, runtime_id: &str, live: LiveRuntime) -> Option<LiveRuntime> {
        let mut runtimes = self.runtimes.lock().expect("registry lock");
        let replaced = runtimes.insert(runtime_id.to_owned(), live);
        connected_gauge(&runtimes);
        replaced
    }

    /// Removes the stream if it is still the one of `epoch`.
    pub fn unregister(&self, runtime_id: &str, epoch: i64) -> bool {
        let mut runtimes = self.runtimes.lock().expect("registry lock");
        if runtimes.get(runtime_id).is_some_and(|l| l.epoch == epoch) {
            runtimes.remove(runtime_id);
            connected_gauge(&runtimes);
            true
        } else {
            false
        }
    }

    pub fn get(&self, runtime_id: &str) -> Option<LiveRuntime> {
        self.runtimes.lock().expect("registry lock").get(runtime_id).cloned()
    }

    /// Queues a frame to a runtime's live stream, waiting at most its send
    /// timeout (see [`Outbound::send`]).
    pub async fn send(&self, runtime_id: &str, frame: pb::ControlFrame) -> Result<(), SendError> {
        let live = self
            .get(runtime_id)
            .ok_or_else(|| SendError::NotConnected(runtime_id.to_owned()))?;
        live.outbound.send(frame).await
    }

    /// Ends a runtime's stream (the runtime was deleted).
    pub fn disconnect(&self, runtime_id: &str) {
        let mut runtimes = self.runtimes.lock().expect("registry lock");
        if let Some(live) = runtimes.remove(runtime_id) {
            live.outbound.end();
        }
        connected_gauge(&runtimes);
    }

    /// Ends every runtime's stream (the server is draining): each machine
    /// reconnects, to another replica when it knows one. Events stored by
    /// then stay stored; any not yet acknowledged the machine sends again,
    /// and they are stored once. Returns how many streams were ended.
    /// Each stream unregisters itself as it ends, which records the runtime
    /// offline unless a newer stream (on another replica) took over.
    pub fn end_all(&self) -> usize {
        let runtimes = self.runtimes.lock().expect("registry lock");
        for live in runtimes.values() {
            live.outbound.end();
        }
        runtimes.len()
    }

    pub fn is_current(&self, runtime_id: &str, epoch: i64) -> bool {
        self.runtimes
            .lock()
            .expect("registry lock")
            .get(runtime_id)
            .is_some_and(|l| l.epoch == epoch)
    }
}

/// `oma_runtimes_connected`, set under the registry's lock so that two
/// changes cannot publish their counts out of order.
fn connected_gauge(runtimes: &HashMap<String, LiveRuntime>) {
    metrics::gauge!("oma_runtimes_connected").set(runtimes.len() as f64);
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn heartbeat(n: u64) -> pb::ControlFrame {
        pb::ControlFrame {
            frame: Some(pb::control_frame::Frame::Heartbeat(pb::Heartbeat { sent_at_ms: n })),
        }
    }

    fn big(bytes: usize) -> pb::ControlFrame {
        pb::ControlFrame {
            frame: Some(pb::control_frame::Frame::Superseded(pb::Superseded {
                by_instance_id: "x".repeat(bytes),
            })),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_does_not_read_is_ended_after_the_timeout() {
        let cancel = CancellationToken::new();
        let (tx, mut frames) = outbound("rt_1", Duration::from_secs(5), cancel.clone());
        // Bytes run out long before the count does.
        let frame = big(4 * 1024 * 1024);
        for _ in 0..3 {
            tx.send(frame.clone()).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        // Another caller waiting for room is released by the same timeout.
        let other = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(heartbeat(1)).await }
        });
        let err = tx.send(frame.clone()).await.unwrap_err();
        assert!(matches!(err, SendError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("rt_1"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(cancel.is_cancelled());
        assert!(other.await.unwrap().is_err());
        // Later sends fail at once, and the stream ends without the queue.
        assert!(matches!(tx.send(heartbeat(2)).await, Err(SendError::Closed(_))));
        assert!(frames.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_bound_holds_for_small_frames_too() {
        let cancel = CancellationToken::new();
        let (tx, mut frames) = outbound("rt_1", Duration::from_secs(5), cancel.clone());
        for n in 0..OUTBOUND_CAPACITY as u64 {
            tx.send(heartbeat(n)).await.unwrap();
        }
        let err = tx.send(heartbeat(0)).await.unwrap_err();
        assert!(matches!(err, SendError::TimedOut { .. }), "{err}");
        assert!(frames.next().await.is_none(), "the queue is dropped with the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_is_returned_as_frames_are_taken() {
        let cancel = CancellationToken::new();
        let (tx, mut frames) = outbound("rt_1", Duration::from_secs(5), cancel.clone());
        let frame = big(6 * 1024 * 1024);
        tx.send(frame.clone()).await.unwrap();
        tx.send(frame.clone()).await.unwrap();
        let third = tokio::spawn({
            let tx = tx.clone();
            let frame = frame.clone();
            async move { tx.send(frame).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "16 MiB of budget cannot hold three 6 MiB frames");
        assert!(frames.next().await.is_some());
        third.await.unwrap().unwrap();
        // Larger than the whole budget: waits for an empty queue, then fits.
        let huge = big(OUTBOUND_BYTES + 1024);
        let sent = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(huge).await }
        });
        assert!(frames.next().await.is_some());
        assert!(frames.next().await.is_some());
        sent.await.unwrap().unwrap();
        assert!(frames.next().await.is_some());
        assert!(!cancel.is_cancelled());
    }

    #[tokio::test]
    async fn welcome_leads_and_superseded_is_the_last_word() {
        let cancel = CancellationToken::new();
        let (tx, mut frames) = outbound("rt_1", Duration::from_secs(5), cancel.clone());
        tx.send(heartbeat(1)).await.unwrap();
        frames.lead_with(heartbeat(0));
        assert_eq!(frames.next().await, Some(heartbeat(0)));
        assert_eq!(frames.next().await, Some(heartbeat(1)));
        tx.send(heartbeat(2)).await.unwrap();
        tx.end_with(big(3));
        // Queued frames are dropped; only the last word goes out.
        assert_eq!(frames.next().await, Some(big(3)));
        assert_eq!(frames.next().await, None);
        // Without senders the stream ends by itself.
        let (tx, mut frames) = outbound("rt_2", Duration::from_secs(5), CancellationToken::new());
        tx.send(heartbeat(1)).await.unwrap();
        drop(tx);
        assert_eq!(frames.next().await, Some(heartbeat(1)));
        assert_eq!(frames.next().await, None);
    }
}
