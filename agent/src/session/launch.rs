//! The launch decision: from what the control plane sent (StartSession), the
//! local ACP agent entry, the owner's policy and the daemon's own
//! environment, to exactly what the ACP child gets — or why not.
//!
//! This is where DESIGN §3 invariant 4 holds on the machine: nothing the
//! server sends becomes a command line, an environment variable outside a
//! fixed allow-list or overriding the owner's own, or a URL outside the
//! owner's allow-list. Pure (no I/O), so each rule is tested with hostile
//! input below. Every refusal names its rule and the policy file; a refused
//! MCP server refuses the whole launch (nothing is spawned), a refused
//! credential is only dropped.

use std::collections::BTreeSet;
use std::fmt;

use oma_proto::mcp_url::check_allowed;
use oma_proto::model::{McpServer, McpTransport};
use oma_proto::pb;
use serde_json::{Value, json};

use crate::detect::{AcpAgentEntry, AskSupport};
use crate::policy::Policy;

/// Model API keys the control plane may set for a child (for ACP agents
/// whose owner opted in).
pub const CREDENTIAL_ENV_ALLOW_LIST: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

/// Where model traffic goes: taken from the server only when the policy
/// says `allow_server_base_url = true` (else the server could send the
/// machine's prompts and code anywhere).
pub const BASE_URL_ENV_ALLOW_LIST: &[&str] = &["ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"];

/// Most MCP servers one session may get.
const MAX_MCP_SERVERS: usize = 256;

/// Which rule refused something. The code is the session error event's
/// `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// An MCP server entry that is not a valid local reference or URL.
    McpServerInvalid,
    /// A local MCP server id the policy does not define.
    McpLocalUnknown,
    /// An HTTP/SSE MCP URL outside the policy's allow-list.
    McpUrlNotAllowed,
    /// The ACP agent is not in `accept_credentials_for`.
    CredentialsNotAccepted,
    /// A variable name outside the fixed allow-list.
    CredentialNotAllowed,
    /// A `*_BASE_URL` without `allow_server_base_url`.
    CredentialBaseUrlNotAllowed,
    /// A variable the owner set (agents.toml env or the daemon's environment).
    CredentialOverridesOwner,
    /// A value no environment can hold (NUL).
    CredentialValueInvalid,
    /// A value too short to be masked in the session's events.
    CredentialTooShort,
}

impl Rule {
    pub fn code(self) -> &'static str {
        match self {
            Rule::McpServerInvalid => "mcp_server_invalid",
            Rule::McpLocalUnknown => "mcp_local_unknown",
            Rule::McpUrlNotAllowed => "mcp_url_not_allowed",
            Rule::CredentialsNotAccepted => "credentials_not_accepted",
            Rule::CredentialNotAllowed => "credential_not_allowed",
            Rule::CredentialBaseUrlNotAllowed => "credential_base_url_not_allowed",
            Rule::CredentialOverridesOwner => "credential_overrides_owner",
            Rule::CredentialValueInvalid => "credential_value_invalid",
            Rule::CredentialTooShort => "credential_too_short",
        }
    }

    /// The rule in words, pointing at the setting that decides it.
    fn text(self) -> &'static str {
        match self {
            Rule::McpServerInvalid => "an MCP server must be a local reference or an http/sse URL, each name once",
            Rule::McpLocalUnknown => "a local MCP server must be defined as [[mcp_server]] in",
            Rule::McpUrlNotAllowed => "an HTTP/SSE MCP URL must match `mcp_url_allow_list` in",
            Rule::CredentialsNotAccepted => {
                "server-sent credentials are taken only for ACP agents listed in `accept_credentials_for` in"
            }
            Rule::CredentialNotAllowed => {
                "server-sent environment is limited to model API keys (ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, OPENAI_API_KEY, GEMINI_API_KEY, GOOGLE_API_KEY) and base URLs the owner allows; see"
            }
            Rule::CredentialBaseUrlNotAllowed => "a server-sent *_BASE_URL needs `allow_server_base_url = true` in",
            Rule::CredentialOverridesOwner => {
                "a server-sent variable never replaces one the owner set (the agent's agents.toml env or the daemon's environment); see"
            }
            Rule::CredentialValueInvalid => "an environment value cannot contain NUL; see",
            Rule::CredentialTooShort => {
                "a credential is masked in the session's events, which needs a value of at least 8 bytes; see"
            }
        }
    }
}

