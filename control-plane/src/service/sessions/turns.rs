//! Prompts, cancels, permission answers and disposes: the public live RPCs,
//! routed to the runtime's stream.

use std::time::Duration;

use oma_proto::ids::SessionId;
use oma_proto::pb;
use oma_proto::validate::ValidationError;
use prost::Message as _;
use serde_json::json;

use super::{STATUS_FAILED, STATUS_RUNNING};
use crate::service::audit::record;
use crate::service::live::start::start_session_frame;
use crate::service::live::stream::frame;
use crate::service::quotas::{self, Quota};
use crate::service::rights;
use crate::service::{Caller, Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows::{self, SessionRow};

/// A prompt as the service takes it.
#[derive(Debug, Clone)]
pub struct PromptRequest {
    pub session_id: SessionId,
    pub turn_id: String,
    pub prompt: Vec<pb::ContentBlock>,
}

/// An answer to a permission request.
#[derive(Debug, Clone)]
pub enum PermissionChoice {
    Option(String),
    Reject,
}

fn check_turn_id(turn_id: &str) -> ServiceResult<String> {
    if turn_id.is_empty() {
        return Ok(format!("turn_{}", uuid::Uuid::now_v7().simple()));
    }
    let ok = turn_id.len() <= 64
        && turn_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(ValidationError::new("turn_id", "must be 1–64 characters of letters, digits, '_' and '-'").into());
    }
    Ok(turn_id.to_owned())
}

fn check_prompt(prompt: &[pb::ContentBlock]) -> ServiceResult<()> {
    if prompt.is_empty() {
        return Err(ValidationError::new("prompt", "must hold at least one content block").into());
    }
    for (i, block) in prompt.iter().enumerate() {
        if block.block.is_none() {
            return Err(ValidationError::new(format!("prompt[{i}]"), "is an empty or unknown content block").into());
        }
    }
    Ok(())
}

impl Service {
    /// Sends a frame to a runtime's live stream, or explains since when it is
    /// offline.
    pub(crate) async fn send_to_runtime(&self, runtime_id: &str, control: pb::ControlFrame) -> ServiceResult<()> {
        match self.live.registry.send(runtime_id, control).await {
            Ok(()) => return Ok(()),
            Err(e @ crate::service::live::registry::SendError::TimedOut { .. }) => return Err(e.into()),
            Err(_) => {}
        }
        let rid = runtime_id.to_owned();
        let since = self
            .store
            .read("send_to_runtime", move |conn| {
                Ok::<_, ServiceError>(rows::get_runtime_for_auth(conn, &rid)?.map(|r| (r.status_at, r.last_seen_at)))
            })
            .await?;
        Err(ServiceError::FailedPrecondition(match since {
            Some((_, None)) => {
                format!("runtime {runtime_id} is offline: it has never connected; run `oma-agent run` on it")
            }
            Some((at, _)) => format!("runtime {runtime_id} is offline since {}", crate::service::rfc3339(at)),
            None => format!("runtime {runtime_id} no longer exists"),
        }))
    }

    /// Tells the runtime to start a new session, if it is online (otherwise
    /// it gets the start in its next Welcome).
    pub(crate) async fn offer_start(&self, session: &SessionRow) {
        if let Ok(start) = start_session_frame(session) {
            let start = frame(pb::control_frame::Frame::StartSession(start));
            let _ = self.live.registry.send(&session.runtime_id, start).await;
        }
    }

    /// Tells the runtime to dispose of a deleted session, if it is online.
    pub(crate) async fn offer_dispose(&self, session_id: &str, runtime_id: &str, delete_branch: bool) {
        self.live.hub.close(session_id);
        let dispose = pb::DisposeSession {
            session_id: session_id.to_owned(),
            delete_branch,
        };
        let _ = self
            .live
            .registry
            .send(runtime_id, frame(pb::control_frame::Frame::DisposeSession(dispose)))
            .await;
    }

    pub(crate) fn disconnect_runtime(&self, runtime_id: &str) {
        self.live.registry.disconnect(runtime_id);
    }

    /// Loads a session the caller may drive (see `rights`).
    async fn session_for_use(&self, caller: &Caller, session_id: &SessionId) -> ServiceResult<SessionRow> {
        let caller = caller.clone();
        let sid = session_id.clone();
        self.store
            .read("session_for_use", move |conn| {
                rights::session_to_drive(conn, &caller, &sid)
            })
            .await
    }

