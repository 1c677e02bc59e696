//! Rendering a session's events as they stream: readable text for people
//! (the table format), JSON Lines or YAML documents for scripts; and what a
//! turn's stop reason means for the exit code.
//!
//! The renderer is pure: it returns what to write to stdout and stderr, so
//! it can be tested by feeding it events.

use std::{collections::HashMap, io::Write as _};

use anyhow::Result;
use oma_proto::pb::{self, session_event::Kind, session_update::Typed};

use crate::{
    error::exit,
    output::{self, Format},
    view,
};

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// How the text form may decorate: `tty` when stdout is a terminal (the
/// `⏺` glyph instead of `*`), `color` when it may also use ANSI styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub tty: bool,
    pub color: bool,
}

impl Style {
    #[cfg(test)]
    pub const PLAIN: Style = Style {
        tty: false,
        color: false,
    };

    /// From stdout: a terminal gets the glyphs, and dimmed thoughts unless
    /// `NO_COLOR` is set.
    pub fn detect() -> Style {
        use std::io::IsTerminal as _;
        let tty = std::io::stdout().is_terminal();
        Style {
            tty,
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// Text to write: `out` to stdout, then `err` to stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub out: String,
    pub err: String,
}

impl Rendered {
    /// Writes stdout (flushed, so it comes before stderr), then stderr. A
    /// closed stdout pipe is not an error.
    pub fn write(&self) -> Result<()> {
        if !self.out.is_empty() {
            output::print(&self.out)?;
        }
        if !self.err.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(self.err.as_bytes()).and_then(|()| err.flush());
        }
        Ok(())
    }
}

/// What streams text: agent text is written as is; thoughts and user
/// messages are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Agent,
    Thought,
    User,
}

/// What is known of a tool call so far (its updates change only what they
/// set).
#[derive(Debug, Default)]
struct Tool {
    title: String,
    status: i32,
}

/// Renders the events of one session, in order.
pub struct Renderer {
    format: Format,
    style: Style,
    session_id: String,
    /// Show turn boundaries (`> prompt`, `· turn ended: …`), as `watch`
    /// does; `prompt` and `chat` show only what the agent says.
    turns: bool,
    /// Whether stdout (as rendered so far) ends at the start of a line.
    at_line_start: bool,
    block: Option<Block>,
    tools: HashMap<String, Tool>,
}

impl Renderer {
    pub fn new(format: Format, style: Style, session_id: &str, turns: bool) -> Renderer {
        Renderer {
            format,
            style,
            session_id: session_id.to_owned(),
            turns,
            at_line_start: true,
            block: None,
            tools: HashMap::new(),
        }
    }

    /// Renders one event.
    pub fn event(&mut self, e: &pb::SessionEvent) -> Rendered {
        let mut r = Rendered::default();
        match self.format {
            Format::Json => {
                r.out = serde_json::to_string(&view::session_event(e)).unwrap_or_default() + "\n";
            }
            Format::Yaml => {
                r.out = format!(
                    "---\n{}",
                    serde_norway::to_string(&view::session_event(e)).unwrap_or_default()
                );
            }
            // `-o name` is refused before a live command starts.
            Format::Table | Format::Wide | Format::Name => self.text(e, &mut r),
        }
        r
    }

    /// A note for people on stderr (`note` is one line, without newline).
    pub fn note(&mut self, note: &str) -> Rendered {
        let mut r = Rendered::default();
        self.err_line(&mut r, note);
        r
    }

    /// Ends the text on stdout with a newline if it does not already, so
    /// that what follows starts on a line of its own.
    pub fn end_line(&mut self) -> Rendered {
        let mut r = Rendered::default();
        self.break_line(&mut r.out);
        r
    }

