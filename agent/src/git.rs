//! The few git operations the daemon needs, through the `git` the owner has
//! installed (the same one their own tools use, so worktrees it makes are
//! ordinary ones `git worktree list` shows).
//!
//! Every call is blocking (run it off the async runtime), passes refs only
//! after they passed [`oma_proto::workspace`]'s checks and after
//! `--end-of-options` where git takes it, and never prompts (no terminal,
//! `GIT_TERMINAL_PROMPT=0`).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use oma_proto::pb;
use oma_proto::workspace::MAX_CHANGED_FILES;

/// A git command that failed, with git's own first line of complaint.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(io::Error),
    #[error("git {command} failed: {message}")]
    Failed { command: String, message: String },
}

/// What the manifest says about a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub is_git: bool,
    pub current_branch: String,
    pub default_branch: String,
    pub remote_url: String,
}

fn command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null());
    command
}

/// Runs git in `dir`; stdout on success.
fn run(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    run_with(command(dir), args)
}

fn run_with(mut command: Command, args: &[&str]) -> Result<String, GitError> {
    let output = command.args(args).output().map_err(GitError::Spawn)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .trim_start_matches("fatal: ")
        .trim_start_matches("error: ")
        .to_owned();
    Err(GitError::Failed {
        command: args.first().copied().unwrap_or_default().to_owned(),
        message,
    })
}

/// Whether `dir` is the top of a git work tree, and its branches and remote.
pub fn probe(dir: &Path) -> Probe {
    let top = match run(dir, &["rev-parse", "--show-toplevel"]) {
        Ok(top) => PathBuf::from(top),
        Err(_) => return Probe::default(),
    };
    // A folder inside someone else's repository is not a git workspace of its own.
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(&top, dir) {
        return Probe::default();
    }
    let current_branch = current_branch(dir).unwrap_or_default();
    let default_branch = run(dir, &["symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD"])
        .ok()
        .and_then(|b| b.strip_prefix("origin/").map(str::to_owned))
        .unwrap_or_else(|| current_branch.clone());
    let remote_url = run(dir, &["remote", "get-url", "origin"])
        .map(|url| strip_credentials(&url))
        .unwrap_or_default();
    Probe {
        is_git: true,
        current_branch,
        default_branch,
        remote_url,
    }
}

/// A remote URL without user info (`https://user:token@host/x` →
/// `https://host/x`); scp-style `git@host:x` keeps its user, which is not a
/// secret.
pub fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// The commit a ref names in `repo`.
pub fn resolve_commit(repo: &Path, reference: &str) -> Result<String, GitError> {
    let spec = format!("{reference}^{{commit}}");
    run(repo, &["rev-parse", "--verify", "--quiet", "--end-of-options", &spec]).map_err(|_| GitError::Failed {
        command: "rev-parse".into(),
        message: format!("{reference:?} names no commit in this repository"),
    })
}

