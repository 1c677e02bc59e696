//! A fake OpenAI API on 127.0.0.1, for driving real Codex (`codex-acp`, the
//! Responses API) and opencode (an OpenAI-compatible provider, the Chat
//! Completions API) without a network or an account. HTTP through
//! [`crate::fake_http`]; point an agent at [`FakeOpenAi::base_url`] (which
//! ends in `/v1`) with any API key.
//!
//! - `POST /v1/chat/completions` and `POST /v1/responses` answer, streamed,
//!   `fake-openai says: <last line of the last user message>` (the prompt;
//!   the lines before it may be instructions the client put first).
//! - When that text is `write ABSOLUTE_PATH TEXT` and the request offers a
//!   tool that can write it, the reply is instead a call of that tool, as a
//!   model would make it: opencode's `write` tool (`filePath`, `content`), or
//!   Codex's shell tool running `printf` into the file — first in Codex's
//!   sandbox and, when that wrote nothing (a read-only sandbox), once more
//!   asking for escalated permissions (which Codex must ask a person for).
//!   Then it answers `fake-openai says: done`.
//! - `GET /v1/models` lists [`MODEL`].
//!
//! Every request is recorded ([`FakeOpenAi::requests`]) for assertions.

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::fake_http::{
    FakeServer, Recorded, RecordedRequest, SSE_HEADERS, error_body, not_found, send_data, send_event, write_simple,
};

/// What every text reply starts with.
pub const REPLY_PREFIX: &str = "fake-openai says: ";

/// The one model the fake lists.
pub const MODEL: &str = "fake-gpt";

/// The running fake; it stops when dropped.
pub struct FakeOpenAi {
    server: FakeServer,
}

impl FakeOpenAi {
    /// Listens on 127.0.0.1 with a free port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<FakeOpenAi> {
        Ok(FakeOpenAi {
            server: FakeServer::start(|stream, request, recorded, close| {
                Box::pin(respond(stream, request, recorded, close))
            })
            .await?,
        })
    }

    /// The API base, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.base_url())
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// The JSON bodies of the model calls (both APIs) so far, in order.
    pub fn model_requests(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| is_model_call(r))
            .filter_map(RecordedRequest::json)
            .collect()
    }

    /// One line per request, for failure messages and `--nocapture` logs.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| match r.json() {
                Some(body) if is_model_call(r) => format!(
                    "{} {} model={} tools={:?} last={:?}",
                    r.method,
                    r.target,
                    body["model"],
                    tool_names(&body),
                    last_input(&body),
                ),
                _ => format!("{} {} ({} body bytes)", r.method, r.target, r.body.len()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn is_model_call(request: &RecordedRequest) -> bool {
    request.method == "POST" && matches!(request.path(), "/v1/chat/completions" | "/v1/responses")
}

/// The last thing a request's conversation holds, in either API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastInput {
    /// A user's text.
    User(String),
    /// A tool's result (the model asked for it in the previous call).
    ToolResult(String),
    Nothing,
}

/// The text of a message's content: a string, or the text parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The last item of `messages` (Chat Completions) or `input` (Responses)
/// that is a user message or a tool result.
pub fn last_input(request: &Value) -> LastInput {
    let items = request["messages"].as_array().or_else(|| request["input"].as_array());
    if let Some(text) = request["input"].as_str() {
        return LastInput::User(text.to_owned());
    }
    for item in items.into_iter().flatten().rev() {
        let kind = item["type"].as_str().unwrap_or("message");
        match (kind, item["role"].as_str()) {
            ("message", Some("user")) => return LastInput::User(content_text(&item["content"])),
            ("message", Some("tool")) => return LastInput::ToolResult(content_text(&item["content"])),
            ("function_call_output" | "custom_tool_call_output", _) => {
                return LastInput::ToolResult(content_text(&item["output"]));
            }
            _ => {}
        }
    }
    LastInput::Nothing
}

