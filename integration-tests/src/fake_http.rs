//! The HTTP/1.1 side of the fake model endpoints ([`crate::fake_anthropic`],
//! [`crate::fake_openai`]): a small server on a plain tokio `TcpListener`
//! (requests with `content-length` bodies, keep-alive; no chunked request
//! bodies, which the model SDKs never send) that records every request and
//! hands it to the fake's `respond` function, plus the pieces of a streamed
//! (server-sent events) reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The largest request body accepted (Claude Code's requests are ~100 KiB:
/// its system prompt and tool schemas).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target, query included (e.g. `/v1/messages?beta=true`).
    pub target: String,
    /// Header names lowercased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What a fake has seen: every request, and how its streamed replies ended.
#[derive(Default)]
pub struct Recorded {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Streams whose client went away before the end.
    aborted_streams: AtomicUsize,
    /// Streams written to the end.
    completed_streams: AtomicUsize,
}

impl Recorded {
    /// Counts a stream as completed or aborted.
    pub fn count_end(&self, result: &std::io::Result<()>) {
        match result {
            Ok(()) => self.completed_streams.fetch_add(1, Ordering::SeqCst),
            Err(_) => self.aborted_streams.fetch_add(1, Ordering::SeqCst),
        };
    }

    /// How many streams were written to the end so far.
    pub fn completed_streams(&self) -> usize {
        self.completed_streams.load(Ordering::SeqCst)
    }
}

/// A fake's answer to one request: `Ok(true)` when the connection may serve
/// another. `close` says the client asked for the connection to close.
pub type Respond = for<'a> fn(
    &'a mut TcpStream,
    &'a RecordedRequest,
    &'a Recorded,
    bool,
) -> Pin<Box<dyn Future<Output = std::io::Result<bool>> + Send + 'a>>;

/// A running fake on 127.0.0.1; it stops when dropped.
pub struct FakeServer {
    addr: std::net::SocketAddr,
    recorded: Arc<Recorded>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Listens on 127.0.0.1 with a free port. Needs a tokio runtime.
    pub async fn start(respond: Respond) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let recorded = Arc::new(Recorded::default());
        let task = tokio::spawn(accept_loop(listener, recorded.clone(), respond));
        Ok(FakeServer { addr, recorded, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorded.requests.lock().expect("requests lock").clone()
    }

    /// How many streamed replies the client abandoned midway (e.g. cancelled).
    pub fn aborted_streams(&self) -> usize {
        self.recorded.aborted_streams.load(Ordering::SeqCst)
    }

    /// How many streamed replies were written to the end.
    pub fn completed_streams(&self) -> usize {
        self.recorded.completed_streams()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, recorded: Arc<Recorded>, respond: Respond) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, recorded.clone(), respond));
            }
            Err(err) => {
                eprintln!("fake model endpoint: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Reap finished connections so the set does not grow forever.
        while connections.try_join_next().is_some() {}
    }
}

/// Serves requests on one connection until the client closes it, a reply
/// closes it, or the request is malformed.
async fn serve_connection(mut stream: TcpStream, recorded: Arc<Recorded>, respond: Respond) {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(err) => {
                let _ = write_simple(
                    &mut stream,
                    400,
                    "Bad Request",
                    &error_body("invalid_request_error", &err),
                    true,
                )
                .await;
                return;
            }
        };
        recorded.requests.lock().expect("requests lock").push(request.clone());
        let keep_alive = !request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        match respond(&mut stream, &request, &recorded, !keep_alive).await {
            Ok(true) if keep_alive => continue,
            _ => return,
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection
/// between requests. `buffer` carries bytes read past the previous request.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Option<RecordedRequest>, String> {
    let head_end = loop {
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err("request head too large".into());
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a request head".into())
            };
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut request = RecordedRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|te| !te.eq_ignore_ascii_case("identity"))
    {
        return Err("chunked request bodies are not supported by this fake".into());
    }
    let length = match request.header("content-length") {
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| format!("bad content-length {value:?}"))?,
        None => 0,
    };
    if length > MAX_BODY_BYTES {
        return Err(format!("body of {length} bytes is too large"));
    }
    buffer.drain(..head_end + 4);
    while buffer.len() < length {
        let mut chunk = vec![0u8; (length - buffer.len()).min(64 * 1024)];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed inside a request body".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    request.body = buffer.drain(..length).collect();
    Ok(Some(request))
}

/// A JSON error body both model APIs' clients read (`error.type`, `error.message`).
pub fn error_body(kind: &str, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": kind, "message": message}})
        .to_string()
        .into_bytes()
}

pub async fn write_simple(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Answers 404 naming what the fake does not serve.
pub async fn not_found(stream: &mut TcpStream, request: &RecordedRequest, close: bool) -> std::io::Result<bool> {
    let err = error_body(
        "not_found_error",
        &format!("the fake has no {} {}", request.method, request.target),
    );
    write_simple(stream, 404, "Not Found", &err, close).await?;
    Ok(true)
}

/// The head of a server-sent-events reply; its body ends when the
/// connection closes (`connection: close`, no content-length).
pub const SSE_HEADERS: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";

/// One server-sent event, named after its data's `type` (as Anthropic's and
/// OpenAI Responses' are).
pub async fn send_event(stream: &mut TcpStream, data: &Value) -> std::io::Result<()> {
    let kind = data["type"].as_str().unwrap_or_default();
    stream
        .write_all(format!("event: {kind}\ndata: {data}\n\n").as_bytes())
        .await?;
    stream.flush().await
}

/// One unnamed server-sent event (as OpenAI Chat Completions' are).
pub async fn send_data(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes()).await?;
    stream.flush().await
}

/// A client for the fakes' own unit tests.
#[cfg(test)]
pub(crate) mod test_client {
    use serde_json::Value;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    /// POSTs `body` as JSON to `path` of the fake at `base` (a base URL,
    /// whatever its path) on a connection closed after the reply; returns
    /// the whole reply, head included.
    pub async fn post(base: &str, path: &str, body: &Value) -> String {
        let addr = base.trim_start_matches("http://").split('/').next().unwrap_or_default();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The JSON of every `data:` line of a streamed reply.
    pub fn sse_data(out: &str) -> Vec<Value> {
        out.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }
}
