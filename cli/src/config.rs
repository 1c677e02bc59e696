//! The config file: named contexts (server, token, CA, insecure) and the
//! current one. TOML, written with mode 0600 because it holds tokens.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::error::{Failure, exit};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// How to reach and authenticate to one control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// The config file path: `explicit` (from `--config` / `$OMACTL_CONFIG`)
/// or `<config dir>/omactl/config.toml`.
pub fn path(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(path) => Ok(path.to_owned()),
        None => dirs::config_dir()
            .map(|dir| dir.join("omactl").join("config.toml"))
            .ok_or_else(|| {
                Failure::usage("cannot find a config directory for this user: pass --config or set OMACTL_CONFIG")
                    .into()
            }),
    }
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read the config file {}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            Failure::new(
                exit::GENERIC,
                format!("the config file {} is not valid: {}", path.display(), e.message()),
            )
            .into()
        })
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("cannot encode the config")?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_private_dir(dir).with_context(|| format!("cannot create the config directory {}", dir.display()))?;
        // A file of a random name beside the config (tempfile makes it
        // owner-only from the start), renamed over it: two omactl runs never
        // share a temporary, and a reader sees the old file or the new one.
        let written = (|| {
            let mut tmp = tempfile::Builder::new().prefix(".omactl-config.").tempfile_in(dir)?;
            tmp.write_all(text.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            io::Result::Ok(())
        })();
        written.with_context(|| format!("cannot write the config file {}", path.display()))
    }

    /// The named context, or an error listing the known ones.
    pub fn context(&self, name: &str) -> Result<&Context> {
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "there are none yet: create one with `omactl context set NAME --server URL`".to_owned()
            } else {
                format!("known contexts: {}", known.join(", "))
            };
            Failure::new(exit::NOT_FOUND, format!("no context named {name:?}; {hint}")).into()
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// A token for display: its first characters, then `…`.
pub fn mask_token(token: &str) -> String {
    let shown: String = token.chars().take(8).collect();
    if token.chars().count() <= 12 {
        "****".to_owned()
    } else {
        format!("{shown}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let mut config = Config::load(&path).unwrap();
        config.contexts.insert(
            "prod".into(),
            Context {
                server: "https://oma.example:443".into(),
                token: Some("oma_0123456789abcdef0123456789abcdef.secret".into()),
                ca_file: None,
                insecure: false,
            },
        );
        config.current_context = Some("prod".into());
        config.save(&path).unwrap();
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded.contexts, config.contexts);
        assert_eq!(loaded.current_context.as_deref(), Some("prod"));
        assert!(loaded.context("nope").is_err());
        assert_eq!(mask_token("oma_0123456789abcdef"), "oma_0123…");
        assert_eq!(mask_token("short"), "****");
    }

    #[cfg(unix)]
    #[test]
    fn saves_are_private_atomic_and_leave_no_temporaries() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // An older file readable by others, and a leftover of the old fixed
        // temporary name: neither matters.
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.path().join("config.toml.tmp"), "junk").unwrap();
        let config = Config {
            current_context: Some("a".into()),
            ..Config::default()
        };
        // Saves from several threads at once (two omactl runs): each file
        // seen is whole, and no temporary is left behind.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| config.save(&path).unwrap());
            }
        });
        assert_eq!(Config::load(&path).unwrap().current_context.as_deref(), Some("a"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".omactl-config.")), "{names:?}");
    }
}
