//! A fake Anthropic Messages API on 127.0.0.1, for driving real Claude agents
//! (claude-agent-acp → Claude Code CLI) without a network or an account.
//!
//! It serves HTTP/1.1 through [`crate::fake_http`] (requests with
//! `content-length` bodies, keep-alive; no chunked request bodies, which the
//! Anthropic SDK never sends). Point an agent at it with
//! `ANTHROPIC_BASE_URL=<FakeAnthropic::base_url>` and any `ANTHROPIC_API_KEY`.
//!
//! - `POST /v1/messages` (Claude Code adds `?beta=true`) answers with an
//!   assistant text `fake-claude says: <text of the last user message>`, as an
//!   SSE stream (`message_start`, `content_block_start`, several
//!   `content_block_delta`/`text_delta`, `content_block_stop`, `message_delta`
//!   with `stop_reason: end_turn`, `message_stop`) when the request says
//!   `stream: true`, or as one JSON message otherwise. When the last user text
//!   starts with `slow`, the stream is [`SLOW_DELTAS`] deltas `tick N ` spaced
//!   [`SLOW_DELTA_INTERVAL`] apart, so a client can cancel mid-stream (side
//!   requests that quote the prompt, such as Claude Code's title generation
//!   `<session>\nslow …`, stay fast).
//! - `POST /v1/messages/count_tokens` answers `{"input_tokens": …}`.
//! - `HEAD`/`GET /` (Claude Code probes the base URL at start) answer 200.
//! - Anything else answers 404 with an Anthropic-style error body.
//!
//! Every request is recorded ([`FakeAnthropic::requests`]) for assertions.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::fake_http::{
    FakeServer, Recorded, RecordedRequest, SSE_HEADERS, error_body, not_found, send_event, write_simple,
};

/// What every reply starts with.
pub const REPLY_PREFIX: &str = "fake-claude says: ";

/// How many deltas a `slow` reply streams.
pub const SLOW_DELTAS: usize = 50;

/// The pause between two deltas of a `slow` reply.
pub const SLOW_DELTA_INTERVAL: Duration = Duration::from_millis(100);

