//! A session's working folder when it works in one of the owner's
//! workspaces: a git worktree of its own (a new branch from a base commit,
//! under the data dir) or, in direct mode, the workspace folder itself.
//!
//! The control plane names a workspace id, a mode, a base ref and a branch;
//! everything is checked here again against the owner's `workspaces.toml`
//! and git's rules before git runs, and only the declared folder, the
//! session's worktree under `<data dir>/worktrees/` and the new branch are
//! ever touched. A session without a workspace keeps its private folder
//! (no checkout).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oma_proto::pb;
use oma_proto::workspace::{self as rules, default_branch_for};
use serde::{Deserialize, Serialize};

use crate::git;
use crate::paths::Paths;
use crate::workspaces::Workspaces;

/// Where a session works, remembered in its state file so that a restarted
/// daemon (or a restarted child) continues in the same place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Checkout {
    pub workspace_id: String,
    /// The workspace folder itself rather than a worktree.
    pub direct: bool,
    /// The ACP child's cwd.
    pub cwd: PathBuf,
    /// The workspace folder, when it is a git repository.
    pub repo: Option<PathBuf>,
    /// The session's branch (worktree mode).
    pub branch: Option<String>,
    /// What changes are counted against: the worktree's base, or HEAD when a
    /// direct session started. `None` for a folder that is not git.
    pub base_commit: Option<String>,
}

/// Why a session cannot work where it was asked to: a stable code for the
/// session error event and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckoutError {
    pub code: &'static str,
    pub message: String,
}

impl CheckoutError {
    fn new(code: &'static str, message: impl Into<String>) -> CheckoutError {
        CheckoutError {
            code,
            message: message.into(),
        }
    }
}

/// Which session holds each workspace in direct mode (at most one).
#[derive(Default)]
pub(super) struct DirectLocks(Mutex<HashMap<String, String>>);

impl DirectLocks {
    /// Takes `workspace` for `session`; the holder's id if another has it.
    pub fn acquire(&self, workspace: &str, session: &str) -> Result<(), String> {
        let mut held = self.0.lock().expect("direct locks");
        match held.get(workspace) {
            Some(holder) if holder != session => Err(holder.clone()),
            _ => {
                held.insert(workspace.to_owned(), session.to_owned());
                Ok(())
            }
        }
    }

    pub fn release(&self, workspace: &str, session: &str) {
        let mut held = self.0.lock().expect("direct locks");
        if held.get(workspace).is_some_and(|h| h == session) {
            held.remove(workspace);
        }
    }
}

