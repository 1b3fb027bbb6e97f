//! Secrets admin must read back (playback signing keys), kept encrypted at rest
//! under the master key: AES-256-GCM (ring), a random 96-bit nonce per value, and
//! what the value belongs to as associated data, so a sealed value copied onto
//! another row does not open. Stored as `v1.{base64url(nonce ‖ ciphertext ‖ tag)}`.
//!
//! The master key is 32 random bytes, base64url: `--master-key`
//! (`HEADWATER_MASTER_KEY`), else DATA_DIR/master-key, made on first start.
//! Every admin replica needs the same one.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: &str = "v1.";

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
    /// Opened values by their sealed text: the routing table and node
    /// configurations are rebuilt often, and their keys rarely change.
    opened: quick_cache::sync::Cache<(String, String), Arc<str>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The sealer of a master key in its base64url text form.
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        let bytes = B64.decode(text.trim()).map_err(|_| anyhow::anyhow!("the master key is not base64url"))?;
        anyhow::ensure!(bytes.len() == 32, "the master key must be 32 bytes (43 base64url characters)");
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow::anyhow!("the master key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            opened: quick_cache::sync::Cache::new(100_000),
        })
    }

    /// `plaintext` sealed, bound to `context` (say, the account and key id).
    pub fn seal(&self, plaintext: &str, context: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{VERSION}{}", B64.encode(out)))
    }

    /// The plaintext of `sealed`, if it was sealed under this key for `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Option<Arc<str>> {
        let cache_key = (sealed.to_owned(), context.to_owned());
        if let Some(v) = self.opened.get(&cache_key) {
            return Some(v);
        }
        let raw = B64.decode(sealed.strip_prefix(VERSION)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let mut data = data.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut data).ok()?;
        let text: Arc<str> = Arc::from(std::str::from_utf8(plain).ok()?);
        self.opened.insert(cache_key, text.clone());
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_text(&B64.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_for_its_context_only() {
        let s = sealer();
        let sealed = s.seal("the secret", "playback-key|ana|k1").unwrap();
        assert!(!sealed.contains("the secret"));
        assert_eq!(s.open(&sealed, "playback-key|ana|k1").as_deref(), Some("the secret"));
        assert_eq!(s.open(&sealed, "playback-key|bob|k1"), None, "copied onto another account's row");
        // The same value sealed twice differs (a fresh nonce each time).
        assert_ne!(sealed, s.seal("the secret", "playback-key|ana|k1").unwrap());
        // Another master key cannot open it; a flipped byte does not open.
        let other = Sealer::from_text(&B64.encode([8u8; 32])).unwrap();
        assert_eq!(other.open(&sealed, "playback-key|ana|k1"), None);
        let mut raw = B64.decode(sealed.strip_prefix(VERSION).unwrap()).unwrap();
        raw[20] ^= 1;
        assert_eq!(s.open(&format!("{VERSION}{}", B64.encode(raw)), "playback-key|ana|k1"), None);
    }

    #[test]
    fn only_a_32_byte_key_is_a_master_key() {
        assert!(Sealer::from_text(&B64.encode([1u8; 16])).is_err());
        assert!(Sealer::from_text("not base64!").is_err());
    }
}
