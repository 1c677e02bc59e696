//! Bearer secrets: API tokens, machine tokens and connect codes. Only SHA-256
//! hashes are stored. The secrets are 256-bit random values, so a plain hash
//! is enough (no password stretching), and hashes are compared in constant
//! time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use oma_proto::{API_TOKEN_PREFIX, MACHINE_TOKEN_PREFIX};

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn hash_matches(secret: &str, stored: &[u8]) -> bool {
    hash(secret).ct_eq(stored).into()
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A bearer token `<prefix><id hex>.<secret>`: the id part finds the row,
/// the secret part is checked against its hash.
#[derive(Debug)]
pub struct MintedToken {
    /// The whole bearer string, shown once.
    pub bearer: String,
    /// The hash of the secret part, stored.
    pub secret_hash: Vec<u8>,
}

fn mint(prefix: &str, id: &str, id_prefix: &str) -> MintedToken {
    let hex = id
        .strip_prefix(id_prefix)
        .and_then(|s| s.strip_prefix('_'))
        .unwrap_or(id);
    let secret = random_secret();
    MintedToken {
        bearer: format!("{prefix}{hex}.{secret}"),
        secret_hash: hash(&secret),
    }
}

/// Mints an API token for the token row `token_id` (`tok_…`).
pub fn mint_api_token(token_id: &str) -> MintedToken {
    mint(API_TOKEN_PREFIX, token_id, "tok")
}

/// Mints a machine token for the runtime `runtime_id` (`rt_…`).
pub fn mint_machine_token(runtime_id: &str) -> MintedToken {
    mint(MACHINE_TOKEN_PREFIX, runtime_id, "rt")
}

/// A parsed bearer token.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// `token_id` is the full `tok_…` id.
    Api { token_id: String, secret: &'a str },
    /// `runtime_id` is the full `rt_…` id.
    Machine { runtime_id: String, secret: &'a str },
}

/// Parses `oma_<hex>.<secret>` or `sk_machine_<hex>.<secret>`; `None` for
/// anything else.
pub fn parse_bearer(token: &str) -> Option<Bearer<'_>> {
    let (kind, rest) = if let Some(rest) = token.strip_prefix(MACHINE_TOKEN_PREFIX) {
        ("rt", rest)
    } else if let Some(rest) = token.strip_prefix(API_TOKEN_PREFIX) {
        ("tok", rest)
    } else {
        return None;
    };
    let (hex, secret) = rest.split_once('.')?;
    let hex_ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok || secret.len() != 43 {
        return None;
    }
    let id = format!("{kind}_{hex}");
    Some(if kind == "rt" {
        Bearer::Machine { runtime_id: id, secret }
    } else {
        Bearer::Api { token_id: id, secret }
    })
}

/// Alphabet of connect codes: Crockford base32 (no I, L, O, U: nothing to
/// misread when typed from a screen).
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A fresh connect code, `XXXX-XXXX-XXXX-XXXX` (80 random bits).
pub fn new_connect_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes.iter().map(|b| CODE_ALPHABET[(b & 31) as usize] as char).collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The canonical form of a typed connect code: upper case, no separators,
/// and the letters people confuse mapped as Crockford base32 does. `None`
/// when it cannot be a code.
pub fn normalize_connect_code(code: &str) -> Option<String> {
    let mut out = String::with_capacity(16);
    for c in code.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == 16).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_token_round_trip() {
        let id = oma_proto::ids::TokenId::generate();
        let minted = mint_api_token(id.as_str());
        assert!(minted.bearer.starts_with("oma_"));
        match parse_bearer(&minted.bearer).unwrap() {
            Bearer::Api { token_id, secret } => {
                assert_eq!(token_id, id.as_str());
                assert!(hash_matches(secret, &minted.secret_hash));
                assert!(!hash_matches("x", &minted.secret_hash));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn machine_token_round_trip() {
        let id = oma_proto::ids::RuntimeId::generate();
        let minted = mint_machine_token(id.as_str());
        assert!(minted.bearer.starts_with("sk_machine_"));
        assert!(
            matches!(parse_bearer(&minted.bearer), Some(Bearer::Machine { runtime_id, .. }) if runtime_id == id.as_str())
        );
    }

    #[test]
    fn garbage_is_not_a_bearer() {
        for bad in [
            "",
            "oma_",
            "oma_abc.def",
            "Bearer x",
            "sk_machine_zz.zz",
            "oma_0123456789abcdef0123456789abcdef.short",
        ] {
            assert_eq!(parse_bearer(bad), None, "{bad}");
        }
    }

    #[test]
    fn connect_codes_normalize() {
        let code = new_connect_code();
        assert_eq!(code.len(), 19);
        let canonical = normalize_connect_code(&code).unwrap();
        assert_eq!(normalize_connect_code(&code.to_lowercase()).unwrap(), canonical);
        assert_eq!(normalize_connect_code(&canonical).unwrap(), canonical);
        assert!(normalize_connect_code("short").is_none());
        assert!(normalize_connect_code("ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ-ÄÄÄÄ").is_none());
    }
}