    fn text(&mut self, e: &pb::SessionEvent, r: &mut Rendered) {
        match &e.kind {
            Some(Kind::Update(u)) => self.update(u, r),
            Some(Kind::TurnStarted(t)) => {
                if self.turns {
                    self.blocks(&t.prompt, Block::User, r);
                    self.break_line(&mut r.out);
                }
            }
            Some(Kind::TurnEnded(t)) => {
                self.break_line(&mut r.out);
                if self.turns {
                    let mut line = format!("· turn ended: {}", view::stop_reason(t.stop_reason));
                    if !t.error.is_empty() {
                        line.push_str(&format!(": {}", one_line(&t.error)));
                    }
                    self.line(r, &line);
                }
            }
            Some(Kind::PermissionRequested(p)) => {
                if let Some(call) = &p.tool_call {
                    self.upsert_tool(call);
                }
                let line = permission_line(&self.session_id, p, self.tool_title(p.tool_call.as_ref()));
                self.line(r, &line);
            }
            Some(Kind::PermissionDecided(d)) => {
                let choice = if d.cancelled || d.option_id.is_empty() {
                    "cancelled"
                } else {
                    d.option_id.as_str()
                };
                let line = format!("permission {}: {choice} (by {})", d.request_id, d.decided_by);
                self.line(r, &line);
            }
            Some(Kind::Error(err)) => {
                let line = format!("error [{}]: {}", err.code, one_line(&err.message));
                self.err_line(r, &line);
            }
            Some(Kind::Log(l)) => {
                for text in l.message.lines() {
                    self.line(r, &format!("· {text}"));
                }
            }
            Some(Kind::WorkspaceChanges(c)) => {
                if self.turns {
                    let line = format!(
                        "· changes: {} file{} (+{} -{})",
                        c.files_changed,
                        if c.files_changed == 1 { "" } else { "s" },
                        c.insertions,
                        c.deletions
                    );
                    self.line(r, &line);
                }
            }
            Some(Kind::OptionsChanged(o)) => {
                if self.turns {
                    let mut line = "· options:".to_owned();
                    if !o.mode_id.is_empty() {
                        line.push_str(&format!(" mode {}", o.mode_id));
                    }
                    if !o.model_id.is_empty() {
                        line.push_str(&format!(" model {}", o.model_id));
                    }
                    self.line(r, &line);
                }
            }
            Some(Kind::StatusChanged(_)) | None => {}
        }
    }

    fn update(&mut self, u: &pb::SessionUpdate, r: &mut Rendered) {
        match &u.typed {
            Some(Typed::AgentMessageChunk(c)) => self.chunk(c, Block::Agent, r),
            Some(Typed::AgentThoughtChunk(c)) => self.chunk(c, Block::Thought, r),
            Some(Typed::UserMessageChunk(c)) => self.chunk(c, Block::User, r),
            Some(Typed::ToolCall(call) | Typed::ToolCallUpdate(call)) => {
                let is_new = matches!(u.typed, Some(Typed::ToolCall(_)));
                let tool = self.upsert_tool(call);
                if is_new && tool.status == 0 {
                    // ACP: a new tool call without a status is pending.
                    tool.status = pb::ToolCallStatus::Pending as i32;
                }
                let status = tool.status;
                let title = self.tool_title(Some(call));
                let glyph = if self.style.tty { "⏺" } else { "*" };
                let line = if status == 0 {
                    format!("{glyph} {title}")
                } else {
                    format!("{glyph} {title} [{}]", view::tool_status(status))
                };
                self.line(r, &line);
            }
            Some(Typed::Plan(plan)) => {
                self.line(r, "plan:");
                for entry in &plan.entries {
                    let mark = match entry.status.as_str() {
                        "completed" => "[x]",
                        "in_progress" => "[~]",
                        _ => "[ ]",
                    };
                    self.line(r, &format!("  {mark} {}", one_line(&entry.content)));
                }
            }
            Some(Typed::CurrentModeUpdate(m)) => self.line(r, &format!("· mode: {}", m.current_mode_id)),
            Some(
                Typed::AvailableCommandsUpdate(_)
                | Typed::ConfigOptionUpdate(_)
                | Typed::SessionInfoUpdate(_)
                | Typed::UsageUpdate(_),
            ) => {}
            None => {
                let kind = if u.kind.is_empty() { "unknown" } else { u.kind.as_str() };
                self.line(r, &format!("[{}]", one_line(kind)));
            }
        }
    }

    fn chunk(&mut self, c: &pb::ContentChunk, block: Block, r: &mut Rendered) {
        if let Some(content) = &c.content {
            self.blocks(std::slice::from_ref(content), block, r);
        }
    }

    /// Content blocks: text streams; other blocks are one line each.
    fn blocks(&mut self, blocks: &[pb::ContentBlock], block: Block, r: &mut Rendered) {
        use pb::content_block::Block as B;
        for b in blocks {
            match &b.block {
                Some(B::Text(t)) => self.stream(block, &t.text, &mut r.out),
                Some(B::Image(i)) => self.line(r, &format!("[image {}]", i.mime_type)),
                Some(B::Audio(a)) => self.line(r, &format!("[audio {}]", a.mime_type)),
                Some(B::ResourceLink(l)) => self.line(r, &format!("[link {}]", one_line(&l.uri))),
                Some(B::Resource(res)) => self.line(r, &format!("[resource {}]", one_line(&res.uri))),
                None => {}
            }
        }
    }

