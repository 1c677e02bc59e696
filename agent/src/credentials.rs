//! The machine's credentials and its stable machine id.
//!
//! `oma-agent setup` stores what pairing returned in
//! `<config dir>/credentials.toml` (mode 0600, written atomically); the daemon
//! reads it on start. The machine id in `<config dir>/machine-id` is created
//! once and never changes, so re-pairing the same machine is recognised by the
//! control plane as the same runtime.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil::{Durability, PRIVATE_FILE_MODE, create_atomic_if_absent, create_private_dir, write_atomic};
use crate::paths::Paths;

/// Longest machine id accepted (the control plane's limit).
const MAX_MACHINE_ID_CHARS: usize = 128;

/// What pairing gave this machine: where the control plane is and how to
/// authenticate to it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The control plane's gRPC URL, e.g. `https://oma.example.com:7443`.
    pub server_url: String,
    /// Other replicas of the same control plane (`setup --also-server`):
    /// the daemon moves to the next URL each time its stream is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_server_urls: Vec<String>,
    /// The runtime id the control plane assigned (`rt_…`).
    pub runtime_id: String,
    /// The machine token (`sk_machine_…`); a secret.
    pub machine_token: String,
    /// A PEM file of extra CA certificates to trust for `server_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Plaintext to a non-loopback server was allowed at setup
    /// (`--insecure`), so the daemon (and the service it runs as) allows it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// The tenant the runtime belongs to, when the server reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// When the machine was paired: Unix seconds (see [`paired_at_now`]) or RFC 3339.
    pub paired_at: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server_url", &self.server_url)
            .field("other_server_urls", &self.other_server_urls)
            .field("runtime_id", &self.runtime_id)
            .field("machine_token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .field("tenant_id", &self.tenant_id)
            .field("paired_at", &self.paired_at)
            .finish()
    }
}

/// Errors reading or writing credentials and the machine id.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read, written, created or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `read` or `write`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `credentials.toml` is not valid.
    #[error("{} is not a valid credentials file: {message} (run `oma-agent setup --force` to pair again)", path.display())]
    Parse {
        /// The credentials file.
        path: PathBuf,
        /// What the TOML parser reported.
        message: String,
    },
    /// The credentials could not be encoded as TOML.
    #[error("cannot encode credentials: {0}")]
    Encode(#[from] toml::ser::Error),
    /// A required field is empty.
    #[error("credentials field `{0}` must not be empty")]
    Empty(&'static str),
    /// Credentials for another control plane are already stored.
    #[error(
        "{} already holds credentials for {existing}; refusing to replace them with credentials for {new}: pass --force to overwrite",
        path.display()
    )]
    OtherServer {
        /// The credentials file.
        path: PathBuf,
        /// The server the stored credentials are for.
        existing: String,
        /// The server of the new credentials.
        new: String,
    },
    /// The stored credentials cannot be read, so it is unknown whether they
    /// belong to another server.
    #[error("{0}; pass --force to overwrite them")]
    ExistingUnreadable(Box<CredentialsError>),
    /// The machine id file holds something that is not a machine id.
    #[error("{} does not hold a valid machine id ({reason}); restore it, or delete it to register as a new machine", path.display())]
    InvalidMachineId {
        /// The machine id file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CredentialsError + use<> {
    let path = path.to_path_buf();
    move |source| CredentialsError::Io { action, path, source }
}

/// Reads `<config dir>/credentials.toml`; `None` when the machine is not paired.
pub fn load(paths: &Paths) -> Result<Option<Credentials>, CredentialsError> {
    let path = paths.credentials_file();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error("read", &path)(err)),
    };
    if let Ok(meta) = fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "credentials file is readable by other users: run chmod 600 on it"
        );
    }
    let creds: Credentials = toml::from_str(&text).map_err(|err| CredentialsError::Parse {
        path: path.clone(),
        message: err.message().to_owned(),
    })?;
    check_fields(&creds)?;
    Ok(Some(creds))
}

/// Stores `creds` in `<config dir>/credentials.toml` with mode 0600, creating
/// the config dir with mode 0700 if needed. The write is atomic.
///
/// Credentials for the same server are replaced. Credentials for a different
/// `server_url` (or unreadable ones) are only replaced when `force` is set.
pub fn save(paths: &Paths, creds: &Credentials, force: bool) -> Result<(), CredentialsError> {
    check_fields(creds)?;
    let path = paths.credentials_file();
    if !force {
        match load(paths) {
            Ok(Some(existing)) if !same_server(&existing.server_url, &creds.server_url) => {
                return Err(CredentialsError::OtherServer {
                    path,
                    existing: existing.server_url,
                    new: creds.server_url.clone(),
                });
            }
            Ok(_) => {}
            Err(err) => return Err(CredentialsError::ExistingUnreadable(Box::new(err))),
        }
    }
    create_private_dir(&paths.config_dir).map_err(io_error("create directory", &paths.config_dir))?;
    let text = toml::to_string(creds)?;
    write_atomic(&path, text.as_bytes(), PRIVATE_FILE_MODE, Durability::Synced).map_err(io_error("write", &path))
}

