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

/// The configuration a ready node runs, as an operation waiting for it to
/// serve an account sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeConfigState {
    pub id: Uuid,
    /// The version the node says it runs.
    pub running: i64,
    /// The version it last fetched, and the pool's generation that was built at.
    pub fetched: Option<i64>,
    pub fetched_generation: Option<i64>,
    /// The pool's generation when the account was staged to it.
    pub staged_generation: Option<i64>,
}

impl NodeConfigState {
    /// Whether the node runs a configuration it fetched at or after the
    /// account's staging, which includes the account, however the pool's
    /// configuration has changed since (other accounts staged after it).
    pub fn fetched_since_staging(&self) -> bool {
        self.fetched == Some(self.running)
            && self.staged_generation.is_some_and(|g| self.fetched_generation.is_some_and(|f| f >= g))
    }

    /// Whether the node runs the configuration as it is now (`current`).
    pub fn runs(&self, current: u64) -> bool {
        u64::try_from(self.running).ok() == Some(current)
    }
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
    /// The pool's configuration generation, read before `accounts`: every
    /// account staged at this generation or before is among them.
    pub generation: i64,
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
        let p = match &self.backend {
            super::Backend::Postgres(p) => return record_heartbeats_postgres(p, batch).await,
            super::Backend::Sqlite(p) => p,
        };
        // SQLite: one writer in this process, each statement a function call.
        let mut tx = p.begin_write().await?;
        for (id, hb, now) in batch {
            let before: Option<NodeState> =
                sqlx::query_scalar("SELECT state FROM nodes WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            let Some(before) = before else { continue };
            let state = before.after_heartbeat(hb.state);
            // The verdict is applied in the statement too: a node stopped or
            // failed by another transaction since the read above stays so. A
            // heartbeat received before the node's last configuration fetch (and
            // written after it) does not undo what the fetch recorded.
            sqlx::query(
                "UPDATE nodes SET state = CASE WHEN state IN ('failed', 'stopped', 'draining') THEN state ELSE $2 END,
                     address = $3, image_version = $4, last_heartbeat = $5, egress_mbps = $6,
                     open_connections = $7, cache_hit_ratio = $8, updated_at = $5, tls_address = $10,
                     config_version = CASE WHEN config_fetched_at IS NOT NULL AND $5 <= config_fetched_at
                                           THEN config_version ELSE $9 END
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
            sqlx::query(
                "INSERT INTO probes (node_id, at, source, ok, latency_ms, detail) VALUES ($1, $2, 'self', $3, $4, $5)",
            )
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
        type Row = (Uuid, PoolKind, String, i32, i32, i32, i64, i64);
        // The generation first, in a statement of its own: the accounts read
        // after it include every one staged up to it.
        let (pool_id, pool_kind, origin_type, cap, trial, payg, ready_nodes, generation): Row = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT p.id, p.kind, p.origin_type, t.node_capacity_mbps, t.trial_cap_mbps, t.payg_cap_mbps,
                        (SELECT COUNT(*) FROM nodes r WHERE r.pool_id = p.id AND r.state = 'ready'), p.config_generation
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
                 WHERE a.id IN (SELECT m.account_id FROM account_pool_mappings m WHERE m.pool_id = $1
                                UNION SELECT s.id FROM accounts s WHERE s.staged_pool_id = $1
                                UNION SELECT m.account_id FROM account_pool_mappings m
                                      WHERE m.previous_pool_id = $1 AND m.moved_at > $2)
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
            generation,
            accounts,
        })
    }
}

impl Store {
    /// Records the configuration a node fetched at `now` (and applies at once):
    /// its version, and the pool's generation it was built at.
    pub async fn set_config_fetched(&self, id: Uuid, version: i64, generation: i64, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "UPDATE nodes SET config_version = $2, config_fetched_version = $2, config_generation = $3,
                     config_fetched_at = $4
                 WHERE id = $1",
            )
            .bind(id)
            .bind(version)
            .bind(generation)
            .bind(now)
            .execute(p)
            .await?;
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

    /// The ready nodes of the pool an account is staged to (else its pool), with
    /// the configuration each runs (see [`NodeConfigState`]).
    pub async fn account_node_configs(&self, account_id: Uuid) -> Result<Vec<NodeConfigState>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT n.id, n.config_version AS running, n.config_fetched_version AS fetched,
                        n.config_generation AS fetched_generation, a.staged_generation
                 FROM accounts a LEFT JOIN account_pool_mappings m ON m.account_id = a.id
                 JOIN nodes n ON n.pool_id = COALESCE(a.staged_pool_id, m.pool_id)
                 WHERE a.id = $1 AND n.state = 'ready' ORDER BY n.id",
            )
            .bind(account_id)
            .fetch_all(p)
            .await?)
        })
    }
}