/// The text of a Messages API `system` field (a string or an array of text blocks).
pub fn system_text(request: &Value) -> String {
    match &request["system"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of the last text block of the last `user` message (newer Claude
/// Code versions also put `role: "system"` entries into `messages`; they are
/// skipped).
pub fn last_user_text(request: &Value) -> String {
    let Some(message) = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .rev()
            .find(|b| b["type"] == "text")
            .and_then(|b| b["text"].as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// All the text of a Messages API request's `messages` with this role.
pub fn message_texts(request: &Value, role: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        if message["role"] != role {
            continue;
        }
        match &message["content"] {
            Value::String(s) => texts.push(s.clone()),
            Value::Array(blocks) => texts.extend(blocks.iter().filter_map(|b| b["text"].as_str().map(str::to_owned))),
            _ => {}
        }
    }
    texts
}

/// Whether this is a Messages API call (not count_tokens).
fn is_messages(request: &RecordedRequest) -> bool {
    request.method == "POST" && request.path() == "/v1/messages"
}

/// The running fake; it stops when dropped.
pub struct FakeAnthropic {
    server: FakeServer,
}

impl FakeAnthropic {
    /// Listens on 127.0.0.1 with a free port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<FakeAnthropic> {
        Ok(FakeAnthropic {
            server: FakeServer::start(|stream, request, recorded, close| {
                Box::pin(respond(stream, request, recorded, close))
            })
            .await?,
        })
    }

    /// The value for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// The JSON bodies of the Messages API calls so far, in order.
    pub fn messages_requests(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| is_messages(r))
            .filter_map(RecordedRequest::json)
            .collect()
    }

    /// How many streamed replies the client abandoned midway (e.g. cancelled).
    pub fn aborted_streams(&self) -> usize {
        self.server.aborted_streams()
    }

    /// How many streamed replies were written to `message_stop`.
    pub fn completed_streams(&self) -> usize {
        self.server.completed_streams()
    }

    /// One line per request (method, target, a summary of the body), for
    /// failure messages and `--nocapture` logs.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| match r.json() {
                Some(body) if is_messages(r) => format!(
                    "{} {} model={} stream={} messages={} tools={} last_user={:?}",
                    r.method,
                    r.target,
                    body["model"],
                    body["stream"],
                    body["messages"].as_array().map_or(0, Vec::len),
                    body["tools"].as_array().map_or(0, Vec::len),
                    last_user_text(&body),
                ),
                _ => format!("{} {} ({} body bytes)", r.method, r.target, r.body.len()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Answers one request. `Ok(true)` when the connection may serve another.
async fn respond(
    stream: &mut TcpStream,
    request: &RecordedRequest,
    recorded: &Recorded,
    close: bool,
) -> std::io::Result<bool> {
    match (request.method.as_str(), request.path()) {
        ("HEAD", _) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: {}\r\n\r\n",
                if close { "close" } else { "keep-alive" }
            );
            stream.write_all(head.as_bytes()).await?;
            Ok(true)
        }
        ("GET", "/") => {
            write_simple(stream, 200, "OK", b"{}", close).await?;
            Ok(true)
        }
        ("POST", "/v1/messages/count_tokens") => {
            let tokens = request.body.len() / 4;
            write_simple(
                stream,
                200,
                "OK",
                json!({"input_tokens": tokens}).to_string().as_bytes(),
                close,
            )
            .await?;
            Ok(true)
        }
        ("POST", "/v1/messages") => {
            let Some(body) = request.json() else {
                let err = error_body("invalid_request_error", "the body is not JSON");
                write_simple(stream, 400, "Bad Request", &err, close).await?;
                return Ok(true);
            };
            let user = last_user_text(&body);
            let model = body["model"].as_str().unwrap_or("claude-fake").to_owned();
            let input_tokens = request.body.len() / 4;
            if body["stream"] == true {
                match write_request(&body) {
                    Some(input) => stream_tool_use(stream, "Write", input, &model, input_tokens, recorded).await?,
                    None => stream_reply(stream, &user, &model, input_tokens, recorded).await?,
                }
                Ok(false)
            } else {
                let text = format!("{REPLY_PREFIX}{user}");
                let message = json!({
                    "id": "msg_fake_single",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": text.len() / 4 + 1},
                });
                write_simple(stream, 200, "OK", message.to_string().as_bytes(), close).await?;
                Ok(true)
            }
        }
        _ => not_found(stream, request, close).await,
    }
}

/// `write ABSOLUTE_PATH TEXT` as the last user text of a request that offers
/// the `Write` tool (and is not already the tool's result): the fake asks
/// for that file to be written, as a model would.
fn write_request(body: &Value) -> Option<Value> {
    let offers_write = body["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == "Write"));
    let user = last_user_text(body);
    let (path, text) = user.strip_prefix("write ")?.split_once(' ')?;
    (offers_write && path.starts_with('/')).then(|| json!({"file_path": path, "content": format!("{text}\n")}))
}

/// Streams one `tool_use` block (the model asking for `name` with `input`).
async fn stream_tool_use(
    stream: &mut TcpStream,
    name: &str,
    input: Value,
    model: &str,
    input_tokens: usize,
    recorded: &Recorded,
) -> std::io::Result<()> {
    let result = async {
        stream.write_all(SSE_HEADERS).await?;
        let id = format!("toolu_fake_{}", recorded.completed_streams());
        let events = [
            json!({"type": "message_start", "message": {
                "id": "msg_fake_tool", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"output_tokens": 10}}),
            json!({"type": "message_stop"}),
        ];
        for event in &events {
            send_event(stream, event).await?;
        }
        stream.shutdown().await
    }
    .await;
    recorded.count_end(&result);
    result
}

/// Streams a reply as server-sent events; the body ends when the connection
/// closes (`connection: close`, no content-length).
async fn stream_reply(
    stream: &mut TcpStream,
    user: &str,
    model: &str,
    input_tokens: usize,
    recorded: &Recorded,
) -> std::io::Result<()> {
    let slow = user.starts_with("slow");
    let deltas: Vec<String> = if slow {
        std::iter::once(REPLY_PREFIX.to_owned())
            .chain((1..=SLOW_DELTAS).map(|i| format!("tick {i} ")))
            .collect()
    } else {
        // A few deltas, split at spaces, to exercise chunk concatenation.
        let text = format!("{REPLY_PREFIX}{user}");
        text.split_inclusive(' ').map(str::to_owned).collect()
    };
    let output_tokens = deltas.iter().map(String::len).sum::<usize>() / 4 + 1;
    let result = async {
        stream.write_all(SSE_HEADERS).await?;
        send_event(
            stream,
            &json!({"type": "message_start", "message": {
                "id": "msg_fake_stream", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
        )
        .await?;
        send_event(
            stream,
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        )
        .await?;
        for (i, delta) in deltas.iter().enumerate() {
            if slow && i > 0 {
                tokio::time::sleep(SLOW_DELTA_INTERVAL).await;
            }
            send_event(
                stream,
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}),
            )
            .await?;
        }
        send_event(stream, &json!({"type": "content_block_stop", "index": 0})).await?;
        send_event(
            stream,
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": output_tokens}}),
        )
        .await?;
        send_event(stream, &json!({"type": "message_stop"})).await?;
        stream.shutdown().await
    }
    .await;
    recorded.count_end(&result);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_http::test_client::{post, sse_data};
    use tokio::io::AsyncBufReadExt as _;

    #[tokio::test]
    async fn answers_streamed_and_single_messages_and_records_them() {
        let fake = FakeAnthropic::start().await.unwrap();
        let addr = fake.base_url().trim_start_matches("http://").to_owned();
        let request = json!({
            "model": "m", "stream": true, "system": [{"type": "text", "text": "sys"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<reminder>"}, {"type": "text", "text": "hi there"}]},
                {"role": "system", "content": "Available agent types: …"},
            ],
        });
        let out = post(&addr, "/v1/messages?beta=true", &request).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let text: String = sse_data(&out)
            .iter()
            .filter_map(|d| d["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "fake-claude says: hi there");
        assert!(out.contains("event: message_stop"));
        assert!(out.contains("\"stop_reason\":\"end_turn\""));

        let single = post(
            &addr,
            "/v1/messages",
            &json!({"model": "m", "messages": [{"role": "user", "content": "yo"}]}),
        )
        .await;
        assert!(single.contains("\"text\":\"fake-claude says: yo\""), "{single}");
        let missing = post(&addr, "/v1/other", &json!({})).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        let recorded = fake.messages_requests();
        assert_eq!(recorded.len(), 2);
        assert_eq!(system_text(&recorded[0]), "sys");
        assert_eq!(fake.completed_streams(), 1);
        assert_eq!(fake.requests().len(), 3);
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_and_a_dropped_slow_stream_counts_as_aborted() {
        let fake = FakeAnthropic::start().await.unwrap();
        let addr = fake.base_url().trim_start_matches("http://").to_owned();
        let mut stream = tokio::io::BufReader::new(TcpStream::connect(&addr).await.unwrap());
        for _ in 0..2 {
            stream
                .get_mut()
                .write_all(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line, "HTTP/1.1 200 OK\r\n");
            loop {
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                if line == "\r\n" {
                    break;
                }
            }
        }
        let body = json!({"stream": true, "messages": [{"role": "user", "content": "slow please"}]}).to_string();
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut line = String::new();
        while !line.contains("tick 1 ") {
            line.clear();
            stream.read_line(&mut line).await.unwrap();
        }
        drop(stream);
        crate::wait_until("the fake to notice the dropped stream", Duration::from_secs(10), || {
            let aborted = fake.aborted_streams();
            async move { (aborted == 1).then_some(()) }
        })
        .await
        .unwrap();
        assert_eq!(fake.requests().len(), 3);
    }
}
