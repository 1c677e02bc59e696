//! Where `oma-agent` keeps its files.
//!
//! Two roots: the **config dir** (credentials, machine id, the user's ACP agent
//! table and local policy) and the **data dir** (session directories, the outbox of un-acked
//! events, daemon state, logs). Both have platform defaults and can be
//! overridden with [`Paths::new`] (the daemon's `--config-dir`/`--data-dir`
//! flags and `OMA_AGENT_CONFIG_DIR`/`OMA_AGENT_DATA_DIR`).
//!
//! Session ids come from the control plane, so [`Paths::session_dir`] checks
//! their shape before joining them onto a path: nothing the server sends can
//! name a directory outside `<data dir>/sessions/`.

use std::fs;
use std::io;
use std::path::PathBuf;

use oma_proto::ids::SessionId;
use oma_proto::validate::ValidationError;

use crate::fsutil::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, create_private_dir, restrict};

/// The folder name used under the platform's config and data directories.
pub const APP_DIR_NAME: &str = "oma-agent";

/// Errors finding or using the agent's directories.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// The platform directory could not be determined (no home directory).
    #[error(
        "cannot determine the default {which} directory (is HOME set?): pass --{which}-dir or set OMA_AGENT_{upper}_DIR",
        upper = which.to_uppercase()
    )]
    NoDefaultDir {
        /// `config` or `data`.
        which: &'static str,
    },
    /// A session id from the control plane does not have the `ses_<32 hex>` shape.
    #[error("refusing to use a session directory: {0}")]
    InvalidSessionId(#[source] ValidationError),
}

/// The agent's config and data roots, and every file path derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Credentials, machine id, the user's `agents.toml` and `policy.toml`.
    pub config_dir: PathBuf,
    /// Session directories, outbox, state and logs.
    pub data_dir: PathBuf,
}

impl Paths {
    /// Uses the given roots as they are (no `oma-agent` suffix is appended).
    pub fn new(config_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            data_dir: data_dir.into(),
        }
    }

    /// The platform defaults: [`default_config_dir`] and [`default_data_dir`].
    pub fn from_env() -> Result<Self, PathsError> {
        Ok(Self::new(default_config_dir()?, default_data_dir()?))
    }

    /// The defaults, with either root replaced when an override is given
    /// (what the daemon does with its `--config-dir`/`--data-dir` flags).
    pub fn resolve(config_dir: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<Self, PathsError> {
        let config_dir = match config_dir {
            Some(dir) => dir,
            None => default_config_dir()?,
        };
        let data_dir = match data_dir {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        Ok(Self::new(config_dir, data_dir))
    }

    /// `<config dir>/credentials.toml`: server URL, runtime id and machine token (mode 0600).
    pub fn credentials_file(&self) -> PathBuf {
        self.config_dir.join("credentials.toml")
    }

    /// `<config dir>/machine-id`: the stable machine id, created once.
    pub fn machine_id_file(&self) -> PathBuf {
        self.config_dir.join("machine-id")
    }

    /// `<config dir>/agents.toml`: the user's additions and overrides to the ACP agent table.
    pub fn agents_config_file(&self) -> PathBuf {
        self.config_dir.join("agents.toml")
    }

    /// `<config dir>/policy.toml`: the owner's local policy (local MCP
    /// servers, the MCP URL allow-list, which agents take server-sent
    /// credentials).
    pub fn policy_file(&self) -> PathBuf {
        self.config_dir.join("policy.toml")
    }

    /// `<config dir>/workspaces.toml`: the folders the owner offers for
    /// sessions.
    pub fn workspaces_file(&self) -> PathBuf {
        self.config_dir.join("workspaces.toml")
    }

    /// `<data dir>/worktrees/<session_id>`: a worktree session's git
    /// worktree (the session id checked as for [`Paths::session_dir`]).
    pub fn worktree_dir(&self, session_id: &str) -> Result<PathBuf, PathsError> {
        validate_session_id(session_id)?;
        Ok(self.data_dir.join("worktrees").join(session_id))
    }

    /// `<data dir>/sessions`: one directory per session.
    pub fn sessions_dir(&self) -> PathBuf {
        self.data_dir.join("sessions")
    }

    /// `<data dir>/sessions/<session_id>`, after checking that `session_id` is
    /// `ses_` followed by 32 lowercase hex digits (so it cannot contain `/`,
    /// `..` or anything else that would leave the sessions directory).
    pub fn session_dir(&self, session_id: &str) -> Result<PathBuf, PathsError> {
        validate_session_id(session_id)?;
        Ok(self.sessions_dir().join(session_id))
    }

    /// `<data dir>/outbox`: events not yet acknowledged by the control plane.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// `<data dir>/state.json`: what the daemon remembers across restarts.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.json")
    }

    /// `<data dir>/logs`: logs the daemon writes itself (e.g. ACP agents' stderr).
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// Creates the data dir and the daemon's folders in it with mode 0700,
    /// and tightens what an earlier version (or a loose umask) left more
    /// open: those folders to 0700; the outbox, logs and state file to 0600.
    /// Session folders' contents belong to the sessions and are left alone.
    /// Returns what it tightened.
    pub fn secure_data_dir(&self) -> io::Result<Vec<PathBuf>> {
        let mut tightened = Vec::new();
        for dir in [
            self.data_dir.clone(),
            self.sessions_dir(),
            self.outbox_dir(),
            self.log_dir(),
        ] {
            create_private_dir(&dir)?;
            if restrict(&dir, PRIVATE_DIR_MODE)? {
                tightened.push(dir);
            }
        }
        let files = [self.outbox_dir(), self.log_dir()]
            .into_iter()
            .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|entry| entry.path())
            .chain([self.state_file()]);
        for file in files {
            let is_file = fs::symlink_metadata(&file).is_ok_and(|meta| meta.is_file());
            if is_file && restrict(&file, PRIVATE_FILE_MODE)? {
                tightened.push(file);
            }
        }
        Ok(tightened)
    }
}

