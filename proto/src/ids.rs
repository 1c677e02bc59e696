//! Typed ids. Every id is `<prefix>_<32 lowercase hex digits>` (a UUIDv7, so
//! ids sort by creation time). A string with the wrong prefix or shape is
//! rejected with a message naming the expected form.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Parses `value` as this kind of id; `field` names the request
            /// field in the error.
            pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
                if value.is_empty() {
                    return Err(ValidationError::new(field, concat!("is required: give ", $what, " id (", $prefix, "_…)")));
                }
                let ok = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                if !ok {
                    return Err(ValidationError::new(
                        field,
                        format!(concat!("{:?} is not ", $what, " id: expected ", $prefix, "_ followed by 32 hex digits"), truncate(value)),
                    ));
                }
                Ok(Self(value.to_owned()))
            }

            /// Parses an optional id: empty means `None`.
            pub fn parse_optional(field: &str, value: &str) -> Result<Option<Self>, ValidationError> {
                if value.is_empty() { Ok(None) } else { Self::parse(field, value).map(Some) }
            }

            /// Wraps an id read back from our own storage.
            pub fn from_trusted(value: String) -> Self {
                Self(value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse("id", &value)
            }
        }
    };
}

fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

typed_id!(/// A tenant.
    TenantId, "ten", "a tenant");
typed_id!(/// A user.
    UserId, "usr", "a user");
typed_id!(/// An API token (its public id, not the secret).
    TokenId, "tok", "a token");
typed_id!(/// A runtime (a paired machine).
    RuntimeId, "rt", "a runtime");
typed_id!(/// A connect code (its public id, not the code).
    ConnectCodeId, "cc", "a connect code");
typed_id!(/// An agent configuration.
    AgentId, "agt", "an agent");
typed_id!(/// A session.
    SessionId, "ses", "a session");
typed_id!(/// An audit log entry.
    AuditId, "aud", "an audit entry");
typed_id!(/// A secret of the secret store (its public id, never its value).
    SecretId, "sec", "a secret");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let id = AgentId::generate();
        assert_eq!(AgentId::parse("agent_id", id.as_str()).unwrap(), id);
        let err = AgentId::parse("agent_id", "ses_0123456789abcdef0123456789abcdef").unwrap_err();
        assert_eq!(err.field, "agent_id");
        assert!(err.message.contains("agt_"), "{}", err.message);
        assert!(AgentId::parse("agent_id", "").unwrap_err().message.contains("required"));
        assert!(AgentId::parse("agent_id", "agt_XYZ").is_err());
        assert!(AgentId::parse_optional("x", "").unwrap().is_none());
    }
}