/// [`Store::record_heartbeats`] on PostgreSQL: the whole batch in three
/// statements (the states before, the nodes' latest, the probe history) over
/// arrays, not three a heartbeat. One statement a heartbeat, each a round trip,
/// kept the writer busy for most of every second at a thousand nodes, and
/// heartbeats waited in its queue long enough for nodes to count as silent.
async fn record_heartbeats_postgres(p: &sqlx::PgPool, batch: &[(Uuid, HeartbeatRecord, UnixMs)]) -> Result<()> {
    let mut tx = p.begin().await?;
    let ids: Vec<Uuid> = batch.iter().map(|(id, _, _)| *id).collect();
    let known: Vec<(Uuid, NodeState)> =
        sqlx::query_as("SELECT id, state FROM nodes WHERE id = ANY($1)").bind(&ids).fetch_all(&mut *tx).await?;
    let mut states: std::collections::HashMap<Uuid, NodeState> = known.into_iter().collect();
    // Each node's state after its heartbeats in order; its latest heartbeat;
    // every heartbeat's probe.
    let mut latest: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    let mut changes = Vec::new();
    let mut probes = Vec::new();
    for (i, (id, hb, now)) in batch.iter().enumerate() {
        let Some(before) = states.get(id).copied() else { continue };
        let after = before.after_heartbeat(hb.state);
        if after != before {
            changes.push((*id, *now, before, after));
        }
        states.insert(*id, after);
        latest.insert(*id, i);
        probes.push(i);
    }
    let mut rows: Vec<(Uuid, usize)> = latest.into_iter().collect();
    rows.sort_unstable();
    let node_ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let node_states: Vec<&str> = rows.iter().map(|(id, _)| states[id].as_str()).collect();
    let addresses: Vec<&str> = rows.iter().map(|(_, i)| batch[*i].1.address.as_str()).collect();
    let images: Vec<&str> = rows.iter().map(|(_, i)| batch[*i].1.image_version.as_str()).collect();
    let at: Vec<i64> = rows.iter().map(|(_, i)| batch[*i].2).collect();
    let egress: Vec<f64> = rows.iter().map(|(_, i)| batch[*i].1.egress_mbps).collect();
    let connections: Vec<i64> = rows.iter().map(|(_, i)| batch[*i].1.open_connections).collect();
    let hit_ratio: Vec<f64> = rows.iter().map(|(_, i)| batch[*i].1.cache_hit_ratio).collect();
    let config: Vec<i64> = rows.iter().map(|(_, i)| batch[*i].1.config_version).collect();
    let tls: Vec<Option<String>> = rows.iter().map(|(_, i)| batch[*i].1.tls_address.clone()).collect();
    // The verdict is applied in the statement too: a node stopped or failed by
    // another transaction since the read above stays so. A heartbeat received
    // before the node's last configuration fetch (and written after it) does not
    // undo what the fetch recorded.
    sqlx::query(
        "UPDATE nodes n SET state = CASE WHEN n.state IN ('failed', 'stopped', 'draining') THEN n.state ELSE h.state END,
             address = h.address, image_version = h.image_version, last_heartbeat = h.at, egress_mbps = h.egress,
             open_connections = h.connections, cache_hit_ratio = h.hit_ratio, updated_at = h.at, tls_address = h.tls,
             config_version = CASE WHEN n.config_fetched_at IS NOT NULL AND h.at <= n.config_fetched_at
                                   THEN n.config_version ELSE h.config END
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::float8[], $7::int8[],
                     $8::float8[], $9::int8[], $10::text[])
              AS h(id, state, address, image_version, at, egress, connections, hit_ratio, config, tls)
         WHERE n.id = h.id",
    )
    .bind(&node_ids)
    .bind(&node_states)
    .bind(&addresses)
    .bind(&images)
    .bind(&at)
    .bind(&egress)
    .bind(&connections)
    .bind(&hit_ratio)
    .bind(&config)
    .bind(&tls)
    .execute(&mut *tx)
    .await?;
    let probe_ids: Vec<Uuid> = probes.iter().map(|i| batch[*i].0).collect();
    let probe_at: Vec<i64> = probes.iter().map(|i| batch[*i].2).collect();
    let ok: Vec<bool> = probes.iter().map(|i| batch[*i].1.probe_ok).collect();
    let latency: Vec<i32> = probes.iter().map(|i| batch[*i].1.probe_latency_ms).collect();
    let detail: Vec<Option<String>> = probes.iter().map(|i| batch[*i].1.probe_error.clone()).collect();
    sqlx::query(
        "INSERT INTO probes (node_id, at, source, ok, latency_ms, detail)
         SELECT u.id, u.at, 'self', u.ok, u.latency, u.detail
         FROM UNNEST($1::uuid[], $2::int8[], $3::bool[], $4::int4[], $5::text[]) AS u(id, at, ok, latency, detail)",
    )
    .bind(&probe_ids)
    .bind(&probe_at)
    .bind(&ok)
    .bind(&latency)
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    for (id, now, before, after) in changes {
        event!(tx, now, format!("node:{id}"), "node.state", format!("node:{id}"), format!("{before} -> {after}"))?;
    }
    tx.commit().await?;
    Ok(())
}
