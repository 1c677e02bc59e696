//! Which ACP agents this machine can run.
//!
//! The table is a built-in list of well-known agents (each with one or more
//! candidate commands, every match on `PATH` considered: Claude's adapters
//! are ranked by npm package, the others take the first) merged with the user's
//! `agents.toml`, which can add entries, override fields of built-in ones, or
//! disable them. The daemon only ever spawns entries of this table: the
//! control plane names an agent by its id, never by a command line.
//!
//! ```toml
//! [[agent]]
//! id = "test"                       # [a-z0-9._-], starting with a letter or digit
//! name = "Scripted test agent"
//! command = "/abs/path/or/name-on-PATH"
//! args = ["--flag"]
//! env = { FOO = "bar" }
//! advertise_read_text_file = true   # optional quirk overrides
//! claude = false                    # treat as Claude (skills dir, meta prompt, CLAUDE_CONFIG_DIR)
//! # also: advertise_write_text_file, system_prompt_in_meta,
//! # skills_layout = "claude-skills-dir" | "inline-agents-md"
//!
//! [[agent]]
//! id = "claude"                     # a built-in id: the fields given replace the built-in's
//! disabled = true                   # hide it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{self, ConfigFileError};

/// Where an agent's skills must be written in its session directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkillsLayout {
    /// One folder per skill under `.claude/skills/<name>/` (Claude Code).
    ClaudeSkillsDir,
    /// Skills are described inline in `AGENTS.md` (agents without a skills folder).
    InlineAgentsMd,
}

/// How the daemon must treat one particular ACP agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// Advertise `fs.readTextFile` in `initialize` (Gemini fails to create
    /// files through ACP when this is advertised).
    pub advertise_read_text_file: bool,
    /// Advertise `fs.writeTextFile` in `initialize`.
    pub advertise_write_text_file: bool,
    /// Pass the system prompt as `_meta.systemPrompt = {append: …}` on
    /// `session/new`/`session/load` (Claude), in addition to `AGENTS.md`.
    pub system_prompt_in_meta: bool,
    /// Where skills go.
    pub skills_layout: SkillsLayout,
    /// A Claude Code agent: honours `CLAUDE_CONFIG_DIR`, so the local skill
    /// blocklist is enforced through a private config dir, and its local
    /// skills are reported in the manifest.
    pub is_claude: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Self {
            advertise_read_text_file: true,
            advertise_write_text_file: true,
            system_prompt_in_meta: false,
            skills_layout: SkillsLayout::InlineAgentsMd,
            is_claude: false,
        }
    }
}

impl Quirks {
    /// The quirks of Claude Code's ACP adapters.
    pub fn claude() -> Self {
        Self {
            system_prompt_in_meta: true,
            skills_layout: SkillsLayout::ClaudeSkillsDir,
            is_claude: true,
            ..Self::default()
        }
    }

    fn set_claude(&mut self, claude: bool) {
        let base = if claude { Self::claude() } else { Self::default() };
        self.system_prompt_in_meta = base.system_prompt_in_meta;
        self.skills_layout = base.skills_layout;
        self.is_claude = base.is_claude;
    }
}

/// Whether and how the daemon makes an agent ask before it acts (so that
/// the session's permission policy decides, not the agent's own default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AskSupport {
    /// It sends `session/request_permission` on its own (`ask = "native"`).
    Native,
    /// Every session is switched to this ACP mode (`ask = "mode:<id>"`).
    Mode(String),
    /// It cannot be made to ask (`ask = "none"`).
    None,
    /// Every child gets these variables, which set the agent's own approval
    /// settings so that it asks (built-in entries only, e.g. opencode's
    /// `OPENCODE_PERMISSION`). They come last in the child's environment:
    /// an `agents.toml` env cannot turn them off; `ask = "none"` can.
    Env(Vec<(String, String)>),
}

impl TryFrom<String> for AskSupport {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "native" => Ok(AskSupport::Native),
            "none" => Ok(AskSupport::None),
            other => match other.strip_prefix("mode:") {
                Some(mode) if !mode.is_empty() && mode.len() <= 128 && !mode.chars().any(char::is_control) => {
                    Ok(AskSupport::Mode(mode.to_owned()))
                }
                _ => Err(format!(
                    "ask must be \"native\", \"none\" or \"mode:<ACP mode id>\", not {other:?}"
                )),
            },
        }
    }
}

impl AskSupport {
    /// The manifest's words for it.
    pub fn to_manifest(&self) -> (oma_proto::pb::AskSupport, String) {
        use oma_proto::pb::AskSupport as Pb;
        match self {
            AskSupport::Native => (Pb::Native, String::new()),
            AskSupport::Mode(mode) => (Pb::AcpMode, mode.clone()),
            AskSupport::None => (Pb::None, String::new()),
            AskSupport::Env(_) => (Pb::AgentConfig, String::new()),
        }
    }
}

/// Where a table entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    /// The built-in table, unchanged.
    BuiltIn,
    /// The user's `agents.toml` (a new entry, or a built-in one it overrides).
    UserConfig,
}

