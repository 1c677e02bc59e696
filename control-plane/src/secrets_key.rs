//! Where the secret store's key comes from, checked before anything
//! serves: `--secrets-key-file`, else `OMA_SECRETS_KEY`, else (embedded
//! SQLite only) `secrets.key` beside the database, generated on first
//! start. Every refusal is one sentence saying what to fix.
//!
//! | configured | database holds no secrets | database holds secrets |
//! |---|---|---|
//! | a file or the variable | used | used, if it is the key they are sealed with |
//! | nothing, SQLite | `secrets.key` read, or generated (0600) | `secrets.key` read; missing: refuse to start |
//! | nothing, PostgreSQL | the secret store is off (its calls FAILED_PRECONDITION) | refuse to start |
//!
//! PostgreSQL gets no generated key: replicas share the database, so a key
//! made on one machine would be missing on the others.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::service::sealing::SecretsKey;
use crate::service::secret_store::stored_key_ids;
use crate::store::{Backend, Store};

/// The environment variable that may hold the key (base64).
pub const KEY_ENV: &str = "OMA_SECRETS_KEY";

/// The file name of the generated key, beside the SQLite database.
pub const DEFAULT_KEY_FILE: &str = "secrets.key";

/// Where a loaded key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `--secrets-key-file`, or the default file beside the database.
    File(PathBuf),
    /// Generated just now into this file.
    Generated(PathBuf),
    /// `OMA_SECRETS_KEY`.
    Env,
}

impl KeySource {
    /// The file the key is in, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            KeySource::File(path) | KeySource::Generated(path) => Some(path),
            KeySource::Env => None,
        }
    }
}

/// A key and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedKey {
    pub key: SecretsKey,
    pub source: KeySource,
}

/// What the key is looked for with.
pub struct KeyConfig<'a> {
    /// `--secrets-key-file`.
    pub file: Option<&'a Path>,
    /// The value of `OMA_SECRETS_KEY`.
    pub env: Option<&'a str>,
    pub backend: &'a Backend,
    /// Whether a missing default file may be generated (serve: yes; the
    /// rotation command: no, there is nothing to rotate).
    pub may_generate: bool,
}

/// The default key file of `backend`: `secrets.key` in the SQLite
/// database's folder; `None` on PostgreSQL.
pub fn default_key_file(backend: &Backend) -> Option<PathBuf> {
    match backend {
        Backend::Sqlite { path } => Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(DEFAULT_KEY_FILE),
        ),
        Backend::Postgres { .. } => None,
    }
}

/// Finds (or makes) the key and checks it against what the database holds.
/// `Ok(None)`: no key and none needed (PostgreSQL without secrets).
pub fn load(config: &KeyConfig<'_>, store: &Store) -> Result<Option<LoadedKey>, String> {
    let stored = stored_key_ids(store).map_err(|e| format!("cannot read the secret store: {e}"))?;
    let loaded = if let Some(path) = config.file {
        Some(LoadedKey {
            key: read_key_file(path)?,
            source: KeySource::File(path.to_owned()),
        })
    } else if let Some(text) = config.env {
        let key = SecretsKey::from_base64(text).map_err(|e| format!("{KEY_ENV} {e}"))?;
        Some(LoadedKey {
            key,
            source: KeySource::Env,
        })
    } else if let Some(path) = default_key_file(config.backend) {
        if path.exists() {
            Some(LoadedKey {
                key: read_key_file(&path)?,
                source: KeySource::File(path),
            })
        } else if !stored.is_empty() {
            return Err(format!(
                "the secrets key file {} is missing, but the database holds secrets encrypted under key {}: \
                 restore the file (or pass --secrets-key-file)",
                path.display(),
                stored.join(", ")
            ));
        } else if config.may_generate {
            let key = SecretsKey::generate();
            write_key_file(&path, &key)
                .map_err(|e| format!("cannot write a new secrets key to {}: {e}", path.display()))?;
            Some(LoadedKey {
                key,
                source: KeySource::Generated(path),
            })
        } else {
            None
        }
    } else {
        None
    };
    match &loaded {
        Some(loaded) => {
            let foreign: Vec<&str> = stored
                .iter()
                .map(String::as_str)
                .filter(|id| *id != loaded.key.id())
                .collect();
            if !foreign.is_empty() {
                return Err(format!(
                    "the database's secrets are encrypted under key {}, but the configured secrets key is {} ({}): \
                     start with the key they were stored with (after a rotation, the new one)",
                    foreign.join(", "),
                    loaded.key.id(),
                    describe(&loaded.source)
                ));
            }
        }
        None if !stored.is_empty() => {
            return Err(format!(
                "the database holds secrets (encrypted under key {}) but no secrets key is configured: \
                 pass --secrets-key-file or set {KEY_ENV}",
                stored.join(", ")
            ));
        }
        None => {}
    }
    Ok(loaded)
}

/// Says where a key came from, for messages.
pub fn describe(source: &KeySource) -> String {
    match source {
        KeySource::File(path) => format!("from {}", path.display()),
        KeySource::Generated(path) => format!("generated into {}", path.display()),
        KeySource::Env => format!("from {KEY_ENV}"),
    }
}

