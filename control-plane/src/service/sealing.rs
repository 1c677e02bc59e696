//! Encryption of secret values at rest: ChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`) under one 256-bit key, a fresh random 96-bit nonce per
//! value, and the row's identity — tenant id, secret id, version — as
//! associated data, so a ciphertext copied onto another row (or replayed at
//! an older version) fails to decrypt instead of yielding the wrong secret.
//!
//! Each row also stores the id of the key that sealed it: a key id derived
//! from the key itself, so a control plane started with the wrong key says
//! so (naming both ids) instead of failing row by row.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Length of a secrets key, in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of a nonce, in bytes.
pub const NONCE_BYTES: usize = 12;

/// Why a value could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret {secret_id} is encrypted under key {stored}, but the control plane has key {configured}")]
    WrongKey {
        secret_id: String,
        stored: String,
        configured: String,
    },
    #[error("secret {secret_id} does not decrypt: its row was altered or moved, or the key is wrong")]
    Undecryptable { secret_id: String },
    #[error("secret {secret_id} has a {len}-byte nonce, not {NONCE_BYTES}")]
    BadNonce { secret_id: String, len: usize },
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not base64 (a secrets key is 32 random bytes, base64-encoded)")]
    NotBase64,
    #[error("holds {0} bytes, not the {KEY_BYTES} of a secrets key")]
    WrongLength(usize),
}

/// The key secret values are sealed with.
#[derive(Clone)]
pub struct SecretsKey {
    id: String,
    cipher: ChaCha20Poly1305,
    bytes: [u8; KEY_BYTES],
}

/// Never prints the key, only its id.
impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretsKey {
    /// A fresh random key.
    pub fn generate() -> SecretsKey {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SecretsKey::from_array(bytes)
    }

    fn from_array(bytes: [u8; KEY_BYTES]) -> SecretsKey {
        // The id names the key without revealing it: a truncated hash under
        // a domain-separation label.
        let mut hash = Sha256::new();
        hash.update(b"oma secrets key id\0");
        hash.update(bytes);
        let id = format!("k_{}", hex::encode(&hash.finalize()[..8]));
        SecretsKey {
            id,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            bytes,
        }
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretsKey, KeyError> {
        let array: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(SecretsKey::from_array(array))
    }

    /// A key from its base64 text (standard alphabet, padding optional,
    /// surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<SecretsKey, KeyError> {
        let text = text.trim().trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .map_err(|_| KeyError::NotBase64)?;
        SecretsKey::from_bytes(&bytes)
    }

    /// The key as base64 text, for a key file or the environment.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// The key's id, stored with every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `value` for the row `ad` names, under a fresh nonce.
    pub fn seal(&self, ad: &RowIdentity<'_>, value: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &ad.bytes(),
                },
            )
            // Encryption fails only past ChaCha20's 256 GiB message limit;
            // values are capped at 64 KiB before they get here.
            .expect("a secret value within the size limit always encrypts");
        Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts a stored value of the row `ad` names.
    pub fn open(
        &self,
        ad: &RowIdentity<'_>,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<SecretValue, SealError> {
        if key_id != self.id {
            return Err(SealError::WrongKey {
                secret_id: ad.secret_id.to_owned(),
                stored: key_id.to_owned(),
                configured: self.id.clone(),
            });
        }
        if nonce.len() != NONCE_BYTES {
            return Err(SealError::BadNonce {
                secret_id: ad.secret_id.to_owned(),
                len: nonce.len(),
            });
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &ad.bytes(),
                },
            )
            .map(SecretValue)
            .map_err(|_| SealError::Undecryptable {
                secret_id: ad.secret_id.to_owned(),
            })
    }
}

/// The row a value belongs to: its associated data.
#[derive(Debug, Clone, Copy)]
pub struct RowIdentity<'a> {
    pub tenant_id: &'a str,
    pub secret_id: &'a str,
    pub version: i64,
}