    pub async fn prompt_session(&self, caller: &Caller, request: PromptRequest) -> ServiceResult<(String, u64)> {
        let turn_id = check_turn_id(&request.turn_id)?;
        check_prompt(&request.prompt)?;
        let session = self.session_for_use(caller, &request.session_id).await?;
        if session.current_turn_id.as_deref() == Some(turn_id.as_str()) {
            return Ok((turn_id, session.last_seq as u64 + 1)); // a retried request
        }
        if let Some(running) = &session.current_turn_id {
            return Err(ServiceError::FailedPrecondition(format!(
                "turn {running} is still running in session {}; wait for it to end or cancel it",
                session.id
            )));
        }
        if session.status == STATUS_FAILED {
            return Err(ServiceError::FailedPrecondition(format!(
                "session {} failed to start; see its events, then create a new session",
                session.id
            )));
        }
        if self.live.registry.get(&session.runtime_id).is_none() {
            // Say since when, before recording a turn that cannot run.
            self.send_to_runtime(&session.runtime_id, pb::ControlFrame::default())
                .await?;
        }
        let prompt = pb::Prompt {
            session_id: session.id.clone(),
            turn_id: turn_id.clone(),
            prompt: request.prompt,
            requested_by_user_id: caller.user_id.to_string(),
        };
        let encoded = prompt.encode_to_vec();
        let sid = session.id.clone();
        let tid = turn_id.clone();
        let actor = caller.actor();
        let tenant = caller.tenant_id.to_string();
        let quotas = self.config.quotas.clone();
        let began = self
            .store
            .write("prompt_session", move |conn| {
                // A turn adds to the log: none starts once the tenant's
                // stored events are at their quota (running turns finish).
                quotas::check(conn, &quotas, &tenant, Quota::StoredBytes, now_ms())?;
                let began = rows::begin_turn(conn, &sid, &tid, &encoded, STATUS_RUNNING, now_ms())?;
                if began {
                    record(conn, &tenant, &actor, "session.prompt", &sid, json!({"turn_id": tid}))?;
                }
                Ok::<_, ServiceError>(began)
            })
            .await?;
        if !began {
            return Err(ServiceError::FailedPrecondition(format!(
                "another turn started in session {} meanwhile; wait for it to end",
                session.id
            )));
        }
        if let Err(e) = self
            .send_to_runtime(&session.runtime_id, frame(pb::control_frame::Frame::Prompt(prompt)))
            .await
        {
            let sid = session.id.clone();
            let tid = turn_id.clone();
            self.store
                .write("prompt_session", move |conn| {
                    Ok::<_, ServiceError>(rows::finish_turn(
                        conn,
                        &sid,
                        Some(&tid),
                        crate::service::sessions::STATUS_IDLE,
                        now_ms(),
                    )?)
                })
                .await?;
            return Err(e);
        }
        Ok((turn_id, session.last_seq as u64 + 1))
    }

    pub async fn cancel_turn(&self, caller: &Caller, session_id: SessionId) -> ServiceResult<()> {
        let session = self.session_for_use(caller, &session_id).await?;
        let Some(turn_id) = session.current_turn_id.clone() else {
            return Ok(());
        };
        self.send_to_runtime(
            &session.runtime_id,
            frame(pb::control_frame::Frame::Cancel(pb::Cancel {
                session_id: session.id.clone(),
                turn_id: turn_id.clone(),
            })),
        )
        .await?;
        let actor = caller.actor();
        let tenant = caller.tenant_id.to_string();
        self.store
            .write("cancel_turn", move |conn| {
                Ok::<_, ServiceError>(record(
                    conn,
                    &tenant,
                    &actor,
                    "session.cancel",
                    &session.id,
                    json!({"turn_id": turn_id}),
                )?)
            })
            .await
    }