/// One refusal: the rule, and a message naming what was refused, the rule
/// and the policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

impl Refusal {
    fn new(rule: Rule, policy: &Policy, what: String) -> Refusal {
        Refusal {
            rule,
            message: format!(
                "{what} (rule {}: {} {})",
                rule.code(),
                rule.text(),
                policy.file.display()
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the ACP child gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The ACP `mcpServers` array for session/new and session/load.
    pub mcp_servers: Value,
    /// Added to the daemon's (scrubbed) environment for the child: the
    /// agent's agents.toml env, then the credentials taken.
    pub env: Vec<(String, String)>,
    /// The credentials taken (also in `env`): the values the session's
    /// events are masked for (`oma_proto::masking`).
    pub credentials: Vec<(String, String)>,
    /// Credentials dropped; the session goes on, and each is reported.
    pub dropped: Vec<Refusal>,
}

/// Decides the launch. `daemon_env` holds the names set in the daemon's own
/// environment (which the child inherits, and a server-sent credential must
/// not replace). `Err` holds the MCP refusals: the session must not start.
pub fn decide(
    start: &pb::StartSession,
    agent: &AcpAgentEntry,
    policy: &Policy,
    daemon_env: &BTreeSet<String>,
) -> Result<Launch, Vec<Refusal>> {
    let mcp_servers = mcp_servers(start, policy)?;
    let mut env: Vec<(String, String)> = agent.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut dropped = Vec::new();
    let mut taken = Vec::new();
    // Sorted, so the events come in the same order on every start.
    let mut credentials: Vec<(&String, &String)> = start.credentials.iter().collect();
    credentials.sort();
    for (name, value) in credentials {
        match credential(name, value, agent, policy, daemon_env) {
            Ok(()) => {
                env.push((name.clone(), value.clone()));
                taken.push((name.clone(), value.clone()));
            }
            Err(refusal) => dropped.push(refusal),
        }
    }
    // The settings that make the agent ask come last, so that nothing above
    // turns them off (the owner opts out with `ask = "none"`).
    if let AskSupport::Env(vars) = &agent.ask {
        env.extend(vars.iter().cloned());
    }
    Ok(Launch {
        mcp_servers,
        env,
        credentials: taken,
        dropped,
    })
}

fn mcp_servers(start: &pb::StartSession, policy: &Policy) -> Result<Value, Vec<Refusal>> {
    if start.mcp_servers.len() > MAX_MCP_SERVERS {
        return Err(vec![Refusal::new(
            Rule::McpServerInvalid,
            policy,
            format!(
                "{} MCP servers refused: more than {MAX_MCP_SERVERS}",
                start.mcp_servers.len()
            ),
        )]);
    }
    let mut refusals = Vec::new();
    let mut names = BTreeSet::new();
    let mut servers = Vec::new();
    for (i, wire) in start.mcp_servers.iter().enumerate() {
        let server = match McpServer::from_wire(&format!("mcp_servers[{i}]"), wire.clone()) {
            Ok(server) => server,
            Err(e) => {
                refusals.push(Refusal::new(
                    Rule::McpServerInvalid,
                    policy,
                    format!("MCP server {} refused: {e}", shown(&wire.name)),
                ));
                continue;
            }
        };
        if !names.insert(server.name.clone()) {
            refusals.push(Refusal::new(
                Rule::McpServerInvalid,
                policy,
                format!("MCP server {} refused: the name appears twice", shown(&server.name)),
            ));
            continue;
        }
        match acp_entry(&server, policy) {
            Ok(entry) => servers.push(entry),
            Err(refusal) => refusals.push(refusal),
        }
    }
    if refusals.is_empty() {
        Ok(Value::Array(servers))
    } else {
        Err(refusals)
    }
}

/// One ACP `mcpServers` entry: stdio entries (no type tag) only from the
/// policy, http/sse only for allowed URLs.
fn acp_entry(server: &McpServer, policy: &Policy) -> Result<Value, Refusal> {
    let pairs = |items: &mut dyn Iterator<Item = (&String, &String)>| {
        items.map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>()
    };
    match &server.transport {
        McpTransport::Local { server_id } => {
            let Some(local) = policy.mcp_server(server_id) else {
                let defined: Vec<&str> = policy.mcp_servers.iter().map(|s| s.id.as_str()).collect();
                let defined = if defined.is_empty() {
                    "none is defined".to_owned()
                } else {
                    format!("defined: {}", defined.join(", "))
                };
                return Err(Refusal::new(
                    Rule::McpLocalUnknown,
                    policy,
                    format!(
                        "MCP server {} refused: this machine has no local MCP server {} ({defined})",
                        shown(&server.name),
                        shown(server_id)
                    ),
                ));
            };
            Ok(json!({
                "name": server.name,
                // Lossy: a `PATH` entry may not be UTF-8, and JSON text must be.
                "command": local.command.to_string_lossy(),
                "args": local.args,
                "env": pairs(&mut local.env.iter()),
            }))
        }
        McpTransport::Http { url, headers } | McpTransport::Sse { url, headers } => {
            let kind = if matches!(server.transport, McpTransport::Http { .. }) {
                "http"
            } else {
                "sse"
            };
            if let Err(why) = check_allowed(url, &policy.mcp_url_allow_list) {
                return Err(Refusal::new(
                    Rule::McpUrlNotAllowed,
                    policy,
                    format!("MCP server {} refused: {why}", shown(&server.name)),
                ));
            }
            Ok(json!({
                "type": kind,
                "name": server.name,
                "url": url,
                "headers": pairs(&mut headers.iter().map(|(n, v)| (n, v))),
            }))
        }
    }
}

fn credential(
    name: &str,
    value: &str,
    agent: &AcpAgentEntry,
    policy: &Policy,
    daemon_env: &BTreeSet<String>,
) -> Result<(), Refusal> {
    let refuse = |rule: Rule, why: String| {
        Err(Refusal::new(
            rule,
            policy,
            format!("credential {} dropped: {why}", shown(name)),
        ))
    };
    let base_url = BASE_URL_ENV_ALLOW_LIST.contains(&name);
    if !CREDENTIAL_ENV_ALLOW_LIST.contains(&name) && !base_url {
        return refuse(Rule::CredentialNotAllowed, "not a model API key".into());
    }
    if !policy.accept_credentials_for.contains(&agent.id) {
        return refuse(
            Rule::CredentialsNotAccepted,
            format!("ACP agent {:?} does not take credentials from the server", agent.id),
        );
    }
    if base_url && !policy.allow_server_base_url {
        return refuse(
            Rule::CredentialBaseUrlNotAllowed,
            "server-set base URLs are not allowed".into(),
        );
    }
    if agent.env.contains_key(name) {
        return refuse(
            Rule::CredentialOverridesOwner,
            format!("agents.toml sets it for ACP agent {:?}", agent.id),
        );
    }
    if daemon_env.contains(name) {
        return refuse(
            Rule::CredentialOverridesOwner,
            "the daemon's environment sets it".into(),
        );
    }
    if value.contains('\0') {
        return refuse(Rule::CredentialValueInvalid, "its value contains NUL".into());
    }
    // A value this short cannot be masked without wrecking every message
    // (oma_proto::masking), and the child must never get an unmasked one.
    if value.len() < oma_proto::masking::MIN_SECRET_BYTES {
        return refuse(
            Rule::CredentialTooShort,
            format!(
                "its value is shorter than {} bytes",
                oma_proto::masking::MIN_SECRET_BYTES
            ),
        );
    }
    Ok(())
}

/// A server-sent string in a message: quoted with escapes (no control
/// character reaches a terminal or log as is) and cut to 128 characters.
fn shown(value: &str) -> String {
    const MAX: usize = 128;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    use oma_proto::mcp_url::AllowedUrl;

    use super::*;
    use crate::detect::{EntrySource, Quirks};
    use crate::policy::LocalMcpServer;

    fn agent(id: &str) -> AcpAgentEntry {
        AcpAgentEntry {
            id: id.into(),
            name: id.into(),
            command: "/usr/bin/agent".into(),
            args: vec![],
            env: BTreeMap::from([("OWNER_SET".to_owned(), "mine".to_owned())]),
            quirks: Quirks::default(),
            ask: crate::detect::AskSupport::Native,
            source: EntrySource::UserConfig,
            package: None,
            problems: Vec::new(),
        }
    }

    fn policy() -> Policy {
        Policy {
            file: PathBuf::from("/home/me/.config/oma-agent/policy.toml"),
            mcp_servers: vec![LocalMcpServer {
                id: "fs".into(),
                name: "Files".into(),
                description: String::new(),
                command: "/usr/local/bin/mcp-fs".into(),
                args: vec!["--root".into(), "/srv".into()],
                env: BTreeMap::from([("LOG".to_owned(), "warn".to_owned())]),
            }],
            mcp_url_allow_list: vec![AllowedUrl::parse("https://allowed.example/mcp").unwrap()],
            accept_credentials_for: BTreeSet::from(["claude".to_owned()]),
            allow_server_base_url: false,
        }
    }

    fn local(name: &str, id: &str) -> pb::McpServer {
        pb::McpServer {
            name: name.into(),
            transport: Some(pb::mcp_server::Transport::Local(pb::McpLocal { server_id: id.into() })),
        }
    }

    fn http(name: &str, url: &str) -> pb::McpServer {
        pb::McpServer {
            name: name.into(),
            transport: Some(pb::mcp_server::Transport::Http(pb::McpHttp {
                url: url.into(),
                headers: vec![pb::NameValue {
                    name: "Authorization".into(),
                    value: "Bearer t".into(),
                }],
            })),
        }
    }

    fn start(mcp: Vec<pb::McpServer>, credentials: &[(&str, &str)]) -> pb::StartSession {
        pb::StartSession {
            session_id: "ses_0123456789abcdef0123456789abcdef".into(),
            acp_agent_id: "claude".into(),
            mcp_servers: mcp,
            credentials: credentials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    fn no_env() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn refused(result: Result<Launch, Vec<Refusal>>) -> Vec<Refusal> {
        match result {
            Ok(launch) => panic!("launched: {launch:?}"),
            Err(refusals) => refusals,
        }
    }

    #[test]
    fn a_local_reference_becomes_the_policy_command_and_an_allowed_url_passes() {
        let start = start(
            vec![local("files", "fs"), http("web", "https://allowed.example/mcp/search")],
            &[],
        );
        let launch = decide(&start, &agent("claude"), &policy(), &no_env()).unwrap();
        assert_eq!(
            launch.mcp_servers,
            json!([
                {"name": "files", "command": "/usr/local/bin/mcp-fs", "args": ["--root", "/srv"],
                 "env": [{"name": "LOG", "value": "warn"}]},
                {"type": "http", "name": "web", "url": "https://allowed.example/mcp/search",
                 "headers": [{"name": "Authorization", "value": "Bearer t"}]},
            ])
        );
        assert_eq!(launch.env, [("OWNER_SET".to_owned(), "mine".to_owned())]);
        assert!(launch.dropped.is_empty());
        // No MCP servers at all is an empty array, not null.
        let launch = decide(&self::start(vec![], &[]), &agent("claude"), &policy(), &no_env()).unwrap();
        assert_eq!(launch.mcp_servers, json!([]));
    }

    #[test]
    fn an_unknown_local_id_refuses_the_launch_naming_the_rule_and_file() {
        for id in ["nope", "../fs", "/usr/bin/curl", "fs; rm -rf ~", "FS"] {
            let refusals = refused(decide(
                &start(vec![local("files", "fs"), local("evil", id)], &[]),
                &agent("claude"),
                &policy(),
                &no_env(),
            ));
            assert_eq!(refusals.len(), 1, "{id}: {refusals:?}");
            let r = &refusals[0];
            assert!(
                matches!(r.rule, Rule::McpLocalUnknown | Rule::McpServerInvalid),
                "{id}: {r:?}"
            );
            assert!(r.message.contains(r.rule.code()), "{r}");
            assert!(r.message.contains("/home/me/.config/oma-agent/policy.toml"), "{r}");
            assert!(r.message.contains("\"evil\""), "{r}");
        }
        let r = &refused(decide(
            &start(vec![local("x", "git")], &[]),
            &agent("claude"),
            &policy(),
            &no_env(),
        ))[0];
        assert_eq!(r.rule, Rule::McpLocalUnknown);
        assert!(r.message.contains("defined: fs"), "{r}");
        let mut empty = policy();
        empty.mcp_servers.clear();
        let r = &refused(decide(
            &start(vec![local("x", "fs")], &[]),
            &agent("claude"),
            &empty,
            &no_env(),
        ))[0];
        assert!(r.message.contains("none is defined"), "{r}");
    }

    #[test]
    fn urls_outside_the_allow_list_refuse_the_launch() {
        for url in [
            "https://allowed.example@evil.example/mcp",
            "https://allowed.example.evil.example/mcp",
            "https://allowed.example/mcpx",
            "https://allowed.example/mcp/../admin",
            "https://allowed.example/mcp/..%2fadmin",
            "https://allowed.example/mcp%2f..%2fadmin",
            "https://allowed.example/",
            "http://allowed.example/mcp",
            "https://allowed.example:444/mcp",
            "file:///etc/passwd",
        ] {
            let refusals = refused(decide(
                &start(vec![http("web", url)], &[]),
                &agent("claude"),
                &policy(),
                &no_env(),
            ));
            let r = &refusals[0];
            assert!(
                matches!(r.rule, Rule::McpUrlNotAllowed | Rule::McpServerInvalid),
                "{url}: {r:?}"
            );
            assert!(r.message.contains("policy.toml"), "{r}");
        }
        let mut sse = http("events", "https://allowed.example/mcp");
        sse.transport = Some(pb::mcp_server::Transport::Sse(pb::McpHttp {
            url: "https://evil.example/mcp".into(),
            headers: vec![],
        }));
        let r = &refused(decide(&start(vec![sse], &[]), &agent("claude"), &policy(), &no_env()))[0];
        assert_eq!(r.rule, Rule::McpUrlNotAllowed);
        assert!(r.message.contains("mcp_url_not_allowed") && r.message.contains("mcp_url_allow_list"));
        let mut none = policy();
        none.mcp_url_allow_list.clear();
        let r = &refused(decide(
            &start(vec![http("web", "https://allowed.example/mcp")], &[]),
            &agent("claude"),
            &none,
            &no_env(),
        ))[0];
        assert!(r.message.contains("empty"), "{r}");
    }

    #[test]
    fn malformed_and_duplicate_entries_are_refused() {
        let no_transport = pb::McpServer {
            name: "x".into(),
            transport: None,
        };
        let r = &refused(decide(
            &start(vec![no_transport], &[]),
            &agent("claude"),
            &policy(),
            &no_env(),
        ))[0];
        assert_eq!(r.rule, Rule::McpServerInvalid);
        let refusals = refused(decide(
            &start(vec![local("a", "fs"), local("a", "fs")], &[]),
            &agent("claude"),
            &policy(),
            &no_env(),
        ));
        assert!(refusals[0].message.contains("twice"), "{refusals:?}");
        let many = (0..=MAX_MCP_SERVERS).map(|i| local(&format!("s{i}"), "fs")).collect();
        assert_eq!(
            refused(decide(&start(many, &[]), &agent("claude"), &policy(), &no_env()))[0].rule,
            Rule::McpServerInvalid
        );
        // A name with control characters is shown escaped.
        let r = &refused(decide(
            &start(vec![local("a\u{1b}[2Jb", "fs")], &[]),
            &agent("claude"),
            &policy(),
            &no_env(),
        ))[0];
        assert!(!r.message.contains('\u{1b}'), "{r}");
    }

    #[test]
    fn only_allow_listed_credentials_reach_an_opted_in_agent() {
        let hostile = [
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("NODE_OPTIONS", "--require /tmp/evil.js"),
            ("PATH", "/tmp/evil"),
            ("HOME", "/tmp"),
            ("CLAUDE_CONFIG_DIR", "/tmp/evil"),
            ("ANTHROPIC_BASE_URL", "https://evil.example"),
            ("OPENAI_BASE_URL", "https://evil.example"),
            ("GOOGLE_GEMINI_BASE_URL", "https://evil.example"),
            ("ANTHROPIC_API_KEY", "sk-ant-server"),
            ("lowercase_key", "x"),
            ("", "x"),
        ];
        let launch = decide(&start(vec![], &hostile), &agent("claude"), &policy(), &no_env()).unwrap();
        assert_eq!(
            launch.env,
            [
                ("OWNER_SET".to_owned(), "mine".to_owned()),
                ("ANTHROPIC_API_KEY".to_owned(), "sk-ant-server".to_owned()),
            ]
        );
        // What the events are masked for: the credentials taken, only.
        assert_eq!(
            launch.credentials,
            [("ANTHROPIC_API_KEY".to_owned(), "sk-ant-server".to_owned())]
        );
        let rules: BTreeMap<String, Rule> = launch
            .dropped
            .iter()
            .map(|r| (r.message.split('"').nth(1).unwrap_or_default().to_owned(), r.rule))
            .collect();
        for name in [
            "LD_PRELOAD",
            "NODE_OPTIONS",
            "PATH",
            "HOME",
            "CLAUDE_CONFIG_DIR",
            "lowercase_key",
            "",
        ] {
            assert_eq!(rules.get(name), Some(&Rule::CredentialNotAllowed), "{name}: {rules:?}");
        }
        for name in ["ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"] {
            assert_eq!(rules.get(name), Some(&Rule::CredentialBaseUrlNotAllowed), "{name}");
        }
        assert_eq!(launch.dropped.len(), hostile.len() - 1);
        for r in &launch.dropped {
            assert!(
                r.message.contains("dropped") && r.message.contains("policy.toml"),
                "{r}"
            );
        }
        // Sorted by name: the events come in a stable order.
        let order: Vec<&str> = launch.dropped.iter().map(|r| r.message.as_str()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }

    #[test]
    fn base_urls_only_when_the_owner_allows_them() {
        let mut allowing = policy();
        allowing.allow_server_base_url = true;
        let creds = [("ANTHROPIC_BASE_URL", "https://gateway.example")];
        let launch = decide(&start(vec![], &creds), &agent("claude"), &allowing, &no_env()).unwrap();
        assert!(
            launch
                .env
                .contains(&("ANTHROPIC_BASE_URL".into(), "https://gateway.example".into()))
        );
        assert!(launch.dropped.is_empty());
        // Still never over the owner's own.
        let owner = BTreeSet::from(["ANTHROPIC_BASE_URL".to_owned()]);
        let launch = decide(&start(vec![], &creds), &agent("claude"), &allowing, &owner).unwrap();
        assert_eq!(launch.dropped[0].rule, Rule::CredentialOverridesOwner);
        assert!(!launch.env.iter().any(|(k, _)| k == "ANTHROPIC_BASE_URL"));
    }

    #[test]
    fn the_settings_that_make_an_agent_ask_come_last() {
        let mut opencode = agent("opencode");
        opencode
            .env
            .insert("OPENCODE_PERMISSION".into(), r#"{"edit":"allow"}"#.into());
        opencode.ask = AskSupport::Env(vec![("OPENCODE_PERMISSION".into(), r#"{"edit":"ask"}"#.into())]);
        let launch = decide(&start(vec![], &[]), &opencode, &policy(), &no_env()).unwrap();
        // The child's environment is applied in order: the last value wins.
        let last = launch.env.iter().rev().find(|(k, _)| k == "OPENCODE_PERMISSION");
        assert_eq!(last.map(|(_, v)| v.as_str()), Some(r#"{"edit":"ask"}"#));
        opencode.ask = AskSupport::None;
        let launch = decide(&start(vec![], &[]), &opencode, &policy(), &no_env()).unwrap();
        let last = launch.env.iter().rev().find(|(k, _)| k == "OPENCODE_PERMISSION");
        assert_eq!(last.map(|(_, v)| v.as_str()), Some(r#"{"edit":"allow"}"#));
    }

    #[test]
    fn agents_not_opted_in_get_no_credentials() {
        let creds = [("ANTHROPIC_API_KEY", "sk-ant-server"), ("OPENAI_API_KEY", "sk-x")];
        let launch = decide(&start(vec![], &creds), &agent("codex"), &policy(), &no_env()).unwrap();
        assert_eq!(launch.env, [("OWNER_SET".to_owned(), "mine".to_owned())]);
        assert_eq!(launch.dropped.len(), 2);
        assert!(launch.dropped.iter().all(|r| r.rule == Rule::CredentialsNotAccepted));
        assert!(launch.dropped[0].message.contains("accept_credentials_for"));
    }

    #[test]
    fn credentials_never_override_the_owner() {
        let mut claude = agent("claude");
        claude.env.insert("ANTHROPIC_API_KEY".into(), "sk-ant-owner".into());
        let creds = [("ANTHROPIC_API_KEY", "sk-ant-server"), ("OPENAI_API_KEY", "sk-server")];
        let daemon_env = BTreeSet::from(["OPENAI_API_KEY".to_owned(), "PATH".to_owned()]);
        let launch = decide(&start(vec![], &creds), &claude, &policy(), &daemon_env).unwrap();
        assert_eq!(
            launch.env,
            [
                ("ANTHROPIC_API_KEY".to_owned(), "sk-ant-owner".to_owned()),
                ("OWNER_SET".to_owned(), "mine".to_owned()),
            ]
        );
        assert_eq!(launch.dropped.len(), 2);
        assert!(launch.dropped.iter().all(|r| r.rule == Rule::CredentialOverridesOwner));
        assert!(launch.dropped[0].message.contains("agents.toml"));
        assert!(launch.dropped[1].message.contains("daemon's environment"));
    }

    #[test]
    fn a_nul_value_is_dropped() {
        let launch = decide(
            &start(vec![], &[("ANTHROPIC_API_KEY", "a\0b")]),
            &agent("claude"),
            &policy(),
            &no_env(),
        )
        .unwrap();
        assert_eq!(launch.dropped[0].rule, Rule::CredentialValueInvalid);
        assert!(!launch.env.iter().any(|(k, _)| k == "ANTHROPIC_API_KEY"));
    }

    #[test]
    fn a_value_too_short_to_mask_is_dropped() {
        let creds = [("ANTHROPIC_API_KEY", "1234567"), ("OPENAI_API_KEY", "12345678")];
        let launch = decide(&start(vec![], &creds), &agent("claude"), &policy(), &no_env()).unwrap();
        assert_eq!(launch.dropped.len(), 1);
        assert_eq!(launch.dropped[0].rule, Rule::CredentialTooShort);
        assert!(
            launch.dropped[0].message.contains("ANTHROPIC_API_KEY"),
            "{}",
            launch.dropped[0]
        );
        assert!(!launch.dropped[0].message.contains("1234567"), "{}", launch.dropped[0]);
        assert!(!launch.env.iter().any(|(k, _)| k == "ANTHROPIC_API_KEY"));
        assert_eq!(
            launch.credentials,
            [("OPENAI_API_KEY".to_owned(), "12345678".to_owned())]
        );
    }

    #[test]
    fn a_refused_mcp_server_wins_over_credentials() {
        let refusals = refused(decide(
            &start(vec![local("x", "nope")], &[("ANTHROPIC_API_KEY", "k")]),
            &agent("claude"),
            &policy(),
            &no_env(),
        ));
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].rule, Rule::McpLocalUnknown);
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let name = "N".repeat(10_000);
        let launch = decide(
            &start(vec![], &[(name.as_str(), "x")]),
            &agent("claude"),
            &policy(),
            &no_env(),
        )
        .unwrap();
        assert!(
            launch.dropped[0].message.len() < 1000,
            "{}",
            launch.dropped[0].message.len()
        );
    }
}
