//! Origin nodes: registration, heartbeats (latest in `nodes`, history in `probes`),
//! their states and handles, and the configuration a node serves.

use sqlx::types::Json;
use uuid::Uuid;

use super::{BeginWrite, NodeRow, Result, Store, StoreError, event, on_pool};
use crate::clock::UnixMs;
use crate::domain::OfferKind;
use crate::states::{AccountState, NodeState, PoolKind, TargetState};

/// What a heartbeat changes in the store.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    /// What the node says of itself.
    pub state: headwater_protocol::NodeState,
    pub address: String,
    pub image_version: String,
    pub egress_mbps: f64,
    pub open_connections: i64,
    pub cache_hit_ratio: f64,
    pub config_version: i64,
    pub probe_ok: bool,
    pub probe_latency_ms: i32,
    pub probe_error: Option<String>,
    pub tls_address: Option<String>,
}

/// An account as a node serves it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServedAccountRow {
    pub name: String,
    pub offer: OfferKind,
    pub state: AccountState,
    pub ip_allow: Json<Vec<String>>,
    pub allow_origins: Json<Vec<String>>,
    pub playback_required: bool,
    pub playback_keys: Json<Vec<super::StoredKey>>,
    pub cdn_secrets: Json<Vec<super::CdnSecret>>,
    pub encryption: crate::states::EncryptionScheme,
    pub dash_encryption: crate::states::DashScheme,
    /// Sealed.
    pub content_secret: Option<String>,
}

/// Everything a node needs to know about its pool.
#[derive(Debug, Clone)]
pub struct NodeServing {
    pub pool_id: Uuid,
    pub pool_kind: PoolKind,
    /// The pool's origin type: `jit` pools package on request.
    pub origin_type: String,
    pub node_capacity_mbps: i32,
    pub trial_cap_mbps: i32,
    pub payg_cap_mbps: i32,
    /// Ready nodes of the pool: the router spreads an account's requests over them.
    pub ready_nodes: i64,
    pub accounts: Vec<ServedAccountRow>,
}

