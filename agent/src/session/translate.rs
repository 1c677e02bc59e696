//! Pure translations between ACP JSON and the typed `oma.v1` mirrors.
//!
//! Everything here is lenient by design: a kind this version does not know, or
//! a known kind whose fields have the wrong types, still becomes a
//! [`pb::SessionUpdate`] that carries the agent's raw JSON, only without the
//! typed view. Nothing the agent sends can make these functions fail (other
//! than text that is not JSON at all) or panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oma_proto::pb;
use serde_json::{Map, Value, json};

/// Why a raw update could not be translated at all.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The text is not JSON.
    #[error("the session update is not JSON: {0}")]
    InvalidJson(#[from] serde_json::Error),
}

/// A known field had the wrong type: the typed view is dropped.
#[derive(Debug)]
struct Malformed;

type Parsed<T> = Result<T, Malformed>;

/// Translates a `session/update` notification's `update` object given as the
/// exact JSON text the agent wrote; `raw_json` is that text, byte for byte.
pub fn update_from_raw(raw_update_json: &str) -> Result<pb::SessionUpdate, TranslateError> {
    let value: Value = serde_json::from_str(raw_update_json)?;
    let (kind, typed) = typed_update(&value);
    Ok(pb::SessionUpdate {
        kind,
        raw_json: raw_update_json.to_owned(),
        typed,
    })
}

/// Translates a `session/update` notification's `update` object. `raw_json`
/// is the value serialized again; prefer [`update_from_raw`] when the agent's
/// own text is at hand.
pub fn update_from_acp(update: &Value) -> pb::SessionUpdate {
    let (kind, typed) = typed_update(update);
    pb::SessionUpdate {
        kind,
        raw_json: update.to_string(),
        typed,
    }
}

/// The `sessionUpdate` tag and the typed view of an update object.
fn typed_update(update: &Value) -> (String, Option<pb::session_update::Typed>) {
    let Some(object) = update.as_object() else {
        return (String::new(), None);
    };
    let Some(kind) = object.get("sessionUpdate").and_then(Value::as_str) else {
        return (String::new(), None);
    };
    (kind.to_owned(), typed_of_kind(kind, object).ok().flatten())
}

/// `Ok(None)` for kinds this version does not know, `Err` for malformed known kinds.
fn typed_of_kind(kind: &str, object: &Map<String, Value>) -> Parsed<Option<pb::session_update::Typed>> {
    use pb::session_update::Typed;
    Ok(Some(match kind {
        "user_message_chunk" => Typed::UserMessageChunk(content_chunk(object)?),
        "agent_message_chunk" => Typed::AgentMessageChunk(content_chunk(object)?),
        "agent_thought_chunk" => Typed::AgentThoughtChunk(content_chunk(object)?),
        "tool_call" => Typed::ToolCall(tool_call(object, true)?),
        "tool_call_update" => Typed::ToolCallUpdate(tool_call(object, true)?),
        "plan" => Typed::Plan(plan(object)?),
        "available_commands_update" => Typed::AvailableCommandsUpdate(available_commands(object)?),
        "current_mode_update" => Typed::CurrentModeUpdate(pb::CurrentMode {
            current_mode_id: required_str(object, "currentModeId")?,
        }),
        "config_option_update" => Typed::ConfigOptionUpdate(pb::ConfigOptionUpdate {
            config_options_json: present(object, "configOptions").ok_or(Malformed)?.to_string(),
        }),
        "session_info_update" => Typed::SessionInfoUpdate(pb::SessionInfo {
            title: optional_str(object, "title")?,
            updated_at: optional_str(object, "updatedAt")?,
        }),
        "usage_update" => Typed::UsageUpdate(pb::Usage {
            used: required_u64(object, "used")?,
            size: required_u64(object, "size")?,
            cost_json: present(object, "cost").map(Value::to_string).unwrap_or_default(),
        }),
        _ => return Ok(None),
    }))
}

fn content_chunk(object: &Map<String, Value>) -> Parsed<pb::ContentChunk> {
    let content = object.get("content").ok_or(Malformed)?;
    Ok(pb::ContentChunk {
        content: Some(content_block_from_acp(content).ok_or(Malformed)?),
    })
}