/// The names of the tools a request offers, in either API's shape.
pub fn tool_names(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().or_else(|| t["name"].as_str()))
        .map(str::to_owned)
        .collect()
}

/// The text of the last user message, wherever it is in the conversation.
fn last_user_text(request: &Value) -> Option<String> {
    let items = request["messages"].as_array().or_else(|| request["input"].as_array())?;
    items
        .iter()
        .rev()
        .find(|i| i["role"] == "user")
        .map(|i| content_text(&i["content"]))
}

/// How many tool calls the model made since the last user message.
fn calls_since_user(request: &Value) -> usize {
    let items = request["messages"].as_array().or_else(|| request["input"].as_array());
    items
        .into_iter()
        .flatten()
        .rev()
        .take_while(|i| i["role"] != "user")
        .map(|i| match i["type"].as_str() {
            Some("function_call" | "custom_tool_call") => 1,
            _ => i["tool_calls"].as_array().map_or(0, Vec::len),
        })
        .sum()
}

/// `write ABSOLUTE_PATH TEXT` as the last line (starting so) of the last
/// user message.
fn write_wanted(request: &Value) -> Option<(String, String)> {
    let text = last_user_text(request)?;
    let line = text.lines().rev().find(|l| l.starts_with("write "))?;
    let (path, text) = line.strip_prefix("write ")?.split_once(' ')?;
    path.starts_with('/').then(|| (path.to_owned(), text.to_owned()))
}

/// A word quoted for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The call of one of Codex's shell tools that writes `text` into `path`
/// (`escalate`: asking to run outside the sandbox), shaped for the tool the
/// request offers: `(tool name, arguments)`.
fn codex_shell_call(request: &Value, path: &str, text: &str, escalate: bool) -> Option<(String, Value)> {
    let script = format!("printf '%s\\n' {} > {}", sh_quote(text), sh_quote(path));
    let tools = request["tools"].as_array()?;
    let tool = ["shell_command", "shell", "exec_command"]
        .iter()
        .find_map(|name| tools.iter().find(|t| t["name"] == *name))?;
    let name = tool["name"].as_str()?.to_owned();
    let properties = &tool["parameters"]["properties"];
    let mut arguments = match name.as_str() {
        "shell" => json!({"command": ["bash", "-lc", script]}),
        "exec_command" => json!({"cmd": script}),
        _ => json!({"command": script}),
    };
    let justification = "The user asked for this file to be written.";
    if !escalate {
        return Some((name, arguments));
    }
    if properties.get("sandbox_permissions").is_some() {
        arguments["sandbox_permissions"] = json!("require_escalated");
        arguments["justification"] = json!(justification);
    } else if properties.get("with_escalated_permissions").is_some() {
        arguments["with_escalated_permissions"] = json!(true);
        arguments["justification"] = json!(justification);
    }
    Some((name, arguments))
}

/// What the fake answers a model call with.
enum Reply {
    Text(String),
    ToolCall { name: String, arguments: Value },
}

fn reply_for(request: &Value, api: Api) -> Reply {
    if let Some((path, text)) = write_wanted(request) {
        let calls = calls_since_user(request);
        let call = match api {
            Api::Chat if calls == 0 => tool_names(request).iter().any(|n| n == "write").then(|| {
                (
                    "write".to_owned(),
                    json!({"filePath": path, "content": format!("{text}\n")}),
                )
            }),
            // First in the sandbox; when that wrote nothing (a read-only
            // sandbox), once more asking to leave it, as a model would.
            Api::Responses if calls == 0 => codex_shell_call(request, &path, &text, false),
            Api::Responses if calls == 1 && !std::path::Path::new(&path).exists() => {
                codex_shell_call(request, &path, &text, true)
            }
            _ => None,
        };
        if let Some((name, arguments)) = call {
            return Reply::ToolCall { name, arguments };
        }
    }
    match last_input(request) {
        LastInput::ToolResult(_) => Reply::Text(format!("{REPLY_PREFIX}done")),
        LastInput::User(text) => Reply::Text(format!("{REPLY_PREFIX}{}", text.lines().last().unwrap_or_default())),
        LastInput::Nothing => Reply::Text(format!("{REPLY_PREFIX}(nothing)")),
    }
}

