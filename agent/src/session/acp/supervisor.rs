//! Owns the agent child: reads its stdout, tees each line to the outputs
//! or the connection, and stops the child (on EOF, invalid output, a kill
//! request or shutdown), ending the running turn with the cause.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc as futures_mpsc;
use tokio::sync::mpsc;

use super::lines::{Line, LineReader, ReadLine, classify, quote};
use super::shared::{Shared, TurnEnd};
use super::{AcpOutput, ERROR_CHILD_EXITED, ERROR_INVALID_OUTPUT, MAX_LINE_BYTES, stderr_suffix};
use crate::process::AcpChild;

/// How long a child whose stdout closed gets to exit before it is signalled.
const EOF_GRACE: Duration = Duration::from_secs(2);

/// Asks the supervisor to stop the child; `code` ends the running turn.
pub(super) struct KillRequest {
    pub(super) code: &'static str,
    pub(super) message: String,
}

/// Why the supervisor stopped reading.
enum EndCause {
    Eof,
    ReadError(io::Error),
    InvalidOutput(String),
    Kill(KillRequest),
    Stop,
}

/// Owns the child: reads its stdout, tees each line, and stops the child.
pub(super) struct Supervisor {
    shared: Arc<Shared>,
    child: AcpChild,
    reader: LineReader<tokio::process::ChildStdout>,
    kill_rx: mpsc::UnboundedReceiver<KillRequest>,
    to_connection: futures_mpsc::UnboundedSender<io::Result<String>>,
}

impl Supervisor {
    pub(super) fn new(
        shared: Arc<Shared>,
        child: AcpChild,
        stdout: tokio::process::ChildStdout,
        kill_rx: mpsc::UnboundedReceiver<KillRequest>,
        to_connection: futures_mpsc::UnboundedSender<io::Result<String>>,
    ) -> Self {
        Supervisor {
            shared,
            child,
            reader: LineReader::new(stdout, MAX_LINE_BYTES),
            kill_rx,
            to_connection,
        }
    }

    pub(super) async fn run(mut self) {
        let cause = loop {
            tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => break EndCause::Stop,
                Some(kill) = self.kill_rx.recv() => break EndCause::Kill(kill),
                read = self.reader.next_line() => match read {
                    Ok(ReadLine::Line(line)) => {
                        if let Err(cause) = self.handle_line(line).await {
                            break cause;
                        }
                    }
                    Ok(ReadLine::TooLong) => {
                        break EndCause::InvalidOutput(format!(
                            "the agent printed a line longer than {MAX_LINE_BYTES} bytes"
                        ));
                    }
                    Ok(ReadLine::Eof) => break EndCause::Eof,
                    Err(err) => break EndCause::ReadError(err),
                },
            }
        };
        self.finish(cause).await;
    }

    /// Tees one line: updates and permission requests are reported, and
    /// everything but updates goes on to the connection.
    async fn handle_line(&mut self, line: Vec<u8>) -> Result<(), EndCause> {
        self.shared.touch();
        let line = match String::from_utf8(line) {
            Ok(line) => line,
            Err(err) => {
                return Err(EndCause::InvalidOutput(format!(
                    "the agent printed a line that is not UTF-8: {}",
                    quote(err.as_bytes())
                )));
            }
        };
        if line.trim().is_empty() {
            return Ok(());
        }
        match classify(&line) {
            Line::NotJson => {
                return Err(EndCause::InvalidOutput(format!(
                    "the agent printed a line that is not JSON: {}",
                    quote(line.as_bytes())
                )));
            }
            Line::Update(raw_update) => {
                self.shared.emit(AcpOutput::Update { raw_update }).await;
                self.shared.touch();
                return Ok(());
            }
            Line::MalformedUpdate => {
                self.shared
                    .emit(AcpOutput::Log(format!(
                        "ignored a session/update without an update object: {}",
                        quote(line.as_bytes())
                    )))
                    .await;
                return Ok(());
            }
            Line::Permission { id, raw_params } => {
                self.shared.permission_seen(id, &raw_params).await;
                self.shared.touch();
            }
            Line::Other => {}
        }
        // The connection may be gone already; the child is then being stopped.
        let _ = self.to_connection.unbounded_send(Ok(line));
        Ok(())
    }

    async fn finish(mut self, cause: EndCause) {
        self.shared.state().gone = true;
        // Pending requests fail from here; turn tasks leave the turn to us.
        self.to_connection.close_channel();
        let status = match &cause {
            EndCause::Eof | EndCause::ReadError(_) => self.child.terminate(EOF_GRACE).await,
            EndCause::Kill(kill) if kill.code == ERROR_CHILD_EXITED => self.child.terminate(EOF_GRACE).await,
            EndCause::Stop => {
                let grace = self.shared.state().shutdown_grace;
                match grace {
                    Some(grace) => self.child.terminate(grace).await,
                    None => self.child.kill().await,
                }
            }
            EndCause::InvalidOutput(_) | EndCause::Kill(_) => self.child.kill().await,
        };
        let status = match status {
            Some(status) => status.to_string(),
            None => "exit status unknown".to_owned(),
        };
        let stderr_tail = self.child.stderr_log().tail();
        let with_tail = |message: String| format!("{message}{}", stderr_suffix(&stderr_tail));
        let (turn_end, description) = match cause {
            EndCause::Eof => {
                let message = format!("the agent process exited ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, with_tail(message.clone())), message)
            }
            EndCause::ReadError(err) => {
                let message = format!("cannot read the agent's output ({err}); the agent process ended ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, with_tail(message.clone())), message)
            }
            EndCause::InvalidOutput(message) => {
                let description = format!("{message}; the agent process was killed ({status})");
                (TurnEnd::error(ERROR_INVALID_OUTPUT, message), description)
            }
            EndCause::Kill(KillRequest { code, message }) => {
                let description = format!("{message}; the agent process ended ({status})");
                let turn_end = if code == ERROR_CHILD_EXITED {
                    TurnEnd::error(code, with_tail(description.clone()))
                } else {
                    TurnEnd::error(code, message)
                };
                (turn_end, description)
            }
            EndCause::Stop => {
                let message = format!("the session was shut down; the agent process ended ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, message.clone()), message)
            }
        };
        let started = {
            let mut state = self.shared.state();
            state.exit_description = Some(description.clone());
            state.perms.clear();
            state.perm_by_rpc_id.clear();
            if let Some(connection) = state.connection.take() {
                connection.abort();
            }
            state.started
        };
        if !started {
            return;
        }
        let _emitting = self.shared.emit_lock.lock().await;
        self.shared.end_turn_locked(None, turn_end).await;
        self.shared
            .emit(AcpOutput::Exited {
                description,
                stderr_tail,
            })
            .await;
    }
}