/// A tool call (or an update of one). `strict`: a field of the wrong type
/// makes the whole call malformed; otherwise such fields are left unset.
fn tool_call(object: &Map<String, Value>, strict: bool) -> Parsed<pb::ToolCall> {
    let lenient = |parsed: Parsed<String>| match parsed {
        Ok(value) => Ok(value),
        Err(Malformed) if !strict => Ok(String::new()),
        Err(Malformed) => Err(Malformed),
    };
    let tool_call_id = if strict {
        required_str(object, "toolCallId")?
    } else {
        lenient(optional_str(object, "toolCallId"))?
    };
    let kind = lenient(optional_str(object, "kind"))?;
    let status = lenient(optional_str(object, "status"))?;
    let json_of = |key: &str| present(object, key).map(Value::to_string).unwrap_or_default();
    Ok(pb::ToolCall {
        tool_call_id,
        title: lenient(optional_str(object, "title"))?,
        kind: tool_kind(&kind) as i32,
        status: tool_call_status(&status) as i32,
        content_json: json_of("content"),
        locations_json: json_of("locations"),
        raw_input_json: json_of("rawInput"),
        raw_output_json: json_of("rawOutput"),
    })
}

/// The ACP `ToolKind`; empty means unset (unchanged), a kind this version
/// does not know is `OTHER`.
fn tool_kind(kind: &str) -> pb::ToolKind {
    match kind {
        "" => pb::ToolKind::Unspecified,
        "read" => pb::ToolKind::Read,
        "edit" => pb::ToolKind::Edit,
        "delete" => pb::ToolKind::Delete,
        "move" => pb::ToolKind::Move,
        "search" => pb::ToolKind::Search,
        "execute" => pb::ToolKind::Execute,
        "think" => pb::ToolKind::Think,
        "fetch" => pb::ToolKind::Fetch,
        "switch_mode" => pb::ToolKind::SwitchMode,
        _ => pb::ToolKind::Other,
    }
}

/// The ACP `ToolCallStatus`; empty or unknown means unset.
fn tool_call_status(status: &str) -> pb::ToolCallStatus {
    match status {
        "pending" => pb::ToolCallStatus::Pending,
        "in_progress" => pb::ToolCallStatus::InProgress,
        "completed" => pb::ToolCallStatus::Completed,
        "failed" => pb::ToolCallStatus::Failed,
        _ => pb::ToolCallStatus::Unspecified,
    }
}

fn plan(object: &Map<String, Value>) -> Parsed<pb::Plan> {
    let entries = object.get("entries").and_then(Value::as_array).ok_or(Malformed)?;
    let entries = entries
        .iter()
        .map(|entry| {
            let entry = entry.as_object().ok_or(Malformed)?;
            Ok(pb::PlanEntry {
                content: required_str(entry, "content")?,
                priority: optional_str(entry, "priority")?,
                status: optional_str(entry, "status")?,
            })
        })
        .collect::<Parsed<Vec<_>>>()?;
    Ok(pb::Plan { entries })
}

fn available_commands(object: &Map<String, Value>) -> Parsed<pb::AvailableCommands> {
    let commands = object
        .get("availableCommands")
        .and_then(Value::as_array)
        .ok_or(Malformed)?;
    let commands = commands
        .iter()
        .map(|command| {
            let command = command.as_object().ok_or(Malformed)?;
            let input_hint = match present(command, "input") {
                None => String::new(),
                Some(Value::Object(input)) => optional_str(input, "hint")?,
                Some(_) => return Err(Malformed),
            };
            Ok(pb::AvailableCommand {
                name: required_str(command, "name")?,
                description: optional_str(command, "description")?,
                input_hint,
            })
        })
        .collect::<Parsed<Vec<_>>>()?;
    Ok(pb::AvailableCommands { commands })
}

/// Translates an ACP `ContentBlock`; `None` when it is not an object, its
/// `type` is unknown, or a field has the wrong type (including `data` that
/// is not base64).
pub fn content_block_from_acp(block: &Value) -> Option<pb::ContentBlock> {
    content_block(block.as_object()?).ok()
}

fn content_block(object: &Map<String, Value>) -> Parsed<pb::ContentBlock> {
    use pb::content_block::Block;
    let block = match object.get("type").and_then(Value::as_str).ok_or(Malformed)? {
        "text" => Block::Text(pb::TextContent {
            text: required_str(object, "text")?,
        }),
        "image" => Block::Image(pb::ImageContent {
            mime_type: required_str(object, "mimeType")?,
            data: base64_field(object, "data")?,
            uri: optional_str(object, "uri")?,
        }),
        "audio" => Block::Audio(pb::AudioContent {
            mime_type: required_str(object, "mimeType")?,
            data: base64_field(object, "data")?,
        }),
        "resource_link" => Block::ResourceLink(pb::ResourceLink {
            uri: required_str(object, "uri")?,
            name: required_str(object, "name")?,
            mime_type: optional_str(object, "mimeType")?,
            title: optional_str(object, "title")?,
            description: optional_str(object, "description")?,
            size: optional_u64(object, "size")?,
        }),
        "resource" => {
            let resource = object.get("resource").and_then(Value::as_object).ok_or(Malformed)?;
            let contents = if present(resource, "text").is_some() {
                pb::embedded_resource::Contents::Text(required_str(resource, "text")?)
            } else if present(resource, "blob").is_some() {
                pb::embedded_resource::Contents::Blob(base64_field(resource, "blob")?)
            } else {
                return Err(Malformed);
            };
            Block::Resource(pb::EmbeddedResource {
                uri: required_str(resource, "uri")?,
                mime_type: optional_str(resource, "mimeType")?,
                contents: Some(contents),
            })
        }
        _ => return Err(Malformed),
    };
    Ok(pb::ContentBlock { block: Some(block) })
}

