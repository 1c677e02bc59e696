//! What a machine says on its stream, already checked.
//!
//! The gRPC layer turns every `pb::AgentFrame` into an [`AgentMessage`]
//! (`TryFrom`, which runs the contract's validation: present oneofs,
//! bounded ids and labels, seq ≥ 1, at most so many events per frame), so
//! the live path below it never meets an empty frame or a missing field.
//! Session events stay the contract's own `pb::SessionEvent`: they are
//! stored and replayed exactly as the machine numbered them, and decoding
//! them into another type only to encode them again would cost the hot
//! path for nothing.

use oma_proto::pb;
use oma_proto::validate::{self, ValidationError};
use prost::Message as _;

/// One checked frame from a machine.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// The first frame of a stream (anywhere else it is refused).
    Hello(Hello),
    /// Liveness; echoed back so the machine can measure the round trip.
    Heartbeat { sent_at_ms: u64 },
    /// Session events, in the order the machine sent them (a frame may mix
    /// sessions).
    Events(Vec<pb::SessionEvent>),
    /// The ACP session of a session started (or resumed).
    SessionReady { session_id: String, acp_session_id: String },
    /// A session could not be started.
    SessionFailed { session_id: String },
    /// The machine disposed of a session.
    SessionDisposed { session_id: String },
    /// The machine's agents or skills changed (encoded `pb::Manifest`,
    /// stored as it came).
    ManifestUpdate { manifest: Vec<u8> },
    /// The machine received a command (informational).
    Ack,
    /// A piece of a diff the control plane asked for.
    DiffChunk(pb::DiffChunk),
    /// The machine is being uninstalled: forget its runtime.
    Deregister,
}

/// What a machine says when it connects.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub machine_id: String,
    pub instance_id: String,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    /// Encoded `pb::Manifest` (empty when the machine sent none).
    pub manifest: Vec<u8>,
    /// The sessions the machine holds and the last seq it sent of each.
    pub held_sessions: Vec<HeldSession>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSession {
    pub session_id: String,
    pub last_sent_seq: u64,
}

impl TryFrom<pb::AgentFrame> for AgentMessage {
    type Error = ValidationError;

    fn try_from(frame: pb::AgentFrame) -> Result<Self, Self::Error> {
        use pb::agent_frame::Frame;
        validate::agent_frame(&frame)?;
        let empty = || ValidationError::new("frame", "is empty or of a kind this server does not know");
        Ok(match frame.frame.ok_or_else(empty)? {
            Frame::Hello(hello) => AgentMessage::Hello(Hello {
                machine_id: hello.machine_id,
                instance_id: hello.instance_id,
                agent_version: hello.agent_version,
                os: hello.os,
                arch: hello.arch,
                manifest: hello.manifest.unwrap_or_default().encode_to_vec(),
                held_sessions: hello
                    .sessions
                    .into_iter()
                    .map(|s| HeldSession {
                        session_id: s.session_id,
                        last_sent_seq: s.last_sent_seq,
                    })
                    .collect(),
            }),
            Frame::Heartbeat(h) => AgentMessage::Heartbeat {
                sent_at_ms: h.sent_at_ms,
            },
            Frame::Event(one) => AgentMessage::Events(vec![
                one.event
                    .ok_or_else(|| ValidationError::new("event.event", "is required"))?,
            ]),
            Frame::Events(batch) => AgentMessage::Events(batch.events),
            Frame::SessionReady(ready) => AgentMessage::SessionReady {
                session_id: ready.session_id,
                acp_session_id: ready.acp_session_id,
            },
            Frame::SessionFailed(failed) => AgentMessage::SessionFailed {
                session_id: failed.session_id,
            },
            Frame::SessionDisposed(disposed) => AgentMessage::SessionDisposed {
                session_id: disposed.session_id,
            },
            Frame::ManifestUpdate(update) => AgentMessage::ManifestUpdate {
                manifest: update.manifest.unwrap_or_default().encode_to_vec(),
            },
            Frame::Ack(_) => AgentMessage::Ack,
            Frame::DiffChunk(chunk) => AgentMessage::DiffChunk(chunk),
            Frame::Deregister(_) => AgentMessage::Deregister,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: pb::agent_frame::Frame) -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(f) }
    }

    fn event(session_id: &str, seq: u64) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: session_id.into(),
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_frame_is_refused_naming_the_field() {
        let e = AgentMessage::try_from(pb::AgentFrame { frame: None }).unwrap_err();
        assert_eq!(e.field, "frame");
    }

    #[test]
    fn an_event_frame_without_its_event_is_refused() {
        let e = AgentMessage::try_from(frame(pb::agent_frame::Frame::Event(pb::SessionEventFrame {
            event: None,
        })))
        .unwrap_err();
        assert_eq!(e.field, "event.event");
    }

    #[test]
    fn seq_zero_is_refused_with_the_events_index() {
        let batch = pb::SessionEventBatch {
            events: vec![event("ses_a", 1), event("ses_a", 0)],
        };
        let e = AgentMessage::try_from(frame(pb::agent_frame::Frame::Events(batch))).unwrap_err();
        assert_eq!(e.field, "events.events[1].seq");
    }

    #[test]
    fn one_event_and_a_batch_become_the_same_message() {
        let one = AgentMessage::try_from(frame(pb::agent_frame::Frame::Event(pb::SessionEventFrame {
            event: Some(event("ses_a", 3)),
        })))
        .unwrap();
        let batch = AgentMessage::try_from(frame(pb::agent_frame::Frame::Events(pb::SessionEventBatch {
            events: vec![event("ses_a", 3)],
        })))
        .unwrap();
        assert_eq!(one, batch);
        assert_eq!(one, AgentMessage::Events(vec![event("ses_a", 3)]));
    }

    #[test]
    fn hello_keeps_what_the_machine_holds() {
        let hello = pb::Hello {
            machine_id: "machine-1".into(),
            instance_id: "inst".into(),
            sessions: vec![pb::HeldSession {
                session_id: "ses_a".into(),
                last_sent_seq: 7,
            }],
            ..Default::default()
        };
        let AgentMessage::Hello(hello) = AgentMessage::try_from(frame(pb::agent_frame::Frame::Hello(hello))).unwrap()
        else {
            panic!("not a Hello");
        };
        assert_eq!(hello.machine_id, "machine-1");
        assert_eq!(
            hello.held_sessions,
            vec![HeldSession {
                session_id: "ses_a".into(),
                last_sent_seq: 7
            }]
        );
        assert_eq!(hello.manifest, pb::Manifest::default().encode_to_vec());
    }
}