/// Deletes the credentials file. Returns whether there was one. The machine
/// id is kept.
pub fn remove(paths: &Paths) -> Result<bool, CredentialsError> {
    let path = paths.credentials_file();
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error("remove", &path)(err)),
    }
}

/// Now, as Unix seconds, for [`Credentials::paired_at`].
pub fn paired_at_now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

fn check_fields(creds: &Credentials) -> Result<(), CredentialsError> {
    if creds.server_url.trim().is_empty() {
        return Err(CredentialsError::Empty("server_url"));
    }
    if creds.runtime_id.trim().is_empty() {
        return Err(CredentialsError::Empty("runtime_id"));
    }
    if creds.machine_token.trim().is_empty() {
        return Err(CredentialsError::Empty("machine_token"));
    }
    Ok(())
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim()
        .trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

/// The machine's stable id, from `<config dir>/machine-id`. On first use a
/// random one (a UUID v4 as 32 hex digits) is created with mode 0600; after
/// that the same id is returned forever, even if several processes race to
/// create it.
pub fn machine_id(paths: &Paths) -> Result<String, CredentialsError> {
    let path = paths.machine_id_file();
    if let Some(id) = read_machine_id(&path)? {
        return Ok(id);
    }
    create_private_dir(&paths.config_dir).map_err(io_error("create directory", &paths.config_dir))?;
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let created = create_atomic_if_absent(&path, format!("{fresh}\n").as_bytes(), PRIVATE_FILE_MODE)
        .map_err(io_error("create", &path))?;
    if created {
        return Ok(fresh);
    }
    // Another process created it between our read and our create: use theirs.
    read_machine_id(&path)?.ok_or_else(|| CredentialsError::InvalidMachineId {
        path: path.clone(),
        reason: "it disappeared while being created".into(),
    })
}

fn read_machine_id(path: &Path) -> Result<Option<String>, CredentialsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => {
            return Err(CredentialsError::InvalidMachineId {
                path: path.to_path_buf(),
                reason: "it is not UTF-8".into(),
            });
        }
        Err(err) => return Err(io_error("read", path)(err)),
    };
    let id = text.trim();
    let invalid = |reason: &str| CredentialsError::InvalidMachineId {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.chars().count() > MAX_MACHINE_ID_CHARS {
        return Err(invalid("it is longer than 128 characters"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid("it contains spaces or non-printable characters"));
    }
    Ok(Some(id.to_owned()))
}

/// A default runtime name for `oma-agent setup`: the host name from
/// `/etc/hostname`, else `$HOSTNAME`, else the `hostname` command, else
/// `machine`.
pub fn default_runtime_name() -> String {
    let candidates = [
        fs::read_to_string("/etc/hostname").ok(),
        std::env::var("HOSTNAME").ok(),
        std::process::Command::new("hostname")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok()),
    ];
    pick_runtime_name(candidates)
}

