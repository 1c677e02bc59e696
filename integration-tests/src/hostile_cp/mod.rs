//! A hostile control plane: a fake server that pairs a real `oma-agent` and
//! then sends it whatever it likes, for the tests proving that nothing the
//! control plane sends runs code on the machine, writes outside a session's
//! folder, or stops the daemon serving its other sessions (DESIGN §3,
//! invariant 4).
//!
//! [`HostileControlPlane`] serves `RuntimeService.ExchangeConnectCode` (so
//! `oma-agent setup` pairs with it; its other methods are UNIMPLEMENTED) and
//! `RuntimeStreamService.OpenStream`, on 127.0.0.1 port 0, in plaintext, on
//! its own tokio runtime (a test blocking its thread on a process never
//! stalls the stream). Where the daemon needs an honest peer to stay up it
//! is one: it answers Hello with a Welcome (the cursor of every session the
//! daemon holds), echoes heartbeats, stores each event once and acks it.
//! Everything else is the test's: [`HostileControlPlane::send`] puts any
//! [`Outbound`] on the stream, a frame or any bytes as one gRPC message (the
//! generated server can only send well-formed `ControlFrame`s, so the stream
//! is served with its own codec).
//!
//! An attack is an [`Attack`]: a name and [`Step`]s (frames to send, what
//! the daemon must answer). [`Lab::run`] plays it, then checks the [`Canary`]
//! (no canary command ran, nothing outside the session folders changed or
//! appeared), the data dir's layout and modes, that the daemon still
//! heartbeats, and that a session started before any attack still completes
//! a turn. A new case is a few lines: a session bundle from
//! [`Lab::bundle`] with the hostile field set, and the expected answer.

mod canary;
mod lab;
mod server;

use std::time::Duration;

pub use canary::Canary;
pub use lab::{Attack, Lab, Step, session_id, swapped_for_symlinks};
pub use server::{HostileControlPlane, Outbound};

/// How long the daemon gets for anything: a start, a turn, a reconnect.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The ACP agents in the daemon's table, both the scripted test agent:
/// `claudish` as a Claude agent (skills in `.claude/skills/`, a private
/// `CLAUDE_CONFIG_DIR` built from `$HOME/.claude`), `plain` as any other
/// (skills in `.skills/` and inline in AGENTS.md).
pub const CLAUDISH: &str = "claudish";
pub const PLAIN: &str = "plain";
/// The AGENTS.md text of [`Lab::bundle`].
pub const AGENTS_MD: &str = "You are the hostile-control-plane test agent.";
/// The SKILL.md of the `lint` skill of [`Lab::bundle`].
pub const SKILL_MD: &str = "---\nname: lint\ndescription: runs the linter\n---\nRun the linter.\n";
