//! The machine owner's local policy: `policy.toml` next to `agents.toml`.
//!
//! The control plane configures agents, but what runs on this machine is the
//! owner's call (DESIGN §3, invariant 4). The policy says which MCP servers
//! sessions may get and which server-sent credentials are taken. Everything
//! defaults to "no": without the file, sessions get no MCP server and no
//! credential from the server. It is read when the daemon starts (a broken
//! file stops it with `file:line: why`) and again at every session start, so
//! edits apply without a restart.
//!
//! ```toml
//! # HTTP/SSE MCP servers the control plane may name: scheme://host[:port][/path].
//! # A URL matches with the same scheme, host and port and a path under the
//! # entry's (on a `/` boundary); URLs with `user@` never match.
//! mcp_url_allow_list = ["https://mcp.example.com/tools"]
//!
//! # ACP agents (ids from `oma-agent agents`) that take credentials the
//! # control plane sends (model API keys from a fixed list).
//! accept_credentials_for = ["claude"]
//!
//! # Whether a server-sent *_BASE_URL (where model traffic goes) is taken.
//! allow_server_base_url = false
//!
//! # An MCP server this machine runs; agents name it by id (`omactl agents
//! # create --mcp-local NAME=fs`). Its command, args and env never leave
//! # the machine: the manifest reports only id, name and description.
//! [[mcp_server]]
//! id = "fs"
//! name = "Files"
//! description = "Read-only access to ~/src"
//! command = "mcp-fs"                # absolute, ~/…, or a name on PATH
//! args = ["--root", "/home/me/src"]
//! env = { LOG = "warn" }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use oma_proto::mcp_url::AllowedUrl;
use oma_proto::pb;
use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{self, ConfigFileError};
use crate::detect;

/// Longest `name` of a local MCP server, in bytes (it goes into the manifest).
const MAX_NAME_BYTES: usize = 128;
/// Longest `description`, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Most entries in any list of the file.
const MAX_ENTRIES: usize = 256;

/// The owner's policy, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file it came from (named in every refusal).
    pub file: PathBuf,
    /// MCP servers this machine runs, by id.
    pub mcp_servers: Vec<LocalMcpServer>,
    /// HTTP/SSE MCP URLs sessions may use; empty allows none.
    pub mcp_url_allow_list: Vec<AllowedUrl>,
    /// ACP agent ids that take server-sent credentials.
    pub accept_credentials_for: BTreeSet<String>,
    /// Whether a server-sent `*_BASE_URL` credential is taken.
    pub allow_server_base_url: bool,
}