/// Translates a content block to ACP JSON. Binary data is base64-encoded;
/// empty optional strings and a zero `size` are left out. A block with no
/// content becomes an empty text block.
pub fn content_block_to_acp(block: &pb::ContentBlock) -> Value {
    use pb::content_block::Block;
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_owned(), value);
    };
    match &block.block {
        None => {
            put("type", json!("text"));
            put("text", json!(""));
        }
        Some(Block::Text(text)) => {
            put("type", json!("text"));
            put("text", json!(text.text));
        }
        Some(Block::Image(image)) => {
            put("type", json!("image"));
            put("data", json!(BASE64.encode(&image.data)));
            put("mimeType", json!(image.mime_type));
            if !image.uri.is_empty() {
                put("uri", json!(image.uri));
            }
        }
        Some(Block::Audio(audio)) => {
            put("type", json!("audio"));
            put("data", json!(BASE64.encode(&audio.data)));
            put("mimeType", json!(audio.mime_type));
        }
        Some(Block::ResourceLink(link)) => {
            put("type", json!("resource_link"));
            put("uri", json!(link.uri));
            put("name", json!(link.name));
            for (key, value) in [
                ("mimeType", &link.mime_type),
                ("title", &link.title),
                ("description", &link.description),
            ] {
                if !value.is_empty() {
                    put(key, json!(value));
                }
            }
            if link.size != 0 {
                put("size", json!(link.size));
            }
        }
        Some(Block::Resource(resource)) => {
            let mut inner = Map::new();
            inner.insert("uri".to_owned(), json!(resource.uri));
            if !resource.mime_type.is_empty() {
                inner.insert("mimeType".to_owned(), json!(resource.mime_type));
            }
            match &resource.contents {
                Some(pb::embedded_resource::Contents::Blob(blob)) => {
                    inner.insert("blob".to_owned(), json!(BASE64.encode(blob)));
                }
                Some(pb::embedded_resource::Contents::Text(text)) => {
                    inner.insert("text".to_owned(), json!(text));
                }
                None => {
                    inner.insert("text".to_owned(), json!(""));
                }
            }
            put("type", json!("resource"));
            put("resource", Value::Object(inner));
        }
    }
    Value::Object(object)
}

/// A `session/request_permission` request as the control plane gets it, or
/// why it cannot be passed on. Option ids become keys on the control plane,
/// and the answer names one of them back to the agent: ids that are too
/// long, hold control characters or repeat each other cannot be offered
/// safely. Such a request is refused here (the caller answers the agent
/// `cancelled` and records an error event) instead of reaching the control
/// plane, which refuses the frame and ends the machine's whole stream.
pub fn permission_requested(request_id: String, raw_params: String) -> Result<pb::PermissionRequested, String> {
    let params: Value = serde_json::from_str(&raw_params).unwrap_or_default();
    let (tool_call, options) = permission_from_acp(&params);
    let requested = pb::PermissionRequested {
        request_id,
        tool_call: Some(tool_call),
        options,
        raw_json: raw_params,
    };
    oma_proto::validate::permission_requested(&requested)
        .map_err(|e| format!("refused the agent's permission request (answered cancelled): {e}"))?;
    Ok(requested)
}

/// The `sessionId` of a `session/new` answer. The control plane stores and
/// logs it, so it must be an id like any other a machine sends: one bounded
/// line.
pub fn session_id_from_acp(created: &Value) -> Result<String, String> {
    let id = created
        .get("sessionId")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("session/new answered without a sessionId: {created}"))?;
    oma_proto::validate::opaque_id("sessionId", id, true)
        .map_err(|e| format!("session/new answered with an unusable {e}"))?;
    Ok(id.to_owned())
}

