//! Watches one running turn: its prompt's response, or the idle timeout
//! (which kills the child), whichever comes first; then ends the turn.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::rpc_error_text;
use super::lines::quote;
use super::shared::{Shared, TurnEnd};
use super::supervisor::KillRequest;
use super::{ERROR_ACP, ERROR_IDLE_TIMEOUT};
use crate::session::translate::stop_reason_from_acp;

/// Waits for a prompt's result, watching the idle timeout, and ends the turn.
pub(super) async fn run_turn(
    shared: Arc<Shared>,
    turn_id: String,
    sent: agent_client_protocol::v1::SentRequest<Value>,
    idle: Duration,
) {
    let response = sent.block_task();
    tokio::pin!(response);
    let result = loop {
        let (deadline, expired) = {
            let state = shared.state();
            let waiting = state.perms.values().any(|pending| pending.answer.is_none());
            let now = Instant::now();
            if waiting {
                (later(now, idle), false)
            } else {
                let deadline = later(state.last_activity, idle);
                (deadline, deadline <= now)
            }
        };
        if expired {
            break None;
        }
        tokio::select! {
            result = &mut response => break Some(result),
            () = tokio::time::sleep_until(deadline) => {}
            () = shared.stop.cancelled() => return,
        }
    };
    let end = match result {
        None => {
            shared.state().gone = true;
            let message = format!("the agent printed nothing for {idle:?}; its process was killed");
            shared
                .end_turn(Some(&turn_id), TurnEnd::error(ERROR_IDLE_TIMEOUT, message.clone()))
                .await;
            let _ = shared.kills.send(KillRequest {
                code: ERROR_IDLE_TIMEOUT,
                message,
            });
            return;
        }
        Some(Ok(response)) => match response.get("stopReason").and_then(Value::as_str) {
            Some(reason) => TurnEnd {
                stop_reason: stop_reason_from_acp(reason),
                error: None,
                usage_json: response
                    .get("usage")
                    .filter(|usage| !usage.is_null())
                    .map(Value::to_string),
            },
            None => TurnEnd::error(
                ERROR_ACP,
                format!(
                    "the prompt response has no stopReason: {}",
                    quote(response.to_string().as_bytes())
                ),
            ),
        },
        Some(Err(err)) => {
            if shared.is_gone()
                || agent_client_protocol::is_incoming_transport_closed(&err)
                || agent_client_protocol::is_connection_terminated(&err)
            {
                // The supervisor ends the turn with the child's exit.
                return;
            }
            TurnEnd::error(ERROR_ACP, rpc_error_text(&err))
        }
    };
    shared.end_turn(Some(&turn_id), end).await;
}

/// `at + after`, saturating at about a year from `at` (an idle timeout may
/// be set huge to mean "never").
fn later(at: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(after.min(FAR)).unwrap_or(at)
}