    pub async fn answer_permission(
        &self,
        caller: &Caller,
        session_id: SessionId,
        request_id: &str,
        choice: PermissionChoice,
    ) -> ServiceResult<()> {
        if request_id.is_empty() || request_id.len() > 128 {
            return Err(ValidationError::new("request_id", "is required (at most 128 characters)").into());
        }
        let session = self.session_for_use(caller, &session_id).await?;
        let sid = session.id.clone();
        let rid = request_id.to_owned();
        let actor = caller.actor();
        let tenant = caller.tenant_id.to_string();
        let answer = self
            .store
            .write("answer_permission", move |conn| {
                let row = rows::get_permission(conn, &sid, &rid)?.ok_or_else(|| {
                    ServiceError::NotFound(format!("permission request {rid} not found in session {sid}"))
                })?;
                if let Some(by) = &row.decided_by {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "permission request {rid} was already decided (by {by}); each request is decided once"
                    )));
                }
                let offered: Vec<String> = serde_json::from_str(&row.option_ids).unwrap_or_default();
                let option_id = match &choice {
                    PermissionChoice::Option(id) => {
                        if !offered.contains(id) {
                            return Err(ValidationError::new(
                                "option_id",
                                format!(
                                    "{id:?} is not an option of request {rid}; offered: {}",
                                    offered.join(", ")
                                ),
                            )
                            .into());
                        }
                        Some(id.clone())
                    }
                    PermissionChoice::Reject => row.reject_option_id.clone(),
                };
                if !rows::decide_permission(conn, &sid, &rid, option_id.as_deref(), &actor, now_ms())? {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "permission request {rid} was already decided"
                    )));
                }
                record(
                    conn,
                    &tenant,
                    &actor,
                    "permission.answer",
                    &sid,
                    json!({"request_id": rid, "option_id": option_id}),
                )?;
                Ok(pb::PermissionAnswer {
                    session_id: sid.clone(),
                    request_id: rid.clone(),
                    cancelled: option_id.is_none(),
                    option_id: option_id.unwrap_or_default(),
                    decided_by: actor.clone(),
                })
            })
            .await?;
        // The decision is stored; if the runtime is offline it gets the
        // answer again with the running turn after it reconnects.
        let _ = self
            .send_to_runtime(
                &session.runtime_id,
                frame(pb::control_frame::Frame::PermissionAnswer(answer)),
            )
            .await;
        Ok(())
    }

    /// Rejects an `ask` request nobody answered in time (a fresh request:
    /// the whole `--permission-timeout`).
    pub(crate) fn start_permission_timeout(&self, session_id: String, request_id: String) {
        self.arm_permission_timeout(session_id, request_id, self.live_config.permission_timeout);
    }

    /// After a restart no timer of the previous process is left: every
    /// request still undecided gets its timeout again, counted from when it
    /// was stored (one already past is decided now). The decision is a
    /// conditional update, so a request is decided once however many timers
    /// or answers race for it.
    pub async fn rearm_permission_timeouts(&self) -> ServiceResult<usize> {
        let pending = self
            .store
            .read("pending_permissions", |conn| {
                Ok::<_, ServiceError>(rows::pending_permissions(conn)?)
            })
            .await?;
        let timeout_ms = self.live_config.permission_timeout.as_millis() as i64;
        let now = now_ms();
        for row in &pending {
            let left = (row.created_at.saturating_add(timeout_ms) - now).max(0);
            self.arm_permission_timeout(
                row.session_id.clone(),
                row.request_id.clone(),
                Duration::from_millis(left as u64),
            );
        }
        Ok(pending.len())
    }

    fn arm_permission_timeout(&self, session_id: String, request_id: String, after: Duration) {
        let service = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let sid = session_id.clone();
            let rid = request_id.clone();
            let decided = service
                .store
                .write("start_permission_timeout", move |conn| {
                    let Some(row) = rows::get_permission(conn, &sid, &rid)? else {
                        return Ok::<_, ServiceError>(None);
                    };
                    if row.decided_at.is_some() {
                        return Ok(None);
                    }
                    let option = row.reject_option_id.clone();
                    if !rows::decide_permission(conn, &sid, &rid, option.as_deref(), "timeout", now_ms())? {
                        return Ok(None);
                    }
                    let runtime = rows::session_of_runtime_any(conn, &sid)?;
                    Ok(runtime.map(|r| (r, option)))
                })
                .await;
            if let Ok(Some((runtime_id, option))) = decided {
                let answer = pb::PermissionAnswer {
                    session_id,
                    request_id,
                    cancelled: option.is_none(),
                    option_id: option.unwrap_or_default(),
                    decided_by: "timeout".into(),
                };
                let _ = service
                    .send_to_runtime(&runtime_id, frame(pb::control_frame::Frame::PermissionAnswer(answer)))
                    .await;
            }
        });
    }
}