/// Reads a key file: base64 of 32 bytes, readable by its owner only.
pub fn read_key_file(path: &Path) -> Result<SecretsKey, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read the secrets key file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("the secrets key file {} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the secrets key file {} has mode {mode:o}: it must be readable by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secrets key file {}: {e}", path.display()))?;
    SecretsKey::from_base64(&text).map_err(|e| format!("the secrets key file {} {e}", path.display()))
}

/// Writes `key` into a new file, mode 0600 (its folder 0700 when made
/// here). An existing file is never overwritten: a key lost is every
/// secret lost.
pub fn write_key_file(path: &Path, key: &SecretsKey) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", key.to_base64())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::sealing::RowIdentity;
    use crate::store::secrets::{self, SecretRow};

    fn sqlite(dir: &Path) -> (Backend, Store) {
        let backend = Backend::Sqlite {
            path: dir.join("oma.db"),
        };
        let store = Store::open(&backend).unwrap();
        (backend, store)
    }

    fn config(backend: &Backend) -> KeyConfig<'_> {
        KeyConfig {
            file: None,
            env: None,
            backend,
            may_generate: true,
        }
    }

    /// Stores one sealed secret, as the service would.
    fn store_secret(store: &Store, key: &SecretsKey) {
        store
            .write_blocking("test", |conn| {
                crate::store::rows::insert_tenant(
                    conn,
                    &crate::store::rows::TenantRow {
                        id: "ten_1".into(),
                        name: "t".into(),
                        created_at: 0,
                    },
                )?;
                let sealed = key.seal(
                    &RowIdentity {
                        tenant_id: "ten_1",
                        secret_id: "sec_1",
                        version: 1,
                    },
                    b"v",
                );
                secrets::insert(
                    conn,
                    &SecretRow {
                        id: "sec_1".into(),
                        tenant_id: "ten_1".into(),
                        name: "s".into(),
                        kind: "generic".into(),
                        version: 1,
                        key_id: sealed.key_id,
                        nonce: sealed.nonce,
                        ciphertext: sealed.ciphertext,
                        created_by_user_id: "usr_1".into(),
                        created_at: 0,
                        updated_at: 0,
                        last_used_at: None,
                    },
                )
            })
            .unwrap();
    }

    #[test]
    fn sqlite_generates_a_private_key_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = sqlite(dir.path());
        let first = load(&config(&backend), &store).unwrap().unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE);
        assert_eq!(first.source, KeySource::Generated(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load(&config(&backend), &store).unwrap().unwrap();
        assert_eq!(again.source, KeySource::File(path));
        assert_eq!(again.key.id(), first.key.id());
    }

    #[test]
    fn loose_permissions_or_a_wrong_length_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = sqlite(dir.path());
        let path = dir.path().join(DEFAULT_KEY_FILE);
        load(&config(&backend), &store).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&config(&backend), &store).unwrap_err();
        assert!(err.contains("has mode 644") && err.contains("chmod 600"), "{err}");

        std::fs::remove_file(&path).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        writeln!(file, "AAAAAAAAAAAAAAAAAAAAAA==").unwrap();
        let err = load(&config(&backend), &store).unwrap_err();
        assert!(err.contains("holds 16 bytes, not the 32"), "{err}");
    }

    #[test]
    fn a_missing_or_wrong_key_with_stored_secrets_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, store) = sqlite(dir.path());
        let key = load(&config(&backend), &store).unwrap().unwrap().key;
        store_secret(&store, &key);
        let path = dir.path().join(DEFAULT_KEY_FILE);
        std::fs::remove_file(&path).unwrap();
        let err = load(&config(&backend), &store).unwrap_err();
        assert!(err.contains("is missing") && err.contains(key.id()), "{err}");
        assert!(!path.exists(), "no new key may replace the lost one");

        let other = SecretsKey::generate().to_base64();
        let env = KeyConfig {
            env: Some(&other),
            ..config(&backend)
        };
        let err = load(&env, &store).unwrap_err();
        assert!(err.contains(key.id()) && err.contains(KEY_ENV), "{err}");
        let right = key.to_base64();
        let env = KeyConfig {
            env: Some(&right),
            ..config(&backend)
        };
        assert_eq!(load(&env, &store).unwrap().unwrap().source, KeySource::Env);
        let garbage = KeyConfig {
            env: Some("%%%"),
            ..config(&backend)
        };
        assert!(
            load(&garbage, &store)
                .unwrap_err()
                .starts_with("OMA_SECRETS_KEY is not base64")
        );
    }

    #[test]
    fn postgres_without_a_key_is_off_until_secrets_exist() {
        // The rule, exercised on a SQLite store standing in for the
        // database (the backend only decides whether a default file exists).
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = sqlite(dir.path());
        let postgres = Backend::Postgres {
            url: "postgres://unused".into(),
        };
        assert!(load(&config(&postgres), &store).unwrap().is_none());
        store_secret(&store, &SecretsKey::generate());
        let err = load(&config(&postgres), &store).unwrap_err();
        assert!(err.contains("no secrets key is configured"), "{err}");
    }
}