impl RowIdentity<'_> {
    /// A label, then the three fields separated by NUL (ids never hold one).
    fn bytes(&self) -> Vec<u8> {
        format!(
            "oma secret v1\0{}\0{}\0{}",
            self.tenant_id, self.secret_id, self.version
        )
        .into_bytes()
    }
}

/// A value as stored.
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A decrypted value. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }

    /// The value itself: for the code that hands it to a session, and
    /// nothing else.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue([redacted; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64) -> RowIdentity<'static> {
        RowIdentity {
            tenant_id: "ten_1",
            secret_id: "sec_1",
            version,
        }
    }

    #[test]
    fn round_trip() {
        let key = SecretsKey::generate();
        let sealed = key.seal(&row(1), b"sk-ant-123");
        assert_eq!(sealed.key_id, key.id());
        assert_eq!(sealed.nonce.len(), NONCE_BYTES);
        assert!(!sealed.ciphertext.windows(10).any(|w| w == b"sk-ant-123"));
        let value = key
            .open(&row(1), &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
            .unwrap();
        assert_eq!(value.expose(), b"sk-ant-123");
        // The same value twice: different nonces, different ciphertexts.
        let again = key.seal(&row(1), b"sk-ant-123");
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn another_row_or_version_does_not_decrypt() {
        let key = SecretsKey::generate();
        let sealed = key.seal(&row(1), b"value");
        let open = |ad: RowIdentity<'_>| key.open(&ad, &sealed.key_id, &sealed.nonce, &sealed.ciphertext);
        assert!(matches!(open(row(2)), Err(SealError::Undecryptable { .. })));
        let other_secret = RowIdentity {
            secret_id: "sec_2",
            ..row(1)
        };
        assert!(matches!(open(other_secret), Err(SealError::Undecryptable { .. })));
        let other_tenant = RowIdentity {
            tenant_id: "ten_2",
            ..row(1)
        };
        assert!(matches!(open(other_tenant), Err(SealError::Undecryptable { .. })));
        let mut flipped = sealed.ciphertext.clone();
        flipped[0] ^= 1;
        assert!(matches!(
            key.open(&row(1), &sealed.key_id, &sealed.nonce, &flipped),
            Err(SealError::Undecryptable { .. })
        ));
        assert!(matches!(
            key.open(&row(1), &sealed.key_id, &sealed.nonce[..8], &sealed.ciphertext),
            Err(SealError::BadNonce { len: 8, .. })
        ));
    }

    #[test]
    fn another_key_does_not_decrypt() {
        let (key, other) = (SecretsKey::generate(), SecretsKey::generate());
        assert_ne!(key.id(), other.id());
        let sealed = key.seal(&row(1), b"value");
        // Named by its id: refused before any decryption.
        let err = other
            .open(&row(1), &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
            .unwrap_err();
        assert!(matches!(err, SealError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains(key.id()) && err.to_string().contains(other.id()));
        // A row whose key id was rewritten still fails: the tag does not match.
        assert!(matches!(
            other.open(&row(1), other.id(), &sealed.nonce, &sealed.ciphertext),
            Err(SealError::Undecryptable { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_base64_and_reject_bad_text() {
        let key = SecretsKey::generate();
        let text = key.to_base64();
        let back = SecretsKey::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(back.id(), key.id());
        let sealed = key.seal(&row(3), b"v");
        assert_eq!(
            back.open(&row(3), &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
                .unwrap()
                .expose(),
            b"v"
        );
        assert_eq!(SecretsKey::from_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(
            SecretsKey::from_base64(&STANDARD.encode([0u8; 16])).unwrap_err(),
            KeyError::WrongLength(16)
        );
        assert!(!format!("{key:?}").contains(&text));
        assert_eq!(
            format!("{:?}", SecretValue::new(b"abc".to_vec())),
            "SecretValue([redacted; 3 bytes])"
        );
    }
}