#[derive(Clone, Copy)]
enum Api {
    Chat,
    Responses,
}

async fn respond(
    stream: &mut TcpStream,
    request: &RecordedRequest,
    recorded: &Recorded,
    close: bool,
) -> std::io::Result<bool> {
    let api = match (request.method.as_str(), request.path()) {
        ("GET", "/v1/models") => {
            let list =
                json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}]});
            write_simple(stream, 200, "OK", list.to_string().as_bytes(), close).await?;
            return Ok(true);
        }
        ("POST", "/v1/chat/completions") => Api::Chat,
        ("POST", "/v1/responses") => Api::Responses,
        _ => return not_found(stream, request, close).await,
    };
    let Some(body) = request.json() else {
        let err = error_body("invalid_request_error", "the body is not JSON");
        write_simple(stream, 400, "Bad Request", &err, close).await?;
        return Ok(true);
    };
    let reply = reply_for(&body, api);
    let n = recorded.completed_streams();
    let result = async {
        stream.write_all(SSE_HEADERS).await?;
        match api {
            Api::Chat => stream_chat(stream, reply, n).await?,
            Api::Responses => stream_responses(stream, reply, n).await?,
        }
        stream.shutdown().await
    }
    .await;
    recorded.count_end(&result);
    result.map(|()| false)
}

/// A Chat Completions stream: `chat.completion.chunk` objects, then `[DONE]`.
async fn stream_chat(stream: &mut TcpStream, reply: Reply, n: usize) -> std::io::Result<()> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": format!("chatcmpl-fake-{n}"), "object": "chat.completion.chunk", "created": 0, "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let finish = match reply {
        Reply::Text(text) => {
            send_data(stream, &chunk(json!({"role": "assistant", "content": ""}), Value::Null)).await?;
            for piece in text.split_inclusive(' ') {
                send_data(stream, &chunk(json!({"content": piece}), Value::Null)).await?;
            }
            "stop"
        }
        Reply::ToolCall { name, arguments } => {
            let call = json!({"index": 0, "id": format!("call_fake_{n}"), "type": "function",
                              "function": {"name": name, "arguments": arguments.to_string()}});
            send_data(
                stream,
                &chunk(json!({"role": "assistant", "tool_calls": [call]}), Value::Null),
            )
            .await?;
            "tool_calls"
        }
    };
    send_data(stream, &chunk(json!({}), json!(finish))).await?;
    let usage = json!({"id": format!("chatcmpl-fake-{n}"), "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                       "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}});
    send_data(stream, &usage.to_string()).await?;
    send_data(stream, "[DONE]").await
}

