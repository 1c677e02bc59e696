//! Sessions of `oma-test-agent` and their transcripts.
//!
//! Every session/update a session sends is appended, as the JSON of its
//! `update` object, to `<cwd>/.oma-test-agent/<sessionId>.jsonl`, so that a
//! later process can replay it on `session/load`.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

/// One live session.
pub struct Session {
    pub id: String,
    pub cwd: PathBuf,
    /// What `_meta.systemPrompt` held at session/new or session/load.
    pub system_prompt: Option<String>,
    /// The `mcpServers` array of session/new or session/load, as JSON.
    pub mcp_servers: serde_json::Value,
    /// The instructions block the client put before a prompt, if any.
    pub instructions: Mutex<Option<String>>,
    /// The current mode and model (session/set_mode, session/set_config_option).
    pub mode: Mutex<String>,
    pub model: Mutex<String>,
    /// Bumped by every session/cancel for this session.
    cancel: watch::Sender<u64>,
    transcript: Mutex<Transcript>,
}

struct Transcript {
    path: PathBuf,
    file: Option<File>,
    failed: bool,
}

impl Session {
    pub fn new(id: String, cwd: PathBuf, system_prompt: Option<String>, mcp_servers: serde_json::Value) -> Self {
        let path = transcript_path(&cwd, &id);
        Self {
            id,
            cwd,
            system_prompt,
            mcp_servers,
            instructions: Mutex::new(None),
            mode: Mutex::new(crate::agent::start_mode()),
            model: Mutex::new(crate::agent::MODELS[0].to_owned()),
            cancel: watch::Sender::new(0),
            transcript: Mutex::new(Transcript {
                path,
                file: None,
                failed: false,
            }),
        }
    }

    /// A receiver that reports every session/cancel from now on.
    pub fn cancel_receiver(&self) -> watch::Receiver<u64> {
        let mut rx = self.cancel.subscribe();
        rx.borrow_and_update();
        rx
    }

    /// Records a session/cancel.
    pub fn cancel(&self) {
        self.cancel.send_modify(|generation| *generation += 1);
    }

    /// Appends one update (the `update` object of a session/update) to the transcript.
    pub fn record(&self, update: &serde_json::Value) {
        let mut transcript = self.transcript.lock().unwrap();
        if transcript.failed {
            return;
        }
        if transcript.file.is_none() {
            let opened = transcript
                .path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| File::options().create(true).append(true).open(&transcript.path));
            match opened {
                Ok(file) => transcript.file = Some(file),
                Err(err) => {
                    log!(
                        "oma-test-agent: cannot open transcript {}: {err}; not recording this session",
                        transcript.path.display()
                    );
                    transcript.failed = true;
                    return;
                }
            }
        }
        let mut line = update.to_string().into_bytes();
        line.push(b'\n');
        let result = transcript.file.as_mut().expect("opened above").write_all(&line);
        if let Err(err) = result {
            log!(
                "oma-test-agent: cannot write transcript {}: {err}",
                transcript.path.display()
            );
            transcript.failed = true;
        }
    }
}

/// Where the transcript of session `id` with working directory `cwd` lives.
pub fn transcript_path(cwd: &Path, id: &str) -> PathBuf {
    // Like a real agent's home folder: keeps a worktree clean when set.
    match std::env::var_os("OMA_TEST_AGENT_STATE_DIR") {
        Some(dir) => PathBuf::from(dir).join(format!("{id}.jsonl")),
        None => cwd.join(".oma-test-agent").join(format!("{id}.jsonl")),
    }
}

/// Whether a client-supplied session id is safe to use as a file name.
pub fn is_safe_session_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A fresh session id, `test-<16 hex digits>`.
pub fn new_session_id() -> String {
    format!("test-{:016x}", rand::random::<u64>())
}