/// The first candidate whose first line is a usable label (non-empty, no
/// control characters), cut to 64 characters; `machine` when none is.
fn pick_runtime_name(candidates: impl IntoIterator<Item = Option<String>>) -> String {
    candidates
        .into_iter()
        .flatten()
        .filter_map(|text| {
            let line = text.lines().next().unwrap_or("").trim();
            let ok = !line.is_empty() && !line.chars().any(char::is_control);
            ok.then(|| line.chars().take(64).collect::<String>())
        })
        .next()
        .unwrap_or_else(|| "machine".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_paths() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("config"), dir.path().join("data"));
        (dir, paths)
    }

    fn creds(server: &str) -> Credentials {
        Credentials {
            server_url: server.into(),
            other_server_urls: vec!["https://oma-2.example.com:7443".into()],
            runtime_id: "rt_0123456789abcdef0123456789abcdef".into(),
            machine_token: "sk_machine_secret".into(),
            ca_file: Some("/etc/oma/ca.pem".into()),
            insecure: false,
            tenant_id: None,
            paired_at: paired_at_now(),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trip_with_private_modes() {
        let (_dir, paths) = temp_paths();
        assert_eq!(load(&paths).unwrap(), None);
        let c = creds("https://oma.example.com:7443");
        save(&paths, &c, false).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(c));
        assert_eq!(mode(&paths.credentials_file()), 0o600);
        assert_eq!(mode(&paths.config_dir), 0o700);
        // `setup --insecure` is remembered, so the service can connect too.
        let insecure = Credentials {
            insecure: true,
            ..creds("http://10.0.0.5:50051")
        };
        save(&paths, &insecure, true).unwrap();
        assert!(load(&paths).unwrap().unwrap().insecure);
    }

    #[test]
    fn debug_hides_the_token() {
        let text = format!("{:?}", creds("https://a"));
        assert!(!text.contains("sk_machine_secret"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn same_server_overwrites_other_server_needs_force() {
        let (_dir, paths) = temp_paths();
        save(&paths, &creds("https://a.example.com"), false).unwrap();

        let mut again = creds("https://a.example.com/");
        again.machine_token = "sk_machine_new".into();
        save(&paths, &again, false).unwrap();
        assert_eq!(load(&paths).unwrap().unwrap().machine_token, "sk_machine_new");

        let other = creds("https://b.example.com");
        let err = save(&paths, &other, false).unwrap_err();
        assert!(matches!(err, CredentialsError::OtherServer { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("--force") && msg.contains("https://a.example.com"),
            "{msg}"
        );
        assert_eq!(load(&paths).unwrap().unwrap().server_url, "https://a.example.com/");

        save(&paths, &other, true).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(other));
        assert_eq!(mode(&paths.credentials_file()), 0o600);
    }

    #[test]
    fn unreadable_credentials_need_force() {
        let (_dir, paths) = temp_paths();
        create_private_dir(&paths.config_dir).unwrap();
        fs::write(paths.credentials_file(), "server_url = \"x\"\n").unwrap();
        let err = load(&paths).unwrap_err();
        assert!(err.to_string().contains("runtime_id"), "{err}");
        let err = save(&paths, &creds("https://a"), false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        save(&paths, &creds("https://a"), true).unwrap();
    }

    #[test]
    fn empty_fields_are_refused() {
        let (_dir, paths) = temp_paths();
        let mut c = creds("https://a");
        c.machine_token = " ".into();
        assert!(matches!(
            save(&paths, &c, false),
            Err(CredentialsError::Empty("machine_token"))
        ));
        assert!(!paths.credentials_file().exists());
    }

    #[test]
    fn remove_reports_whether_there_was_a_file() {
        let (_dir, paths) = temp_paths();
        assert!(!remove(&paths).unwrap());
        save(&paths, &creds("https://a"), false).unwrap();
        let id = machine_id(&paths).unwrap();
        assert!(remove(&paths).unwrap());
        assert_eq!(load(&paths).unwrap(), None);
        assert_eq!(machine_id(&paths).unwrap(), id);
    }

    #[test]
    fn machine_id_is_created_once_and_stable() {
        let (_dir, paths) = temp_paths();
        let first = machine_id(&paths).unwrap();
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(mode(&paths.machine_id_file()), 0o600);
        for _ in 0..3 {
            assert_eq!(machine_id(&paths).unwrap(), first);
        }
        // Another machine (another config dir) gets another id.
        let (_dir2, other) = temp_paths();
        assert_ne!(machine_id(&other).unwrap(), first);
    }

    #[test]
    fn machine_id_races_agree() {
        let (_dir, paths) = temp_paths();
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| machine_id(&paths).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    }

    #[test]
    fn corrupt_machine_id_is_an_error_not_a_new_id() {
        let (_dir, paths) = temp_paths();
        create_private_dir(&paths.config_dir).unwrap();
        fs::write(paths.machine_id_file(), "  \n").unwrap();
        let err = machine_id(&paths).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        fs::write(paths.machine_id_file(), "custom-id-42\n").unwrap();
        assert_eq!(machine_id(&paths).unwrap(), "custom-id-42");
    }

    #[test]
    fn runtime_name_picks_first_usable_candidate() {
        assert_eq!(pick_runtime_name([None, Some("box\n".into())]), "box");
        assert_eq!(
            pick_runtime_name([Some("\n".into()), Some(" laptop \nx".into())]),
            "laptop"
        );
        assert_eq!(pick_runtime_name([None, None]), "machine");
        assert_eq!(pick_runtime_name([Some("a".repeat(100))]).len(), 64);
        assert!(!default_runtime_name().is_empty());
    }
}