impl Store {
    /// Registers a node of `pool_id` that will authenticate with a token whose
    /// SHA-256 is `token_hash`, or join with the join token of `join_hash`
    /// (a node an operator runs by hand).
    #[allow(clippy::too_many_arguments)]
    pub async fn register_node(
        &self,
        id: Uuid,
        pool_id: Uuid,
        token_hash: &[u8],
        join_hash: &[u8],
        placement: Placement<'_>,
        actor: &str,
        now: UnixMs,
    ) -> Result<NodeRow> {
        self.insert_node(id, pool_id, Some(token_hash), join_hash, placement, false, actor, now)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Registers a node the reconciler is about to launch on the pool's image as
    /// it planned it; `None` (nothing registered) when the pool moved to another
    /// image meanwhile (an upgrade superseded), so no node starts on a stale image.
    /// The node joins with the join token of `join_hash` (it has no other credential yet).
    pub async fn register_launch(
        &self,
        id: Uuid,
        pool_id: Uuid,
        join_hash: &[u8],
        placement: Placement<'_>,
        now: UnixMs,
    ) -> Result<Option<NodeRow>> {
        self.insert_node(id, pool_id, None, join_hash, placement, true, "reconciler", now).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_node(
        &self,
        id: Uuid,
        pool_id: Uuid,
        token_hash: Option<&[u8]>,
        join_hash: &[u8],
        placement: Placement<'_>,
        on_pool_image: bool,
        actor: &str,
        now: UnixMs,
    ) -> Result<Option<NodeRow>> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            if on_pool_image {
                // Lock the pool row first: an upload superseding this image holds
                // it until it commits, and this then sees the pool's new image
                // (an INSERT ... SELECT alone reads the image from before that
                // commit under PostgreSQL's READ COMMITTED).
                let still = sqlx::query(
                    "UPDATE pools SET updated_at = updated_at
                     WHERE id = $1 AND COALESCE(image_version, '') = COALESCE($2, '')",
                )
                .bind(pool_id)
                .bind(placement.image_version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if still == 0 {
                    return Ok(None);
                }
            }
            let row: Option<NodeRow> = sqlx::query_as(
                "INSERT INTO nodes (id, pool_id, state, token_hash, join_token_hash, upgrade_domain, image_version, target, created_at, updated_at)
                 SELECT $1, p.id, 'starting', $3, $9, $5, $6, $8, $4, $4 FROM pools p
                 WHERE p.id = $2 AND (NOT $7 OR COALESCE(p.image_version, '') = COALESCE($6, ''))
                 RETURNING id, pool_id, handle, address, image_version, upgrade_domain, state, last_heartbeat,
                     egress_mbps, open_connections, cache_hit_ratio, created_at, updated_at, target, tls_address, cert_not_after",
            )
            .bind(id)
            .bind(pool_id)
            .bind(token_hash)
            .bind(now)
            .bind(placement.upgrade_domain)
            .bind(placement.image_version)
            .bind(on_pool_image)
            .bind(placement.target)
            .bind(join_hash)
            .fetch_optional(&mut *tx)
            .await?;
            if row.is_some() {
                let mut reason = format!("pool:{pool_id}");
                if let Some(v) = placement.image_version {
                    reason.push_str(&format!(" image {v}"));
                }
                if let Some(t) = placement.target {
                    reason.push_str(&format!(" target {t}"));
                }
                event!(tx, now, actor, "node.registered", format!("node:{id}"), reason)?;
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// The stored token hash of a node, if the node exists and is not stopped.
    pub async fn node_token_hash(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        let hash: Option<Option<Vec<u8>>> = on_pool!(self, |p| {
            sqlx::query_scalar("SELECT token_hash FROM nodes WHERE id = $1 AND state <> 'stopped'")
                .bind(id)
                .fetch_optional(p)
                .await?
        });
        Ok(hash.flatten())
    }

    /// Stores heartbeats in one transaction: each node's latest state and load, and
    /// its self-probe. Admin's verdicts stick: a failed or stopped node stays so, and
    /// a node told to drain stays draining whatever it says.
    pub async fn record_heartbeats(&self, batch: &[(Uuid, HeartbeatRecord, UnixMs)]) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            for (id, hb, now) in batch {
                let before: Option<NodeState> = sqlx::query_scalar("SELECT state FROM nodes WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(before) = before else { continue };
                let state = before.after_heartbeat(hb.state);
                // The verdict is applied in the statement too: a node stopped or
                // failed by another transaction since the read above stays so.
                sqlx::query(
                    "UPDATE nodes SET state = CASE WHEN state IN ('failed', 'stopped', 'draining') THEN state ELSE $2 END,
                         address = $3, image_version = $4, last_heartbeat = $5, egress_mbps = $6,
                         open_connections = $7, cache_hit_ratio = $8, config_version = $9, updated_at = $5,
                         tls_address = $10
                     WHERE id = $1",
                )
                .bind(id)
                .bind(state)
                .bind(&hb.address)
                .bind(&hb.image_version)
                .bind(now)
                .bind(hb.egress_mbps)
                .bind(hb.open_connections)
                .bind(hb.cache_hit_ratio)
                .bind(hb.config_version)
                .bind(&hb.tls_address)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO probes (node_id, at, source, ok, latency_ms, detail) VALUES ($1, $2, 'self', $3, $4, $5)")
                    .bind(id)
                    .bind(now)
                    .bind(hb.probe_ok)
                    .bind(hb.probe_latency_ms)
                    .bind(&hb.probe_error)
                    .execute(&mut *tx)
                    .await?;
                if state != before {
                    event!(
                        tx,
                        now,
                        format!("node:{id}"),
                        "node.state",
                        format!("node:{id}"),
                        format!("{before} -> {state}")
                    )?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A node's state as admin holds it.
    pub async fn node_state(&self, id: Uuid) -> Result<NodeState> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT state FROM nodes WHERE id = $1").bind(id).fetch_one(p).await?)
        })
    }

    pub async fn node(&self, id: Uuid) -> Result<NodeRow> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, pool_id, handle, address, image_version, upgrade_domain, state, last_heartbeat, egress_mbps,
                        open_connections, cache_hit_ratio, created_at, updated_at, target, tls_address, cert_not_after FROM nodes WHERE id = $1",
            )
            .bind(id)
            .fetch_one(p)
            .await?)
        })
    }

    /// The pool of a node, its limits, and the accounts mapped to it.
    /// What node `id` serves at `now`: the accounts mapped to its pool, the ones
    /// staged to move in, and the ones that left less than
    /// [`MOVE_GRACE_MS`](crate::domain::MOVE_GRACE_MS) ago.
    pub async fn node_serving(&self, id: Uuid, now: UnixMs) -> Result<NodeServing> {
        type Row = (Uuid, PoolKind, String, i32, i32, i32, i64);
        let (pool_id, pool_kind, origin_type, cap, trial, payg, ready_nodes): Row = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT p.id, p.kind, p.origin_type, t.node_capacity_mbps, t.trial_cap_mbps, t.payg_cap_mbps,
                        (SELECT COUNT(*) FROM nodes r WHERE r.pool_id = p.id AND r.state = 'ready')
                 FROM nodes n JOIN pools p ON p.id = n.pool_id JOIN origin_types t ON t.name = p.origin_type
                 WHERE n.id = $1",
            )
            .bind(id)
            .fetch_one(p)
            .await?
        });
        let accounts = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT a.name, a.offer, a.state, a.ip_allow, a.allow_origins, a.playback_required, a.playback_keys, a.cdn_secrets,
                        a.encryption, a.dash_encryption, a.content_secret
                 FROM accounts a
                 LEFT JOIN account_pool_mappings m ON m.account_id = a.id
                 WHERE (m.pool_id = $1 OR a.staged_pool_id = $1 OR (m.previous_pool_id = $1 AND m.moved_at > $2))
                   AND a.state <> 'deleted'
                 ORDER BY a.name",
            )
            .bind(pool_id)
            .bind(now - crate::domain::MOVE_GRACE_MS)
            .fetch_all(p)
            .await?
        });
        Ok(NodeServing {
            pool_id,
            pool_kind,
            origin_type,
            node_capacity_mbps: cap,
            trial_cap_mbps: trial,
            payg_cap_mbps: payg,
            ready_nodes,
            accounts,
        })
    }
}

