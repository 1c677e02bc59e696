//! The child's stdout as lines: a bounded line reader, and what each line
//! is (an update, a permission request, anything else for the connection,
//! or not JSON at all).

use std::borrow::Cow;
use std::io;

use agent_client_protocol::RawJsonRpcId;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// How much of an invalid line is quoted in the error.
const QUOTE_BYTES: usize = 200;

/// What a line of output is.
#[derive(Debug, PartialEq)]
pub(super) enum Line {
    NotJson,
    /// A session/update notification; its `update` object's raw text.
    Update(String),
    /// A session/update notification without an `update` object.
    MalformedUpdate,
    Permission {
        id: RawJsonRpcId,
        raw_params: String,
    },
    /// Anything else valid JSON: for the connection.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UpdateParams<'a> {
    #[serde(borrow, default)]
    update: Option<&'a RawValue>,
}

pub(super) fn classify(line: &str) -> Line {
    let is_json = || serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
    // A JSON-RPC message is an object; anything else is for the connection
    // to reject (if it is JSON at all).
    if !line.trim_start().starts_with('{') {
        return if is_json() { Line::Other } else { Line::NotJson };
    }
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(line) else {
        return if is_json() { Line::Other } else { Line::NotJson };
    };
    match (envelope.method.as_deref(), envelope.id, envelope.params) {
        (Some("session/update"), None, params) => {
            match params.and_then(|params| serde_json::from_str::<UpdateParams<'_>>(params.get()).ok()) {
                Some(UpdateParams { update: Some(update) }) => Line::Update(update.get().to_owned()),
                _ => Line::MalformedUpdate,
            }
        }
        (Some("session/request_permission"), Some(id), Some(params)) => {
            match serde_json::from_str::<RawJsonRpcId>(id.get()) {
                Ok(id) => Line::Permission {
                    id,
                    raw_params: params.get().to_owned(),
                },
                Err(_) => Line::Other,
            }
        }
        _ => Line::Other,
    }
}

/// The first [`QUOTE_BYTES`] of a line, quoted.
pub(super) fn quote(bytes: &[u8]) -> String {
    let cut = bytes.len().min(QUOTE_BYTES);
    let text = String::from_utf8_lossy(&bytes[..cut]);
    if bytes.len() > cut {
        format!("{text:?} (first {cut} of {} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

pub(super) enum ReadLine {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

/// Splits a byte stream into lines of at most `max` bytes. Cancel safe: a
/// partly read line stays in the buffer.
pub(super) struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(inner: R, max: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(64 * 1024, inner),
            buf: Vec::new(),
            max,
        }
    }

    /// The next line without its `\n` (and `\r`); a last line without a
    /// newline counts too.
    pub(super) async fn next_line(&mut self) -> io::Result<ReadLine> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() {
                    return Ok(ReadLine::Eof);
                }
                return Ok(ReadLine::Line(std::mem::take(&mut self.buf)));
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if self.buf.len() + chunk.len() > self.max {
                return Ok(ReadLine::TooLong);
            }
            self.buf.extend_from_slice(chunk);
            let consumed = newline.map_or(chunk.len(), |at| at + 1);
            self.inner.consume(consumed);
            if newline.is_some() {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(ReadLine::Line(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        assert_eq!(classify("not json"), Line::NotJson);
        assert_eq!(classify("{\"a\":"), Line::NotJson);
        assert_eq!(classify("[1,2]"), Line::Other);
        assert_eq!(classify(r#"["session/update", null, {"update": {}}]"#), Line::Other);
        assert_eq!(
            classify(
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{ "sessionUpdate" : "x" }}}"#
            ),
            Line::Update(r#"{ "sessionUpdate" : "x" }"#.to_owned())
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"session\/update","params":{"update":{"a":"\u00e9"}}}"#),
            Line::Update(r#"{"a":"\u00e9"}"#.to_owned())
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s"}}"#),
            Line::MalformedUpdate
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":"p1","method":"session/request_permission","params":{"x":[1]}}"#),
            Line::Permission {
                id: RawJsonRpcId::Str("p1".into()),
                raw_params: r#"{"x":[1]}"#.into()
            }
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{}}"#),
            Line::Permission {
                id: RawJsonRpcId::Number(7),
                raw_params: "{}".into()
            }
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}"#),
            Line::Other
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":1,"method":"session/update","params":{}}"#),
            Line::Other
        );
        assert_eq!(classify(r#"{"method":5}"#), Line::Other);
    }

    #[tokio::test]
    async fn line_reader_splits_and_caps() {
        let input: &[u8] = b"one\r\ntwo\n\nthree-is-long\nfour";
        let mut reader = LineReader::new(input, 8);
        let mut lines = Vec::new();
        loop {
            match reader.next_line().await.unwrap() {
                ReadLine::Line(line) => lines.push(String::from_utf8(line).unwrap()),
                ReadLine::TooLong => {
                    lines.push("<too long>".into());
                    break;
                }
                ReadLine::Eof => break,
            }
        }
        assert_eq!(lines, vec!["one", "two", "", "<too long>"]);

        let input: &[u8] = b"a\nlast";
        let mut reader = LineReader::new(input, 8);
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Line(line) if line == b"a"));
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Line(line) if line == b"last"));
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Eof));
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote(b"abc"), "\"abc\"");
        let long = vec![b'y'; 1000];
        let quoted = quote(&long);
        assert!(quoted.starts_with(&format!("\"{}\"", "y".repeat(200))));
        assert!(quoted.ends_with("(first 200 of 1000 bytes)"));
    }
}
