//! Events sized for the stream: an event shrunk to fit one gRPC message,
//! and events cut into frames bounded by count and bytes.

use oma_proto::pb;
use prost::Message as _;

/// Events per frame (live sends and resends of a backlog alike).
pub(super) const FRAME_EVENTS: usize = 256;

/// The largest event sent (the gRPC message limit less room for framing).
const MAX_EVENT_BYTES: usize = oma_proto::MAX_MESSAGE_BYTES - 64 * 1024;

/// An event must fit in one gRPC message with room to spare. A large update
/// first loses its typed view (the raw JSON is the loss-free copy; the typed
/// one duplicates a chunk's text); one still too large becomes an error
/// event that says what was dropped, instead of a frame the stream refuses.
pub(super) fn fit_in_a_frame(event: &mut pb::SessionEvent) {
    if event.encoded_len() <= MAX_EVENT_BYTES / 2 {
        return;
    }
    if let Some(pb::session_event::Kind::Update(update)) = &mut event.kind {
        update.typed = None;
    }
    let len = event.encoded_len();
    if len > MAX_EVENT_BYTES {
        let kind = match &event.kind {
            Some(pb::session_event::Kind::Update(update)) => update.kind.clone(),
            _ => "event".to_owned(),
        };
        event.kind = Some(pb::session_event::Kind::Error(pb::SessionError {
            code: "update_too_large".into(),
            message: format!("a {kind} update of {len} bytes exceeds the {MAX_EVENT_BYTES}-byte limit and was dropped"),
        }));
    }
}

/// Cuts events into frames of at most [`FRAME_EVENTS`] events and (but for
/// a lone event, which [`fit_in_a_frame`] bounds) [`MAX_EVENT_BYTES`] bytes.
pub(super) fn frames_of(events: Vec<pb::SessionEvent>) -> Vec<Vec<pb::SessionEvent>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for event in events {
        let len = event.encoded_len();
        if !frame.is_empty() && (frame.len() >= FRAME_EVENTS || bytes + len > MAX_EVENT_BYTES) {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += len;
        frame.push(event);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: pb::session_event::Kind) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: "ses_0123456789abcdef0123456789abcdef".into(),
            seq: 0,
            time: None,
            turn_id: "turn_1".into(),
            kind: Some(kind),
        }
    }

    #[test]
    fn frames_are_bounded_by_count_and_bytes() {
        let text = |n: usize| pb::session_event::Kind::Log(pb::SessionLog { message: "x".repeat(n) });
        let small: Vec<_> = (0..600).map(|_| event(text(10))).collect();
        let sizes: Vec<usize> = frames_of(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![FRAME_EVENTS, FRAME_EVENTS, 600 - 2 * FRAME_EVENTS]);

        let big: Vec<_> = (0..5).map(|_| event(text(MAX_EVENT_BYTES / 3))).collect();
        for frame in frames_of(big) {
            let bytes: usize = frame.iter().map(|e| e.encoded_len()).sum();
            assert!(bytes <= MAX_EVENT_BYTES, "{bytes}");
        }
        assert!(frames_of(Vec::new()).is_empty());
    }
}
