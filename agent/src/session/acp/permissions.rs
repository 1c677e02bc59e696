//! The agent's pending permission requests: registered as the reader sees
//! them, matched with the connection's responders, answered once (by the
//! control plane, or `cancelled` when the turn is cancelled or ends).

use std::sync::Arc;

use agent_client_protocol::RawJsonRpcId;
use agent_client_protocol::v1::Responder;
use agent_client_protocol::v1::schema::{
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse, SelectedPermissionOutcome,
};
use tokio::time::Instant;

use super::lines::quote;
use super::shared::{Shared, State};
use super::{AcpError, AcpOutput};

pub(super) struct PendingPermission {
    option_ids: Vec<String>,
    /// Set once the connection dispatched the request.
    responder: Option<Responder<RequestPermissionResponse>>,
    /// An answer given before the responder arrived (`Some(None)` = cancelled).
    pub(super) answer: Option<Option<String>>,
}

impl Shared {
    /// Whether a turn runs whose cancel was requested.
    fn turn_cancelled(state: &State) -> bool {
        state.turn.as_ref().is_some_and(|turn| turn.cancel_requested)
    }

    /// The reader saw a `session/request_permission` request: register it
    /// (before the connection dispatches it) and report it, unless the turn
    /// is being cancelled, in which case it is answered cancelled.
    pub(super) async fn permission_seen(&self, rpc_id: RawJsonRpcId, raw_params: &str) {
        let request: RequestPermissionRequest = match serde_json::from_str(raw_params) {
            Ok(request) => request,
            Err(err) => {
                // The connection answers it with an invalid-params error.
                self.emit(AcpOutput::Log(format!(
                    "the agent sent a malformed session/request_permission ({err}): {}",
                    quote(raw_params.as_bytes())
                )))
                .await;
                return;
            }
        };
        let option_ids = request.options.iter().map(|o| o.option_id.to_string()).collect();
        let request_id = {
            let mut state = self.state();
            state.next_perm += 1;
            let request_id = format!("perm-{}", state.next_perm);
            let cancelled = Self::turn_cancelled(&state);
            state.perm_by_rpc_id.insert(rpc_id, request_id.clone());
            state.perms.insert(
                request_id.clone(),
                PendingPermission {
                    option_ids,
                    responder: None,
                    answer: cancelled.then_some(None),
                },
            );
            if cancelled {
                return;
            }
            request_id
        };
        self.emit(AcpOutput::PermissionRequest {
            request_id,
            raw_params: raw_params.to_owned(),
        })
        .await;
    }

    /// The connection dispatched a permission request: answer it if the
    /// answer is known, else keep its responder until it is.
    pub(super) fn permission_dispatched(
        self: &Arc<Self>,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) {
        let mut state = self.state();
        let known = state.perm_by_rpc_id.remove(responder.raw_id());
        if let Some(request_id) = known
            && let Some(pending) = state.perms.get_mut(&request_id)
        {
            match pending.answer.take() {
                Some(answer) => {
                    state.perms.remove(&request_id);
                    drop(state);
                    respond_permission(responder, answer);
                }
                None => pending.responder = Some(responder),
            }
            return;
        }
        // Not seen by the reader (e.g. a `null` id): report it now.
        if Self::turn_cancelled(&state) {
            drop(state);
            respond_permission(responder, None);
            return;
        }
        state.next_perm += 1;
        let request_id = format!("perm-{}", state.next_perm);
        state.perms.insert(
            request_id.clone(),
            PendingPermission {
                option_ids: request.options.iter().map(|o| o.option_id.to_string()).collect(),
                responder: Some(responder),
                answer: None,
            },
        );
        drop(state);
        let raw_params = serde_json::to_string(&request).unwrap_or_default();
        let shared = self.clone();
        tokio::spawn(async move {
            shared
                .emit(AcpOutput::PermissionRequest { request_id, raw_params })
                .await;
        });
    }

    /// Answers a pending request (for [`super::AcpSession::answer_permission`]):
    /// with one of its options, or `None` for cancelled.
    pub(super) fn answer_permission(&self, request_id: &str, option_id: Option<String>) -> Result<(), AcpError> {
        let mut state = self.state();
        let Some(pending) = state.perms.get_mut(request_id) else {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        };
        if pending.answer.is_some() {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        }
        if let Some(option_id) = &option_id
            && !pending.option_ids.contains(option_id)
        {
            return Err(AcpError::UnknownOption {
                request_id: request_id.to_owned(),
                option_id: option_id.clone(),
            });
        }
        state.last_activity = Instant::now();
        let Some(pending) = state.perms.get_mut(request_id) else {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        };
        match pending.responder.take() {
            Some(responder) => {
                state.perms.remove(request_id);
                drop(state);
                respond_permission(responder, option_id);
            }
            None => pending.answer = Some(option_id),
        }
        Ok(())
    }

    /// Answers every pending permission request with `cancelled`.
    pub(super) fn cancel_permissions(&self) {
        let responders: Vec<_> = {
            let mut state = self.state();
            let mut responders = Vec::new();
            state.perms.retain(|_, pending| {
                if let Some(responder) = pending.responder.take() {
                    responders.push(responder);
                    false
                } else {
                    pending.answer.get_or_insert(None);
                    true
                }
            });
            responders
        };
        for responder in responders {
            respond_permission(responder, None);
        }
    }
}

fn respond_permission(responder: Responder<RequestPermissionResponse>, option_id: Option<String>) {
    let outcome = match option_id {
        Some(option_id) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option_id)),
        None => RequestPermissionOutcome::Cancelled,
    };
    if let Err(err) = responder.respond(RequestPermissionResponse::new(outcome)) {
        tracing::debug!("cannot answer a permission request: {err}");
    }
}
