//! State shared by the handlers of `oma-test-agent`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_client_protocol::v1::schema::{Meta, SystemPrompt};
use tokio::sync::watch;

use crate::io::Markers;
use crate::session::Session;

/// The agent: its sessions and the bookkeeping of running turns.
pub struct TestAgent {
    /// Whether `session/load` is offered.
    pub load_session: bool,
    pub markers: Markers,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
    /// How many prompt turns are running (a hung turn does not count).
    running: watch::Sender<usize>,
}

impl TestAgent {
    pub fn new(load_session: bool, markers: Markers) -> Self {
        Self {
            load_session,
            markers,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            running: watch::Sender::new(0),
        }
    }

    /// The next number for tool call and permission ids (1, 2, ...).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().unwrap().get(id).cloned()
    }

    pub fn insert_session(&self, session: Arc<Session>) {
        self.sessions.lock().unwrap().insert(session.id.clone(), session);
    }

    /// Counts a turn as running until the guard drops.
    pub fn turn_started(self: &Arc<Self>) -> RunningTurn {
        self.running.send_modify(|n| *n += 1);
        RunningTurn { agent: self.clone() }
    }

    /// Waits until no turn is running.
    pub async fn turns_finished(&self) {
        let mut rx = self.running.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Marks one prompt turn as running; see [`TestAgent::turn_started`].
pub struct RunningTurn {
    agent: Arc<TestAgent>,
}

impl Drop for RunningTurn {
    fn drop(&mut self) {
        self.agent.running.send_modify(|n| *n -= 1);
    }
}

/// The modes every session offers (`default` first, its starting mode).
pub const MODES: [&str; 3] = ["default", "plan", "yolo"];
/// The models every session offers, as the config option `model`
/// (`small` first, its starting model).
pub const MODELS: [&str; 2] = ["small", "large"];

/// The mode sessions start in: `OMA_TEST_AGENT_START_MODE` (one of
/// [`MODES`]), else `default`.
pub fn start_mode() -> String {
    std::env::var("OMA_TEST_AGENT_START_MODE")
        .ok()
        .filter(|m| MODES.contains(&m.as_str()))
        .unwrap_or_else(|| MODES[0].to_owned())
}

/// What a session offers, in a session/new or session/load answer.
pub fn offered_modes(current: &str) -> agent_client_protocol::v1::schema::SessionModeState {
    use agent_client_protocol::v1::schema::{SessionMode, SessionModeState};
    SessionModeState::new(
        current.to_owned(),
        MODES
            .iter()
            .map(|m| SessionMode::new(*m, format!("{m} mode")))
            .collect(),
    )
}

/// The config options: the model selector.
pub fn offered_config(model: &str) -> Vec<agent_client_protocol::v1::schema::SessionConfigOption> {
    use agent_client_protocol::v1::schema::{
        SessionConfigOption, SessionConfigOptionCategory, SessionConfigSelectOption,
    };
    let choices: Vec<SessionConfigSelectOption> = MODELS
        .iter()
        .map(|m| SessionConfigSelectOption::new(*m, format!("{m} model")))
        .collect();
    vec![
        SessionConfigOption::select("model", "Model", model.to_owned(), choices)
            .category(SessionConfigOptionCategory::Model),
    ]
}

/// The system prompt a session/new or session/load carried: `_meta.systemPrompt`
/// as a string, or the `append` field of an object there; failing that, the
/// text of the typed `systemPrompt` field.
pub fn system_prompt(meta: Option<&Meta>, typed: Option<&SystemPrompt>) -> Option<String> {
    if let Some(value) = meta.and_then(|meta| meta.get("systemPrompt")) {
        match value {
            serde_json::Value::String(text) => return Some(text.clone()),
            serde_json::Value::Object(object) => {
                if let Some(text) = object.get("append").and_then(serde_json::Value::as_str) {
                    return Some(text.to_owned());
                }
            }
            _ => {}
        }
    }
    let typed = typed?;
    let text: Vec<&str> = typed
        .content
        .iter()
        .filter_map(|block| match block {
            agent_client_protocol::v1::schema::ContentBlock::Text(text) => Some(text.text.as_str()),
            _ => None,
        })
        .collect();
    (!text.is_empty()).then(|| text.join("\n"))
}
