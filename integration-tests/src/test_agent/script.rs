//! The prompt script language of `oma-test-agent`.
//!
//! A prompt's text blocks, joined with newlines, are a script: one directive
//! per line, `;` also separates directives. Blank pieces and pieces starting
//! with `#` are skipped. The first word names the directive, the rest of the
//! piece (trimmed) is its argument.

use agent_client_protocol::v1::schema::StopReason;

/// One step of a prompt script.
#[derive(Debug, Clone, PartialEq)]
pub enum Directive {
    /// `echo TEXT`: one agent_message_chunk.
    Echo(String),
    /// `chunks N [PER_SEC]`: N numbered agent_message_chunks, optionally paced.
    Chunks { count: u64, per_sec: Option<f64> },
    /// `thought TEXT`: one agent_thought_chunk.
    Thought(String),
    /// `user TEXT`: one user_message_chunk.
    User(String),
    /// `tool`: tool_call, then in_progress and completed updates.
    Tool,
    /// `plan`: a plan with three entries.
    Plan,
    /// `all-kinds`: one update of every stable kind.
    AllKinds,
    /// `unknown-kind`: an update of a kind no schema knows.
    UnknownKind,
    /// `permission`: a session/request_permission round trip.
    Permission,
    /// `sleep MS`: wait, cut short by session/cancel.
    Sleep(u64),
    /// `stop REASON`: end the turn with this stop reason.
    Stop(StopReason),
    /// `error MESSAGE`: answer the prompt with a JSON-RPC error.
    Error(String),
    /// `crash [CODE]`: flush stdout and exit the process.
    Crash(i32),
    /// `garbage`: a line that is not JSON.
    Garbage,
    /// `invalid-utf8`: a line that is not UTF-8.
    InvalidUtf8,
    /// `hang`: never answer this prompt.
    Hang,
    /// `big BYTES`: one agent_message_chunk of BYTES bytes of `x`.
    Big(usize),
    /// `env NAME`: report an environment variable.
    Env(String),
    /// `leak-env NAME`: echo an environment variable's value the ways an
    /// agent leaks a secret: in its text (as is, base64, URL-safe base64
    /// and hex), in a tool call's content and raw output (`NAME=value`
    /// lines, also base64), in a plan entry, and on stderr.
    LeakEnv(String),
    /// `cwd`: report the session's working directory.
    Cwd,
    /// `cat PATH`: report a file's content (relative to the session cwd).
    Cat(String),
    /// `list-skills`: the folders under `$CLAUDE_CONFIG_DIR/skills`.
    ListSkills,
    /// `system-prompt`: the system prompt the session was created with.
    SystemPrompt,
    /// `symlink TARGET LINK`: replace `LINK` (relative to the session cwd,
    /// file or folder) with a symlink to `TARGET`, as a compromised agent
    /// could between two starts.
    Symlink { target: String, link: String },
    /// `mcp-servers`: the `mcpServers` the session was created with, as JSON.
    McpServers,
    /// `options`: the session's current mode and model.
    Options,
    /// `instructions`: the instructions block the client put before a
    /// prompt of this session (`<none>` if none came).
    Instructions,
    /// `write PATH TEXT`: write TEXT and a newline to PATH (relative to the
    /// session cwd, parents created), as an agent's own edit tool would.
    Write { path: String, text: String },
    /// A directive name nobody knows; carries the whole piece.
    Unknown(String),
    /// A known directive with a bad argument.
    Invalid { piece: String, reason: String },
}

/// Parses a whole script.
pub fn parse_script(text: &str) -> Vec<Directive> {
    text.split(['\n', ';'])
        .map(str::trim)
        .filter(|piece| !piece.is_empty() && !piece.starts_with('#'))
        .map(parse_piece)
        .collect()
}