/// Opens the session's working folder (blocking: runs git). `existing` is
/// what an earlier start opened: it is reused when it is still there, so a
/// resumed session continues in the same worktree.
pub(super) fn open(
    paths: &Paths,
    session_id: &str,
    request: &pb::SessionWorkspace,
    existing: Option<&Checkout>,
) -> Result<Checkout, CheckoutError> {
    let workspaces = Workspaces::load(&paths.workspaces_file()).map_err(|e| {
        CheckoutError::new(
            "workspace_config_invalid",
            format!("this machine's workspaces file is broken: {e}"),
        )
    })?;
    let id = rules::workspace_id("workspace.workspace_id", &request.workspace_id)
        .map_err(|e| CheckoutError::new("workspace_unknown", e.to_string()))?;
    let Some(workspace) = workspaces.find(&id) else {
        return Err(CheckoutError::new(
            "workspace_unknown",
            format!(
                "this machine has no workspace {id:?} in {}; its workspaces: {}",
                workspaces.file.display(),
                workspaces.ids()
            ),
        ));
    };
    if !workspace.path.is_dir() {
        return Err(CheckoutError::new(
            "workspace_missing",
            format!("workspace {id:?}'s folder {} does not exist", workspace.path.display()),
        ));
    }
    if let Some(existing) = existing {
        return reopen(existing);
    }
    let is_git = git::probe(&workspace.path).is_git;
    let direct = match pb::WorkspaceMode::try_from(request.mode).unwrap_or(pb::WorkspaceMode::Unspecified) {
        pb::WorkspaceMode::Unspecified => !is_git,
        pb::WorkspaceMode::Direct => true,
        pb::WorkspaceMode::Worktree => false,
    };
    if !direct && !is_git {
        return Err(CheckoutError::new(
            "workspace_not_git",
            format!("workspace {id:?} is not a git repository: only direct mode works there"),
        ));
    }
    if direct {
        if is_git && !workspace.allow_direct {
            return Err(CheckoutError::new(
                "workspace_direct_not_allowed",
                format!(
                    "workspace {id:?} is a git repository whose owner has not allowed direct sessions \
                     (allow_direct = true in {}); use a worktree",
                    workspaces.file.display()
                ),
            ));
        }
        let base_commit = match is_git {
            true => git::resolve_commit(&workspace.path, "HEAD").ok(),
            false => None,
        };
        return Ok(Checkout {
            workspace_id: id,
            direct: true,
            cwd: workspace.path.clone(),
            repo: is_git.then(|| workspace.path.clone()),
            branch: None,
            base_commit,
        });
    }
    let branch = match request.branch.as_str() {
        "" => default_branch_for(session_id),
        named => rules::branch_name("workspace.branch", named)
            .map_err(|e| CheckoutError::new("workspace_branch_invalid", e.to_string()))?,
    };
    let base_ref = match request.base_ref.as_str() {
        "" => "HEAD".to_owned(),
        named => rules::base_ref("workspace.base_ref", named)
            .map_err(|e| CheckoutError::new("workspace_base_invalid", e.to_string()))?,
    };
    let repo = workspace.path.clone();
    let base_commit = git::resolve_commit(&repo, &base_ref).map_err(|_| {
        CheckoutError::new(
            "workspace_base_not_found",
            format!("base ref {base_ref:?} names no commit in workspace {id:?}"),
        )
    })?;
    let worktree = paths
        .worktree_dir(session_id)
        .map_err(|e| CheckoutError::new("start_failed", e.to_string()))?;
    // A start cut short after `git worktree add` left this session's own
    // worktree on its branch: take it over.
    let left_by_an_earlier_start =
        git::is_work_tree(&worktree) && git::current_branch(&worktree).as_deref() == Some(branch.as_str());
    if !left_by_an_earlier_start {
        if git::branch_exists(&repo, &branch) {
            return Err(CheckoutError::new(
                "workspace_branch_exists",
                format!("branch {branch:?} already exists in workspace {id:?}; name another branch"),
            ));
        }
        if worktree.exists() {
            let _ = git::remove_worktree(&repo, &worktree);
        }
        if let Some(parent) = worktree.parent() {
            crate::fsutil::create_private_dir(parent)
                .map_err(|e| CheckoutError::new("start_failed", format!("cannot create {}: {e}", parent.display())))?;
        }
        git::add_worktree(&repo, &worktree, &branch, &base_commit).map_err(|e| {
            CheckoutError::new(
                "workspace_worktree_failed",
                format!("cannot create a worktree of workspace {id:?}: {e}"),
            )
        })?;
    }
    Ok(Checkout {
        workspace_id: id,
        direct: false,
        cwd: worktree,
        repo: Some(repo),
        branch: Some(branch),
        base_commit: Some(base_commit),
    })
}

/// An earlier checkout, if it is still usable.
fn reopen(existing: &Checkout) -> Result<Checkout, CheckoutError> {
    let usable = match &existing.repo {
        Some(_) => git::is_work_tree(&existing.cwd),
        None => existing.cwd.is_dir(),
    };
    if !usable {
        return Err(CheckoutError::new(
            "workspace_missing",
            format!(
                "the session's folder {} is gone or no longer a git work tree (was its repository deleted or moved?)",
                existing.cwd.display()
            ),
        ));
    }
    Ok(existing.clone())
}

/// Why the checkout cannot be worked in any more (its folder or its
/// repository is gone), if so. Two `stat`s: cheap enough for every prompt.
pub(super) fn missing(checkout: &Checkout) -> Option<String> {
    if !checkout.cwd.is_dir() {
        return Some(format!(
            "the session's folder {} no longer exists",
            checkout.cwd.display()
        ));
    }
    match &checkout.repo {
        Some(repo) if !repo.is_dir() => Some(format!(
            "workspace {:?}'s repository {} no longer exists",
            checkout.workspace_id,
            repo.display()
        )),
        _ => None,
    }
}

/// Removes a worktree session's worktree (the branch stays unless
/// `delete_branch`); a direct session leaves the folder as it is.
pub(super) fn close(checkout: &Checkout, delete_branch: bool) -> Result<(), git::GitError> {
    let (false, Some(repo)) = (checkout.direct, &checkout.repo) else {
        return Ok(());
    };
    git::remove_worktree(repo, &checkout.cwd)?;
    if delete_branch && let Some(branch) = &checkout.branch {
        git::delete_branch(repo, branch)?;
    }
    Ok(())
}

/// The private index git uses to count a session's changes: in the
/// session's private folder, never in the workspace.
pub(super) fn scratch_index(session_dir: &Path) -> PathBuf {
    session_dir.join(".oma-diff-index")
}

/// What the session changed against its base, if it has one (blocking).
pub(super) fn changes(checkout: &Checkout, session_dir: &Path) -> Option<Result<pb::WorkspaceChanges, git::GitError>> {
    let base = checkout.base_commit.as_deref()?;
    Some(git::changes(&checkout.cwd, base, &scratch_index(session_dir)))
}