/// A Responses API stream: `response.created`, the output item (text deltas
/// first for a message), `response.completed`.
async fn stream_responses(stream: &mut TcpStream, reply: Reply, n: usize) -> std::io::Result<()> {
    let id = format!("resp_fake_{n}");
    send_event(stream, &json!({"type": "response.created", "response": {"id": id}})).await?;
    let item = match reply {
        Reply::Text(text) => {
            let item_id = format!("msg_fake_{n}");
            for piece in text.split_inclusive(' ') {
                send_event(
                    stream,
                    &json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                            "content_index": 0, "delta": piece}),
                )
                .await?;
            }
            json!({"type": "message", "role": "assistant", "id": item_id,
                   "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
        Reply::ToolCall { name, arguments } => json!({
            "type": "function_call", "id": format!("fc_fake_{n}"), "call_id": format!("call_fake_{n}"),
            "name": name, "arguments": arguments.to_string(),
        }),
    };
    send_event(
        stream,
        &json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    )
    .await?;
    send_event(
        stream,
        &json!({"type": "response.completed", "response": {"id": id, "usage": {
            "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 20}}}),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_http::test_client::{post, sse_data as data};

    #[tokio::test]
    async fn chat_completions_stream_text_and_call_write_when_asked() {
        let fake = FakeOpenAi::start().await.unwrap();
        let hello = json!({"model": MODEL, "stream": true, "messages": [
            {"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]});
        let out = post(&fake.base_url(), "/v1/chat/completions", &hello).await;
        let text: String = data(&out)
            .iter()
            .filter_map(|d| d["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "fake-openai says: hi there");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");

        let write = json!({"model": MODEL, "stream": true,
            "tools": [{"type": "function", "function": {"name": "write", "parameters": {}}}],
            "messages": [{"role": "user", "content": "write /tmp/x.txt hello there"}]});
        let out = post(&fake.base_url(), "/v1/chat/completions", &write).await;
        let chunks = data(&out);
        let call = &chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "write");
        let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"filePath": "/tmp/x.txt", "content": "hello there\n"}));
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

        // Without the tool offered (e.g. a title request), a plain answer.
        let no_tool = json!({"stream": true, "messages": [{"role": "user", "content": "write /tmp/x.txt hi"}]});
        assert!(
            post(&fake.base_url(), "/v1/chat/completions", &no_tool)
                .await
                .contains("fake-openai")
        );
        let done = json!({"stream": true, "messages": [
            {"role": "user", "content": "write /tmp/x.txt hi"}, {"role": "tool", "content": "ok"}]});
        assert!(
            post(&fake.base_url(), "/v1/chat/completions", &done)
                .await
                .contains("\"done\"")
        );
        assert_eq!(fake.model_requests().len(), 4);
    }

    #[tokio::test]
    async fn responses_stream_text_and_an_escalated_shell_call() {
        let fake = FakeOpenAi::start().await.unwrap();
        let hello = json!({"model": MODEL, "stream": true, "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}]});
        let out = post(&fake.base_url(), "/v1/responses", &hello).await;
        assert!(out.contains("event: response.completed"), "{out}");
        let item = data(&out)
            .into_iter()
            .find(|d| d["type"] == "response.output_item.done")
            .unwrap();
        assert_eq!(item["item"]["content"][0]["text"], "fake-openai says: hello");

        let tools = json!([{"type": "function", "name": "shell_command", "parameters": {"properties": {
            "command": {}, "sandbox_permissions": {}, "justification": {}}}}]);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("it's.txt");
        let user = json!({"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": format!("write {} a b", target.display())}]});
        let call = |input: Value| {
            let body = json!({"stream": true, "tools": tools, "input": input});
            let base = fake.base_url();
            async move {
                let out = post(&base, "/v1/responses", &body).await;
                data(&out)
                    .into_iter()
                    .find(|d| d["type"] == "response.output_item.done")
                    .unwrap()["item"]
                    .clone()
            }
        };
        // First in the sandbox.
        let first = call(json!([user])).await;
        assert_eq!(first["type"], "function_call");
        let arguments: Value = serde_json::from_str(first["arguments"].as_str().unwrap()).unwrap();
        let quoted = target.display().to_string().replace('\'', r"'\''");
        assert_eq!(arguments["command"], format!("printf '%s\\n' 'a b' > '{quoted}'"));
        assert!(arguments.get("sandbox_permissions").is_none(), "{arguments}");
        // The sandbox wrote nothing: again, asking to leave it.
        let output =
            json!({"type": "function_call_output", "call_id": "call_fake_0", "output": "Read-only file system"});
        let second = call(json!([user, first, output])).await;
        let arguments: Value = serde_json::from_str(second["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["sandbox_permissions"], "require_escalated");
        // Written (or refused twice): done.
        std::fs::write(&target, "a b\n").unwrap();
        let done = call(json!([user, first, output, second, output])).await;
        assert_eq!(done["content"][0]["text"], "fake-openai says: done");
    }
}
