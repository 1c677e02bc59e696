//! Input validation shared by the control plane (which enforces it) and the
//! clients (which can check early). Every failure names the field and says
//! what to fix.

use std::fmt;

use crate::pb;

/// A field of a request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field path, e.g. `spec.runtime_binding.runtime_id`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// Prefixes the field path with `parent.`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

pub type Validated<T> = Result<T, ValidationError>;

/// Longest slug (names of users, agents, skills, prompts).
pub const MAX_SLUG_CHARS: usize = 64;

/// A slug: 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit.
pub fn slug(field: &str, value: &str) -> Validated<String> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_SLUG_CHARS {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {MAX_SLUG_CHARS} characters, got {}",
                value.chars().count()
            ),
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let all_ok = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !all_ok {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not a valid name: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Free text of at most `max_chars` characters with no control characters
/// other than newline and tab. May be empty unless `required`.
pub fn text(field: &str, value: &str, max_chars: usize, required: bool) -> Validated<String> {
    if required && value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let count = value.chars().count();
    if count > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters, got {count}"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(ValidationError::new(
            field,
            format!("must not contain control character U+{:04X}", c as u32),
        ));
    }
    Ok(value.to_owned())
}

/// A single-line label: like [`text`] but without line breaks.
pub fn label(field: &str, value: &str, max_chars: usize, required: bool) -> Validated<String> {
    let value = text(field, value, max_chars, required)?;
    if value.contains(['\n', '\r', '\t']) {
        return Err(ValidationError::new(field, "must be a single line"));
    }
    Ok(value)
}

/// A byte-size limit on a large field.
pub fn max_bytes(field: &str, len: usize, max: usize) -> Validated<()> {
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("is {len} bytes, more than the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// A relative path inside a skill folder: `/`-separated, no `..`, no empty,
/// `.`-only or hidden-traversal segments, no leading `/`, no backslashes.
pub fn relative_path(field: &str, value: &str) -> Validated<String> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > 512 {
        return Err(ValidationError::new(field, "must be at most 512 bytes"));
    }
    if value.starts_with('/') || value.contains('\\') || value.contains('\0') {
        return Err(ValidationError::new(
            field,
            format!("{value:?} must be a relative '/'-separated path"),
        ));
    }
    for segment in value.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(ValidationError::new(
                field,
                format!("{value:?} must not contain empty, '.' or '..' segments"),
            ));
        }
    }
    Ok(value.to_owned())
}

