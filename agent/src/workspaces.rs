//! The folders the machine's owner offers for sessions: `workspaces.toml`
//! next to `agents.toml` and `policy.toml`.
//!
//! The control plane names a workspace by id only and never sends a path
//! (DESIGN §3, invariant 4): only the folders listed here can become a
//! session's working directory. The file is read at every session start and
//! every manifest rescan, so edits apply without a restart. Without it, no
//! workspace is offered.
//!
//! ```toml
//! [[workspace]]
//! id = "web"                  # what the control plane names
//! path = "~/src/web"          # absolute or ~/…
//! name = "Web app"            # optional, for humans
//! allow_direct = false        # a git repository: may sessions run in the
//!                             # folder itself rather than a worktree?
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oma_proto::pb;
use oma_proto::workspace::{MAX_WORKSPACES, workspace_id};
use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{self, ConfigFileError};
use crate::detect::expand_home;
use crate::git;

/// One workspace, as the owner declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    /// Absolute.
    pub path: PathBuf,
    /// Sessions may use a git repository's folder itself.
    pub allow_direct: bool,
}

/// The owner's workspaces, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspaces {
    /// The file they came from (named in every refusal).
    pub file: PathBuf,
    pub list: Vec<Workspace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    workspace: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: Spanned<String>,
    path: Spanned<String>,
    name: Option<String>,
    #[serde(default)]
    allow_direct: bool,
}

impl Workspaces {
    /// Reads `file`; absent means no workspace.
    pub fn load(file: &Path) -> Result<Workspaces, ConfigFileError> {
        let Some(text) = config_file::read_optional(file)? else {
            return Ok(Workspaces {
                file: file.to_path_buf(),
                list: Vec::new(),
            });
        };
        parse(file, &text)
    }

    pub fn find(&self, id: &str) -> Option<&Workspace> {
        self.list.iter().find(|w| w.id == id)
    }

    /// The ids, for "unknown workspace" messages.
    pub fn ids(&self) -> String {
        if self.list.is_empty() {
            return format!(
                "none is declared (add [[workspace]] entries to {})",
                self.file.display()
            );
        }
        self.list.iter().map(|w| w.id.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// What the manifest reports: ids, names and what git says about each
    /// folder (blocking: runs git). Never the path.
    pub fn manifest(&self) -> Vec<pb::Workspace> {
        self.list.iter().map(Workspace::report).collect()
    }
}

impl Workspace {
    fn report(&self) -> pb::Workspace {
        let problem = match fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => String::new(),
            Ok(_) => "the workspace's path is not a folder".to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => "the workspace's folder does not exist".to_owned(),
            Err(e) => format!("the workspace's folder cannot be read: {}", e.kind()),
        };
        let probe = if problem.is_empty() {
            git::probe(&self.path)
        } else {
            git::Probe::default()
        };
        pb::Workspace {
            id: self.id.clone(),
            name: self.name.clone(),
            is_git: probe.is_git,
            direct_allowed: self.allow_direct || !probe.is_git,
            current_branch: probe.current_branch,
            default_branch: probe.default_branch,
            remote_url: probe.remote_url,
            problem,
        }
    }
}

fn parse(file: &Path, text: &str) -> Result<Workspaces, ConfigFileError> {
    let at = |offset: usize, message: String| ConfigFileError::at(file, text, offset, message);
    let raw: File = config_file::parse_toml(file, text)?;
    if let Some(entry) = raw.workspace.get(MAX_WORKSPACES) {
        return Err(at(
            entry.id.span().start,
            format!("more than {MAX_WORKSPACES} [[workspace]] entries"),
        ));
    }
    let mut list: Vec<Workspace> = Vec::with_capacity(raw.workspace.len());
    for entry in raw.workspace {
        let id = workspace_id("id", entry.id.get_ref()).map_err(|e| at(entry.id.span().start, e.message))?;
        if list.iter().any(|w| w.id == id) {
            return Err(at(
                entry.id.span().start,
                format!("workspace id {id:?} is declared twice"),
            ));
        }
        let path = PathBuf::from(expand_home(entry.path.get_ref()));
        if !path.is_absolute() {
            return Err(at(
                entry.path.span().start,
                format!("path {:?} must be absolute or start with ~/", entry.path.get_ref()),
            ));
        }
        let name = entry.name.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| id.clone())
        });
        if name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(at(
                entry.id.span().start,
                "name must be one line of at most 128 characters".into(),
            ));
        }
        list.push(Workspace {
            id,
            name,
            path,
            allow_direct: entry.allow_direct,
        });
    }
    Ok(Workspaces {
        file: file.to_path_buf(),
        list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Workspaces, ConfigFileError> {
        parse(Path::new("/cfg/workspaces.toml"), text)
    }

    #[test]
    fn entries_load_with_defaults() {
        let w = load("[[workspace]]\nid = \"web\"\npath = \"/src/web\"\n\n[[workspace]]\nid = \"docs\"\npath = \"/srv/docs\"\nname = \"Docs\"\nallow_direct = true\n").unwrap();
        assert_eq!(w.list.len(), 2);
        assert_eq!(w.list[0].name, "web");
        assert!(!w.list[0].allow_direct);
        assert_eq!(w.find("docs").unwrap().path, PathBuf::from("/srv/docs"));
        assert_eq!(w.ids(), "web, docs");
    }

    #[test]
    fn bad_entries_name_the_line_and_the_fix() {
        for (text, line, says) in [
            (
                "[[workspace]]\nid = \"a/b\"\npath = \"/x\"\n",
                2,
                "not a valid workspace id",
            ),
            ("[[workspace]]\nid = \"a\"\npath = \"rel/x\"\n", 3, "must be absolute"),
            (
                "[[workspace]]\nid = \"a\"\npath = \"/x\"\n[[workspace]]\nid = \"a\"\npath = \"/y\"\n",
                5,
                "declared twice",
            ),
            (
                "[[workspace]]\nid = \"a\"\npath = \"/x\"\ncommand = \"sh\"\n",
                4,
                "unknown field",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("/cfg/workspaces.toml:{line}:")), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn a_missing_file_is_no_workspace() {
        let w = Workspaces::load(Path::new("/nonexistent/oma/workspaces.toml")).unwrap();
        assert!(w.list.is_empty());
        assert!(w.ids().contains("none is declared"));
    }
}
