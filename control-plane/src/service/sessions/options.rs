//! A session's modes and models: what its agent offers (recorded from the
//! machine's `options_changed` events), what it was asked to start in, and
//! switching them on a live session.

use oma_proto::ids::SessionId;
use oma_proto::pb;
use oma_proto::session_options::check;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::service::audit::record;
use crate::service::live::stream::frame;
use crate::service::rights;
use crate::service::{Caller, Service, ServiceError, ServiceResult};

/// `pb::SessionOptions` as stored (JSON in `sessions.options`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    pub mode_id: String,
    pub modes: Vec<Choice>,
    pub model_id: String,
    pub models: Vec<Choice>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl From<&pb::SessionOptions> for SessionOptions {
    fn from(o: &pb::SessionOptions) -> Self {
        let choices = |list: &[pb::SessionChoice]| {
            list.iter()
                .map(|c| Choice {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    description: c.description.clone(),
                })
                .collect()
        };
        SessionOptions {
            mode_id: o.mode_id.clone(),
            modes: choices(&o.modes),
            model_id: o.model_id.clone(),
            models: choices(&o.models),
        }
    }
}

impl From<&SessionOptions> for pb::SessionOptions {
    fn from(o: &SessionOptions) -> Self {
        let choices = |list: &[Choice]| {
            list.iter()
                .map(|c| pb::SessionChoice {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    description: c.description.clone(),
                })
                .collect()
        };
        pb::SessionOptions {
            mode_id: o.mode_id.clone(),
            modes: choices(&o.modes),
            model_id: o.model_id.clone(),
            models: choices(&o.models),
        }
    }
}

impl SessionOptions {
    /// Decodes the stored column; unreadable JSON counts as unknown.
    pub fn from_stored(stored: Option<&str>) -> Option<SessionOptions> {
        serde_json::from_str(stored?).ok()
    }

    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("options serialize")
    }
}

/// Checks a choice against stored options (when any are known).
pub fn check_stored(stored: Option<&str>, mode_id: &str, model_id: &str) -> ServiceResult<()> {
    match SessionOptions::from_stored(stored) {
        Some(known) => Ok(check(&pb::SessionOptions::from(&known), mode_id, model_id)?),
        None => Ok(()),
    }
}

impl Service {
    /// Switches a live session's mode and/or model (empty: unchanged).
    pub async fn set_session_options(
        &self,
        caller: &Caller,
        session_id: SessionId,
        mode_id: &str,
        model_id: &str,
    ) -> ServiceResult<()> {
        if mode_id.is_empty() && model_id.is_empty() {
            return Err(oma_proto::validate::ValidationError::new(
                "mode_id",
                "name a mode_id or a model_id to switch to",
            )
            .into());
        }
        oma_proto::validate::opaque_id("mode_id", mode_id, false)?;
        oma_proto::validate::opaque_id("model_id", model_id, false)?;
        let caller = caller.clone();
        let (mode, model) = (mode_id.to_owned(), model_id.to_owned());
        let session = self
            .store
            .write("set_session_options", move |conn| {
                let session = rights::session_to_drive(conn, &caller, &session_id)?;
                if session.options.is_none() {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "session {session_id} has not started yet: its agent has not said which modes and models it offers"
                    )));
                }
                check_stored(session.options.as_deref(), &mode, &model)?;
                record(
                    conn,
                    caller.tenant_id.as_str(),
                    &caller.actor(),
                    "session.set_options",
                    session_id.as_str(),
                    json!({"mode_id": mode, "model_id": model}),
                )?;
                Ok::<_, ServiceError>(session)
            })
            .await?;
        let apply = pb::ApplySessionOptions {
            session_id: session.id.clone(),
            mode_id: mode_id.to_owned(),
            model_id: model_id.to_owned(),
        };
        self.send_to_runtime(
            &session.runtime_id,
            frame(pb::control_frame::Frame::ApplyOptions(apply)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_options_round_trip_and_check_choices() {
        let pb_options = pb::SessionOptions {
            mode_id: "default".into(),
            modes: vec![pb::SessionChoice {
                id: "default".into(),
                name: "Ask".into(),
                description: String::new(),
            }],
            model_id: String::new(),
            models: vec![],
        };
        let stored = SessionOptions::from(&pb_options).to_stored();
        assert_eq!(
            pb::SessionOptions::from(&SessionOptions::from_stored(Some(&stored)).unwrap()),
            pb_options
        );
        assert!(check_stored(Some(&stored), "default", "").is_ok());
        let e = check_stored(Some(&stored), "yolo", "").unwrap_err().to_string();
        assert!(e.contains("valid: default"), "{e}");
        assert!(
            check_stored(None, "anything", "").is_ok(),
            "unknown options: the machine checks"
        );
    }
}