/// `<platform config dir>/oma-agent`: `$XDG_CONFIG_HOME/oma-agent` (else
/// `~/.config/oma-agent`) on Linux, `~/Library/Application Support/oma-agent`
/// on macOS.
pub fn default_config_dir() -> Result<PathBuf, PathsError> {
    dirs::config_dir()
        .map(|dir| dir.join(APP_DIR_NAME))
        .ok_or(PathsError::NoDefaultDir { which: "config" })
}

/// `<platform data dir>/oma-agent`: `$XDG_DATA_HOME/oma-agent` (else
/// `~/.local/share/oma-agent`) on Linux, `~/Library/Application Support/oma-agent`
/// on macOS.
pub fn default_data_dir() -> Result<PathBuf, PathsError> {
    dirs::data_dir()
        .map(|dir| dir.join(APP_DIR_NAME))
        .ok_or(PathsError::NoDefaultDir { which: "data" })
}

/// Checks that `session_id` is `ses_` followed by 32 lowercase hex digits.
pub fn validate_session_id(session_id: &str) -> Result<(), PathsError> {
    SessionId::parse("session_id", session_id)
        .map(|_| ())
        .map_err(PathsError::InvalidSessionId)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn file_layout() {
        let paths = Paths::new("/c", "/d");
        assert_eq!(paths.credentials_file(), Path::new("/c/credentials.toml"));
        assert_eq!(paths.machine_id_file(), Path::new("/c/machine-id"));
        assert_eq!(paths.agents_config_file(), Path::new("/c/agents.toml"));
        assert_eq!(paths.policy_file(), Path::new("/c/policy.toml"));
        assert_eq!(paths.sessions_dir(), Path::new("/d/sessions"));
        assert_eq!(paths.outbox_dir(), Path::new("/d/outbox"));
        assert_eq!(paths.state_file(), Path::new("/d/state.json"));
        assert_eq!(paths.log_dir(), Path::new("/d/logs"));
        let id = "ses_0123456789abcdef0123456789abcdef";
        assert_eq!(paths.session_dir(id).unwrap(), Path::new("/d/sessions").join(id));
    }

    #[test]
    fn session_dir_rejects_anything_but_a_session_id() {
        let paths = Paths::new("/c", "/d");
        for bad in [
            "",
            "..",
            "../../etc",
            "ses_",
            "ses_0123456789abcdef0123456789abcde",
            "ses_0123456789abcdef0123456789abcdef0",
            "ses_0123456789ABCDEF0123456789ABCDEF",
            "ses_0123456789abcdef0123456789abcde/",
            "ses_../../../../../../../../../../..",
            "agt_0123456789abcdef0123456789abcdef",
            "/ses_0123456789abcdef0123456789abcdef",
        ] {
            let err = paths.session_dir(bad).unwrap_err();
            assert!(matches!(err, PathsError::InvalidSessionId(_)), "{bad:?}");
            assert!(err.to_string().contains("session"), "{err}");
        }
    }

    #[test]
    fn resolve_keeps_overrides() {
        let paths = Paths::resolve(Some("/x".into()), Some("/y".into())).unwrap();
        assert_eq!(paths, Paths::new("/x", "/y"));
    }

    #[test]
    fn the_data_dir_is_private_and_an_old_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::new(root.path().join("c"), root.path().join("d"));
        assert!(paths.secure_data_dir().unwrap().is_empty());
        for dir in [
            &paths.data_dir,
            &paths.sessions_dir(),
            &paths.outbox_dir(),
            &paths.log_dir(),
        ] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }

        // What an older daemon left under umask 022.
        let loose = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        loose(&paths.data_dir, 0o755);
        loose(&paths.outbox_dir(), 0o755);
        let log = paths.outbox_dir().join("ses_x.log");
        fs::write(&log, "x").unwrap();
        loose(&log, 0o644);
        fs::write(paths.state_file(), "{}").unwrap();
        loose(&paths.state_file(), 0o644);
        let in_session = paths.sessions_dir().join("user-file");
        fs::write(&in_session, "x").unwrap();
        loose(&in_session, 0o644);

        let mut tightened = paths.secure_data_dir().unwrap();
        tightened.sort();
        let mut expected = vec![
            paths.data_dir.clone(),
            paths.outbox_dir(),
            log.clone(),
            paths.state_file(),
        ];
        expected.sort();
        assert_eq!(tightened, expected);
        assert_eq!(mode(&paths.data_dir), 0o700);
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&paths.state_file()), 0o600);
        assert_eq!(mode(&in_session), 0o644, "session contents are not the daemon's");
    }
}
