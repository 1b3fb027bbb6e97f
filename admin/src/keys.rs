//! API keys and the operator token. A key is `hw_<key id>_<secret>`: the id finds the
//! row, the secret is checked against its SHA-256 in constant time. Keys are 256-bit
//! random secrets, so a fast hash is the right one (a slow password hash would only
//! slow every request); the key itself is shown once and never stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const PREFIX: &str = "hw_";

/// A freshly made key: the id and hash to store, and the text to show once.
pub struct NewKey {
    pub id: Uuid,
    pub secret_hash: Vec<u8>,
    pub plaintext: String,
}

/// Makes a new API key from the operating system's random source.
pub fn generate() -> NewKey {
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewKey { id, secret_hash: hash(&secret), plaintext: format!("{PREFIX}{}_{secret}", id.simple()) }
}

/// Splits a presented key into its id and secret; `None` if it is not shaped like one.
pub fn parse(presented: &str) -> Option<(Uuid, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.is_empty() {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// SHA-256 of a key's secret part.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares a presented secret with a stored hash in constant time.
pub fn verify(secret: &str, stored_hash: &[u8]) -> bool {
    hash(secret).ct_eq(stored_hash).into()
}

/// Compares two tokens in constant time (hashing first, so the time does not depend
/// on where they differ or on their lengths).
pub fn tokens_equal(presented: &str, expected: &str) -> bool {
    hash(presented).ct_eq(&hash(expected)).into()
}

/// A random token for operators and development set-ups.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("hwop_{}", URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify_only_with_their_secret() {
        let k = generate();
        let (id, secret) = parse(&k.plaintext).expect("parses");
        assert_eq!(id, k.id);
        assert!(verify(secret, &k.secret_hash));
        assert!(!verify("not-the-secret", &k.secret_hash));
        let other = generate();
        assert_ne!(k.plaintext, other.plaintext);
        assert!(!verify(secret, &other.secret_hash));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in
            ["", "hw_", "hw_abc_def", "xx_0123456789abcdef0123456789abcdef_s", "hw_0123456789abcdef0123456789abcdef_"]
        {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(random_token().starts_with("hwop_"));
    }
}