/// The branch checked out at `dir`, if any.
pub fn current_branch(dir: &Path) -> Option<String> {
    run(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"]).ok()
}

/// Whether branch `name` exists in `repo`.
pub fn branch_exists(repo: &Path, name: &str) -> bool {
    run(
        repo,
        &["show-ref", "--verify", "--quiet", &format!("refs/heads/{name}")],
    )
    .is_ok()
}

/// Creates branch `branch` at `commit` checked out in a new worktree at
/// `path` (which must not exist).
pub fn add_worktree(repo: &Path, path: &Path, branch: &str, commit: &str) -> Result<(), GitError> {
    let path = path.to_str().ok_or_else(|| GitError::Failed {
        command: "worktree".into(),
        message: "the data dir's path is not UTF-8".into(),
    })?;
    run(repo, &["worktree", "add", "--quiet", "-b", branch, path, commit]).map(drop)
}

/// Whether `path` is a worktree that git can still work in (its repository
/// was not deleted or moved).
pub fn is_work_tree(path: &Path) -> bool {
    path.is_dir() && run(path, &["rev-parse", "--is-inside-work-tree"]).is_ok_and(|out| out == "true")
}

/// Removes the worktree at `path` (with whatever is in it) and prunes git's
/// record of it; the branch stays.
pub fn remove_worktree(repo: &Path, path: &Path) -> Result<(), GitError> {
    let result = match path.to_str() {
        Some(p) if path.exists() => run(repo, &["worktree", "remove", "--force", "--force", p]).map(drop),
        _ => Ok(()),
    };
    if path.exists() {
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = run(repo, &["worktree", "prune"]);
    result
}

/// Deletes branch `name` (checked by [`oma_proto::workspace::branch_name`]).
pub fn delete_branch(repo: &Path, name: &str) -> Result<(), GitError> {
    run(repo, &["branch", "--delete", "--force", name]).map(drop)
}

fn diff_command(dir: &Path, index: &Path) -> Command {
    let mut diff = command(dir);
    diff.env("GIT_INDEX_FILE", index);
    diff
}

/// What changed in `dir` against `base` (committed or not, new files
/// included, ignored files not), counted per file.
pub fn changes(dir: &Path, base: &str, index: &Path) -> Result<pb::WorkspaceChanges, GitError> {
    fill_private_index(dir, index)?;
    let numstat = run_with(
        diff_command(dir, index),
        &["diff", "--cached", "--no-color", "-M", "--numstat", "-z", base, "--"],
    )?;
    let status = run_with(
        diff_command(dir, index),
        &[
            "diff",
            "--cached",
            "--no-color",
            "-M",
            "--name-status",
            "-z",
            base,
            "--",
        ],
    )?;
    let _ = std::fs::remove_file(index);
    Ok(summarize(base, &numstat, &status))
}

/// Fills a private index at `index` with every file of `dir` as it is now
/// (new ones included, `.gitignore`d ones not: build output is not a change
/// anyone wants to review), without touching the folder's own index or
/// files.
fn fill_private_index(dir: &Path, index: &Path) -> Result<(), GitError> {
    let _ = std::fs::remove_file(index);
    let mut read = command(dir);
    read.env("GIT_INDEX_FILE", index);
    run_with(read, &["read-tree", "HEAD"])?;
    let mut add = command(dir);
    add.env("GIT_INDEX_FILE", index);
    run_with(add, &["add", "--all", "--", ":/"]).map(drop)
}

/// Parses `--numstat -z` and `--name-status -z` into the event.
fn summarize(base: &str, numstat: &str, name_status: &str) -> pb::WorkspaceChanges {
    // --name-status -z: STATUS NUL path NUL (renames: STATUS NUL old NUL new NUL).
    let mut statuses = BTreeMap::new();
    let mut fields = name_status.split('\0').filter(|f| !f.is_empty());
    while let Some(code) = fields.next() {
        let renamed = code.starts_with('R') || code.starts_with('C');
        let path = if renamed {
            fields.next();
            fields.next()
        } else {
            fields.next()
        };
        let Some(path) = path else { break };
        let status = match code.chars().next() {
            Some('A') => "added",
            Some('D') => "deleted",
            Some('R') | Some('C') => "renamed",
            Some('T') => "typechange",
            _ => "modified",
        };
        statuses.insert(path.to_owned(), status);
    }
    // --numstat -z: "ins\tdel\tpath\0", renames "ins\tdel\t\0old\0new\0".
    let mut files = Vec::new();
    let mut rest = numstat.split('\0');
    while let Some(record) = rest.next() {
        if record.is_empty() {
            continue;
        }
        let mut parts = record.splitn(3, '\t');
        let (Some(ins), Some(del), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = if path.is_empty() {
            rest.next();
            rest.next().unwrap_or_default().to_owned()
        } else {
            path.to_owned()
        };
        let binary = ins == "-" && del == "-";
        files.push(pb::FileChange {
            status: statuses.get(&path).copied().unwrap_or("modified").to_owned(),
            insertions: ins.parse().unwrap_or(0),
            deletions: del.parse().unwrap_or(0),
            binary,
            path,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let insertions = files.iter().map(|f| f.insertions).sum();
    let deletions = files.iter().map(|f| f.deletions).sum();
    let files_changed = files.len() as u32;
    let truncated = files.len() > MAX_CHANGED_FILES;
    files.truncate(MAX_CHANGED_FILES);
    pb::WorkspaceChanges {
        base_commit: base.to_owned(),
        files_changed,
        insertions,
        deletions,
        files,
        truncated,
    }
}

/// The unified diff of `dir` against `base` (new files included), at most
/// `max_bytes` of it; `true` when it was cut.
pub fn diff(dir: &Path, base: &str, index: &Path, max_bytes: usize) -> Result<(Vec<u8>, bool), GitError> {
    fill_private_index(dir, index)?;
    let mut child = diff_command(dir, index)
        .args([
            "diff",
            "--cached",
            "--no-color",
            "--no-ext-diff",
            "-M",
            "--binary",
            base,
            "--",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    let mut out = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    let read = stdout.take(max_bytes as u64 + 1).read_to_end(&mut out);
    let truncated = out.len() > max_bytes;
    out.truncate(max_bytes);
    if truncated {
        let _ = child.kill();
    }
    let status = child.wait_with_output().map_err(GitError::Spawn)?;
    let _ = std::fs::remove_file(index);
    read.map_err(GitError::Spawn)?;
    if !truncated && !status.status.success() {
        return Err(GitError::Failed {
            command: "diff".into(),
            message: String::from_utf8_lossy(&status.stderr)
                .lines()
                .next()
                .unwrap_or("no message")
                .to_owned(),
        });
    }
    Ok((out, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_remote_urls() {
        assert_eq!(
            strip_credentials("https://user:ghp_secret@github.com/acme/web.git"),
            "https://github.com/acme/web.git"
        );
        assert_eq!(strip_credentials("https://tok@host:8443/x"), "https://host:8443/x");
        assert_eq!(strip_credentials("https://github.com/a/b"), "https://github.com/a/b");
        assert_eq!(strip_credentials("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(strip_credentials("ssh://git@host/x@y"), "ssh://host/x@y");
    }

    #[test]
    fn numstat_and_name_status_make_one_summary() {
        let numstat = "3\t1\tsrc/a.rs\0-\t-\timg.png\x002\t0\t\0old.txt\0new.txt\0";
        let status = "M\0src/a.rs\0A\0img.png\0R100\0old.txt\0new.txt\0";
        let s = summarize("abc", numstat, status);
        assert_eq!(s.files_changed, 3);
        assert_eq!((s.insertions, s.deletions), (5, 1));
        let by: Vec<_> = s
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.status.as_str(), f.binary))
            .collect();
        assert_eq!(
            by,
            [
                ("img.png", "added", true),
                ("new.txt", "renamed", false),
                ("src/a.rs", "modified", false)
            ]
        );
    }
}
