//! An account's signed-playback rule as routers and nodes get it. The routing
//! table and node configurations are built (and versioned) with the keys still
//! sealed, so the worker and heartbeats compare versions without the master key;
//! the secrets are opened only in what is handed to a router or a node.

use headwater_protocol::{Playback, PlaybackKey};

use crate::sealed::Sealer;
use crate::store::StoredKey;

/// What a sealed key is bound to: its account and id.
pub fn key_context(account: &str, key_id: &str) -> String {
    format!("playback-key|{account}|{key_id}")
}

/// What a custom domain's sealed private key is bound to.
pub fn domain_key_context(account: &str, domain: &str) -> String {
    format!("domain-key|{account}|{domain}")
}

/// The rule with the secrets still sealed; `None` for an account that neither
/// requires tokens nor has keys.
pub fn sealed_rule(required: bool, keys: &[StoredKey]) -> Option<Playback> {
    (required || !keys.is_empty()).then(|| Playback {
        required,
        keys: keys.iter().map(|k| PlaybackKey { id: k.id.clone(), secret: k.sealed.clone() }).collect(),
    })
}

/// Opens the rule's secrets in place; a key that does not open (sealed under
/// another master key) is dropped and logged, so its tokens are refused.
pub fn open_rule(account: &str, rule: &mut Playback, sealer: &Sealer) {
    rule.keys.retain_mut(|k| match sealer.open(&k.secret, &key_context(account, &k.id)) {
        Some(secret) => {
            k.secret = secret.to_string();
            true
        }
        None => {
            tracing::error!(account, key = %k.id, "a playback key does not open under this master key");
            false
        }
    });
}