    /// Streams text of `block`, marking each line of thoughts and user
    /// messages; a different block starts on a new line.
    fn stream(&mut self, block: Block, text: &str, out: &mut String) {
        if text.is_empty() {
            return;
        }
        if self.block != Some(block) {
            self.break_line(out);
            self.block = Some(block);
        }
        let dim = block == Block::Thought && self.style.color;
        let prefix = match block {
            Block::Agent => "",
            Block::Thought if dim => "",
            Block::Thought => "[thought] ",
            Block::User => "> ",
        };
        if dim {
            out.push_str(DIM);
        }
        let text = output::printable(text, true);
        for piece in text.split_inclusive('\n') {
            if self.at_line_start {
                out.push_str(prefix);
            }
            out.push_str(piece);
            self.at_line_start = piece.ends_with('\n');
        }
        if dim {
            out.push_str(RESET);
        }
    }

    fn break_line(&mut self, out: &mut String) {
        if !self.at_line_start {
            out.push('\n');
            self.at_line_start = true;
        }
        self.block = None;
    }

    /// A whole line on stdout.
    fn line(&mut self, r: &mut Rendered, line: &str) {
        self.break_line(&mut r.out);
        r.out.push_str(&output::printable(line, false));
        r.out.push('\n');
    }

    /// A whole line on stderr. On a terminal the current stdout line is
    /// ended first; stdout to a file or pipe is left as the agent wrote it.
    fn err_line(&mut self, r: &mut Rendered, line: &str) {
        if self.style.tty {
            self.break_line(&mut r.out);
        }
        r.err.push_str(&output::printable(line, false));
        r.err.push('\n');
    }

    fn upsert_tool(&mut self, call: &pb::ToolCall) -> &mut Tool {
        let tool = self.tools.entry(call.tool_call_id.clone()).or_default();
        if !call.title.is_empty() {
            tool.title = call.title.clone();
        }
        if call.status != 0 {
            tool.status = call.status;
        }
        tool
    }

    /// The best known title of a tool call, on one line.
    fn tool_title(&self, call: Option<&pb::ToolCall>) -> String {
        let Some(call) = call else {
            return "a tool call".to_owned();
        };
        let known = self.tools.get(&call.tool_call_id).map(|t| t.title.as_str());
        let title = [call.title.as_str(), known.unwrap_or(""), call.tool_call_id.as_str()]
            .into_iter()
            .map(one_line)
            .find(|t| !t.is_empty());
        title.unwrap_or_else(|| "a tool call".to_owned())
    }
}

/// `? permission requested: TITLE — options: ID (KIND), …; answer with: …`
fn permission_line(session_id: &str, p: &pb::PermissionRequested, title: String) -> String {
    let options: Vec<String> = p
        .options
        .iter()
        .map(|o| {
            if o.kind == 0 {
                o.option_id.clone()
            } else {
                format!("{} ({})", o.option_id, view::option_kind(o.kind))
            }
        })
        .collect();
    format!(
        "? permission requested: {title} — options: {}; answer with: omactl sessions approve {session_id} {} [--option ID]",
        options.join(", "),
        p.request_id
    )
}

/// Remote text on one line, without control characters.
fn one_line(text: &str) -> String {
    output::printable(text, false).trim().to_owned()
}

/// What a turn's end means for the command: its exit code and the line to
/// print on stderr, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: u8,
    pub message: Option<String>,
}

