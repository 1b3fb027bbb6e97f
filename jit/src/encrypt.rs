//! Encryption of packaged answers. Each asset has its own content key and key
//! id, derived (HKDF-SHA256, ring) from the account's content secret and the
//! asset's name, so every node makes the same key with nothing stored per
//! asset. HLS AES-128 encrypts each media segment whole with AES-128-CBC and
//! PKCS#7 padding (RustCrypto `aes` + `cbc`), its IV the segment's media
//! sequence number, as RFC 8216 §5.2 has it when the playlist names none.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};

/// An asset's content key and its id.
#[derive(Clone, PartialEq, Eq)]
pub struct AssetKey {
    pub key: [u8; 16],
    pub kid: [u8; 16],
}

impl std::fmt::Debug for AssetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetKey").field("kid", &hex::encode(self.kid)).finish_non_exhaustive()
    }
}

impl AssetKey {
    /// The key of `asset` under the account's `secret` (HLS AES-128).
    pub fn derive(secret: &[u8], asset: &str) -> Self {
        Self::derive_with(secret, &[asset.as_bytes()])
    }

    /// The key of `asset`'s Common Encryption (DASH) with `scheme`: another
    /// key and key id than HLS's and than the other scheme's, so no key serves
    /// two cipher modes.
    pub fn derive_cenc(secret: &[u8], asset: &str, scheme: crate::cenc::Scheme) -> Self {
        Self::derive_with(secret, &[asset.as_bytes(), b"\0", scheme.as_str().as_bytes()])
    }

    fn derive_with(secret: &[u8], info: &[&[u8]]) -> Self {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"headwater content key v1");
        let prk = salt.extract(secret);
        let mut out = [0u8; 32];
        // 32 bytes is within HKDF-SHA256's limit (255 x 32): this cannot fail.
        if let Ok(okm) = prk.expand(info, ring::hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        let (mut key, mut kid) = ([0u8; 16], [0u8; 16]);
        key.copy_from_slice(&out[..16]);
        kid.copy_from_slice(&out[16..]);
        Self { key, kid }
    }

    /// The key id in URLs: lowercase hex.
    pub fn kid_hex(&self) -> String {
        hex::encode(self.kid)
    }
}

/// `data` (a whole media segment) encrypted for HLS AES-128: AES-128-CBC with
/// PKCS#7 padding, the IV the media sequence number `sequence` as a 128-bit
/// big-endian integer.
pub fn aes128_segment(key: &AssetKey, sequence: u64, data: &[u8]) -> Vec<u8> {
    let iv = u128::from(sequence).to_be_bytes();
    cbc::Encryptor::<aes::Aes128>::new(&key.key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_asset_and_secret_and_are_the_same_every_time() {
        let a = AssetKey::derive(b"secret one", "movie");
        assert_eq!(a, AssetKey::derive(b"secret one", "movie"));
        assert_ne!(a.key, AssetKey::derive(b"secret one", "trailer").key);
        assert_ne!(a.key, AssetKey::derive(b"secret two", "movie").key);
        assert_ne!(a.key, a.kid);
        let dash = AssetKey::derive_cenc(b"secret one", "movie", crate::cenc::Scheme::Cenc);
        assert!(dash.key != a.key && dash.kid != a.kid, "DASH has a key of its own");
        assert_eq!(dash, AssetKey::derive_cenc(b"secret one", "movie", crate::cenc::Scheme::Cenc));
        let cbcs = AssetKey::derive_cenc(b"secret one", "movie", crate::cenc::Scheme::Cbcs);
        assert!(cbcs.key != dash.key && cbcs.kid != dash.kid, "each scheme has a key of its own");
        assert!(!format!("{a:?}").contains(&hex::encode(a.key)), "the key never shows in logs");
    }

    #[test]
    fn segments_encrypt_as_aes_128_cbc_with_the_sequence_as_iv() {
        // RFC 3602 §4 case 2 (two blocks), its IV as the sequence number; then
        // PKCS#7 adds a whole block of padding.
        let key = AssetKey {
            key: hex::decode("c286696d887c9aa0611bbb3e2025a45a").unwrap().try_into().unwrap(),
            kid: [0; 16],
        };
        let iv = hex::decode("562e17996d093d28ddb3ba695a2e6f58").unwrap().try_into().unwrap();
        let sequence = u64::try_from(u128::from_be_bytes(iv) & u128::from(u64::MAX)).unwrap();
        let plain = hex::decode("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap();
        // An IV whose high half is 0 is what a sequence number gives: check the
        // vector's own IV through the mode, then the sequence mapping.
        let by_vector =
            cbc::Encryptor::<aes::Aes128>::new(&key.key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(&plain);
        assert_eq!(hex::encode(&by_vector[..32]), "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1");
        assert_eq!(by_vector.len(), 48);
        let low = u128::from(sequence).to_be_bytes();
        let by_hand =
            cbc::Encryptor::<aes::Aes128>::new(&key.key.into(), &low.into()).encrypt_padded_vec::<Pkcs7>(&plain);
        assert_eq!(aes128_segment(&key, sequence, &plain), by_hand);
        assert_ne!(aes128_segment(&key, sequence + 1, &plain), by_hand);
    }
}