/// Parses one directive (already trimmed, not empty).
pub fn parse_piece(piece: &str) -> Directive {
    let (name, arg) = match piece.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (piece, ""),
    };
    let invalid = |reason: &str| Directive::Invalid {
        piece: piece.to_owned(),
        reason: reason.to_owned(),
    };
    match name {
        "echo" => Directive::Echo(arg.to_owned()),
        "thought" => Directive::Thought(arg.to_owned()),
        "user" => Directive::User(arg.to_owned()),
        "chunks" => {
            let mut words = arg.split_whitespace();
            let Some(count) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
                return invalid("expected `chunks N [PER_SEC]` with N a whole number");
            };
            let per_sec = match words.next() {
                None => None,
                Some(word) => match word.parse::<f64>() {
                    Ok(rate) if rate.is_finite() && rate > 0.0 => Some(rate),
                    _ => return invalid("PER_SEC must be a positive number"),
                },
            };
            if words.next().is_some() {
                return invalid("expected `chunks N [PER_SEC]`");
            }
            Directive::Chunks { count, per_sec }
        }
        "tool" if arg.is_empty() => Directive::Tool,
        "plan" if arg.is_empty() => Directive::Plan,
        "all-kinds" if arg.is_empty() => Directive::AllKinds,
        "unknown-kind" if arg.is_empty() => Directive::UnknownKind,
        "permission" if arg.is_empty() => Directive::Permission,
        "garbage" if arg.is_empty() => Directive::Garbage,
        "invalid-utf8" if arg.is_empty() => Directive::InvalidUtf8,
        "hang" if arg.is_empty() => Directive::Hang,
        "cwd" if arg.is_empty() => Directive::Cwd,
        "list-skills" if arg.is_empty() => Directive::ListSkills,
        "system-prompt" if arg.is_empty() => Directive::SystemPrompt,
        "mcp-servers" if arg.is_empty() => Directive::McpServers,
        "instructions" if arg.is_empty() => Directive::Instructions,
        "options" if arg.is_empty() => Directive::Options,
        "write" => match arg.split_once(char::is_whitespace) {
            Some((path, text)) if !path.is_empty() => Directive::Write {
                path: path.to_owned(),
                text: text.trim_start().to_owned(),
            },
            _ => invalid("expected `write PATH TEXT`"),
        },
        "tool" | "plan" | "all-kinds" | "unknown-kind" | "permission" | "garbage" | "invalid-utf8" | "hang" | "cwd"
        | "list-skills" | "system-prompt" | "mcp-servers" | "instructions" | "options" => invalid("takes no argument"),
        "sleep" => match arg.parse::<u64>() {
            Ok(ms) => Directive::Sleep(ms),
            Err(_) => invalid("expected `sleep MS` with MS a whole number"),
        },
        "stop" => match serde_json::from_value::<StopReason>(serde_json::Value::String(arg.to_owned())) {
            Ok(reason) => Directive::Stop(reason),
            Err(_) => invalid("expected one of end_turn, max_tokens, max_turn_requests, refusal, cancelled"),
        },
        "error" => Directive::Error(arg.to_owned()),
        "crash" if arg.is_empty() => Directive::Crash(3),
        "crash" => match arg.parse::<i32>() {
            Ok(code) => Directive::Crash(code),
            Err(_) => invalid("expected `crash [CODE]` with CODE a whole number"),
        },
        "big" => match arg.parse::<usize>() {
            Ok(bytes) => Directive::Big(bytes),
            Err(_) => invalid("expected `big BYTES` with BYTES a whole number"),
        },
        "env" if !arg.is_empty() && !arg.contains(char::is_whitespace) => Directive::Env(arg.to_owned()),
        "env" => invalid("expected `env NAME`"),
        "leak-env" if !arg.is_empty() && !arg.contains(char::is_whitespace) => Directive::LeakEnv(arg.to_owned()),
        "leak-env" => invalid("expected `leak-env NAME`"),
        "cat" if !arg.is_empty() => Directive::Cat(arg.to_owned()),
        "cat" => invalid("expected `cat PATH`"),
        "symlink" => match arg.split_whitespace().collect::<Vec<_>>()[..] {
            [target, link] => Directive::Symlink {
                target: target.to_owned(),
                link: link.to_owned(),
            },
            _ => invalid("expected `symlink TARGET LINK`"),
        },
        _ => Directive::Unknown(piece.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_newlines_and_semicolons() {
        let script = parse_script("echo hi\n\n  chunks 3 ; thought hmm\n# comment\r\nstop refusal");
        assert_eq!(
            script,
            vec![
                Directive::Echo("hi".into()),
                Directive::Chunks {
                    count: 3,
                    per_sec: None
                },
                Directive::Thought("hmm".into()),
                Directive::Stop(StopReason::Refusal),
            ]
        );
    }

    #[test]
    fn parses_arguments() {
        assert_eq!(
            parse_piece("chunks 10 2.5"),
            Directive::Chunks {
                count: 10,
                per_sec: Some(2.5)
            }
        );
        assert_eq!(parse_piece("crash"), Directive::Crash(3));
        assert_eq!(parse_piece("leak-env KEY"), Directive::LeakEnv("KEY".into()));
        assert!(matches!(parse_piece("leak-env"), Directive::Invalid { .. }));
        assert_eq!(parse_piece("mcp-servers"), Directive::McpServers);
        assert!(matches!(parse_piece("mcp-servers x"), Directive::Invalid { .. }));
        assert_eq!(parse_piece("crash 7"), Directive::Crash(7));
        assert_eq!(parse_piece("big 10485760"), Directive::Big(10_485_760));
        assert_eq!(parse_piece("sleep 5000"), Directive::Sleep(5000));
        assert_eq!(parse_piece("cat a b.txt"), Directive::Cat("a b.txt".into()));
        assert_eq!(parse_piece("error  boom now"), Directive::Error("boom now".into()));
        assert_eq!(parse_piece("stop cancelled"), Directive::Stop(StopReason::Cancelled));
        assert_eq!(parse_piece("frobnicate 3"), Directive::Unknown("frobnicate 3".into()));
        assert!(matches!(parse_piece("chunks x"), Directive::Invalid { .. }));
        assert!(matches!(parse_piece("stop later"), Directive::Invalid { .. }));
        assert!(matches!(parse_piece("tool now"), Directive::Invalid { .. }));
        assert_eq!(
            parse_piece("symlink /home/u/.bashrc AGENTS.md"),
            Directive::Symlink {
                target: "/home/u/.bashrc".into(),
                link: "AGENTS.md".into()
            }
        );
        assert!(matches!(parse_piece("symlink /x"), Directive::Invalid { .. }));
    }
}