/// `end_turn` → 0; `cancelled` → 130; `max_tokens`, `max_turn_requests`,
/// `refusal` → 8 with `turn ended: REASON`; `error` (and reasons this build
/// does not know) → 1 with `error: MESSAGE`.
pub fn outcome(ended: &pb::TurnEnded) -> Outcome {
    use pb::StopReason as S;
    let reason = view::stop_reason(ended.stop_reason);
    let stopped = |exit| Outcome {
        exit,
        message: Some(format!("turn ended: {reason}")),
    };
    match S::try_from(ended.stop_reason) {
        Ok(S::EndTurn) => Outcome { exit: 0, message: None },
        Ok(S::Cancelled) => stopped(exit::INTERRUPTED),
        Ok(S::MaxTokens | S::MaxTurnRequests | S::Refusal) => stopped(exit::STOPPED),
        Ok(S::Error) => {
            let error = one_line(&ended.error);
            let error = if error.is_empty() {
                "the turn failed and gave no reason".to_owned()
            } else {
                error
            };
            Outcome {
                exit: exit::GENERIC,
                message: Some(format!("error: {error}")),
            }
        }
        Ok(S::Unspecified) | Err(_) => Outcome {
            exit: exit::GENERIC,
            message: Some(format!("error: the turn ended with an unknown stop reason ({reason})")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "ses_0123456789abcdef0123456789abcdef";

    fn event(seq: u64, kind: Kind) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: SID.into(),
            seq,
            time: None,
            turn_id: "t1".into(),
            kind: Some(kind),
        }
    }

    fn update(kind: &str, typed: Option<Typed>) -> Kind {
        Kind::Update(pb::SessionUpdate {
            kind: kind.into(),
            raw_json: format!(r#"{{"sessionUpdate":"{kind}"}}"#),
            typed,
        })
    }

    fn text(text: &str) -> pb::ContentChunk {
        pb::ContentChunk {
            content: Some(pb::ContentBlock {
                block: Some(pb::content_block::Block::Text(pb::TextContent { text: text.into() })),
            }),
        }
    }

    fn agent(t: &str) -> Kind {
        update("agent_message_chunk", Some(Typed::AgentMessageChunk(text(t))))
    }

    fn thought(t: &str) -> Kind {
        update("agent_thought_chunk", Some(Typed::AgentThoughtChunk(text(t))))
    }

    fn tool(id: &str, title: &str, status: pb::ToolCallStatus, new: bool) -> Kind {
        let call = pb::ToolCall {
            tool_call_id: id.into(),
            title: title.into(),
            status: status as i32,
            ..Default::default()
        };
        if new {
            update("tool_call", Some(Typed::ToolCall(call)))
        } else {
            update("tool_call_update", Some(Typed::ToolCallUpdate(call)))
        }
    }

    fn ended(reason: pb::StopReason, error: &str) -> pb::TurnEnded {
        pb::TurnEnded {
            stop_reason: reason as i32,
            error: error.into(),
            usage_json: String::new(),
        }
    }

    fn permission() -> pb::PermissionRequested {
        let option = |id: &str, kind: pb::PermissionOptionKind| pb::PermissionOption {
            option_id: id.into(),
            name: id.into(),
            kind: kind as i32,
        };
        pb::PermissionRequested {
            request_id: "perm_1".into(),
            tool_call: Some(pb::ToolCall {
                tool_call_id: "call_9".into(),
                title: "Edit main.rs".into(),
                ..Default::default()
            }),
            options: vec![
                option("allow", pb::PermissionOptionKind::AllowOnce),
                option("always", pb::PermissionOptionKind::AllowAlways),
                option("reject", pb::PermissionOptionKind::RejectOnce),
            ],
            raw_json: "{}".into(),
        }
    }

    /// Renders `kinds` as seq 1, 2, …; returns (stdout, stderr).
    fn render(renderer: &mut Renderer, kinds: Vec<Kind>) -> (String, String) {
        let mut all = Rendered::default();
        for (i, kind) in kinds.into_iter().enumerate() {
            let r = renderer.event(&event(i as u64 + 1, kind));
            all.out.push_str(&r.out);
            all.err.push_str(&r.err);
        }
        (all.out, all.err)
    }

    fn plain() -> Renderer {
        Renderer::new(Format::Table, Style::PLAIN, SID, false)
    }

    #[test]
    fn agent_text_streams_and_ends_with_a_newline() {
        let (out, err) = render(
            &mut plain(),
            vec![
                Kind::TurnStarted(pb::TurnStarted::default()),
                agent("Hel"),
                agent("lo, "),
                agent("world"),
                Kind::TurnEnded(ended(pb::StopReason::EndTurn, "")),
            ],
        );
        assert_eq!(out, "Hello, world\n");
        assert_eq!(err, "");
        // Text that ends with its own newline gets no second one.
        let (out, _) = render(
            &mut plain(),
            vec![agent("hi\n"), Kind::TurnEnded(ended(pb::StopReason::EndTurn, ""))],
        );
        assert_eq!(out, "hi\n");
    }

    /// An agent (or whoever controls the machine) must not be able to drive
    /// the watcher's terminal: escape sequences never reach it, in text,
    /// logs, errors or permission options.
    #[test]
    fn remote_escape_sequences_never_reach_the_terminal() {
        let mut request = permission();
        request.options[0].option_id = "ok\u{1b}[2J".into();
        let (out, err) = render(
            &mut plain(),
            vec![
                agent("a\u{1b}]0;title\u{7}b\n\u{1b}[1Ac\td"),
                Kind::Log(pb::SessionLog {
                    message: "log\u{1b}[31m\rline".into(),
                }),
                Kind::PermissionRequested(request),
                Kind::Error(pb::SessionError {
                    code: "x\u{9b}".into(),
                    message: "bad\u{1b}[K".into(),
                }),
            ],
        );
        assert!(!out.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r']), "{out:?}");
        assert!(!err.contains(['\u{1b}', '\u{9b}']), "{err:?}");
        assert!(out.starts_with("a]0;titleb\n[1Ac\td\n"), "{out:?}");
    }

    #[test]
    fn tool_calls_are_one_line_each_with_their_status() {
        let (out, _) = render(
            &mut plain(),
            vec![
                agent("Let me look."),
                tool("c1", "Run ls", pb::ToolCallStatus::Unspecified, true),
                // Updates keep the title they do not set.
                tool("c1", "", pb::ToolCallStatus::InProgress, false),
                tool("c1", "", pb::ToolCallStatus::Completed, false),
                tool("c2", "Fetch", pb::ToolCallStatus::Failed, true),
                agent("Done."),
            ],
        );
        assert_eq!(
            out,
            "Let me look.\n\
             * Run ls [pending]\n\
             * Run ls [in_progress]\n\
             * Run ls [completed]\n\
             * Fetch [failed]\n\
             Done."
        );
        let mut tty = Renderer::new(Format::Table, Style { tty: true, color: true }, SID, false);
        let (out, _) = render(
            &mut tty,
            vec![tool("c1", "Run ls", pb::ToolCallStatus::InProgress, true)],
        );
        assert_eq!(out, "⏺ Run ls [in_progress]\n");
    }

    #[test]
    fn plans_are_checklists() {
        let entry = |content: &str, status: &str| pb::PlanEntry {
            content: content.into(),
            priority: "high".into(),
            status: status.into(),
        };
        let plan = pb::Plan {
            entries: vec![
                entry("Read the code", "completed"),
                entry("Fix the bug", "in_progress"),
                entry("Run the tests", "pending"),
            ],
        };
        let (out, _) = render(
            &mut plain(),
            vec![agent("Plan:"), update("plan", Some(Typed::Plan(plan)))],
        );
        assert_eq!(
            out,
            "Plan:\nplan:\n  [x] Read the code\n  [~] Fix the bug\n  [ ] Run the tests\n"
        );
    }

    #[test]
    fn permission_requests_and_decisions() {
        let decided = pb::PermissionDecided {
            request_id: "perm_1".into(),
            option_id: "allow".into(),
            cancelled: false,
            decided_by: "user:usr_1".into(),
        };
        let cancelled = pb::PermissionDecided {
            request_id: "perm_2".into(),
            option_id: String::new(),
            cancelled: true,
            decided_by: "cancel".into(),
        };
        let (out, _) = render(
            &mut plain(),
            vec![
                Kind::PermissionRequested(permission()),
                Kind::PermissionDecided(decided),
                Kind::PermissionDecided(cancelled),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                format!(
                    "? permission requested: Edit main.rs — options: allow (allow_once), always (allow_always), reject (reject_once); answer with: omactl sessions approve {SID} perm_1 [--option ID]"
                )
                .as_str(),
                "permission perm_1: allow (by user:usr_1)",
                "permission perm_2: cancelled (by cancel)",
            ]
        );
        // A request for a known tool call without a title uses the known one.
        let mut renderer = plain();
        let mut request = permission();
        request.tool_call.as_mut().unwrap().title.clear();
        let (out, _) = render(
            &mut renderer,
            vec![
                tool("call_9", "Write file", pb::ToolCallStatus::Pending, true),
                Kind::PermissionRequested(request),
            ],
        );
        assert!(out.contains("? permission requested: Write file — options:"), "{out}");
    }

    #[test]
    fn thoughts_errors_logs_and_unknown_kinds() {
        let (out, err) = render(
            &mut plain(),
            vec![
                agent("a"),
                thought("thinking\nhard"),
                thought(" still"),
                agent("b"),
                Kind::Error(pb::SessionError {
                    code: "child_exited".into(),
                    message: "the agent exited\nwith 1".into(),
                }),
                Kind::Log(pb::SessionLog {
                    message: "session/load unsupported".into(),
                }),
                update("oma_future_kind", None),
                Kind::StatusChanged(pb::SessionStatusChanged::default()),
                update("usage_update", Some(Typed::UsageUpdate(pb::Usage::default()))),
            ],
        );
        assert_eq!(
            out,
            "a\n[thought] thinking\n[thought] hard still\nb\n· session/load unsupported\n[oma_future_kind]\n"
        );
        assert_eq!(err, "error [child_exited]: the agent exited with 1\n");
        let mut tty = Renderer::new(Format::Table, Style { tty: true, color: true }, SID, false);
        let (out, _) = render(&mut tty, vec![thought("hmm"), agent("ok")]);
        assert_eq!(out, format!("{DIM}hmm{RESET}\nok"));
        // On a terminal, stderr lines start on a line of their own.
        let error = Kind::Error(pb::SessionError {
            code: "acp_error".into(),
            message: "boom".into(),
        });
        let (out, err) = render(&mut tty, vec![agent("more"), error]);
        assert_eq!((out.as_str(), err.as_str()), ("more\n", "error [acp_error]: boom\n"));
    }

    #[test]
    fn watching_shows_turn_boundaries() {
        let mut renderer = Renderer::new(Format::Table, Style::PLAIN, SID, true);
        let started = pb::TurnStarted {
            prompt: vec![text("echo hi\nplan").content.unwrap()],
            requested_by_user_id: "usr_1".into(),
        };
        let (out, _) = render(
            &mut renderer,
            vec![
                Kind::TurnStarted(started),
                agent("hi"),
                Kind::TurnEnded(ended(pb::StopReason::Error, "the agent crashed")),
            ],
        );
        assert_eq!(out, "> echo hi\n> plan\nhi\n· turn ended: error: the agent crashed\n");
    }

    #[test]
    fn json_lines_carry_seq_turn_kind_and_the_raw_update() {
        let mut renderer = Renderer::new(Format::Json, Style::PLAIN, SID, false);
        let (out, _) = render(
            &mut renderer,
            vec![agent("hi"), Kind::TurnEnded(ended(pb::StopReason::EndTurn, ""))],
        );
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[0]["turn_id"], "t1");
        assert_eq!(lines[0]["kind"], "update");
        assert_eq!(lines[0]["update"]["kind"], "agent_message_chunk");
        assert_eq!(lines[0]["update"]["raw_json"]["sessionUpdate"], "agent_message_chunk");
        assert_eq!(lines[0]["update"]["agent_message_chunk"]["content"]["text"], "hi");
        assert_eq!(lines[1]["kind"], "turn_ended");
        assert_eq!(lines[1]["turn_ended"]["stop_reason"], "end_turn");
        let mut yaml = Renderer::new(Format::Yaml, Style::PLAIN, SID, false);
        let (out, _) = render(&mut yaml, vec![agent("hi")]);
        assert!(out.starts_with("---\n") && out.contains("kind: update\n"), "{out}");
    }

    #[test]
    fn stop_reasons_map_to_exit_codes() {
        use pb::StopReason as S;
        let code = |reason, error| outcome(&ended(reason, error));
        assert_eq!(code(S::EndTurn, ""), Outcome { exit: 0, message: None });
        assert_eq!(code(S::Cancelled, "").exit, 130);
        for reason in [S::MaxTokens, S::MaxTurnRequests, S::Refusal] {
            let o = code(reason, "");
            assert_eq!(o.exit, exit::STOPPED);
            assert_ne!(o.exit, exit::USAGE, "a stopped turn is not a usage error");
            assert_eq!(
                o.message.unwrap(),
                format!("turn ended: {}", view::stop_reason(reason as i32))
            );
        }
        assert_eq!(code(S::MaxTokens, "").message.unwrap(), "turn ended: max_tokens");
        let error = code(S::Error, "the agent exited with status 3");
        assert_eq!(
            (error.exit, error.message.unwrap().as_str()),
            (1, "error: the agent exited with status 3")
        );
        assert_eq!(code(S::Unspecified, "").exit, 1);
    }
}
