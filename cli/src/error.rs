//! Failures as the user sees them: one sentence on stderr and an exit code.

use std::{error::Error as StdError, fmt};

use oma_proto::validate::ValidationError;
use tonic::{Code, Status};

/// Exit codes of `omactl`.
pub mod exit {
    pub const GENERIC: u8 = 1;
    /// Bad command-line usage (also what clap exits with).
    pub const USAGE: u8 = 2;
    pub const UNAUTHENTICATED: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    /// Invalid argument, failed precondition, already exists or aborted.
    pub const REJECTED: u8 = 6;
    pub const UNAVAILABLE: u8 = 7;
    /// A turn stopped early: `max_tokens`, `max_turn_requests` or `refusal`
    /// (not 2, which is a usage error, as clap's).
    pub const STOPPED: u8 = 8;
    /// A wait ran out of time (`sessions create --wait --timeout`).
    pub const TIMED_OUT: u8 = 9;
    /// Interrupted: a cancelled turn, or Ctrl-C (128 + SIGINT).
    pub const INTERRUPTED: u8 = 130;
}

/// A failure with its final message and exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: u8,
    pub message: String,
}

impl Failure {
    pub fn new(exit: u8, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    /// Exits with `exit` and prints nothing more: what happened was already
    /// said (e.g. how a turn ended).
    pub fn silent(exit: u8) -> Self {
        Self::new(exit, "")
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    /// The control plane at `server` could not be reached; `cause` says why.
    pub fn unreachable(server: &str, cause: &(dyn StdError + 'static)) -> Self {
        Self::new(
            exit::UNAVAILABLE,
            format!("cannot reach the control plane at {server}: {}", cause_chain(cause)),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Failure {}

/// Turns any error of a command into the failure to report. `server` is the
/// control plane URL in use, when one was resolved.
pub fn classify(err: anyhow::Error, server: Option<&str>) -> Failure {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return Failure::new(failure.exit, failure.message.clone());
    }
    if let Some(status) = err.downcast_ref::<Status>() {
        return from_status(status, server);
    }
    if let Some(invalid) = err.downcast_ref::<ValidationError>() {
        return Failure::new(exit::REJECTED, format!("invalid argument: {invalid}"));
    }
    Failure::new(exit::GENERIC, one_line(&format!("{err:#}")))
}

/// A gRPC status as one sentence, with the exit code of its class.
pub fn from_status(status: &Status, server: Option<&str>) -> Failure {
    // Statuses the server sent carry no source; one with a source was made
    // on this side from a transport failure.
    if let (Some(source), Code::Unavailable | Code::Unknown) = (status.source(), status.code()) {
        return Failure::unreachable(server.unwrap_or("the configured URL"), source);
    }
    let exit = match status.code() {
        Code::Unauthenticated => exit::UNAUTHENTICATED,
        Code::PermissionDenied => exit::PERMISSION_DENIED,
        Code::NotFound => exit::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => exit::REJECTED,
        Code::Unavailable => exit::UNAVAILABLE,
        _ => exit::GENERIC,
    };
    let words = code_words(status.code());
    let message = one_line(status.message());
    let message = if message.is_empty() {
        words.to_owned()
    } else {
        format!("{words}: {message}")
    };
    Failure::new(exit, message)
}

/// A status code in lowercase words, e.g. `not found`.
pub fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The messages of an error and its sources joined with `: `, leaving out
/// generic wrappers and messages already contained in the next one.
pub fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = one_line(&e.to_string());
        if !text.is_empty() && text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        "transport error".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Collapses line breaks and runs of whitespace into single spaces.
fn one_line(text: &str) -> String {
    crate::output::printable(text, false)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_sentences_and_codes() {
        let f = from_status(&Status::not_found("agent agt_1 not found"), Some("http://x"));
        assert_eq!((f.exit, f.message.as_str()), (5, "not found: agent agt_1 not found"));
        assert_eq!(from_status(&Status::aborted("v"), None).exit, 6);
        assert_eq!(from_status(&Status::unauthenticated("t"), None).exit, 3);
        assert_eq!(
            from_status(&Status::permission_denied(""), None).message,
            "permission denied"
        );
        assert_eq!(from_status(&Status::internal("x"), None).exit, 1);
    }

    #[test]
    fn chain_drops_duplicates() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = anyhow::Error::new(inner).context("tcp connect error");
        let chain = cause_chain(outer.as_ref());
        assert_eq!(chain, "tcp connect error: connection refused");
    }
}
