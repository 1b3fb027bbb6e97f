//! The configuration an origin node serves (`GET /v1/nodes/{id}/config`), made
//! from what the store says its pool serves. The worker compares it with what a
//! node runs to know that the node has heard of a change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use headwater_protocol::{Encryption, NodeConfig, Packaging, ServedAccount};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::UnixMs;
use crate::domain::OfferKind;
use crate::states::{DashScheme, EncryptionScheme, PoolKind};
use crate::store::{NodeAtStamp, NodeServing, Store, StoreError};

/// How long a pool's read stays good while the stamp stands still: what a pool
/// serves also changes with time alone (an account that moved away stops being
/// served when its grace ends).
pub const SERVING_MAX_AGE_MS: UnixMs = 5_000;

/// What each pool's nodes serve, as last read, and the pool's serving stamp read
/// before it: heartbeats answer from it while the stamp has not moved (one read
/// of the node with its pool's stamp instead of two with the pool's accounts,
/// ~2,000 times a second at fleet size). A configuration fetch always reads the
/// store.
#[derive(Default)]
pub struct ServingCache {
    pools: Mutex<Pools>,
}

#[derive(Default)]
struct Pools {
    by_id: HashMap<Uuid, Cached>,
    /// Past this many entries, old ones (pools gone, or not heard for a while)
    /// are dropped, and the mark set to twice what is left.
    prune_past: usize,
}

struct Cached {
    stamp: i64,
    read_at: UnixMs,
    serving: Arc<NodeServing>,
}

impl ServingCache {
    /// What `node` (read as `at`) serves at `now`.
    pub async fn get(
        &self,
        store: &Store,
        node: Uuid,
        at: &NodeAtStamp,
        now: UnixMs,
    ) -> Result<Arc<NodeServing>, StoreError> {
        {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = pools.by_id.get(&at.pool_id)
                && c.stamp == at.stamp
                && (c.read_at..c.read_at + SERVING_MAX_AGE_MS).contains(&now)
            {
                return Ok(c.serving.clone());
            }
        }
        let serving = Arc::new(store.node_serving(node, now).await?);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools.by_id.len() > pools.prune_past.max(1024) {
            pools.by_id.retain(|_, c| now - c.read_at < SERVING_MAX_AGE_MS);
            pools.prune_past = pools.by_id.len() * 2;
        }
        // Read after `at`: it is at least as new as the stamp it is kept at.
        if serving.pool_id == at.pool_id {
            pools.by_id.insert(at.pool_id, Cached { stamp: at.stamp, read_at: now, serving: serving.clone() });
        }
        Ok(serving)
    }
}

/// The configuration a node of this pool serves. Its version is a digest of its
/// content, so it changes exactly when the configuration does. Playback keys
/// are still sealed here (see [`opened`]).
///
/// An account's cap in a shared pool is for the account, not per node: the router
/// spreads its requests over the pool's ready nodes, so each node holds it to its
/// share (kbit/s, rounded up), and the shares grow when a node fails or leaves.
pub fn node_config(node_id: Uuid, s: &NodeServing) -> NodeConfig {
    let shared = s.pool_kind == PoolKind::Shared;
    let nodes = u32::try_from(s.ready_nodes).unwrap_or(1).max(1);
    // kbit/s, at least 1.
    let share = |cap: i32| u32::try_from(cap).ok().map(|c| c.saturating_mul(1000).div_ceil(nodes).max(1));
    let accounts: Vec<ServedAccount> = s
        .accounts
        .iter()
        .map(|a| {
            let cap_kbps = match (shared, a.offer) {
                (true, OfferKind::Trial) => share(s.trial_cap_mbps),
                (true, OfferKind::Payg | OfferKind::Sla) => share(s.payg_cap_mbps),
                (false, _) => None,
            };
            ServedAccount {
                name: a.name.clone(),
                cap_mbps: cap_kbps.map(|k| k.div_ceil(1000)),
                cap_kbps,
                ip_allow: a.ip_allow.0.clone(),
                allow_origins: a.allow_origins.0.clone(),
                active: a.state.serves(),
                playback: crate::control::signing::sealed_rule(a.playback_required, &a.playback_keys.0),
                cdn_secrets: a.cdn_secrets.0.iter().map(|c| c.sha256.clone()).collect(),
                encryption: match a.encryption {
                    EncryptionScheme::None => None,
                    // Without a secret, an empty one: the node refuses to package
                    // rather than send anything clear.
                    EncryptionScheme::Aes128 => Some(Encryption {
                        scheme: headwater_protocol::EncryptionScheme::Aes128,
                        dash: match a.dash_encryption {
                            DashScheme::Cenc => headwater_protocol::DashScheme::Cenc,
                            DashScheme::Cbcs => headwater_protocol::DashScheme::Cbcs,
                        },
                        secret: a.content_secret.clone().unwrap_or_default(),
                    }),
                },
            }
        })
        .collect();
    let capacity_mbps = u32::try_from(s.node_capacity_mbps).unwrap_or(1);
    // The packaging follows the type's name: `jit` is the packager, every other
    // type (the built-in `hls` and `dash`, an operator's own) serves files.
    let packaging = if s.origin_type == crate::store::JIT_TYPE { Packaging::Jit } else { Packaging::Files };
    let mut config = NodeConfig { version: 0, node_id, pool_id: s.pool_id, capacity_mbps, accounts, packaging };
    let digest = Sha256::digest(serde_json::to_vec(&config).unwrap_or_default());
    let mut v = [0u8; 8];
    v.copy_from_slice(&digest[..8]);
    // Kept below 2^63 so it fits a signed BIGINT.
    config.version = u64::from_be_bytes(v) >> 1;
    config
}