impl Store {
    /// Records the configuration a node just fetched (and applies at once).
    pub async fn set_config_version(&self, id: Uuid, version: i64) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query("UPDATE nodes SET config_version = $2 WHERE id = $1").bind(id).bind(version).execute(p).await?;
        });
        Ok(())
    }

    /// Marks a node draining; it learns so from its next heartbeat's answer.
    pub async fn request_drain(&self, id: Uuid, actor: &str, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "UPDATE nodes SET state = 'draining', updated_at = $2 WHERE id = $1 AND state IN ('starting', 'ready')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            event!(tx, now, actor, "node.drain", format!("node:{id}"), "drain requested")?;
            tx.commit().await?;
            Ok(())
        })
    }
}

/// A node as the reconciler sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeHealthRow {
    pub id: Uuid,
    pub pool_id: Uuid,
    pub handle: Option<String>,
    pub state: NodeState,
    pub last_heartbeat: Option<UnixMs>,
    pub created_at: UnixMs,
    /// Failed self-probes among the node's last two.
    pub recent_probe_failures: i64,
    /// Egress in the node's last heartbeat.
    pub egress_mbps: f64,
    pub upgrade_domain: i32,
    /// The image it was launched with, or the one it reports.
    pub image_version: Option<String>,
    /// Where it runs (`None`: a node an operator runs by hand), that target's
    /// zone and state.
    pub target: Option<String>,
    pub zone: Option<String>,
    pub target_state: Option<TargetState>,
}

impl NodeHealthRow {
    /// Whether its target is being emptied: the node is replaced elsewhere.
    pub fn on_draining_target(&self) -> bool {
        self.target_state == Some(TargetState::Draining)
    }
}

/// Where a new node goes: its upgrade domain within its pool, the image it runs
/// (`None`: the built-in one) and its target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement<'a> {
    pub upgrade_domain: i32,
    pub image_version: Option<&'a str>,
    /// The target it runs on (`None`: run by hand, wherever the operator put it).
    pub target: Option<&'a str>,
}

impl Store {
    /// Every node that should be running (for adopting processes after a restart).
    pub async fn live_node_ids(&self) -> Result<Vec<Uuid>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT id FROM nodes WHERE state IN ('starting', 'ready', 'draining')")
                .fetch_all(p)
                .await?)
        })
    }

    /// Forgets a node's driver handle once its instance is gone, so nothing
    /// inspects it again.
    pub async fn clear_node_handle(&self, id: Uuid) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query("UPDATE nodes SET handle = NULL WHERE id = $1").bind(id).execute(p).await?;
        });
        Ok(())
    }

    pub async fn set_node_handle(&self, id: Uuid, handle: &str, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query("UPDATE nodes SET handle = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(handle)
                .bind(now)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Marks a node failed or stopped, with the reason in the event trail.
    pub async fn set_node_state(
        &self,
        id: Uuid,
        state: NodeState,
        reason: &str,
        actor: &str,
        now: UnixMs,
    ) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query("UPDATE nodes SET state = $2, updated_at = $3 WHERE id = $1 AND state <> $2")
                .bind(id)
                .bind(state)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                event!(tx, now, actor, format!("node.{state}"), format!("node:{id}"), reason)?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// (node, configuration version it runs) of the ready nodes of the pool the
    /// account is staged to move to, else of its pool.
    pub async fn account_ready_node_versions(&self, account_id: Uuid) -> Result<Vec<(Uuid, i64)>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT n.id, n.config_version FROM accounts a LEFT JOIN account_pool_mappings m ON m.account_id = a.id
                 JOIN nodes n ON n.pool_id = COALESCE(a.staged_pool_id, m.pool_id)
                 WHERE a.id = $1 AND n.state = 'ready' ORDER BY n.id",
            )
            .bind(account_id)
            .fetch_all(p)
            .await?)
        })
    }
}
