//! The secret store's validated types: names, kinds and the value limit,
//! shared by the control plane (which enforces them) and omactl (which
//! checks early).

use std::fmt;

use crate::pb;
use crate::validate::{self, Validated, ValidationError};

/// Largest secret value, in bytes.
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;

/// A secret's name: a slug (1–64 characters of `[a-z0-9._-]`, starting
/// with a letter or digit), unique within its tenant.
pub fn name(field: &str, value: &str) -> Validated<String> {
    validate::slug(field, value)
}

/// A secret's value: 1 byte to [`MAX_SECRET_VALUE_BYTES`]. The error never
/// quotes the value.
pub fn value(field: &str, value: &[u8]) -> Validated<()> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(ValidationError::new(
            field,
            format!(
                "is {} bytes, more than the limit of {MAX_SECRET_VALUE_BYTES} bytes (64 KiB)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// What a secret holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Generic,
    ApiKey,
    OauthToken,
    File,
}

impl SecretKind {
    pub const ALL: [SecretKind; 4] = [
        SecretKind::Generic,
        SecretKind::ApiKey,
        SecretKind::OauthToken,
        SecretKind::File,
    ];

    /// The stored (and command-line) word.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Generic => "generic",
            SecretKind::ApiKey => "api_key",
            SecretKind::OauthToken => "oauth_token",
            SecretKind::File => "file",
        }
    }

    /// Parses a stored word.
    pub fn parse_stored(word: &str) -> Option<SecretKind> {
        SecretKind::ALL.into_iter().find(|k| k.as_str() == word)
    }

    /// The kind a request names: `None` for UNSPECIFIED, an error for a
    /// number this build does not know.
    pub fn from_wire(field: &str, value: i32) -> Validated<Option<SecretKind>> {
        match pb::SecretKind::try_from(value) {
            Ok(pb::SecretKind::Unspecified) => Ok(None),
            Ok(pb::SecretKind::Generic) => Ok(Some(SecretKind::Generic)),
            Ok(pb::SecretKind::ApiKey) => Ok(Some(SecretKind::ApiKey)),
            Ok(pb::SecretKind::OauthToken) => Ok(Some(SecretKind::OauthToken)),
            Ok(pb::SecretKind::File) => Ok(Some(SecretKind::File)),
            Err(_) => Err(ValidationError::new(
                field,
                format!("{value} is not a secret kind: use generic, api_key, oauth_token or file"),
            )),
        }
    }
}

impl From<SecretKind> for pb::SecretKind {
    fn from(kind: SecretKind) -> pb::SecretKind {
        match kind {
            SecretKind::Generic => pb::SecretKind::Generic,
            SecretKind::ApiKey => pb::SecretKind::ApiKey,
            SecretKind::OauthToken => pb::SecretKind::OauthToken,
            SecretKind::File => pb::SecretKind::File,
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_slugs() {
        assert_eq!(name("name", "anthropic-key").unwrap(), "anthropic-key");
        assert!(name("name", "").is_err());
        assert!(name("name", "Has Space").is_err());
        assert!(name("name", &"x".repeat(65)).is_err());
    }

    #[test]
    fn values_are_bounded_and_never_quoted() {
        assert!(value("value", b"s").is_ok());
        assert!(value("value", &vec![b'a'; MAX_SECRET_VALUE_BYTES]).is_ok());
        let empty = value("value", b"").unwrap_err();
        assert_eq!(empty.to_string(), "value: must not be empty");
        let big = value("value", &vec![b'z'; MAX_SECRET_VALUE_BYTES + 1]).unwrap_err();
        assert_eq!(
            big.to_string(),
            "value: is 65537 bytes, more than the limit of 65536 bytes (64 KiB)"
        );
    }

    #[test]
    fn kinds_round_trip() {
        for kind in SecretKind::ALL {
            assert_eq!(SecretKind::parse_stored(kind.as_str()), Some(kind));
            let wire = pb::SecretKind::from(kind) as i32;
            assert_eq!(SecretKind::from_wire("kind", wire).unwrap(), Some(kind));
        }
        assert_eq!(SecretKind::from_wire("kind", 0).unwrap(), None);
        assert!(
            SecretKind::from_wire("kind", 99)
                .unwrap_err()
                .message
                .contains("api_key")
        );
    }
}