/// The configuration as the node gets it: playback and content secrets opened.
/// A content secret that does not open is handed as empty (logged): the node
/// then refuses the account's packaged answers rather than send them clear.
pub fn opened(mut config: NodeConfig, sealer: &crate::sealed::Sealer) -> NodeConfig {
    for a in &mut config.accounts {
        if let Some(rule) = a.playback.as_mut() {
            crate::control::signing::open_rule(&a.name, rule, sealer);
        }
        if let Some(e) = a.encryption.as_mut() {
            e.secret = match sealer.open(&e.secret, &content_secret_context(&a.name)) {
                Some(secret) => secret.to_string(),
                None => {
                    tracing::error!(account = %a.name, "the content secret does not open under this master key");
                    String::new()
                }
            };
        }
    }
    config
}

/// What an account's sealed content secret is bound to.
pub fn content_secret_context(account: &str) -> String {
    format!("content-secret|{account}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ServedAccountRow;

    fn serving(kind: PoolKind, ready_nodes: i64) -> NodeServing {
        let account = |name: &str, offer: OfferKind| ServedAccountRow {
            name: name.into(),
            offer,
            state: crate::states::AccountState::Active,
            ip_allow: sqlx::types::Json(vec![]),
            allow_origins: sqlx::types::Json(vec![]),
            playback_required: false,
            playback_keys: sqlx::types::Json(vec![]),
            cdn_secrets: sqlx::types::Json(vec![]),
            encryption: EncryptionScheme::None,
            dash_encryption: DashScheme::Cenc,
            content_secret: None,
        };
        NodeServing {
            pool_id: Uuid::nil(),
            pool_kind: kind,
            origin_type: "hls".into(),
            node_capacity_mbps: 100,
            trial_cap_mbps: 5,
            payg_cap_mbps: 10,
            ready_nodes,
            generation: 0,
            accounts: vec![account("p", OfferKind::Payg), account("t", OfferKind::Trial), account("s", OfferKind::Sla)],
        }
    }

    /// kbit/s per account.
    fn caps(c: &NodeConfig) -> Vec<Option<u32>> {
        c.accounts.iter().map(|a| a.cap_kbps).collect()
    }

    #[test]
    fn a_shared_pool_splits_each_cap_over_its_ready_nodes() {
        assert_eq!(
            caps(&node_config(Uuid::nil(), &serving(PoolKind::Shared, 1))),
            [Some(10_000), Some(5_000), Some(10_000)]
        );
        assert_eq!(
            caps(&node_config(Uuid::nil(), &serving(PoolKind::Shared, 2))),
            [Some(5_000), Some(2_500), Some(5_000)]
        );
        let three = node_config(Uuid::nil(), &serving(PoolKind::Shared, 3));
        assert_eq!(caps(&three), [Some(3_334), Some(1_667), Some(3_334)]);
        // Older nodes read whole Mbit/s, rounded up.
        assert_eq!(three.accounts.iter().map(|a| a.cap_mbps).collect::<Vec<_>>(), [Some(4), Some(2), Some(4)]);
        // No ready node yet (the first one starting): the whole cap, never 0.
        assert_eq!(
            caps(&node_config(Uuid::nil(), &serving(PoolKind::Shared, 0))),
            [Some(10_000), Some(5_000), Some(10_000)]
        );
        // Dedicated pools are held by the node capacity alone.
        assert_eq!(caps(&node_config(Uuid::nil(), &serving(PoolKind::Dedicated, 2))), [None, None, None]);
        // The version follows the content: a node joining changes the shares.
        let (one, two) = (
            node_config(Uuid::nil(), &serving(PoolKind::Shared, 1)),
            node_config(Uuid::nil(), &serving(PoolKind::Shared, 2)),
        );
        assert_ne!(one.version, two.version);
    }

    #[test]
    fn a_jit_pool_packages_and_every_other_type_serves_files() {
        let files = node_config(Uuid::nil(), &serving(PoolKind::Shared, 1));
        assert_eq!(files.packaging, Packaging::Files);
        let jit = node_config(Uuid::nil(), &NodeServing { origin_type: "jit".into(), ..serving(PoolKind::Shared, 1) });
        assert_eq!(jit.packaging, Packaging::Jit);
        assert_ne!(files.version, jit.version);
        // Older nodes never see the field for files pools.
        assert!(!serde_json::to_string(&files).unwrap().contains("packaging"));
        assert!(serde_json::to_string(&jit).unwrap().contains(r#""packaging":"jit""#));
    }
}