/// One ACP agent this machine can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpAgentEntry {
    /// The id the control plane uses, e.g. `claude`.
    pub id: String,
    /// A human name.
    pub name: String,
    /// The executable, absolute (resolved on `PATH` when configured by name).
    pub command: PathBuf,
    /// Arguments after the command.
    pub args: Vec<String>,
    /// Extra environment variables for the child.
    pub env: BTreeMap<String, String>,
    /// How the daemon must treat it.
    pub quirks: Quirks,
    /// How it is made to ask before acting.
    pub ask: AskSupport,
    /// Built-in or from the user's config.
    pub source: EntrySource,
    /// The npm package the command belongs to, when it is an npm install.
    pub package: Option<Package>,
    /// Known problems with this install, one sentence each (reported in the
    /// manifest and logged at start).
    pub problems: Vec<String>,
}

/// An npm package, as its `package.json` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl fmt::Display for Package {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// Claude's ACP adapter in its current home.
pub const CLAUDE_PACKAGE: &str = "@agentclientprotocol/claude-agent-acp";
/// Its old home: up to 0.23.x it mis-answers after a cancel (ACP-NOTES.md).
pub const OLD_CLAUDE_PACKAGE: &str = "@zed-industries/claude-agent-acp";

/// An entry whose command was not found: reported, not runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The entry's id.
    pub id: String,
    /// The commands looked for, in order (bare names were searched on `PATH`).
    pub commands: Vec<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (absolute, names): (Vec<&String>, Vec<&String>) =
            self.commands.iter().partition(|c| Path::new(c.as_str()).is_absolute());
        write!(f, "{}: ", self.id)?;
        let mut parts = Vec::new();
        if !names.is_empty() {
            let list: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            parts.push(format!("{} not found on PATH", list.join(" or ")));
        }
        for path in absolute {
            parts.push(format!("{path} is not an executable file"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The result of [`detect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectReport {
    /// Runnable agents, sorted by id.
    pub agents: Vec<AcpAgentEntry>,
    /// Entries whose command was not found, sorted by id.
    pub missing: Vec<Missing>,
    /// Ids disabled in the user's config, sorted.
    pub disabled: Vec<String>,
}

impl DetectReport {
    /// The runnable agent with this id.
    pub fn find(&self, id: &str) -> Option<&AcpAgentEntry> {
        find(&self.agents, id)
    }
}

/// Errors reading the user's agent table.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The config file cannot be read, is not valid TOML or has unknown
    /// keys or wrong types.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// An entry is well-formed TOML but not a usable agent.
    #[error("{}:{line}: agent {id:?}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the entry's `id`.
        line: usize,
        /// The entry's id as written.
        id: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A built-in entry: candidate commands in order of preference.
struct BuiltIn {
    id: &'static str,
    name: &'static str,
    candidates: &'static [&'static str],
    args: &'static [&'static str],
    quirks: fn() -> Quirks,
    /// `None` here: `AskSupport::Mode` of this id; see [`BuiltIn::ask`].
    ask: BuiltInAsk,
    /// Orders every match of the candidates (lowest first; ties keep the
    /// candidate order, then `PATH` order).
    rank: fn(&str, Option<&Package>) -> u8,
}

fn first_found(_: &str, _: Option<&Package>) -> u8 {
    0
}

/// The new adapter package first; then a `claude-agent-acp` of no known
/// package (a wrapper, another install method: nothing is known against
/// it); then the old package; then the older `claude-code-acp`.
fn claude_rank(command: &str, package: Option<&Package>) -> u8 {
    match package.map(|p| p.name.as_str()) {
        Some(CLAUDE_PACKAGE) => 0,
        Some(OLD_CLAUDE_PACKAGE) => 2,
        _ if command == "claude-agent-acp" => 1,
        _ => 3,
    }
}

/// How a built-in agent is made to ask (checked against the real agents by
/// `integration-tests/tests/real_agents*.rs`): Claude's adapter starts in
/// its `auto` mode and asks only in `default`; Codex asks in its
/// `read-only` mode; Gemini asks on its own; opencode asks when its
/// environment sets its permission config ([`OPENCODE_ASK`]).
#[derive(Clone, Copy)]
enum BuiltInAsk {
    Native,
    Mode(&'static str),
    Env(&'static [(&'static str, &'static str)]),
}

/// opencode asks (through ACP) before every edit, command, fetch and access
/// outside its folder; merged by opencode over every config file it reads,
/// the project's included.
const OPENCODE_ASK: &[(&str, &str)] = &[(
    "OPENCODE_PERMISSION",
    r#"{"edit":"ask","bash":"ask","webfetch":"ask","external_directory":"ask"}"#,
)];

impl BuiltInAsk {
    fn support(self) -> AskSupport {
        match self {
            BuiltInAsk::Native => AskSupport::Native,
            BuiltInAsk::Mode(mode) => AskSupport::Mode(mode.to_owned()),
            BuiltInAsk::Env(vars) => AskSupport::Env(
                vars.iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect(),
            ),
        }
    }
}

fn gemini_quirks() -> Quirks {
    Quirks {
        advertise_read_text_file: false,
        ..Quirks::default()
    }
}

const BUILT_INS: &[BuiltIn] = &[
    BuiltIn {
        id: "claude",
        name: "Claude Code",
        candidates: &["claude-agent-acp", "claude-code-acp"],
        args: &[],
        quirks: Quirks::claude,
        ask: BuiltInAsk::Mode("default"),
        rank: claude_rank,
    },
    BuiltIn {
        id: "codex",
        name: "Codex",
        candidates: &["codex-acp"],
        args: &[],
        quirks: Quirks::default,
        // Approval "on-request" with a read-only sandbox: every write and
        // every command outside the sandbox is asked for (its `auto` mode
        // writes inside the folder unasked).
        ask: BuiltInAsk::Mode("read-only"),
        rank: first_found,
    },
    BuiltIn {
        id: "gemini",
        name: "Gemini CLI",
        candidates: &["gemini"],
        args: &["--experimental-acp"],
        quirks: gemini_quirks,
        ask: BuiltInAsk::Native,
        rank: first_found,
    },
    BuiltIn {
        id: "opencode",
        name: "opencode",
        candidates: &["opencode"],
        args: &["acp"],
        quirks: Quirks::default,
        ask: BuiltInAsk::Env(OPENCODE_ASK),
        rank: first_found,
    },
];

/// The ids of the built-in table.
pub fn built_in_ids() -> impl Iterator<Item = &'static str> {
    BUILT_INS.iter().map(|b| b.id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    #[serde(default)]
    agent: Vec<UserAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserAgent {
    id: Spanned<String>,
    name: Option<String>,
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    disabled: bool,
    claude: Option<bool>,
    advertise_read_text_file: Option<bool>,
    advertise_write_text_file: Option<bool>,
    system_prompt_in_meta: Option<bool>,
    skills_layout: Option<SkillsLayout>,
    ask: Option<AskSupport>,
}

/// Builds the agent table: the built-in entries merged with `config_file`
/// (which may be absent), commands resolved on `path_env` (a `PATH`-style
/// list; `None` means an empty `PATH`).
///
/// Only absolute directories of `PATH` are searched, and a file counts only
/// if it is a regular file with an execute bit. Entries whose command is not
/// found are left out of `agents` and listed in `missing`.
pub fn detect(config_file: &Path, path_env: Option<&OsStr>) -> Result<DetectReport, DetectError> {
    let user = read_user_config(config_file)?;
    let search_dirs = search_dirs(path_env);

    let mut report = DetectReport::default();
    let mut user_by_id: BTreeMap<String, UserAgent> = BTreeMap::new();
    for entry in user {
        user_by_id.insert(entry.id.get_ref().clone(), entry);
    }
    let ids: BTreeSet<String> = built_in_ids()
        .map(str::to_owned)
        .chain(user_by_id.keys().cloned())
        .collect();

    for id in ids {
        let built_in = BUILT_INS.iter().find(|b| b.id == id);
        let user = user_by_id.get(&id);
        if user.is_some_and(|u| u.disabled) {
            report.disabled.push(id);
            continue;
        }
        let (mut entry, candidates) = match built_in {
            Some(b) => (
                AcpAgentEntry {
                    id: id.clone(),
                    name: b.name.to_owned(),
                    command: PathBuf::new(),
                    args: b.args.iter().map(|&a| a.to_owned()).collect(),
                    env: BTreeMap::new(),
                    quirks: (b.quirks)(),
                    ask: b.ask.support(),
                    source: EntrySource::BuiltIn,
                    package: None,
                    problems: Vec::new(),
                },
                b.candidates.iter().map(|&c| c.to_owned()).collect::<Vec<_>>(),
            ),
            None => (
                AcpAgentEntry {
                    id: id.clone(),
                    name: id.clone(),
                    command: PathBuf::new(),
                    args: Vec::new(),
                    env: BTreeMap::new(),
                    quirks: Quirks::default(),
                    // An agent the owner added: ACP's own way (it asks
                    // through session/request_permission) unless it says.
                    ask: AskSupport::Native,
                    source: EntrySource::UserConfig,
                    package: None,
                    problems: Vec::new(),
                },
                Vec::new(),
            ),
        };
        let candidates = match user {
            Some(u) => {
                apply_user(&mut entry, u);
                match &u.command {
                    Some(command) => vec![expand_home(command)],
                    None => candidates,
                }
            }
            None => candidates,
        };
        let rank = match (built_in, user.and_then(|u| u.command.as_ref())) {
            (Some(b), None) => b.rank,
            _ => first_found,
        };
        match choose(&candidates, &search_dirs, rank) {
            Some((command, package)) => {
                entry.command = command;
                entry.problems = package.as_ref().and_then(known_problem).into_iter().collect();
                entry.package = package;
                report.agents.push(entry);
            }
            None => report.missing.push(Missing {
                id,
                commands: candidates,
            }),
        }
    }
    Ok(report)
}

/// The best of every executable the candidates name (each on `PATH` in
/// order, or as given when absolute), by `rank`, with its npm package.
fn choose(
    candidates: &[String],
    search_dirs: &[PathBuf],
    rank: fn(&str, Option<&Package>) -> u8,
) -> Option<(PathBuf, Option<Package>)> {
    let mut found: Vec<(u8, PathBuf, Option<Package>)> = Vec::new();
    for candidate in candidates {
        for command in resolve_all(candidate, search_dirs) {
            let package = npm_package(&command);
            found.push((rank(candidate, package.as_ref()), command, package));
        }
    }
    // Stable: equal ranks keep the candidate order, then PATH order.
    found.sort_by_key(|(rank, ..)| *rank);
    found.into_iter().next().map(|(_, command, package)| (command, package))
}

/// The npm package `command` belongs to. npm's bins are symlinks into the
/// package (`<prefix>/bin/x -> ../lib/node_modules/<package>/dist/x.js`):
/// the nearest folder above the resolved file that sits in `node_modules`
/// (as `<name>` or `@scope/<name>`) and holds a `package.json` naming it.
pub fn npm_package(command: &Path) -> Option<Package> {
    #[derive(Deserialize)]
    struct PackageJson {
        name: String,
        version: String,
    }
    let real = std::fs::canonicalize(command).ok()?;
    let package_dir = real.ancestors().skip(1).find(|dir| {
        let parent = dir.parent();
        let in_node_modules = |d: Option<&Path>| d.and_then(Path::file_name) == Some(OsStr::new("node_modules"));
        let scoped = parent
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with('@'));
        in_node_modules(parent) || (scoped && in_node_modules(parent.and_then(Path::parent)))
    })?;
    let text = std::fs::read_to_string(package_dir.join("package.json")).ok()?;
    let json: PackageJson = serde_json::from_str(&text).ok()?;
    Some(Package {
        name: json.name,
        version: json.version,
    })
}

/// What is known to be wrong with this package version, in one sentence.
pub fn known_problem(package: &Package) -> Option<String> {
    let release = package.version.split(['-', '+']).next().unwrap_or_default();
    let mut numbers = release.split('.').map(|n| n.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (numbers.next(), numbers.next()) else {
        return None;
    };
    (package.name == OLD_CLAUDE_PACKAGE && (major, minor) <= (0, 23)).then(|| {
        format!("{package} is known to answer every prompt after a cancel with an empty turn; install {CLAUDE_PACKAGE}")
    })
}

/// The absolute directories of a `PATH`-style list, in order (relative ones
/// are never searched: they would depend on the daemon's cwd).
pub(crate) fn search_dirs(path_env: Option<&OsStr>) -> Vec<PathBuf> {
    path_env
        .map(|p| std::env::split_paths(p).filter(|d| d.is_absolute()).collect())
        .unwrap_or_default()
}

/// [`detect`] with the process's own `PATH`.
pub fn detect_with_process_path(config_file: &Path) -> Result<DetectReport, DetectError> {
    let path = std::env::var_os("PATH");
    detect(config_file, path.as_deref())
}

/// The runnable entry with this id. The daemon spawns nothing else: the
/// control plane names an agent only by id.
pub fn find<'a>(agents: &'a [AcpAgentEntry], id: &str) -> Option<&'a AcpAgentEntry> {
    agents.iter().find(|a| a.id == id)
}

fn apply_user(entry: &mut AcpAgentEntry, user: &UserAgent) {
    entry.source = EntrySource::UserConfig;
    if let Some(name) = &user.name {
        entry.name = name.clone();
    }
    if let Some(args) = &user.args {
        entry.args = args.clone();
    }
    if let Some(env) = &user.env {
        entry.env = env.clone();
    }
    match (&user.ask, user.claude) {
        (Some(ask), _) => entry.ask = ask.clone(),
        // A Claude Code adapter the owner added: asks in its `default` mode.
        (None, Some(true)) => entry.ask = AskSupport::Mode("default".into()),
        _ => {}
    }
    let quirks = &mut entry.quirks;
    if let Some(claude) = user.claude {
        quirks.set_claude(claude);
    }
    if let Some(v) = user.advertise_read_text_file {
        quirks.advertise_read_text_file = v;
    }
    if let Some(v) = user.advertise_write_text_file {
        quirks.advertise_write_text_file = v;
    }
    if let Some(v) = user.system_prompt_in_meta {
        quirks.system_prompt_in_meta = v;
    }
    if let Some(v) = user.skills_layout {
        quirks.skills_layout = v;
    }
}

fn read_user_config(path: &Path) -> Result<Vec<UserAgent>, DetectError> {
    let Some(text) = config_file::read_optional(path)? else {
        return Ok(Vec::new());
    };
    let config: UserConfig = config_file::parse_toml(path, &text)?;

    let mut seen = BTreeSet::new();
    for agent in &config.agent {
        let id = agent.id.get_ref();
        let invalid = |message: String| DetectError::Invalid {
            path: path.to_path_buf(),
            line: line_column(&text, agent.id.span().start).0,
            id: id.clone(),
            message,
        };
        oma_proto::validate::slug("id", id).map_err(|err| invalid(err.message))?;
        if !seen.insert(id.clone()) {
            return Err(invalid("defined twice: keep one [[agent]] entry per id".into()));
        }
        let is_built_in = BUILT_INS.iter().any(|b| b.id == id.as_str());
        match &agent.command {
            None if !is_built_in && !agent.disabled => {
                return Err(invalid(format!(
                    "`command` is required (not a built-in agent; built-ins are {})",
                    built_in_ids().collect::<Vec<_>>().join(", ")
                )));
            }
            Some(command) => check_command(command).map_err(invalid)?,
            None => {}
        }
        if let Some(name) = &agent.name
            && (name.trim().is_empty() || name.chars().any(char::is_control))
        {
            return Err(invalid("`name` must be a non-empty single line".into()));
        }
        for arg in agent.args.iter().flatten() {
            if arg.contains('\0') {
                return Err(invalid("`args` must not contain NUL characters".into()));
            }
        }
        for (key, value) in agent.env.iter().flatten() {
            if !is_env_name(key) {
                return Err(invalid(format!(
                    "`env` key {key:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format!("`env` value of {key} must not contain NUL characters")));
            }
        }
    }
    Ok(config.agent)
}

pub(crate) fn check_command(command: &str) -> Result<(), String> {
    if command.trim().is_empty() {
        return Err("`command` must not be empty".into());
    }
    if command.contains('\0') {
        return Err("`command` must not contain NUL characters".into());
    }
    let expanded = expand_home(command);
    if expanded.contains('/') && !Path::new(&expanded).is_absolute() {
        return Err(format!(
            "`command` {command:?} is a relative path: give an absolute path (or ~/…) or a bare name to look up on PATH"
        ));
    }
    Ok(())
}

/// Environment variable names accepted in `env`: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn expand_home(command: &str) -> String {
    match (command.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest).to_string_lossy().into_owned(),
        _ => command.to_owned(),
    }
}

/// An absolute command is taken as is if it is an executable file; a bare
/// name is looked up in `search_dirs` in order (the first executable file).
pub(crate) fn resolve_command(command: &str, search_dirs: &[PathBuf]) -> Option<PathBuf> {
    resolve_all(command, search_dirs).next()
}

/// Every executable file `command` names: itself when absolute, else each
/// match in `search_dirs`, in order. A relative path names nothing.
pub(crate) fn resolve_all(command: &str, search_dirs: &[PathBuf]) -> impl Iterator<Item = PathBuf> {
    let relative_path = !Path::new(command).is_absolute() && command.contains('/');
    let found = match std::env::join_paths(search_dirs) {
        Ok(path) if !relative_path && !command.is_empty() => {
            // The cwd only resolves relative paths, refused above.
            which::which_in_all(command, Some(path), "/").ok()
        }
        _ => None,
    };
    found.into_iter().flatten()
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["bin1", "bin2", "config"] {
                fs::create_dir(dir.path().join(sub)).unwrap();
            }
            Self { dir }
        }

        fn exe(&self, sub: &str, name: &str) -> PathBuf {
            self.file(sub, name, 0o755)
        }

        fn file(&self, sub: &str, name: &str, mode: u32) -> PathBuf {
            let path = self.dir.path().join(sub).join(name);
            fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        }

        fn path_env(&self) -> OsString {
            std::env::join_paths([self.dir.path().join("bin1"), self.dir.path().join("bin2")]).unwrap()
        }

        fn config(&self, text: &str) -> PathBuf {
            let path = self.config_path();
            fs::write(&path, text).unwrap();
            path
        }

        fn config_path(&self) -> PathBuf {
            self.dir.path().join("config/agents.toml")
        }

        fn detect(&self) -> Result<DetectReport, DetectError> {
            detect(&self.config_path(), Some(&self.path_env()))
        }

        /// An npm global install under `<dir>/<prefix>`: the package's
        /// entry point in `lib/node_modules/<package>/dist/index.js` and
        /// `bin` linked to it from `<sub>/<bin>` (a PATH dir), as npm does.
        fn npm(&self, prefix: &str, package: &str, version: &str, bin: &str, sub: &str) -> PathBuf {
            let package_dir = self.dir.path().join(prefix).join("lib/node_modules").join(package);
            fs::create_dir_all(package_dir.join("dist")).unwrap();
            fs::write(
                package_dir.join("package.json"),
                format!(r#"{{"name": "{package}", "version": "{version}", "bin": {{"{bin}": "dist/index.js"}}}}"#),
            )
            .unwrap();
            let entry = package_dir.join("dist/index.js");
            fs::write(&entry, "#!/usr/bin/env node\n").unwrap();
            fs::set_permissions(&entry, fs::Permissions::from_mode(0o755)).unwrap();
            let link = self.dir.path().join(sub).join(bin);
            std::os::unix::fs::symlink(&entry, &link).unwrap();
            link
        }
    }

    const BROKEN: &str = "@zed-industries/claude-agent-acp 0.23.1 is known to answer every prompt after a cancel \
                          with an empty turn; install @agentclientprotocol/claude-agent-acp";

    #[test]
    fn the_new_claude_adapter_wins_wherever_it_is_on_path() {
        let fx = Fixture::new();
        fx.npm("old", OLD_CLAUDE_PACKAGE, "0.23.1", "claude-agent-acp", "bin1");
        let new = fx.npm("new", CLAUDE_PACKAGE, "0.101.0", "claude-agent-acp", "bin2");
        let report = fx.detect().unwrap();
        let claude = report.find("claude").unwrap();
        assert_eq!(claude.command, new);
        let package = claude.package.as_ref().unwrap();
        assert_eq!(
            (package.name.as_str(), package.version.as_str()),
            (CLAUDE_PACKAGE, "0.101.0")
        );
        assert!(claude.problems.is_empty(), "{:?}", claude.problems);
    }

    #[test]
    fn the_old_claude_adapter_is_flagged_and_beats_claude_code_acp() {
        let fx = Fixture::new();
        fx.npm(
            "older",
            "@zed-industries/claude-code-acp",
            "0.5.0",
            "claude-code-acp",
            "bin1",
        );
        let old = fx.npm("old", OLD_CLAUDE_PACKAGE, "0.23.1", "claude-agent-acp", "bin2");
        let report = fx.detect().unwrap();
        let claude = report.find("claude").unwrap();
        assert_eq!(claude.command, old);
        assert_eq!(claude.problems, [BROKEN]);
        // Only the older adapter: taken, with no problem known.
        fs::remove_file(&old).unwrap();
        let claude = fx.detect().unwrap().find("claude").cloned().unwrap();
        assert_eq!(claude.command, fx.dir.path().join("bin1/claude-code-acp"));
        assert_eq!(claude.package.unwrap().name, "@zed-industries/claude-code-acp");
        assert!(claude.problems.is_empty());
    }

    #[test]
    fn a_claude_agent_acp_of_no_known_package_beats_the_broken_one() {
        let fx = Fixture::new();
        fx.npm("old", OLD_CLAUDE_PACKAGE, "0.23.1", "claude-agent-acp", "bin1");
        let wrapper = fx.exe("bin2", "claude-agent-acp");
        let claude = fx.detect().unwrap().find("claude").cloned().unwrap();
        assert_eq!(claude.command, wrapper);
        assert_eq!(claude.package, None);
        assert!(claude.problems.is_empty());
    }

    #[test]
    fn a_configured_command_is_checked_too() {
        let fx = Fixture::new();
        let old = fx.npm("old", OLD_CLAUDE_PACKAGE, "0.22.0", "claude-agent-acp", "config");
        fx.npm("new", CLAUDE_PACKAGE, "0.101.0", "claude-agent-acp", "bin1");
        fx.config(&format!(
            "[[agent]]\nid = \"claude\"\ncommand = \"{}\"\n",
            old.display()
        ));
        let claude = fx.detect().unwrap().find("claude").cloned().unwrap();
        assert_eq!(claude.command, old, "the owner's choice stands");
        assert_eq!(claude.problems.len(), 1);
        assert!(claude.problems[0].starts_with("@zed-industries/claude-agent-acp 0.22.0 is known"));
    }

    #[test]
    fn known_problems_are_the_old_package_up_to_0_23() {
        let problem = |name: &str, version: &str| {
            known_problem(&Package {
                name: name.into(),
                version: version.into(),
            })
        };
        assert_eq!(problem(OLD_CLAUDE_PACKAGE, "0.23.1").as_deref(), Some(BROKEN));
        assert!(problem(OLD_CLAUDE_PACKAGE, "0.23.9-beta.1").is_some());
        assert!(problem(OLD_CLAUDE_PACKAGE, "0.1.0").is_some());
        assert!(problem(OLD_CLAUDE_PACKAGE, "0.24.0").is_none());
        assert!(problem(OLD_CLAUDE_PACKAGE, "1.0.0").is_none());
        assert!(problem(OLD_CLAUDE_PACKAGE, "latest").is_none());
        assert!(problem(CLAUDE_PACKAGE, "0.23.1").is_none());
    }

    #[test]
    fn only_a_package_in_node_modules_is_an_npm_package() {
        let fx = Fixture::new();
        let script = fx.exe("bin1", "codex-acp");
        // A package.json above a plain script (say, the user's project) is not its package.
        fs::write(
            fx.dir.path().join("package.json"),
            r#"{"name": "mine", "version": "1.0.0"}"#,
        )
        .unwrap();
        assert_eq!(npm_package(&script), None);
        let linked = fx.npm("prefix", "unscoped-agent", "2.0.0", "unscoped", "bin2");
        assert_eq!(
            npm_package(&linked),
            Some(Package {
                name: "unscoped-agent".into(),
                version: "2.0.0".into()
            })
        );
        assert_eq!(npm_package(&fx.dir.path().join("bin2/nothing")), None);
    }

    #[test]
    fn how_each_agent_is_made_to_ask() {
        let fx = Fixture::new();
        for name in ["claude-agent-acp", "codex-acp", "gemini", "opencode", "mine", "adapter"] {
            fx.exe("bin1", name);
        }
        fx.config(
            "[[agent]]\nid = \"mine\"\ncommand = \"mine\"\n\n\
             [[agent]]\nid = \"wrapped\"\ncommand = \"adapter\"\nclaude = true\n\n\
             [[agent]]\nid = \"opencode\"\nask = \"mode:build\"\n\n\
             [[agent]]\nid = \"codex\"\nask = \"native\"\n",
        );
        let report = fx.detect().unwrap();
        let ask = |id: &str| report.agents.iter().find(|a| a.id == id).unwrap().ask.clone();
        assert_eq!(ask("claude"), AskSupport::Mode("default".into()));
        assert_eq!(ask("gemini"), AskSupport::Native);
        assert_eq!(ask("mine"), AskSupport::Native);
        assert_eq!(ask("wrapped"), AskSupport::Mode("default".into()));
        assert_eq!(ask("opencode"), AskSupport::Mode("build".into()));
        assert_eq!(ask("codex"), AskSupport::Native);
        fx.config("");
        let report = fx.detect().unwrap();
        let builtin = |id: &str| report.agents.iter().find(|a| a.id == id).unwrap().ask.clone();
        assert_eq!(builtin("codex"), AskSupport::Mode("read-only".into()));
        let AskSupport::Env(vars) = builtin("opencode") else {
            panic!("opencode is made to ask through its environment");
        };
        assert_eq!(vars[0].0, "OPENCODE_PERMISSION");
        let permission: serde_json::Value = serde_json::from_str(&vars[0].1).unwrap();
        assert_eq!(permission["edit"], "ask");
        assert_eq!(
            builtin("opencode").to_manifest().0,
            oma_proto::pb::AskSupport::AgentConfig
        );

        fx.config("[[agent]]\nid = \"mine\"\ncommand = \"mine\"\nask = \"sometimes\"\n");
        let e = fx.detect().unwrap_err().to_string();
        assert!(e.contains("agents.toml:4") && e.contains("ask must be"), "{e}");
    }

    #[test]
    fn nothing_installed_reports_every_built_in_missing() {
        let fx = Fixture::new();
        let report = fx.detect().unwrap();
        assert!(report.agents.is_empty());
        let ids: Vec<_> = report.missing.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["claude", "codex", "gemini", "opencode"]);
        assert_eq!(report.missing[1].to_string(), "codex: codex-acp not found on PATH");
        assert_eq!(
            report.missing[0].to_string(),
            "claude: claude-agent-acp or claude-code-acp not found on PATH"
        );
        // No PATH at all is fine too.
        assert_eq!(detect(&fx.config_path(), None).unwrap().missing.len(), 4);
    }

    #[test]
    fn built_ins_found_on_path_sorted_with_quirks() {
        let fx = Fixture::new();
        let codex = fx.exe("bin2", "codex-acp");
        fx.exe("bin1", "claude-agent-acp");
        fx.exe("bin2", "claude-code-acp");
        let gemini = fx.exe("bin1", "gemini");
        fx.exe("bin2", "opencode");
        let report = fx.detect().unwrap();
        let ids: Vec<_> = report.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["claude", "codex", "gemini", "opencode"]);
        assert!(report.missing.is_empty());

        let claude = report.find("claude").unwrap();
        assert_eq!(claude.command, fx.dir.path().join("bin1/claude-agent-acp"));
        assert!(claude.args.is_empty());
        assert_eq!(claude.quirks, Quirks::claude());
        assert!(claude.quirks.is_claude && claude.quirks.system_prompt_in_meta);
        assert_eq!(claude.quirks.skills_layout, SkillsLayout::ClaudeSkillsDir);
        assert_eq!(claude.source, EntrySource::BuiltIn);

        assert_eq!(find(&report.agents, "codex").unwrap().command, codex);
        let g = report.find("gemini").unwrap();
        assert_eq!(g.command, gemini);
        assert_eq!(g.args, ["--experimental-acp"]);
        assert!(!g.quirks.advertise_read_text_file);
        assert!(g.quirks.advertise_write_text_file);
        assert_eq!(g.quirks.skills_layout, SkillsLayout::InlineAgentsMd);
        assert_eq!(report.find("opencode").unwrap().args, ["acp"]);
        assert!(report.find("nope").is_none());
    }

    #[test]
    fn older_claude_adapter_is_the_fallback() {
        let fx = Fixture::new();
        let old = fx.exe("bin2", "claude-code-acp");
        let report = fx.detect().unwrap();
        assert_eq!(report.find("claude").unwrap().command, old);
    }

    #[test]
    fn path_order_wins() {
        let fx = Fixture::new();
        let first = fx.exe("bin1", "codex-acp");
        fx.exe("bin2", "codex-acp");
        assert_eq!(fx.detect().unwrap().find("codex").unwrap().command, first);
    }

    #[test]
    fn non_executable_and_directories_are_ignored() {
        let fx = Fixture::new();
        fx.file("bin1", "codex-acp", 0o644);
        let real = fx.exe("bin2", "codex-acp");
        fs::create_dir(fx.dir.path().join("bin1/opencode")).unwrap();
        let report = fx.detect().unwrap();
        assert_eq!(report.find("codex").unwrap().command, real);
        assert!(report.find("opencode").is_none());
        assert!(report.missing.iter().any(|m| m.id == "opencode"));

        fx.file("bin1", "gemini", 0o600);
        assert!(fx.detect().unwrap().find("gemini").is_none());
    }

    #[test]
    fn relative_path_entries_are_not_searched() {
        let fx = Fixture::new();
        fx.exe("bin1", "codex-acp");
        let path_env = OsString::from("bin1::.");
        let report = detect(&fx.config_path(), Some(&path_env)).unwrap();
        assert!(report.find("codex").is_none());
    }

    #[test]
    fn user_overrides_built_in() {
        let fx = Fixture::new();
        fx.exe("bin1", "claude-agent-acp");
        let custom = fx.exe("bin2", "my-claude");
        fx.config(&format!(
            r#"
[[agent]]
id = "claude"
command = "{}"
args = ["--verbose"]
env = {{ FOO = "bar" }}
advertise_write_text_file = false
"#,
            custom.display()
        ));
        let report = fx.detect().unwrap();
        let claude = report.find("claude").unwrap();
        assert_eq!(claude.command, custom);
        assert_eq!(claude.args, ["--verbose"]);
        assert_eq!(claude.env, BTreeMap::from([("FOO".to_owned(), "bar".to_owned())]));
        assert_eq!(claude.name, "Claude Code");
        assert_eq!(claude.source, EntrySource::UserConfig);
        assert!(claude.quirks.is_claude);
        assert!(!claude.quirks.advertise_write_text_file);
    }

    #[test]
    fn user_override_without_command_keeps_candidates() {
        let fx = Fixture::new();
        let gemini = fx.exe("bin2", "gemini");
        fx.config("[[agent]]\nid = \"gemini\"\nargs = [\"--experimental-acp\", \"-m\", \"gemini-2.5-pro\"]\n");
        let report = fx.detect().unwrap();
        let g = report.find("gemini").unwrap();
        assert_eq!(g.command, gemini);
        assert_eq!(g.args, ["--experimental-acp", "-m", "gemini-2.5-pro"]);
        assert!(!g.quirks.advertise_read_text_file);
    }

    #[test]
    fn disabled_built_in_is_hidden() {
        let fx = Fixture::new();
        fx.exe("bin1", "claude-agent-acp");
        fx.exe("bin1", "codex-acp");
        fx.config("[[agent]]\nid = \"claude\"\ndisabled = true\n");
        let report = fx.detect().unwrap();
        assert!(report.find("claude").is_none());
        assert!(report.find("codex").is_some());
        assert_eq!(report.disabled, ["claude"]);
        assert!(report.missing.iter().all(|m| m.id != "claude"));
    }

    #[test]
    fn user_only_entry_on_path_and_absolute() {
        let fx = Fixture::new();
        let scripted = fx.exe("bin2", "scripted-agent");
        let abs = fx.exe("config", "abs-agent");
        fx.config(&format!(
            r#"
[[agent]]
id = "test"
name = "Scripted test agent"
command = "scripted-agent"
args = ["--flag"]
claude = true

[[agent]]
id = "abs.agent-2"
command = "{}"

[[agent]]
id = "gone"
command = "/nonexistent/agent"
"#,
            abs.display()
        ));
        let report = fx.detect().unwrap();
        let test = report.find("test").unwrap();
        assert_eq!(test.command, scripted);
        assert_eq!(test.name, "Scripted test agent");
        assert_eq!(test.args, ["--flag"]);
        assert_eq!(test.source, EntrySource::UserConfig);
        assert_eq!(test.quirks, Quirks::claude());
        let a = report.find("abs.agent-2").unwrap();
        assert_eq!(a.command, abs);
        assert_eq!(a.name, "abs.agent-2");
        assert_eq!(a.quirks, Quirks::default());
        let gone = report.missing.iter().find(|m| m.id == "gone").unwrap();
        assert_eq!(gone.to_string(), "gone: /nonexistent/agent is not an executable file");
        let ids: Vec<_> = report.agents.iter().map(|a| a.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let fx = Fixture::new();
        let path = fx.config("[[agent]]\nid = \"x\"\ncommand = \"x\"\ncomand = \"typo\"\n");
        let err = fx.detect().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, DetectError::File(ConfigFileError::Parse { line: Some(4), .. })),
            "{err:?}"
        );
        assert!(msg.starts_with(&format!("{}:4:", path.display())), "{msg}");
        assert!(msg.contains("comand"), "{msg}");
    }

    #[test]
    fn syntax_and_type_errors_are_located() {
        let fx = Fixture::new();
        fx.config("[[agent]]\nid = \"x\"\nargs = \"not-a-list\"\ncommand = \"x\"\n");
        let err = fx.detect().unwrap_err();
        assert!(
            matches!(err, DetectError::File(ConfigFileError::Parse { line: Some(3), .. })),
            "{err:?}"
        );
        fx.config("[[agent]\n");
        let err = fx.detect().unwrap_err();
        assert!(
            matches!(err, DetectError::File(ConfigFileError::Parse { line: Some(1), .. })),
            "{err:?}"
        );
        fx.config("[other]\n");
        assert!(fx.detect().unwrap_err().to_string().contains("other"));
    }

    #[test]
    fn semantic_errors_name_the_entry() {
        let fx = Fixture::new();
        let cases = [
            ("[[agent]]\nid = \"Bad Id\"\ncommand = \"x\"\n", "not a valid name"),
            ("[[agent]]\nid = \"new\"\n", "`command` is required"),
            ("[[agent]]\nid = \"x\"\ncommand = \"bin/x\"\n", "relative path"),
            (
                "[[agent]]\nid = \"x\"\ncommand = \"x\"\nenv = { \"A-B\" = \"1\" }\n",
                "not a valid variable name",
            ),
            (
                "[[agent]]\nid = \"x\"\ncommand = \"x\"\n\n[[agent]]\nid = \"x\"\ncommand = \"y\"\n",
                "defined twice",
            ),
        ];
        for (text, expected) in cases {
            let path = fx.config(text);
            let err = fx.detect().unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, DetectError::Invalid { .. }), "{text}: {err:?}");
            assert!(msg.contains(expected), "{text}: {msg}");
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        }
        fx.config("[[agent]]\nid = \"x\"\ncommand = \"x\"\n\n[[agent]]\nid = \"x\"\ncommand = \"y\"\n");
        assert!(matches!(fx.detect().unwrap_err(), DetectError::Invalid { line: 6, .. }));
    }

    #[test]
    fn empty_config_file_is_fine() {
        let fx = Fixture::new();
        fx.config("# nothing yet\n");
        assert_eq!(fx.detect().unwrap().missing.len(), 4);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