/// The tool call and the options of a `session/request_permission` request's
/// params. Best effort: fields of the wrong type are left unset and options
/// without a string `optionId` are skipped. Option names are labels: control
/// characters become spaces and long ones are cut.
pub fn permission_from_acp(params: &Value) -> (pb::ToolCall, Vec<pb::PermissionOption>) {
    let tool_call = params
        .get("toolCall")
        .and_then(Value::as_object)
        .and_then(|object| tool_call(object, false).ok())
        .unwrap_or_default();
    let options = params
        .get("options")
        .and_then(Value::as_array)
        .map(|options| {
            options
                .iter()
                .filter_map(Value::as_object)
                .filter_map(|option| {
                    let option_id = option.get("optionId").and_then(Value::as_str)?;
                    let text = |key: &str| option.get(key).and_then(Value::as_str).unwrap_or_default();
                    Some(pb::PermissionOption {
                        option_id: option_id.to_owned(),
                        name: label(text("name")),
                        kind: permission_option_kind(text("kind")) as i32,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    (tool_call, options)
}

/// A human label from the agent, fit for the control plane's labels.
fn label(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(oma_proto::validate::MAX_MACHINE_LABEL_CHARS)
        .collect()
}

fn permission_option_kind(kind: &str) -> pb::PermissionOptionKind {
    match kind {
        "allow_once" => pb::PermissionOptionKind::AllowOnce,
        "allow_always" => pb::PermissionOptionKind::AllowAlways,
        "reject_once" => pb::PermissionOptionKind::RejectOnce,
        "reject_always" => pb::PermissionOptionKind::RejectAlways,
        _ => pb::PermissionOptionKind::Unspecified,
    }
}

/// An ACP `stopReason`; unknown values are `UNSPECIFIED`.
pub fn stop_reason_from_acp(reason: &str) -> pb::StopReason {
    match reason {
        "end_turn" => pb::StopReason::EndTurn,
        "max_tokens" => pb::StopReason::MaxTokens,
        "max_turn_requests" => pb::StopReason::MaxTurnRequests,
        "refusal" => pb::StopReason::Refusal,
        "cancelled" => pb::StopReason::Cancelled,
        _ => pb::StopReason::Unspecified,
    }
}

/// A field that is present and not `null`.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn required_str(object: &Map<String, Value>, key: &str) -> Parsed<String> {
    present(object, key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Malformed)
}

/// A string field that may be absent or `null` (then empty).
fn optional_str(object: &Map<String, Value>, key: &str) -> Parsed<String> {
    match present(object, key) {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(Malformed),
    }
}

fn required_u64(object: &Map<String, Value>, key: &str) -> Parsed<u64> {
    present(object, key).and_then(Value::as_u64).ok_or(Malformed)
}

fn optional_u64(object: &Map<String, Value>, key: &str) -> Parsed<u64> {
    match present(object, key) {
        None => Ok(0),
        Some(value) => value.as_u64().ok_or(Malformed),
    }
}

fn base64_field(object: &Map<String, Value>, key: &str) -> Parsed<Vec<u8>> {
    let text = present(object, key).and_then(Value::as_str).ok_or(Malformed)?;
    BASE64.decode(text).map_err(|_| Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::session_update::Typed;

    fn typed(raw: &str) -> Option<Typed> {
        let update = update_from_raw(raw).unwrap();
        assert_eq!(update.raw_json, raw, "raw_json is the input, byte for byte");
        update.typed
    }

    fn text_block(text: &str) -> pb::ContentBlock {
        pb::ContentBlock {
            block: Some(pb::content_block::Block::Text(pb::TextContent { text: text.into() })),
        }
    }

    #[test]
    fn chunks_of_every_role() {
        for (kind, expect) in [
            (
                "user_message_chunk",
                Typed::UserMessageChunk as fn(pb::ContentChunk) -> Typed,
            ),
            ("agent_message_chunk", Typed::AgentMessageChunk),
            ("agent_thought_chunk", Typed::AgentThoughtChunk),
        ] {
            let raw = format!(r#"{{"sessionUpdate":"{kind}","content":{{"type":"text","text":"hi"}}}}"#);
            let update = update_from_raw(&raw).unwrap();
            assert_eq!(update.kind, kind);
            assert_eq!(
                update.typed,
                Some(expect(pb::ContentChunk {
                    content: Some(text_block("hi"))
                }))
            );
        }
    }

    #[test]
    fn raw_json_keeps_the_agents_bytes() {
        let raw = "{ \"sessionUpdate\" : \"agent_message_chunk\",\n \"content\":{\"text\":\"\\u00e9\",\"type\":\"text\"}, \"n\": 1.50 }";
        let update = update_from_raw(raw).unwrap();
        assert_eq!(update.raw_json, raw);
        assert_eq!(
            update.typed,
            Some(Typed::AgentMessageChunk(pb::ContentChunk {
                content: Some(text_block("é"))
            }))
        );
    }

    #[test]
    fn tool_call_and_update() {
        let raw = r#"{"sessionUpdate":"tool_call","toolCallId":"t1","title":"Read","kind":"read","status":"pending","content":[{"type":"content","content":{"type":"text","text":"x"}}],"locations":[{"path":"/a"}],"rawInput":{"b":1,"a":2},"rawOutput":"done"}"#;
        let Some(Typed::ToolCall(call)) = typed(raw) else {
            panic!("not a tool call")
        };
        assert_eq!(call.tool_call_id, "t1");
        assert_eq!(call.title, "Read");
        assert_eq!(call.kind, pb::ToolKind::Read as i32);
        assert_eq!(call.status, pb::ToolCallStatus::Pending as i32);
        assert_eq!(
            call.content_json,
            r#"[{"type":"content","content":{"type":"text","text":"x"}}]"#
        );
        assert_eq!(call.locations_json, r#"[{"path":"/a"}]"#);
        assert_eq!(call.raw_input_json, r#"{"b":1,"a":2}"#);
        assert_eq!(call.raw_output_json, r#""done""#);

        let raw = r#"{"sessionUpdate":"tool_call_update","toolCallId":"t1","status":"completed"}"#;
        let Some(Typed::ToolCallUpdate(call)) = typed(raw) else {
            panic!("not a tool call update")
        };
        assert_eq!(
            call,
            pb::ToolCall {
                tool_call_id: "t1".into(),
                status: pb::ToolCallStatus::Completed as i32,
                ..Default::default()
            }
        );
    }

    #[test]
    fn tool_kinds_and_statuses() {
        for (kind, expect) in [
            ("read", pb::ToolKind::Read),
            ("edit", pb::ToolKind::Edit),
            ("delete", pb::ToolKind::Delete),
            ("move", pb::ToolKind::Move),
            ("search", pb::ToolKind::Search),
            ("execute", pb::ToolKind::Execute),
            ("think", pb::ToolKind::Think),
            ("fetch", pb::ToolKind::Fetch),
            ("switch_mode", pb::ToolKind::SwitchMode),
            ("other", pb::ToolKind::Other),
            ("teleport", pb::ToolKind::Other),
        ] {
            assert_eq!(tool_kind(kind), expect, "{kind}");
        }
        for (status, expect) in [
            ("pending", pb::ToolCallStatus::Pending),
            ("in_progress", pb::ToolCallStatus::InProgress),
            ("completed", pb::ToolCallStatus::Completed),
            ("failed", pb::ToolCallStatus::Failed),
            ("exploded", pb::ToolCallStatus::Unspecified),
        ] {
            assert_eq!(tool_call_status(status), expect, "{status}");
        }
    }

    #[test]
    fn plan_commands_mode_config_info_usage() {
        let raw = r#"{"sessionUpdate":"plan","entries":[{"content":"a","priority":"high","status":"pending"},{"content":"b","priority":"low","status":"completed"}]}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::Plan(pb::Plan {
                entries: vec![
                    pb::PlanEntry {
                        content: "a".into(),
                        priority: "high".into(),
                        status: "pending".into()
                    },
                    pb::PlanEntry {
                        content: "b".into(),
                        priority: "low".into(),
                        status: "completed".into()
                    },
                ]
            }))
        );

        let raw = r#"{"sessionUpdate":"available_commands_update","availableCommands":[{"name":"test","description":"Run","input":{"hint":"file"}},{"name":"x","description":"y","input":null}]}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::AvailableCommandsUpdate(pb::AvailableCommands {
                commands: vec![
                    pb::AvailableCommand {
                        name: "test".into(),
                        description: "Run".into(),
                        input_hint: "file".into()
                    },
                    pb::AvailableCommand {
                        name: "x".into(),
                        description: "y".into(),
                        input_hint: String::new()
                    },
                ]
            }))
        );

        let raw = r#"{"sessionUpdate":"current_mode_update","currentModeId":"plan"}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::CurrentModeUpdate(pb::CurrentMode {
                current_mode_id: "plan".into()
            }))
        );

        let raw = r#"{"sessionUpdate":"config_option_update","configOptions":[{"id":"model","currentValue":"m"}]}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::ConfigOptionUpdate(pb::ConfigOptionUpdate {
                config_options_json: r#"[{"id":"model","currentValue":"m"}]"#.into()
            }))
        );

        let raw = r#"{"sessionUpdate":"session_info_update","title":"T","updatedAt":"2025-01-01T00:00:00Z"}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::SessionInfoUpdate(pb::SessionInfo {
                title: "T".into(),
                updated_at: "2025-01-01T00:00:00Z".into()
            }))
        );
        let raw = r#"{"sessionUpdate":"session_info_update","title":null}"#;
        assert_eq!(typed(raw), Some(Typed::SessionInfoUpdate(pb::SessionInfo::default())));

        let raw =
            r#"{"sessionUpdate":"usage_update","used":1234,"size":200000,"cost":{"amount":0.0123,"currency":"USD"}}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::UsageUpdate(pb::Usage {
                used: 1234,
                size: 200_000,
                cost_json: r#"{"amount":0.0123,"currency":"USD"}"#.into()
            }))
        );
        let raw = r#"{"sessionUpdate":"usage_update","used":1,"size":2}"#;
        assert_eq!(
            typed(raw),
            Some(Typed::UsageUpdate(pb::Usage {
                used: 1,
                size: 2,
                cost_json: String::new()
            }))
        );
    }

    #[test]
    fn unknown_kinds_keep_raw_only() {
        let raw = r#"{"sessionUpdate":"oma_future_kind","payload":{"x":1}}"#;
        let update = update_from_raw(raw).unwrap();
        assert_eq!(update.kind, "oma_future_kind");
        assert_eq!(update.raw_json, raw);
        assert_eq!(update.typed, None);

        for raw in [
            r#"{"payload":1}"#,
            r#"{"sessionUpdate":7}"#,
            "[1,2]",
            "\"text\"",
            "null",
            "3",
        ] {
            let update = update_from_raw(raw).unwrap();
            assert_eq!(update.kind, "", "{raw}");
            assert_eq!(update.raw_json, raw);
            assert_eq!(update.typed, None);
        }
    }

    #[test]
    fn malformed_known_kinds_keep_raw_only() {
        for raw in [
            r#"{"sessionUpdate":"agent_message_chunk"}"#,
            r#"{"sessionUpdate":"agent_message_chunk","content":"hi"}"#,
            r#"{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":5}}"#,
            r#"{"sessionUpdate":"agent_message_chunk","content":{"type":"hologram","text":"x"}}"#,
            r#"{"sessionUpdate":"user_message_chunk","content":{"type":"image","data":"!!!","mimeType":"image/png"}}"#,
            r#"{"sessionUpdate":"tool_call","title":"no id"}"#,
            r#"{"sessionUpdate":"tool_call","toolCallId":3}"#,
            r#"{"sessionUpdate":"tool_call_update","toolCallId":"t","status":7}"#,
            r#"{"sessionUpdate":"tool_call","toolCallId":"t","kind":["read"]}"#,
            r#"{"sessionUpdate":"plan","entries":{}}"#,
            r#"{"sessionUpdate":"plan","entries":[{"content":1}]}"#,
            r#"{"sessionUpdate":"plan","entries":[3]}"#,
            r#"{"sessionUpdate":"available_commands_update"}"#,
            r#"{"sessionUpdate":"available_commands_update","availableCommands":[{"description":"no name"}]}"#,
            r#"{"sessionUpdate":"available_commands_update","availableCommands":[{"name":"a","input":"hint"}]}"#,
            r#"{"sessionUpdate":"current_mode_update"}"#,
            r#"{"sessionUpdate":"current_mode_update","currentModeId":{}}"#,
            r#"{"sessionUpdate":"config_option_update"}"#,
            r#"{"sessionUpdate":"session_info_update","title":1}"#,
            r#"{"sessionUpdate":"usage_update","used":-1,"size":2}"#,
            r#"{"sessionUpdate":"usage_update","used":1.5,"size":2}"#,
            r#"{"sessionUpdate":"usage_update","used":"1","size":2}"#,
        ] {
            let update = update_from_raw(raw).unwrap();
            assert!(!update.kind.is_empty(), "{raw}");
            assert_eq!(update.raw_json, raw);
            assert_eq!(update.typed, None, "{raw}");
        }
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(update_from_raw("this is not json {{{").is_err());
        assert!(update_from_raw("").is_err());
        assert!(update_from_raw(r#"{"sessionUpdate":"plan""#).is_err());
    }

    #[test]
    fn update_from_value() {
        let value = json!({"sessionUpdate": "current_mode_update", "currentModeId": "ask"});
        let update = update_from_acp(&value);
        assert_eq!(update.kind, "current_mode_update");
        assert_eq!(
            update.raw_json,
            r#"{"sessionUpdate":"current_mode_update","currentModeId":"ask"}"#
        );
        assert_eq!(
            update.typed,
            Some(Typed::CurrentModeUpdate(pb::CurrentMode {
                current_mode_id: "ask".into()
            }))
        );
    }

    #[test]
    fn content_blocks_round_trip() {
        use pb::content_block::Block;
        let blocks = [
            Block::Text(pb::TextContent { text: "hello".into() }),
            Block::Image(pb::ImageContent {
                mime_type: "image/png".into(),
                data: vec![0, 1, 2, 255],
                uri: "file:///a.png".into(),
            }),
            Block::Image(pb::ImageContent {
                mime_type: "image/jpeg".into(),
                data: b"jpeg".to_vec(),
                uri: String::new(),
            }),
            Block::Audio(pb::AudioContent {
                mime_type: "audio/wav".into(),
                data: vec![9; 100],
            }),
            Block::ResourceLink(pb::ResourceLink {
                uri: "file:///x.rs".into(),
                name: "x.rs".into(),
                mime_type: "text/x-rust".into(),
                title: "X".into(),
                description: "a file".into(),
                size: 42,
            }),
            Block::ResourceLink(pb::ResourceLink {
                uri: "https://example.com".into(),
                name: "site".into(),
                ..Default::default()
            }),
            Block::Resource(pb::EmbeddedResource {
                uri: "file:///t.txt".into(),
                mime_type: "text/plain".into(),
                contents: Some(pb::embedded_resource::Contents::Text("text".into())),
            }),
            Block::Resource(pb::EmbeddedResource {
                uri: "file:///b.bin".into(),
                mime_type: String::new(),
                contents: Some(pb::embedded_resource::Contents::Blob(vec![7, 8, 9])),
            }),
        ];
        for block in blocks {
            let block = pb::ContentBlock { block: Some(block) };
            let acp = content_block_to_acp(&block);
            assert_eq!(content_block_from_acp(&acp), Some(block.clone()), "{acp}");
        }
    }

    #[test]
    fn content_block_wire_shapes() {
        let image = pb::ContentBlock {
            block: Some(pb::content_block::Block::Image(pb::ImageContent {
                mime_type: "image/png".into(),
                data: b"abc".to_vec(),
                uri: String::new(),
            })),
        };
        assert_eq!(
            content_block_to_acp(&image),
            json!({"type": "image", "data": "YWJj", "mimeType": "image/png"})
        );
        let resource = json!({"type": "resource", "resource": {"uri": "u", "blob": "YWJj"}});
        assert_eq!(
            content_block_from_acp(&resource),
            Some(pb::ContentBlock {
                block: Some(pb::content_block::Block::Resource(pb::EmbeddedResource {
                    uri: "u".into(),
                    mime_type: String::new(),
                    contents: Some(pb::embedded_resource::Contents::Blob(b"abc".to_vec())),
                }))
            })
        );
        assert_eq!(
            content_block_to_acp(&pb::ContentBlock { block: None }),
            json!({"type": "text", "text": ""})
        );
        for bad in [
            json!("text"),
            json!({"text": "no type"}),
            json!({"type": "image", "data": "YWJj"}),
            json!({"type": "audio", "mimeType": "audio/wav", "data": 3}),
            json!({"type": "resource_link", "uri": "u"}),
            json!({"type": "resource_link", "uri": "u", "name": "n", "size": -3}),
            json!({"type": "resource", "resource": {"uri": "u"}}),
            json!({"type": "resource", "resource": {"text": "no uri"}}),
            json!({"type": "resource", "resource": {"uri": "u", "blob": "%%%"}}),
        ] {
            assert_eq!(content_block_from_acp(&bad), None, "{bad}");
        }
    }

    #[test]
    fn permission_requests() {
        let params = json!({
            "sessionId": "s",
            "toolCall": {"toolCallId": "perm-1", "title": "Write file", "kind": "edit"},
            "options": [
                {"optionId": "allow", "name": "Allow once", "kind": "allow_once"},
                {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
                {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
                {"optionId": "never", "name": "Never", "kind": "reject_always"},
                {"optionId": "odd", "name": "Odd", "kind": "maybe"},
                {"name": "no id"},
                "garbage"
            ]
        });
        let (call, options) = permission_from_acp(&params);
        assert_eq!(
            call,
            pb::ToolCall {
                tool_call_id: "perm-1".into(),
                title: "Write file".into(),
                kind: pb::ToolKind::Edit as i32,
                ..Default::default()
            }
        );
        let kinds: Vec<(String, i32)> = options.iter().map(|o| (o.option_id.clone(), o.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("allow".into(), pb::PermissionOptionKind::AllowOnce as i32),
                ("always".into(), pb::PermissionOptionKind::AllowAlways as i32),
                ("reject".into(), pb::PermissionOptionKind::RejectOnce as i32),
                ("never".into(), pb::PermissionOptionKind::RejectAlways as i32),
                ("odd".into(), pb::PermissionOptionKind::Unspecified as i32),
            ]
        );
        assert_eq!(options[0].name, "Allow once");

        // Wrong types are left unset, never an error.
        let (call, options) = permission_from_acp(&json!({"toolCall": {"toolCallId": 5, "title": "T", "status": 1}}));
        assert_eq!(call.tool_call_id, "");
        assert_eq!(call.title, "T");
        assert!(options.is_empty());
        let (call, options) = permission_from_acp(&json!("nonsense"));
        assert_eq!(call, pb::ToolCall::default());
        assert!(options.is_empty());
    }

    fn permission_params(options: Value) -> String {
        json!({
            "sessionId": "s",
            "toolCall": {"toolCallId": "t", "title": "Write"},
            "options": options,
        })
        .to_string()
    }

    #[test]
    fn usable_permission_requests_pass_unchanged() {
        let raw = permission_params(json!([
            {"optionId": "allow", "name": "Allow\u{7} once\n", "kind": "allow_once"},
            {"optionId": "reject", "name": "x".repeat(1000), "kind": "reject_once"},
        ]));
        let requested = permission_requested("g1.perm-1".into(), raw.clone()).unwrap();
        assert_eq!(requested.request_id, "g1.perm-1");
        assert_eq!(
            requested.raw_json, raw,
            "the raw params are kept as the agent sent them"
        );
        let ids: Vec<&str> = requested.options.iter().map(|o| o.option_id.as_str()).collect();
        assert_eq!(ids, ["allow", "reject"]);
        assert_eq!(requested.options[0].name, "Allow  once ");
        assert_eq!(
            requested.options[1].name.chars().count(),
            oma_proto::validate::MAX_MACHINE_LABEL_CHARS
        );
        // What the daemon sends is what the control plane accepts.
        oma_proto::validate::permission_requested(&requested).unwrap();
    }

    #[test]
    fn unusable_option_ids_are_refused_with_the_reason() {
        let long = "o".repeat(3000);
        for (options, reason) in [
            (
                json!([{"optionId": "a\u{0}b", "kind": "allow_once"}]),
                "options[0].option_id",
            ),
            (json!([{"optionId": "ok"}, {"optionId": long}]), "options[1].option_id"),
            (json!([{"optionId": "a\nb"}]), "options[0].option_id"),
            (json!([{"optionId": "\u{1b}[31m"}]), "options[0].option_id"),
            (json!([{"optionId": ""}]), "options[0].option_id"),
            (
                json!([{"optionId": "same"}, {"optionId": "other"}, {"optionId": "same"}]),
                "options[2].option_id",
            ),
            (json!(vec![json!({"optionId": "x"}); 65]), "options"),
        ] {
            let err = permission_requested("g1.perm-1".into(), permission_params(options.clone())).unwrap_err();
            assert!(err.contains(reason), "{options}: {err}");
            assert!(err.contains("cancelled"), "{err}");
            assert!(!err.contains(&"o".repeat(200)), "the reason does not quote the value");
        }
    }

    #[test]
    fn the_session_wide_request_id_is_bounded() {
        let raw = permission_params(json!([{"optionId": "allow"}]));
        assert!(permission_requested(format!("g1.{}", "9".repeat(200)), raw.clone()).is_err());
        assert!(permission_requested("g1.perm\u{0}".into(), raw.clone()).is_err());
        assert!(permission_requested(format!("g{}.perm-{}", u64::MAX, u64::MAX), raw).is_ok());
    }

    #[test]
    fn acp_session_ids_must_be_usable_ids() {
        assert_eq!(session_id_from_acp(&json!({"sessionId": "sess-1"})).unwrap(), "sess-1");
        for bad in [
            json!({}),
            json!({"sessionId": 7}),
            json!({"sessionId": ""}),
            json!({"sessionId": "a\u{0}b"}),
            json!({"sessionId": "x".repeat(129)}),
        ] {
            let err = session_id_from_acp(&bad).unwrap_err();
            assert!(err.starts_with("session/new answered"), "{err}");
        }
    }

    #[test]
    fn stop_reasons() {
        for (reason, expect) in [
            ("end_turn", pb::StopReason::EndTurn),
            ("max_tokens", pb::StopReason::MaxTokens),
            ("max_turn_requests", pb::StopReason::MaxTurnRequests),
            ("refusal", pb::StopReason::Refusal),
            ("cancelled", pb::StopReason::Cancelled),
            ("tired", pb::StopReason::Unspecified),
            ("", pb::StopReason::Unspecified),
        ] {
            assert_eq!(stop_reason_from_acp(reason), expect, "{reason}");
        }
    }
}