/// Page size: 0 means the default; more than [`MAX_PAGE_SIZE`] is refused.
pub fn page_size(value: u32) -> Validated<usize> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n as usize > MAX_PAGE_SIZE => Err(ValidationError::new(
            "page.page_size",
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

// ---------------------------------------------------------------------------
// What a machine sends on its stream
//
// A machine (and, through it, an ACP agent) chooses many strings the control
// plane stores in TEXT columns, uses as keys, or logs. One bad byte there (a
// NUL, which PostgreSQL refuses in TEXT; an id too long for an index) once
// failed the commit of every runtime's events. So every frame is checked here
// before the control plane acts on it, and the daemon checks what it builds
// from an ACP agent's output with the same rules.

/// Longest id a machine may send, in bytes: session, turn, permission
/// request and option ids, ACP session ids, instance ids.
pub const MAX_ID_BYTES: usize = 128;
/// Longest human label a machine may send (agent, skill and option names),
/// in characters.
pub const MAX_MACHINE_LABEL_CHARS: usize = 256;
/// Longest local skill description, in characters (the daemon keeps 1024).
pub const MAX_SKILL_DESCRIPTION_CHARS: usize = 4096;
/// Longest `capabilities_json` of a manifest entry, in bytes.
pub const MAX_CAPABILITIES_JSON_BYTES: usize = 64 * 1024;
/// Most ACP agents a manifest may list.
pub const MAX_MANIFEST_AGENTS: usize = 256;
/// Most known problems one manifest entry may list, and the longest, in
/// characters.
pub const MAX_AGENT_PROBLEMS: usize = 16;
pub const MAX_AGENT_PROBLEM_CHARS: usize = 1024;
/// Most local skills one manifest entry may list.
pub const MAX_LOCAL_SKILLS: usize = 10_000;
/// Most local MCP servers, and allow-list entries, a manifest may list.
pub const MAX_MANIFEST_MCP_SERVERS: usize = 256;
/// Longest MCP URL allow-list entry, in characters.
pub const MAX_ALLOWED_URL_CHARS: usize = 2048;
/// Most sessions a Hello may report as held.
pub const MAX_HELD_SESSIONS: usize = 100_000;
/// Most events one frame may carry.
pub const MAX_FRAME_EVENTS: usize = 10_000;
/// Most distinct sessions the events of one frame may name (enforced where
/// the control plane groups them, which counts them anyway).
pub const MAX_FRAME_SESSIONS: usize = 1_000;
/// Most options one permission request may offer.
pub const MAX_PERMISSION_OPTIONS: usize = 64;

/// An id another program chose (a machine, an ACP agent): at most
/// [`MAX_ID_BYTES`] bytes and no control character, so a single line with no
/// NUL. Empty is allowed unless `required`. The error never quotes the value
/// (it may be megabytes of anything).
pub fn opaque_id(field: &str, value: &str, required: bool) -> Validated<()> {
    if value.is_empty() {
        return match required {
            true => Err(ValidationError::new(field, "is required")),
            false => Ok(()),
        };
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes; an id is at most {MAX_ID_BYTES} bytes", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(ValidationError::new(
            field,
            format!("must be one line without control characters; found U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Checks a frame from a machine before the control plane acts on it: every
/// id it may store, key on or log is an [`opaque_id`], labels are bounded
/// single lines, lists are bounded. Field paths start at the frame's case,
/// e.g. `events.events[3].permission_requested.options[1].option_id`.
///
/// Session ids may be empty: an unknown session (empty included) is refused
/// where it is looked up, without ending the stream.
pub fn agent_frame(frame: &pb::AgentFrame) -> Validated<()> {
    use pb::agent_frame::Frame;
    match &frame.frame {
        None => Err(ValidationError::new(
            "frame",
            "is empty or of a kind this server does not know",
        )),
        Some(Frame::Hello(hello)) => self::hello(hello).map_err(|e| e.within("hello")),
        Some(Frame::Heartbeat(_)) => Ok(()),
        Some(Frame::SessionReady(ready)) => {
            opaque_id("session_ready.session_id", &ready.session_id, false)?;
            opaque_id("session_ready.acp_session_id", &ready.acp_session_id, false)
        }
        Some(Frame::Event(frame)) => {
            let event = frame
                .event
                .as_ref()
                .ok_or_else(|| ValidationError::new("event.event", "is required"))?;
            session_event(event).map_err(|e| e.within("event.event"))
        }
        Some(Frame::Events(batch)) => {
            if batch.events.len() > MAX_FRAME_EVENTS {
                return Err(ValidationError::new(
                    "events.events",
                    format!(
                        "holds {} events; a frame carries at most {MAX_FRAME_EVENTS}",
                        batch.events.len()
                    ),
                ));
            }
            for (i, event) in batch.events.iter().enumerate() {
                session_event(event).map_err(|e| e.within(&format!("events.events[{i}]")))?;
            }
            Ok(())
        }
        Some(Frame::SessionFailed(failed)) => opaque_id("session_failed.session_id", &failed.session_id, false),
        Some(Frame::SessionDisposed(disposed)) => opaque_id("session_disposed.session_id", &disposed.session_id, false),
        Some(Frame::Ack(ack)) => opaque_id("ack.command_id", &ack.command_id, false),
        Some(Frame::ManifestUpdate(update)) => match &update.manifest {
            Some(m) => manifest(m).map_err(|e| e.within("manifest_update.manifest")),
            None => Ok(()),
        },
        Some(Frame::Deregister(_)) => Ok(()),
        Some(Frame::DiffChunk(chunk)) => {
            opaque_id("diff_chunk.request_id", &chunk.request_id, true)?;
            text("diff_chunk.error", &chunk.error, 1024, false)?;
            Ok(())
        }
    }
}

/// A Hello: the machine id as pairing accepted it, bounded labels, the
/// manifest, and the sessions the machine holds.
pub fn hello(hello: &pb::Hello) -> Validated<()> {
    // The same rules as ExchangeConnectCode's fields.
    label("machine_id", &hello.machine_id, 128, true)?;
    opaque_id("instance_id", &hello.instance_id, false)?;
    label("agent_version", &hello.agent_version, 64, false)?;
    label("os", &hello.os, 64, false)?;
    label("arch", &hello.arch, 64, false)?;
    if let Some(m) = &hello.manifest {
        manifest(m).map_err(|e| e.within("manifest"))?;
    }
    if hello.sessions.len() > MAX_HELD_SESSIONS {
        return Err(ValidationError::new(
            "sessions",
            format!(
                "lists {} sessions; a Hello lists at most {MAX_HELD_SESSIONS}",
                hello.sessions.len()
            ),
        ));
    }
    for (i, held) in hello.sessions.iter().enumerate() {
        opaque_id(&format!("sessions[{i}].session_id"), &held.session_id, true)?;
    }
    Ok(())
}

/// A manifest: the machine's word about itself, bounded and well-formed.
pub fn manifest(manifest: &pb::Manifest) -> Validated<()> {
    if manifest.acp_agents.len() > MAX_MANIFEST_AGENTS {
        return Err(ValidationError::new(
            "acp_agents",
            format!("more than {MAX_MANIFEST_AGENTS} agents"),
        ));
    }
    for (i, agent) in manifest.acp_agents.iter().enumerate() {
        let field = |name: &str| format!("acp_agents[{i}].{name}");
        slug(&field("id"), &agent.id)?;
        label(&field("name"), &agent.name, MAX_MACHINE_LABEL_CHARS, false)?;
        label(&field("version"), &agent.version, 64, false)?;
        // The mode the machine switches sessions to, as ACP names modes.
        opaque_id(&field("ask_mode_id"), &agent.ask_mode_id, false)?;
        max_bytes(
            &field("capabilities_json"),
            agent.capabilities_json.len(),
            MAX_CAPABILITIES_JSON_BYTES,
        )?;
        if agent.problems.len() > MAX_AGENT_PROBLEMS {
            return Err(ValidationError::new(
                field("problems"),
                format!("more than {MAX_AGENT_PROBLEMS} problems"),
            ));
        }
        for (j, problem) in agent.problems.iter().enumerate() {
            label(
                &field(&format!("problems[{j}]")),
                problem,
                MAX_AGENT_PROBLEM_CHARS,
                true,
            )?;
        }
        if agent.local_skills.len() > MAX_LOCAL_SKILLS {
            return Err(ValidationError::new(
                field("local_skills"),
                format!("more than {MAX_LOCAL_SKILLS} skills"),
            ));
        }
        for (j, skill) in agent.local_skills.iter().enumerate() {
            let field = |name: &str| format!("acp_agents[{i}].local_skills[{j}].{name}");
            crate::model::local_skill_id(&field("id"), &skill.id)?;
            label(&field("name"), &skill.name, MAX_MACHINE_LABEL_CHARS, false)?;
            text(
                &field("description"),
                &skill.description,
                MAX_SKILL_DESCRIPTION_CHARS,
                false,
            )?;
            opaque_id(&field("plugin_name"), &skill.plugin_name, false)?;
        }
    }
    if manifest.local_mcp_servers.len() > MAX_MANIFEST_MCP_SERVERS {
        return Err(ValidationError::new(
            "local_mcp_servers",
            format!("more than {MAX_MANIFEST_MCP_SERVERS} servers"),
        ));
    }
    for (i, server) in manifest.local_mcp_servers.iter().enumerate() {
        let field = |name: &str| format!("local_mcp_servers[{i}].{name}");
        crate::model::local_mcp_server_id(&field("id"), &server.id)?;
        label(&field("name"), &server.name, MAX_MACHINE_LABEL_CHARS, false)?;
        text(
            &field("description"),
            &server.description,
            MAX_SKILL_DESCRIPTION_CHARS,
            false,
        )?;
    }
    if manifest.mcp_url_allow_list.len() > MAX_MANIFEST_MCP_SERVERS {
        return Err(ValidationError::new(
            "mcp_url_allow_list",
            format!("more than {MAX_MANIFEST_MCP_SERVERS} entries"),
        ));
    }
    for (i, entry) in manifest.mcp_url_allow_list.iter().enumerate() {
        label(&format!("mcp_url_allow_list[{i}]"), entry, MAX_ALLOWED_URL_CHARS, true)?;
    }
    if manifest.workspaces.len() > crate::workspace::MAX_WORKSPACES {
        return Err(ValidationError::new(
            "workspaces",
            format!("more than {} workspaces", crate::workspace::MAX_WORKSPACES),
        ));
    }
    for (i, workspace) in manifest.workspaces.iter().enumerate() {
        crate::workspace::reported(workspace).map_err(|e| e.within(&format!("workspaces[{i}]")))?;
        if manifest.workspaces[..i].iter().any(|w| w.id == workspace.id) {
            return Err(ValidationError::new(
                format!("workspaces[{i}].id"),
                "repeats an earlier workspace's id; ids must be unique",
            ));
        }
    }
    Ok(())
}

/// One session event as a machine numbered it.
pub fn session_event(event: &pb::SessionEvent) -> Validated<()> {
    use pb::session_event::Kind;
    opaque_id("session_id", &event.session_id, false)?;
    if event.seq == 0 {
        return Err(ValidationError::new("seq", "an event with seq 0: seqs start at 1"));
    }
    opaque_id("turn_id", &event.turn_id, false)?;
    match &event.kind {
        Some(Kind::PermissionRequested(request)) => {
            permission_requested(request).map_err(|e| e.within("permission_requested"))
        }
        Some(Kind::PermissionDecided(decided)) => {
            opaque_id("permission_decided.request_id", &decided.request_id, true)?;
            opaque_id("permission_decided.option_id", &decided.option_id, false)?;
            opaque_id("permission_decided.decided_by", &decided.decided_by, false)
        }
        Some(Kind::StatusChanged(change)) => opaque_id("status_changed.acp_session_id", &change.acp_session_id, false),
        Some(Kind::OptionsChanged(options)) => {
            crate::session_options::reported(options).map_err(|e| e.within("options_changed"))
        }
        Some(Kind::WorkspaceChanges(changes)) => {
            crate::workspace::changes(changes).map_err(|e| e.within("workspace_changes"))
        }
        _ => Ok(()),
    }
}

/// A permission request: its id, and options whose ids are usable keys
/// (present, bounded, one line, unique) and whose names are short labels.
pub fn permission_requested(request: &pb::PermissionRequested) -> Validated<()> {
    opaque_id("request_id", &request.request_id, true)?;
    if request.options.len() > MAX_PERMISSION_OPTIONS {
        return Err(ValidationError::new(
            "options",
            format!(
                "offers {} options; a request offers at most {MAX_PERMISSION_OPTIONS}",
                request.options.len()
            ),
        ));
    }
    for (i, option) in request.options.iter().enumerate() {
        opaque_id(&format!("options[{i}].option_id"), &option.option_id, true)?;
        label(
            &format!("options[{i}].name"),
            &option.name,
            MAX_MACHINE_LABEL_CHARS,
            false,
        )?;
        if request.options[..i].iter().any(|o| o.option_id == option.option_id) {
            return Err(ValidationError::new(
                format!("options[{i}].option_id"),
                "repeats an earlier option's id; option ids must be unique",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(slug("name", "reviewer-1.a_b").is_ok());
        assert!(slug("name", "").is_err());
        assert!(slug("name", "-x").is_err());
        assert!(slug("name", "Upper").is_err());
        assert!(slug("name", "a/b").is_err());
        assert!(slug("name", &"a".repeat(65)).is_err());
        assert!(slug("name", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn texts() {
        assert!(text("t", "line\nline", 20, false).is_ok());
        assert!(text("t", "bell\u{7}", 20, false).is_err());
        assert!(text("t", " ", 20, true).is_err());
        assert!(label("t", "a\nb", 20, false).is_err());
    }

    #[test]
    fn opaque_ids() {
        assert!(opaque_id("id", "", false).is_ok());
        assert_eq!(opaque_id("id", "", true).unwrap_err().message, "is required");
        assert!(opaque_id("id", "perm-1", true).is_ok());
        assert!(
            opaque_id("id", "../../etc/passwd", true).is_ok(),
            "ids are opaque, not paths"
        );
        assert!(opaque_id("id", "é", true).is_ok());
        assert!(opaque_id("id", &"a".repeat(MAX_ID_BYTES), true).is_ok());
        let long = opaque_id("x.request_id", &"a".repeat(MAX_ID_BYTES + 1), true).unwrap_err();
        assert_eq!(long.field, "x.request_id");
        assert!(long.message.contains("129 bytes"), "{}", long.message);
        // Counted in bytes: 65 two-byte characters are too long.
        assert!(opaque_id("id", &"é".repeat(65), true).is_err());
        for bad in [
            "a\0b",
            "\0",
            "a\nb",
            "a\rb",
            "a\tb",
            "\u{1b}[31m",
            "a\u{7f}",
            "a\u{85}",
            "a\u{2028}b",
        ] {
            let e = opaque_id("id", bad, true).unwrap_err();
            assert!(e.message.contains("control characters"), "{bad:?}: {}", e.message);
        }
        // The value is never quoted back.
        let e = opaque_id("id", &format!("secret\0{}", "x".repeat(10)), true).unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    fn event(session_id: &str, seq: u64, kind: Option<pb::session_event::Kind>) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: session_id.into(),
            seq,
            time: None,
            turn_id: String::new(),
            kind,
        }
    }

    fn events_frame(events: Vec<pb::SessionEvent>) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Events(pb::SessionEventBatch { events })),
        }
    }

    fn request(request_id: &str, option_ids: &[&str]) -> pb::session_event::Kind {
        pb::session_event::Kind::PermissionRequested(pb::PermissionRequested {
            request_id: request_id.into(),
            tool_call: None,
            options: option_ids
                .iter()
                .map(|id| pb::PermissionOption {
                    option_id: (*id).into(),
                    name: "Allow".into(),
                    kind: pb::PermissionOptionKind::AllowOnce as i32,
                })
                .collect(),
            raw_json: "{\"raw\":\"\\u0000 is fine in the payload\"}".into(),
        })
    }

    fn field_of(frame: pb::AgentFrame) -> String {
        agent_frame(&frame).unwrap_err().field
    }

    #[test]
    fn frames_name_the_bad_field() {
        use pb::agent_frame::Frame;
        use pb::session_event::Kind;
        let ok = events_frame(vec![
            event("ses_a", 1, Some(request("g1.perm-1", &["allow", "reject"]))),
            event("", 1, None),
            event("../../x", 2, None),
        ]);
        agent_frame(&ok).unwrap();
        let nul = "a\0b";
        let long = "x".repeat(3000);
        let cases: Vec<(pb::AgentFrame, &str)> = vec![
            (pb::AgentFrame { frame: None }, "frame"),
            (events_frame(vec![event(nul, 1, None)]), "events.events[0].session_id"),
            (
                events_frame(vec![event("s", 1, None), event(&long, 1, None)]),
                "events.events[1].session_id",
            ),
            (events_frame(vec![event("s", 0, None)]), "events.events[0].seq"),
            (
                events_frame(vec![pb::SessionEvent {
                    turn_id: nul.into(),
                    ..event("s", 1, None)
                }]),
                "events.events[0].turn_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request(nul, &["a"])))]),
                "events.events[0].permission_requested.request_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request("", &["a"])))]),
                "events.events[0].permission_requested.request_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request("r", &["a", &long])))]),
                "events.events[0].permission_requested.options[1].option_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request("r", &["a", "b\0"])))]),
                "events.events[0].permission_requested.options[1].option_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request("r", &["a", ""])))]),
                "events.events[0].permission_requested.options[1].option_id",
            ),
            (
                events_frame(vec![event("s", 1, Some(request("r", &["a", "b", "a"])))]),
                "events.events[0].permission_requested.options[2].option_id",
            ),
            (
                events_frame(vec![event(
                    "s",
                    1,
                    Some(request("r", &vec!["x"; MAX_PERMISSION_OPTIONS + 1])),
                )]),
                "events.events[0].permission_requested.options",
            ),
            (
                events_frame(vec![event(
                    "s",
                    1,
                    Some(Kind::PermissionDecided(pb::PermissionDecided {
                        request_id: "r".into(),
                        option_id: "a".into(),
                        cancelled: false,
                        decided_by: format!("user:{nul}"),
                    })),
                )]),
                "events.events[0].permission_decided.decided_by",
            ),
            (
                events_frame(vec![event(
                    "s",
                    1,
                    Some(Kind::PermissionDecided(pb::PermissionDecided {
                        request_id: "r".into(),
                        option_id: long.clone(),
                        cancelled: false,
                        decided_by: "policy".into(),
                    })),
                )]),
                "events.events[0].permission_decided.option_id",
            ),
            (
                events_frame(vec![event(
                    "s",
                    1,
                    Some(Kind::StatusChanged(pb::SessionStatusChanged {
                        status: 1,
                        acp_session_id: long.clone(),
                    })),
                )]),
                "events.events[0].status_changed.acp_session_id",
            ),
            (
                events_frame(vec![event("s", 1, None); MAX_FRAME_EVENTS + 1]),
                "events.events",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::Event(pb::SessionEventFrame { event: None })),
                },
                "event.event",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::Event(pb::SessionEventFrame {
                        event: Some(event(nul, 1, None)),
                    })),
                },
                "event.event.session_id",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::SessionReady(pb::SessionReady {
                        session_id: "s".into(),
                        acp_session_id: nul.into(),
                        resumed: false,
                    })),
                },
                "session_ready.acp_session_id",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::SessionFailed(pb::SessionFailed {
                        session_id: long.clone(),
                        error: None,
                    })),
                },
                "session_failed.session_id",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::SessionDisposed(pb::SessionDisposed { session_id: nul.into() })),
                },
                "session_disposed.session_id",
            ),
            (
                pb::AgentFrame {
                    frame: Some(Frame::Ack(pb::ControlAck {
                        command_id: long.clone(),
                    })),
                },
                "ack.command_id",
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(field_of(frame), expected);
        }
    }

    fn hello() -> pb::Hello {
        pb::Hello {
            machine_id: "m-1".into(),
            instance_id: "0123abcd".into(),
            agent_version: "0.1.0".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            manifest: Some(pb::Manifest {
                acp_agents: vec![pb::AcpAgentInfo {
                    id: "claude".into(),
                    name: "Claude Code".into(),
                    version: "1.2.3".into(),
                    capabilities_json: "{}".into(),
                    local_skills: vec![pb::LocalSkill {
                        id: "pdf".into(),
                        name: "PDF".into(),
                        description: "Reads PDFs.\nAnd writes them.".into(),
                        source: 1,
                        plugin_name: String::new(),
                    }],
                    ask_support: pb::AskSupport::AcpMode as i32,
                    ask_mode_id: "default".into(),
                    problems: vec!["@zed-industries/claude-agent-acp 0.23.1 is known to answer every prompt after a cancel with an empty turn; install @agentclientprotocol/claude-agent-acp".into()],
                }],
                local_mcp_servers: vec![pb::LocalMcpServer {
                    id: "fs".into(),
                    name: "Files".into(),
                    description: "Reads files.".into(),
                }],
                mcp_url_allow_list: vec!["https://mcp.example.com/".into()],
                workspaces: vec![pb::Workspace {
                    id: "web".into(),
                    name: "Web app".into(),
                    is_git: true,
                    current_branch: "main".into(),
                    default_branch: "main".into(),
                    remote_url: "https://github.com/acme/web.git".into(),
                    direct_allowed: false,
                    problem: String::new(),
                }],
            }),
            sessions: vec![pb::HeldSession {
                session_id: "ses_x".into(),
                last_sent_seq: 3,
            }],
        }
    }

    #[test]
    fn hellos_and_manifests() {
        let frame = |hello: pb::Hello| pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(hello)),
        };
        agent_frame(&frame(hello())).unwrap();
        type Edit = Box<dyn Fn(&mut pb::Hello)>;
        fn agent(h: &mut pb::Hello) -> &mut pb::AcpAgentInfo {
            &mut h.manifest.as_mut().unwrap().acp_agents[0]
        }
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|h| h.machine_id = "m\0".into()), "hello.machine_id"),
            (Box::new(|h| h.machine_id = String::new()), "hello.machine_id"),
            (Box::new(move |h| h.instance_id = "x".repeat(3000)), "hello.instance_id"),
            (Box::new(|h| h.os = "linux\n".into()), "hello.os"),
            (
                Box::new(|h| h.sessions[0].session_id = "s\0".into()),
                "hello.sessions[0].session_id",
            ),
            (
                Box::new(|h| {
                    h.sessions = vec![
                        pb::HeldSession {
                            session_id: "s".into(),
                            last_sent_seq: 0
                        };
                        MAX_HELD_SESSIONS + 1
                    ]
                }),
                "hello.sessions",
            ),
            (
                Box::new(|h| h.manifest.as_mut().unwrap().local_mcp_servers[0].id = "fs\0".into()),
                "hello.manifest.local_mcp_servers[0].id",
            ),
            (
                Box::new(|h| h.manifest.as_mut().unwrap().local_mcp_servers[0].name = "n\n".into()),
                "hello.manifest.local_mcp_servers[0].name",
            ),
            (
                Box::new(|h| h.manifest.as_mut().unwrap().mcp_url_allow_list[0] = "x".repeat(3000)),
                "hello.manifest.mcp_url_allow_list[0]",
            ),
            (
                Box::new(|h| agent(h).id = "Bad Id".into()),
                "hello.manifest.acp_agents[0].id",
            ),
            (
                Box::new(|h| agent(h).name = "a\0".into()),
                "hello.manifest.acp_agents[0].name",
            ),
            (
                Box::new(|h| agent(h).version = "1\n2".into()),
                "hello.manifest.acp_agents[0].version",
            ),
            (
                Box::new(move |h| agent(h).capabilities_json = "x".repeat(MAX_CAPABILITIES_JSON_BYTES + 1)),
                "hello.manifest.acp_agents[0].capabilities_json",
            ),
            (
                Box::new(|h| agent(h).ask_mode_id = "x".repeat(MAX_ID_BYTES + 1)),
                "hello.manifest.acp_agents[0].ask_mode_id",
            ),
            (
                Box::new(|h| agent(h).ask_mode_id = "mode\n".into()),
                "hello.manifest.acp_agents[0].ask_mode_id",
            ),
            (
                Box::new(|h| agent(h).problems[0] = "broken\0".into()),
                "hello.manifest.acp_agents[0].problems[0]",
            ),
            (
                Box::new(|h| agent(h).problems = vec!["p".into(); MAX_AGENT_PROBLEMS + 1]),
                "hello.manifest.acp_agents[0].problems",
            ),
            (
                Box::new(move |h| agent(h).local_skills[0].id = "a/b".into()),
                "hello.manifest.acp_agents[0].local_skills[0].id",
            ),
            (
                Box::new(move |h| agent(h).local_skills[0].name = "\u{1b}[2J".into()),
                "hello.manifest.acp_agents[0].local_skills[0].name",
            ),
            (
                Box::new(move |h| agent(h).local_skills[0].description = "d\0".into()),
                "hello.manifest.acp_agents[0].local_skills[0].description",
            ),
            (
                Box::new(move |h| agent(h).local_skills[0].plugin_name = "p\0".into()),
                "hello.manifest.acp_agents[0].local_skills[0].plugin_name",
            ),
        ];
        for (edit, expected) in cases {
            let mut h = hello();
            edit(&mut h);
            assert_eq!(field_of(frame(h)), expected);
        }
        // A manifest update is held to the same rules.
        let mut manifest = hello().manifest.unwrap();
        manifest.acp_agents[0].local_skills[0].name = "x".repeat(MAX_MACHINE_LABEL_CHARS + 1);
        assert_eq!(
            field_of(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::ManifestUpdate(pb::ManifestUpdate {
                    manifest: Some(manifest)
                })),
            }),
            "manifest_update.manifest.acp_agents[0].local_skills[0].name"
        );
    }

    #[test]
    fn paths() {
        assert!(relative_path("p", "SKILL.md").is_ok());
        assert!(relative_path("p", "scripts/run.sh").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(relative_path("p", bad).is_err(), "{bad}");
        }
    }
}
