//! The config file: named contexts (server, token, CA, insecure) and the
//! current one. TOML, written with mode 0600 because it holds tokens.

use std::{
    collections::BTreeMap,
    fs, io,
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
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        write_private(&tmp, text.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write the config file {}", path.display()))
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

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above applies only to a new file.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(path, bytes)
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
}
