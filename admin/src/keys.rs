//! API keys, node tokens, join tokens and the operator token. A key is
//! `hw_<key id>_<secret>`, a node token `hwn_<node id>_<secret>`, a join token
//! `hwj_<node id>_<secret>`: the id finds the row, the secret is checked
//! against its SHA-256 in constant time. Secrets are 256-bit random values, so a
//! fast hash is the right one (a slow password hash would only slow every
//! request); a credential is shown once and never stored. Only the canonical
//! spelling parses (lower-case hex id, base64url secret), so one credential is one
//! rate-limit bucket.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const PREFIX: &str = "hw_";
pub const NODE_PREFIX: &str = "hwn_";
pub const JOIN_PREFIX: &str = "hwj_";
/// Characters of a secret: 32 random bytes in unpadded base64url.
const SECRET_LEN: usize = 43;

/// A freshly made key: the id and hash to store, and the text to show once.
pub struct NewKey {
    pub id: Uuid,
    pub secret_hash: Vec<u8>,
    pub plaintext: String,
}

/// 32 random bytes in unpadded base64url.
pub fn secret() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    URL_SAFE_NO_PAD.encode(secret)
}

/// A short random id (16 lower-case hex characters): a playback key's.
pub fn short_id() -> String {
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

/// Makes a new API key from the operating system's random source.
pub fn generate() -> NewKey {
    let id = Uuid::now_v7();
    let secret = secret();
    NewKey { id, secret_hash: hash(&secret), plaintext: format!("{PREFIX}{}_{secret}", id.simple()) }
}

/// A new token for node `id`: its text (shown once, handed to the node) and the
/// hash to store.
pub fn node_token(id: Uuid) -> (String, Vec<u8>) {
    let secret = secret();
    let hashed = hash(&secret);
    (format!("{NODE_PREFIX}{}_{secret}", id.simple()), hashed)
}

/// A new join token for node `id` (good for one join: it makes the node's key
/// and asks for its certificate): its text and the hash to store.
pub fn join_token(id: Uuid) -> (String, Vec<u8>) {
    let secret = secret();
    let hashed = hash(&secret);
    (format!("{JOIN_PREFIX}{}_{secret}", id.simple()), hashed)
}

/// Splits a presented join token into the node's id and the secret.
pub fn parse_join_token(presented: &str) -> Option<(Uuid, &str)> {
    split(presented, JOIN_PREFIX)
}

/// Splits `<prefix><32 lower-case hex>_<43 base64url>` into its id and secret.
fn split<'a>(presented: &'a str, prefix: &str) -> Option<(Uuid, &'a str)> {
    let (id, secret) = presented.strip_prefix(prefix)?.split_once('_')?;
    let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let b64 = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !hex || !b64 {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// Splits a presented key into its id and secret; `None` if it is not shaped like one.
pub fn parse(presented: &str) -> Option<(Uuid, &str)> {
    split(presented, PREFIX)
}

/// Splits a presented node token into the node's id and the secret.
pub fn parse_node_token(presented: &str) -> Option<(Uuid, &str)> {
    split(presented, NODE_PREFIX)
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

/// Writes a secret to a new file readable by its owner only (0600).
pub fn write_secret_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

/// Creates `dir` (and its parents) readable by its owner only, when missing.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
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
    fn only_the_canonical_spelling_parses() {
        let k = generate();
        let (_, secret) = parse(&k.plaintext).unwrap();
        let id = k.id.simple().to_string();
        // An upper-case id, a hyphenated one, a cut or padded secret: not this key.
        for spelling in [
            format!("hw_{}_{secret}", id.to_uppercase()),
            format!("hw_{}_{secret}", k.id.hyphenated()),
            format!("hw_{id}_{}", &secret[1..]),
            format!("hw_{id}_{secret}="),
            format!("hw_{id}_{secret} "),
        ] {
            assert!(parse(&spelling).is_none(), "{spelling}");
        }
        let node = Uuid::now_v7();
        let (token, hashed) = node_token(node);
        let (id, secret) = parse_node_token(&token).unwrap();
        assert_eq!(id, node);
        assert!(verify(secret, &hashed));
        assert!(parse(&token).is_none() && parse_node_token(&k.plaintext).is_none(), "kinds do not mix");
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(random_token().starts_with("hwop_"));
    }
}