/// An MCP server defined on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMcpServer {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Absolute (resolved on `PATH` when given as a bare name).
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Errors reading the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable, or not valid TOML, or unknown keys or wrong types.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// Well-formed TOML, but a value is not usable.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    mcp_url_allow_list: Vec<Spanned<String>>,
    #[serde(default)]
    accept_credentials_for: Vec<Spanned<String>>,
    #[serde(default)]
    allow_server_base_url: bool,
    #[serde(default)]
    mcp_server: Vec<McpServerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpServerEntry {
    id: Spanned<String>,
    name: Option<String>,
    #[serde(default)]
    description: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl Policy {
    /// The policy when there is no file: nothing allowed.
    pub fn empty(file: &Path) -> Policy {
        Policy {
            file: file.to_path_buf(),
            mcp_servers: Vec::new(),
            mcp_url_allow_list: Vec::new(),
            accept_credentials_for: BTreeSet::new(),
            allow_server_base_url: false,
        }
    }

    /// Reads `file` (absent means [`Policy::empty`]); bare MCP server
    /// commands are looked up in the absolute directories of `path_env`.
    pub fn load(file: &Path, path_env: Option<&OsStr>) -> Result<Policy, PolicyError> {
        let Some(text) = config_file::read_optional(file)? else {
            return Ok(Policy::empty(file));
        };
        parse(file, &text, path_env)
    }

    /// [`Policy::load`] with the process's own `PATH`.
    pub fn load_with_process_path(file: &Path) -> Result<Policy, PolicyError> {
        let path = std::env::var_os("PATH");
        Policy::load(file, path.as_deref())
    }

    /// The local MCP server with this id.
    pub fn mcp_server(&self, id: &str) -> Option<&LocalMcpServer> {
        self.mcp_servers.iter().find(|s| s.id == id)
    }

    /// What the manifest reports: ids, names and descriptions of the local
    /// MCP servers (never their command, args or env), and the allow-list.
    pub fn manifest_parts(&self) -> (Vec<pb::LocalMcpServer>, Vec<String>) {
        let servers = self
            .mcp_servers
            .iter()
            .map(|s| pb::LocalMcpServer {
                id: s.id.clone(),
                name: s.name.clone(),
                description: s.description.clone(),
            })
            .collect();
        let urls = self.mcp_url_allow_list.iter().map(|u| u.text.clone()).collect();
        (servers, urls)
    }
}

fn parse(file: &Path, text: &str, path_env: Option<&OsStr>) -> Result<Policy, PolicyError> {
    let raw: PolicyFile = config_file::parse_toml(file, text)?;
    let invalid = |span: std::ops::Range<usize>, message: String| PolicyError::Invalid {
        path: file.to_path_buf(),
        line: detect::line_column(text, span.start).0,
        message,
    };
    for (key, len, at) in [
        (
            "mcp_url_allow_list",
            raw.mcp_url_allow_list.len(),
            raw.mcp_url_allow_list.get(MAX_ENTRIES).map(Spanned::span),
        ),
        (
            "accept_credentials_for",
            raw.accept_credentials_for.len(),
            raw.accept_credentials_for.get(MAX_ENTRIES).map(Spanned::span),
        ),
    ] {
        if let Some(span) = at {
            return Err(invalid(
                span,
                format!("`{key}` has {len} entries, more than the limit of {MAX_ENTRIES}"),
            ));
        }
    }
    if let Some(entry) = raw.mcp_server.get(MAX_ENTRIES) {
        return Err(invalid(
            entry.id.span(),
            format!("more than {MAX_ENTRIES} [[mcp_server]] entries"),
        ));
    }

    let mut mcp_url_allow_list = Vec::new();
    for entry in &raw.mcp_url_allow_list {
        let url = AllowedUrl::parse(entry.get_ref())
            .map_err(|e| invalid(entry.span(), format!("`mcp_url_allow_list` entry {e}")))?;
        mcp_url_allow_list.push(url);
    }

    let mut accept_credentials_for = BTreeSet::new();
    for id in &raw.accept_credentials_for {
        oma_proto::validate::slug("accept_credentials_for", id.get_ref())
            .map_err(|e| invalid(id.span(), format!("`accept_credentials_for` entry {}", e.message)))?;
        accept_credentials_for.insert(id.get_ref().clone());
    }

    let search_dirs = detect::search_dirs(path_env);
    let mut mcp_servers: Vec<LocalMcpServer> = Vec::new();
    for entry in raw.mcp_server {
        let id = entry.id.get_ref().clone();
        let span = entry.id.span();
        let bad = |message: String| invalid(span.clone(), format!("mcp_server {id:?}: {message}"));
        oma_proto::model::local_mcp_server_id("id", &id).map_err(|e| bad(e.message))?;
        if mcp_servers.iter().any(|s| s.id == id) {
            return Err(bad("defined twice: keep one [[mcp_server]] entry per id".into()));
        }
        let name = entry.name.unwrap_or_else(|| id.clone());
        if name.trim().is_empty() || name.chars().any(char::is_control) || name.len() > MAX_NAME_BYTES {
            return Err(bad(format!(
                "`name` must be a non-empty single line of at most {MAX_NAME_BYTES} bytes"
            )));
        }
        if entry.description.chars().count() > MAX_DESCRIPTION_CHARS
            || entry
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(bad(format!(
                "`description` must be at most {MAX_DESCRIPTION_CHARS} characters without control characters"
            )));
        }
        let Some(command) = entry.command else {
            return Err(bad("`command` is required".into()));
        };
        detect::check_command(&command).map_err(&bad)?;
        let expanded = detect::expand_home(&command);
        let command = detect::resolve_command(&expanded, &search_dirs).ok_or_else(|| {
            bad(if Path::new(&expanded).is_absolute() {
                format!("`command` {expanded} is not an executable file")
            } else {
                format!("`command` {command:?} was not found on PATH (give an absolute path)")
            })
        })?;
        if entry.args.len() > MAX_ENTRIES || entry.args.iter().any(|a| a.contains('\0')) {
            return Err(bad(format!(
                "`args` must be at most {MAX_ENTRIES} strings without NUL characters"
            )));
        }
        for (key, value) in &entry.env {
            if !detect::is_env_name(key) {
                return Err(bad(format!(
                    "`env` key {key:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
                )));
            }
            if value.contains('\0') {
                return Err(bad(format!("`env` value of {key} must not contain NUL characters")));
            }
        }
        mcp_servers.push(LocalMcpServer {
            id,
            name,
            description: entry.description,
            command,
            args: entry.args,
            env: entry.env,
        });
    }
    mcp_servers.sort_by(|a, b| a.id.cmp(&b.id));

    Ok(Policy {
        file: file.to_path_buf(),
        mcp_servers,
        mcp_url_allow_list,
        accept_credentials_for,
        allow_server_base_url: raw.allow_server_base_url,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("bin")).unwrap();
            Fixture { dir }
        }

        fn exe(&self, name: &str) -> PathBuf {
            let path = self.dir.path().join("bin").join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        fn file(&self) -> PathBuf {
            self.dir.path().join("policy.toml")
        }

        fn load(&self, text: &str) -> Result<Policy, PolicyError> {
            fs::write(self.file(), text).unwrap();
            let path = self.dir.path().join("bin").into_os_string();
            Policy::load(&self.file(), Some(&path))
        }
    }

    #[test]
    fn no_file_allows_nothing() {
        let fx = Fixture::new();
        let policy = Policy::load(&fx.file(), None).unwrap();
        assert_eq!(policy, Policy::empty(&fx.file()));
        assert!(policy.mcp_servers.is_empty() && policy.mcp_url_allow_list.is_empty());
        assert!(policy.accept_credentials_for.is_empty() && !policy.allow_server_base_url);
        assert_eq!(fx.load("# nothing\n").unwrap(), Policy::empty(&fx.file()));
    }

    #[test]
    fn a_full_file_loads() {
        let fx = Fixture::new();
        let fs_bin = fx.exe("mcp-fs");
        let abs = fx.exe("mcp-git");
        let policy = fx
            .load(&format!(
                r#"
mcp_url_allow_list = ["https://mcp.example.com/tools", "http://127.0.0.1:9000"]
accept_credentials_for = ["claude", "test"]
allow_server_base_url = true

[[mcp_server]]
id = "git"
command = "{}"

[[mcp_server]]
id = "fs"
name = "Files"
description = "Read-only ~/src"
command = "mcp-fs"
args = ["--root", "/srv"]
env = {{ LOG = "warn" }}
"#,
                abs.display()
            ))
            .unwrap();
        let ids: Vec<&str> = policy.mcp_servers.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["fs", "git"]);
        let fs_server = policy.mcp_server("fs").unwrap();
        assert_eq!(fs_server.command, fs_bin);
        assert_eq!(fs_server.args, ["--root", "/srv"]);
        assert_eq!(fs_server.env["LOG"], "warn");
        assert_eq!(policy.mcp_server("git").unwrap().name, "git");
        assert_eq!(
            policy.accept_credentials_for,
            BTreeSet::from(["claude".to_owned(), "test".to_owned()])
        );
        assert!(policy.allow_server_base_url);
        let (servers, urls) = policy.manifest_parts();
        assert_eq!(urls, ["https://mcp.example.com/tools", "http://127.0.0.1:9000"]);
        assert_eq!(
            servers[0],
            pb::LocalMcpServer {
                id: "fs".into(),
                name: "Files".into(),
                description: "Read-only ~/src".into()
            }
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let fx = Fixture::new();
        fx.exe("mcp-fs");
        let cases = [
            (
                "mcp_url_allow_list = [\"https://a.example\"]\nallow_base_url = true\n",
                2,
                "allow_base_url",
            ),
            ("allow_server_base_url = \"yes\"\n", 1, "boolean"),
            (
                "mcp_url_allow_list = [\n  \"https://ok.example\",\n  \"https://a.example@evil.example/\",\n]\n",
                3,
                "user info",
            ),
            ("mcp_url_allow_list = [\"ftp://a.example/\"]\n", 1, "http"),
            ("accept_credentials_for = [\"Bad Id\"]\n", 1, "accept_credentials_for"),
            (
                "\n[[mcp_server]]\nid = \"../x\"\ncommand = \"mcp-fs\"\n",
                3,
                "not a valid local MCP server id",
            ),
            ("[[mcp_server]]\nid = \"fs\"\n", 2, "`command` is required"),
            (
                "[[mcp_server]]\nid = \"fs\"\ncommand = \"nope\"\n",
                2,
                "not found on PATH",
            ),
            (
                "[[mcp_server]]\nid = \"fs\"\ncommand = \"/no/such/bin\"\n",
                2,
                "not an executable file",
            ),
            ("[[mcp_server]]\nid = \"fs\"\ncommand = \"bin/x\"\n", 2, "relative path"),
            (
                "[[mcp_server]]\nid = \"fs\"\ncommand = \"mcp-fs\"\nenv = { \"LD PRELOAD\" = \"x\" }\n",
                2,
                "not a valid variable name",
            ),
            (
                "[[mcp_server]]\nid = \"fs\"\ncommand = \"mcp-fs\"\n\n[[mcp_server]]\nid = \"fs\"\ncommand = \"mcp-fs\"\n",
                6,
                "defined twice",
            ),
            (
                "[[mcp_server]]\nid = \"fs\"\nname = \"a\\nb\"\ncommand = \"mcp-fs\"\n",
                2,
                "single line",
            ),
            (
                "[[mcp_server]]\nid = \"fs\"\ncommand = \"mcp-fs\"\nsecret = 1\n",
                4,
                "secret",
            ),
            ("[[mcp_server]\n", 1, ""),
        ];
        for (text, line, expected) in cases {
            let err = fx.load(text).unwrap_err();
            let msg = err.to_string();
            let prefix = format!("{}:{line}", fx.file().display());
            assert!(msg.starts_with(&prefix), "{text:?}: {msg} does not start with {prefix}");
            assert!(msg.contains(expected), "{text:?}: {msg} lacks {expected:?}");
        }
    }
}
