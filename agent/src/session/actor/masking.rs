//! Masking a session's events for the credentials its children got.
//!
//! Every event goes through [`Actor::emit`], which masks it before the
//! outbox numbers and stores it: the values (and their common encodings,
//! see `oma_proto::masking`) never reach the outbox, the stream, or the
//! control plane. The messages the actor logs about a session (a failure, a
//! refused request) are masked the same way.
//!
//! The masker only grows during a session's life in this daemon: a value a
//! child got stays masked after a restart of the child, even if the next
//! child no longer gets it (its output may still be on the way). The values
//! live in memory only; the state file keeps no credential (see
//! `state.rs`), so after a daemon restart a session has none until the
//! control plane starts it again.

use std::borrow::Cow;

use oma_proto::masking::Masker;
use oma_proto::pb;

use super::Actor;
use crate::session::launch::Launch;

/// The secrets a session masks for, and their masker.
#[derive(Default)]
pub(super) struct SessionMasker {
    secrets: Vec<(String, String)>,
    masker: Masker,
}

impl SessionMasker {
    /// Masks `credentials` from now on too. On an error nothing changes.
    fn add(&mut self, credentials: &[(String, String)]) -> Result<(), oma_proto::masking::MaskerError> {
        let mut secrets = self.secrets.clone();
        for pair in credentials {
            if !secrets.contains(pair) {
                secrets.push(pair.clone());
            }
        }
        if secrets.len() == self.secrets.len() {
            return Ok(());
        }
        self.masker = Masker::new(secrets.iter().map(|(name, value)| (name, value)))?;
        self.secrets = secrets;
        Ok(())
    }

    pub(super) fn event(&self, event: &mut pb::SessionEvent) {
        self.masker.mask_event(event);
    }

    pub(super) fn error(&self, error: &mut pb::SessionError) {
        self.masker.mask_error(error);
    }

    /// The masker, for the child's stderr.
    pub(super) fn masker(&self) -> Masker {
        self.masker.clone()
    }

    pub(super) fn text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.masker.mask_str(text)
    }
}

impl Actor {
    /// Masks the credentials `launch` gives the child, before it starts (so
    /// that nothing it says is recorded unmasked). When they cannot be
    /// masked the child gets none of them, and an error event says so.
    pub(super) fn mask_credentials(&mut self, launch: &mut Launch) {
        if launch.credentials.is_empty() {
            return;
        }
        if let Err(e) = self.masker.add(&launch.credentials) {
            let credentials = std::mem::take(&mut launch.credentials);
            launch.env.retain(|pair| !credentials.contains(pair));
            let names: Vec<&str> = credentials.iter().map(|(name, _)| name.as_str()).collect();
            let error = pb::SessionError {
                code: "credential_masking_failed".into(),
                message: format!("credentials {} dropped: {e}", names.join(", ")),
            };
            self.emit(pb::session_event::Kind::Error(error), "");
        }
    }

    /// After a daemon restart the session's start has no credentials (they
    /// were kept in memory only): every child start says so.
    pub(super) fn note_lost_credentials(&mut self) {
        if !self.start.credentials.is_empty() || self.state.credential_names.is_empty() {
            return;
        }
        let message = format!(
            "the control plane's credentials for this session ({}) are kept in memory only and were lost \
             when oma-agent restarted: this agent runs without them",
            self.state.credential_names.join(", ")
        );
        self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masker_only_grows() {
        let mut masker = SessionMasker::default();
        assert_eq!(masker.text("sk-first-value"), "sk-first-value");
        masker.add(&[("A".into(), "sk-first-value".into())]).unwrap();
        masker.add(&[("B".into(), "sk-second-value".into())]).unwrap();
        masker.add(&[("B".into(), "sk-second-value".into())]).unwrap();
        assert_eq!(masker.secrets.len(), 2);
        assert_eq!(masker.text("sk-first-value sk-second-value"), "[masked:A] [masked:B]");
        let mut error = pb::SessionError {
            code: "x".into(),
            message: "failed with sk-first-value".into(),
        };
        masker.error(&mut error);
        assert_eq!(error.message, "failed with [masked:A]");
    }
}
