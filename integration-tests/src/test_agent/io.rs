//! Standard input and output of `oma-test-agent`.
//!
//! The ACP connection runs over the crate's [`Lines`](agent_client_protocol::Lines)
//! transport: a stdin reader thread feeds it lines, and every line it writes
//! goes to one stdout writer thread. Directives that must write something the
//! typed crate cannot (a non-JSON line, bytes that are not UTF-8) or that must
//! exit after everything before them is on stdout send a *marker*
//! notification through the connection instead; the writer thread swaps the
//! marker line for its payload. Markers travel the same queue as every update,
//! so the output keeps the order in which the directives ran.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use agent_client_protocol::UntypedMessage;
use futures::{Sink, Stream, StreamExt as _};

/// The method of marker notifications; they never reach stdout as such.
const MARKER_METHOD: &str = "_oma_test_agent/marker";

/// What the writer thread does when it meets a marker.
pub enum Marker {
    /// Write these bytes, then a newline.
    Raw(Vec<u8>),
    /// Flush stdout and exit the process with this code.
    Exit(i32),
}

/// Markers registered by directives and not yet met by the writer.
#[derive(Clone, Default)]
pub struct Markers {
    next: Arc<AtomicU64>,
    pending: Arc<Mutex<HashMap<u64, Marker>>>,
}

impl Markers {
    /// Registers a marker and returns the notification that stands for it on
    /// the connection; send it where the marker's output belongs.
    pub fn register(&self, marker: Marker) -> UntypedMessage {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, marker);
        UntypedMessage::new(MARKER_METHOD, serde_json::json!({ "id": id })).expect("a marker serializes")
    }

    /// The marker a line stands for, if it is a marker line.
    fn take(&self, line: &str) -> Option<Marker> {
        if line.len() > 256 || !line.contains(MARKER_METHOD) {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value.get("method")?.as_str()? != MARKER_METHOD {
            return None;
        }
        let id = value.get("params")?.get("id")?.as_u64()?;
        self.pending.lock().unwrap().remove(&id)
    }
}

/// An item for the stdout writer thread.
pub enum Out {
    /// A line the connection wrote (without its newline).
    Line(String),
    /// Flush and exit the process with this code.
    Exit(i32),
}

/// Starts the stdout writer thread and returns the sender that feeds it.
pub fn spawn_writer(markers: Markers) -> mpsc::Sender<Out> {
    let (tx, rx) = mpsc::channel::<Out>();
    std::thread::Builder::new()
        .name("stdout-writer".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut writer = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            let mut broken = false;
            let mut write = |bytes: &[u8], writer: &mut std::io::BufWriter<std::io::StdoutLock<'_>>| {
                if broken {
                    return;
                }
                if let Err(err) = writer.write_all(bytes).and_then(|()| writer.write_all(b"\n")) {
                    log!("oma-test-agent: cannot write to stdout, discarding output from now on: {err}");
                    broken = true;
                }
            };
            while let Ok(first) = rx.recv() {
                let mut item = Some(first);
                // Write everything already queued, then flush once.
                while let Some(current) = item.take() {
                    match current {
                        Out::Line(line) => match markers.take(&line) {
                            None => write(line.as_bytes(), &mut writer),
                            Some(Marker::Raw(bytes)) => write(&bytes, &mut writer),
                            Some(Marker::Exit(code)) => exit(&mut writer, code),
                        },
                        Out::Exit(code) => exit(&mut writer, code),
                    }
                    item = rx.try_recv().ok();
                }
                let _ = writer.flush();
            }
        })
        .expect("spawn the stdout writer thread");
    tx
}

fn exit(writer: &mut impl std::io::Write, code: i32) -> ! {
    let _ = writer.flush();
    let _ = std::io::stderr().flush();
    log!("oma-test-agent: exiting with code {code}");
    std::process::exit(code)
}

/// The sink the connection writes its lines to.
pub fn line_sink(tx: mpsc::Sender<Out>) -> impl Sink<String, Error = std::io::Error> + Send + 'static {
    futures::sink::unfold(tx, |tx, line: String| async move {
        tx.send(Out::Line(line))
            .map_err(|_| std::io::Error::other("the stdout writer thread is gone"))?;
        Ok::<_, std::io::Error>(tx)
    })
}

/// The stream of stdin lines the connection reads. Blank lines are skipped;
/// bytes that are not UTF-8 are replaced (the crate then reports a parse
/// error). At EOF the stream ends, unless `ignore_eof` holds: then it stays
/// open forever, like an agent that does not notice its stdin closing.
pub fn stdin_lines(ignore_eof: bool) -> impl Stream<Item = std::io::Result<String>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<String>>();
    std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut stdin = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => {
                        log!("oma-test-agent: stdin closed");
                        break;
                    }
                    Ok(_) => {
                        while matches!(buf.last(), Some(b'\n' | b'\r')) {
                            buf.pop();
                        }
                        if buf.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(Ok(line)).is_err() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        log!("oma-test-agent: cannot read stdin: {err}");
                        let _ = tx.send(Err(err));
                        break;
                    }
                }
            }
        })
        .expect("spawn the stdin reader thread");
    let lines = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|line| (line, rx)) });
    let tail = if ignore_eof {
        futures::stream::pending().boxed()
    } else {
        futures::stream::empty().boxed()
    };
    lines.chain(tail)
}
