//! A minimal ACP client over a child's stdio: the floor the relay is compared
//! with. It writes JSON-RPC lines to the child's stdin and reads its stdout
//! on a dedicated thread that stamps every line the moment it is read.
//!
//! The child is either `oma-test-agent` itself or `ssh … oma-test-agent`
//! (the pipe remote editors use).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::stats::{sent_unix_ns, unix_ns};

/// One line read from the child and when (Unix ns).
struct Line {
    at_ns: u64,
    text: String,
}

pub struct AcpClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Line>,
    next_id: u64,
    session_id: String,
}

/// How long any one request may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

impl AcpClient {
    /// Spawns `command` (stdio piped, stderr discarded), then initialize and
    /// session/new in `cwd`.
    pub fn start(mut command: Command, cwd: &std::path::Path) -> anyhow::Result<AcpClient> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().context("cannot start the ACP agent")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("acp-reader".into()).spawn(move || {
            let mut reader = BufReader::with_capacity(64 * 1024, stdout);
            loop {
                let mut text = String::new();
                match reader.read_line(&mut text) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let at_ns = unix_ns();
                        if tx.send(Line { at_ns, text }).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
        let mut client = AcpClient {
            child,
            stdin,
            lines: rx,
            next_id: 1,
            session_id: String::new(),
        };
        client.request(
            "initialize",
            json!({
                "protocolVersion": 1,
                "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}},
            }),
            |_| {},
        )?;
        let created = client.request(
            "session/new",
            json!({"cwd": cwd.display().to_string(), "mcpServers": []}),
            |_| {},
        )?;
        client.session_id = created
            .get("sessionId")
            .and_then(Value::as_str)
            .context("session/new answered without a sessionId")?
            .to_owned();
        Ok(client)
    }

    /// Sends a request and reads lines until its answer; every other line
    /// goes to `on_line(at_ns, text)` first.
    fn request(&mut self, method: &str, params: Value, mut on_line: impl FnMut(&Line)) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        let start = Instant::now();
        loop {
            let left = REQUEST_DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("no answer to {method} within {REQUEST_DEADLINE:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the agent closed its stdout during {method}"),
            };
            // Updates (the hot path) never need parsing here.
            if !line.text.contains("\"session/update\"") {
                let value: Value = serde_json::from_str(&line.text).unwrap_or(Value::Null);
                if value.get("id").and_then(Value::as_u64) == Some(id) && value.get("method").is_none() {
                    if let Some(error) = value.get("error") {
                        bail!("{method} failed: {error}");
                    }
                    return Ok(value.get("result").cloned().unwrap_or(Value::Null));
                }
            }
            on_line(&line);
        }
    }

    /// Runs one prompt and returns `(received, sent)` Unix-ns pairs of every
    /// update that carries the test agent's `sent_unix_ns`.
    pub fn prompt(&mut self, text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut samples = Vec::new();
        let params = json!({
            "sessionId": self.session_id,
            "prompt": [{"type": "text", "text": text}],
        });
        self.request("session/prompt", params, |line| {
            if let Some(sent) = sent_unix_ns(&line.text) {
                samples.push((line.at_ns, sent));
            }
        })?;
        Ok(samples)
    }
}

impl Drop for AcpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
