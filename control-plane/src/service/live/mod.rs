//! The live path: runtime streams, the session event log, and watchers.
//! (The session operations that use it — prompt, cancel, answer, watch —
//! are in [`crate::service::sessions`].)
//!
//! - [`registry`]: which runtime has which live stream (one per runtime,
//!   fenced by a connection epoch).
//! - [`event_log`]: the group-commit writer. Events arrive numbered by the
//!   machine; each (session, seq) is stored once, in order, and only then
//!   acknowledged and fanned out.
//! - [`hub`]: fan-out of committed events to watchers.
//! - [`message`]: what a machine says on its stream, checked at the gRPC
//!   boundary.
//! - [`permissions`]: what an agent's permission policy decides.
//! - [`stream`]: one runtime stream, from Hello to its end; [`reader`]
//!   reads its frames, [`acks`] answers them once durable.
//! - [`start`]: the StartSession frame a machine gets for a session.
//! - [`diffs`]: diffs asked of machines, awaiting their chunks.
//! - [`watchers`]: the live watches (revocation, the per-tenant cap).

pub mod acks;
pub mod diffs;
pub mod event_log;
pub mod hub;
pub mod leases;
pub mod message;
pub mod permissions;
pub mod reader;
pub mod registry;
pub mod start;
pub mod stream;
pub mod watchers;

use std::time::Duration;

/// Tunables of the live path.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// How often the agent must heartbeat (sent in Welcome). The stream is
    /// declared dead after three intervals without any frame.
    pub heartbeat_interval: Duration,
    /// How long the first frame (Hello) may take.
    pub hello_timeout: Duration,
    /// How long an `ask` permission request waits for a person before it is
    /// rejected.
    pub permission_timeout: Duration,
    /// How long a frame to a runtime may wait for room in its queue; a
    /// runtime that takes nothing for that long has its stream ended.
    pub send_timeout: Duration,
    /// This replica's name among the control planes sharing the database:
    /// the runtime streams it holds are leased under it.
    pub replica_id: String,
}

impl LiveConfig {
    /// How long a runtime's lease runs without renewal: as long as a stream
    /// may stay silent before it is declared dead.
    pub fn lease_ttl(&self) -> Duration {
        self.heartbeat_interval * 3
    }
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            heartbeat_interval: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(15),
            permission_timeout: Duration::from_secs(600),
            send_timeout: registry::DEFAULT_SEND_TIMEOUT,
            replica_id: "local".into(),
        }
    }
}
