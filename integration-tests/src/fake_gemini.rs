//! A fake Gemini API (Generative Language `v1beta`) on 127.0.0.1, for
//! driving the real Gemini CLI (`gemini --experimental-acp`) without a
//! network or an account. HTTP through [`crate::fake_http`]; point the CLI at
//! [`FakeGemini::base_url`] with `GOOGLE_GEMINI_BASE_URL` and any
//! `GEMINI_API_KEY`.
//!
//! - `POST /v1beta/models/{model}:streamGenerateContent` answers, as SSE,
//!   `fake-gemini says: <last line of the last user text>`; `…:generateContent`
//!   the same as one JSON object (the CLI's side requests).
//! - When that line is `write ABSOLUTE_PATH TEXT` and the request offers the
//!   `write_file` tool, the reply is a call of it (`file_path`, `content`), as
//!   a model would make it; after the tool ran (a `functionResponse` is the
//!   last part) the answer is `fake-gemini says: done`.
//! - `POST …:countTokens` answers a count.
//!
//! Every request is recorded ([`FakeGemini::requests`]).

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::fake_http::{
    FakeServer, Recorded, RecordedRequest, SSE_HEADERS, error_body, not_found, send_data, write_simple,
};

/// What every text reply starts with.
pub const REPLY_PREFIX: &str = "fake-gemini says: ";

/// The running fake; it stops when dropped.
pub struct FakeGemini {
    server: FakeServer,
}

impl FakeGemini {
    /// Listens on 127.0.0.1 with a free port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<FakeGemini> {
        Ok(FakeGemini {
            server: FakeServer::start(|stream, request, recorded, close| {
                Box::pin(respond(stream, request, recorded, close))
            })
            .await?,
        })
    }

    /// The value for `GOOGLE_GEMINI_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// One line per request, for failure messages and `--nocapture` logs.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| match r.json() {
                Some(body) => format!(
                    "{} {} tools={:?} last={:?}",
                    r.method,
                    r.target,
                    tool_names(&body),
                    last_part(&body)
                ),
                None => format!("{} {} ({} body bytes)", r.method, r.target, r.body.len()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The names of the functions a request declares.
pub fn tool_names(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["functionDeclarations"].as_array().into_iter().flatten())
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect()
}

/// The last part of the last content: `Some(text)` for a user's text, the
/// function's name in `FunctionResponse` for a tool result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastPart {
    Text(String),
    FunctionResponse(String),
    Nothing,
}

pub fn last_part(request: &Value) -> LastPart {
    let Some(content) = request["contents"].as_array().and_then(|c| c.last()) else {
        return LastPart::Nothing;
    };
    let parts = content["parts"].as_array().map(Vec::as_slice).unwrap_or_default();
    if let Some(response) = parts.iter().rev().find_map(|p| p.get("functionResponse")) {
        return LastPart::FunctionResponse(response["name"].as_str().unwrap_or_default().to_owned());
    }
    let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    match text.is_empty() {
        true => LastPart::Nothing,
        false => LastPart::Text(text.join("\n")),
    }
}

/// The reply's parts for a request.
fn reply_parts(request: &Value) -> Vec<Value> {
    match last_part(request) {
        LastPart::Text(text) => {
            let line = text.lines().last().unwrap_or_default();
            let write = line
                .strip_prefix("write ")
                .and_then(|rest| rest.split_once(' '))
                .filter(|(path, _)| path.starts_with('/'));
            if let Some((path, content)) = write
                && tool_names(request).iter().any(|n| n == "write_file")
            {
                let args = json!({"file_path": path, "content": format!("{content}\n")});
                return vec![json!({"functionCall": {"name": "write_file", "args": args}})];
            }
            vec![json!({"text": format!("{REPLY_PREFIX}{line}")})]
        }
        LastPart::FunctionResponse(_) => vec![json!({"text": format!("{REPLY_PREFIX}done")})],
        LastPart::Nothing => vec![json!({"text": format!("{REPLY_PREFIX}(nothing)")})],
    }
}

fn response(parts: Vec<Value>) -> Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20},
        "modelVersion": "fake-gemini",
    })
}

async fn respond(
    stream: &mut TcpStream,
    request: &RecordedRequest,
    recorded: &Recorded,
    close: bool,
) -> std::io::Result<bool> {
    let path = request.path();
    if request.method != "POST" || !path.starts_with("/v1beta/models/") {
        return not_found(stream, request, close).await;
    }
    let Some(body) = request.json() else {
        let err = error_body("INVALID_ARGUMENT", "the body is not JSON");
        write_simple(stream, 400, "Bad Request", &err, close).await?;
        return Ok(true);
    };
    if path.ends_with(":countTokens") {
        let count = json!({"totalTokens": request.body.len() / 4});
        write_simple(stream, 200, "OK", count.to_string().as_bytes(), close).await?;
        return Ok(true);
    }
    if path.ends_with(":generateContent") {
        let reply = response(reply_parts(&body));
        write_simple(stream, 200, "OK", reply.to_string().as_bytes(), close).await?;
        return Ok(true);
    }
    if !path.ends_with(":streamGenerateContent") {
        return not_found(stream, request, close).await;
    }
    let parts = reply_parts(&body);
    let result = async {
        stream.write_all(SSE_HEADERS).await?;
        match parts.first().and_then(|p| p["text"].as_str()) {
            // Text in a few chunks, the last one carrying the finish reason.
            Some(text) => {
                let pieces: Vec<&str> = text.split_inclusive(' ').collect();
                for (i, piece) in pieces.iter().enumerate() {
                    let mut chunk = response(vec![json!({"text": piece})]);
                    if i + 1 < pieces.len() {
                        chunk["candidates"][0].as_object_mut().map(|c| c.remove("finishReason"));
                    }
                    send_data(stream, &chunk.to_string()).await?;
                }
            }
            None => send_data(stream, &response(parts.clone()).to_string()).await?,
        }
        stream.shutdown().await
    }
    .await;
    recorded.count_end(&result);
    result.map(|()| false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_http::test_client::{post, sse_data as chunks};

    #[tokio::test]
    async fn streams_text_and_calls_write_file_when_asked() {
        let fake = FakeGemini::start().await.unwrap();
        let stream = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse";
        let hello = json!({"contents": [{"role": "user", "parts": [{"text": "instructions\nhi there"}]}]});
        let out = post(&fake.base_url(), stream, &hello).await;
        let text: String = chunks(&out)
            .iter()
            .filter_map(|c| {
                c["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "fake-gemini says: hi there");
        assert_eq!(chunks(&out).last().unwrap()["candidates"][0]["finishReason"], "STOP");

        let tools = json!([{"functionDeclarations": [{"name": "write_file"}, {"name": "read_file"}]}]);
        let write =
            json!({"tools": tools, "contents": [{"role": "user", "parts": [{"text": "write /tmp/a.txt b c"}]}]});
        let out = post(&fake.base_url(), stream, &write).await;
        let call = &chunks(&out)[0]["candidates"][0]["content"]["parts"][0]["functionCall"];
        assert_eq!(call["name"], "write_file");
        assert_eq!(call["args"], json!({"file_path": "/tmp/a.txt", "content": "b c\n"}));

        let done = json!({"tools": tools, "contents": [
            {"role": "user", "parts": [{"text": "write /tmp/a.txt b c"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}]}]});
        let single = post(&fake.base_url(), "/v1beta/models/gemini-x:generateContent", &done).await;
        assert!(single.contains("fake-gemini says: done"), "{single}");
        let missing = post(&fake.base_url(), "/v1/other", &json!({})).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(fake.requests().len(), 4);
    }
}
