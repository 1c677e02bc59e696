//! What must stay untouched, and how to tell.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::ensure;
use tempfile::TempDir;

use crate::AgentDaemon;

/// What must stay untouched: a fake home (the daemon's `HOME`) with a
/// `.bashrc` and a `.claude` config, a command that would leave a marker if
/// anyone ran it, and a unique name that attacks use for paths outside the
/// session folder (none may ever appear).
pub struct Canary {
    root: TempDir,
    /// The daemon's `HOME`: `.bashrc`, `.claude/settings.json`,
    /// `.claude/skills/mine/SKILL.md`.
    pub home: PathBuf,
    /// Exists only if [`Canary::command`] ran.
    pub marker: PathBuf,
    /// An executable that creates [`Canary::marker`]: name it wherever an
    /// attack smuggles a command.
    pub command: PathBuf,
    /// A file name no legitimate write uses.
    pub token: String,
    home_before: Vec<(String, String)>,
}

impl Canary {
    pub fn new() -> anyhow::Result<Canary> {
        let root = tempfile::tempdir()?;
        let home = root.path().join("home");
        let skill = home.join(".claude/skills/mine");
        std::fs::create_dir_all(&skill)?;
        std::fs::write(home.join(".bashrc"), "# the user's own .bashrc (canary)\n")?;
        std::fs::write(home.join(".claude/settings.json"), "{\"canary\": true}\n")?;
        std::fs::write(
            skill.join("SKILL.md"),
            "---\nname: mine\ndescription: the user's own skill\n---\nMine.\n",
        )?;
        let marker = root.path().join("CANARY-RAN");
        let command = root.path().join("canary.sh");
        std::fs::write(&command, format!("#!/bin/sh\ntouch '{}'\n", marker.display()))?;
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o755))?;
        let home_before = snapshot(&home);
        Ok(Canary {
            token: format!("oma-escape-{:016x}", rand::random::<u64>()),
            root,
            home,
            marker,
            command,
            home_before,
        })
    }

    /// Paths that leave a folder: climbing out by `..` (up to the root from
    /// any session folder), absolute, and sneaking `..` in the middle; each
    /// ends in [`Canary::token`].
    pub fn escapes(&self) -> Vec<String> {
        let t = &self.token;
        let mut paths: Vec<String> = (1..=12).map(|up| format!("{}{t}", "../".repeat(up))).collect();
        paths.extend([
            format!("{}/{t}", self.root.path().display()),
            format!("/tmp/{t}"),
            format!("/{t}"),
            format!("a/../../{t}"),
            format!("a/./../{t}"),
            format!("./{t}"),
            format!("a//{t}"),
            format!("..\\..\\{t}"),
            format!("a\\..\\..\\{t}"),
            format!("a\0/../../{t}"),
            format!("{t}\0"),
        ]);
        paths
    }

    /// No canary command ran; the home is as it was; the token names
    /// nothing in or around the daemon's folders.
    pub fn check(&self, daemon: &AgentDaemon) -> anyhow::Result<()> {
        ensure!(!self.marker.exists(), "a canary command ran");
        ensure!(
            snapshot(&self.home) == self.home_before,
            "the home changed: {:#?}",
            snapshot(&self.home)
        );
        let mut places = vec![
            self.root.path().to_path_buf(),
            daemon.config_dir.path().to_path_buf(),
            daemon.data_dir.path().to_path_buf(),
        ];
        for dir in places.clone() {
            places.extend(dir.ancestors().skip(1).map(Path::to_path_buf));
        }
        places.sort();
        places.dedup();
        let sessions = daemon.data_dir.path().join("sessions");
        for place in places {
            let deep = place.starts_with(self.root.path())
                || place.starts_with(daemon.config_dir.path())
                || place.starts_with(daemon.data_dir.path());
            for path in list(&place, deep, &sessions) {
                ensure!(
                    !path.to_string_lossy().contains(&self.token),
                    "an attack wrote {}",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// The entries of `dir`, and with `deep` all below it except inside
/// session folders (`skip`'s children), never following symlinks.
fn list(dir: &Path, deep: bool, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if deep && is_dir && dir != skip {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Every path under `root` with its content (or link target), sorted.
pub(super) fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list(root, true, Path::new(""))
        .into_iter()
        .map(|path| {
            let key = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            let value = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => format!("-> {:?}", std::fs::read_link(&path).ok()),
                Ok(m) if m.is_dir() => "dir".to_owned(),
                Ok(_) => String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned(),
                Err(e) => format!("error: {e}"),
            };
            (key, value)
        })
        .collect();
    out.sort();
    out
}
