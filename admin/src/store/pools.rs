//! Pools as the reconciler sees them: their desired size, their nodes' health,
//! scaling and the removal of released pools.

use uuid::Uuid;

use super::{BeginWrite, NodeHealthRow, Result, Store, event, on_pool};
use crate::clock::UnixMs;
use crate::states::{PoolKind, PoolState};

/// A pool as the reconciler sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PoolSpec {
    pub id: Uuid,
    pub kind: PoolKind,
    pub state: PoolState,
    pub desired_nodes: i32,
    pub node_capacity_mbps: i32,
    pub image_version: Option<String>,
    pub updated_at: UnixMs,
    pub origin_type: String,
    /// Nodes on the pool's image that failed in the last 10 minutes: at
    /// [`HALT_AFTER_FAILED_NODES`](super::HALT_AFTER_FAILED_NODES) a rolling upgrade
    /// of the pool stops launching them.
    pub failed_on_image: i64,
    /// Nodes in a row that failed before they were ready (crash loop backoff).
    pub launch_failures: i32,
    /// No node is launched before this (backing off after failures).
    pub launch_after: Option<UnixMs>,
    /// Why the pool is degraded, and since when; cleared by a node that becomes
    /// ready after that.
    pub degraded_reason: Option<String>,
    pub degraded_since: Option<UnixMs>,
    /// Why no target can take the nodes it needs now (`waiting for capacity: …`).
    pub waiting_reason: Option<String>,
}

/// The nodes that are not stopped with their health signals; the callers add
/// a pool filter and the order. The last two self-probes are read newest first
/// along `probes_node_at`: ordered by id, every probe a node ever sent was read
/// and sorted, each pass, for each node.
macro_rules! node_health {
    () => {
        "SELECT n.id, n.pool_id, n.handle, n.state, n.last_heartbeat, n.created_at, n.egress_mbps, n.upgrade_domain,
                n.image_version, n.target, t.zone, t.state AS target_state,
                (SELECT COUNT(*) FROM (SELECT ok FROM probes r WHERE r.node_id = n.id AND r.source = 'self'
                                       ORDER BY r.at DESC, r.id DESC LIMIT 2) last WHERE NOT last.ok) AS recent_probe_failures
         FROM nodes n LEFT JOIN targets t ON t.name = n.target
         WHERE n.state <> 'stopped'"
    };
}

impl Store {
    /// Pools that need nodes or still have some; failures counted from `now`.
    pub async fn pools_to_reconcile(&self, now: UnixMs) -> Result<Vec<PoolSpec>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT p.id, p.kind, p.state, p.desired_nodes, t.node_capacity_mbps, p.image_version, p.updated_at,
                        p.origin_type,
                        (SELECT COUNT(*) FROM nodes f WHERE f.pool_id = p.id AND f.state = 'failed'
                           AND f.image_version = p.image_version AND f.created_at >= $1) AS failed_on_image,
                        p.launch_failures, p.launch_after, p.degraded_reason, p.degraded_since, p.waiting_reason
                 FROM pools p JOIN origin_types t ON t.name = p.origin_type
                 WHERE p.state <> 'deleted' OR EXISTS (SELECT 1 FROM nodes n WHERE n.pool_id = p.id AND n.state IN ('starting', 'ready', 'draining'))
                 ORDER BY p.id",
            )
            .bind(now - 600_000)
            .fetch_all(p)
            .await?)
        })
    }

    /// The nodes of a pool that are not stopped, with their health signals.
    pub async fn pool_health(&self, pool_id: Uuid) -> Result<Vec<NodeHealthRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(node_health!(), " AND n.pool_id = $1 ORDER BY n.id"))
                .bind(pool_id)
                .fetch_all(p)
                .await?)
        })
    }

    /// [`pool_health`](Self::pool_health) of every pool in one read, by pool: a
    /// reconcile pass over a thousand pools is one query, not a thousand.
    pub async fn fleet_health(&self) -> Result<std::collections::HashMap<Uuid, Vec<NodeHealthRow>>> {
        let rows: Vec<NodeHealthRow> = on_pool!(self, |p| {
            sqlx::query_as(concat!(node_health!(), " ORDER BY n.pool_id, n.id")).fetch_all(p).await?
        });
        let mut by_pool: std::collections::HashMap<Uuid, Vec<NodeHealthRow>> = std::collections::HashMap::new();
        for n in rows {
            by_pool.entry(n.pool_id).or_default().push(n);
        }
        Ok(by_pool)
    }

    /// Ready nodes of the pool the account's offer calls for: its own dedicated pool
    /// for sla; for trial/payg the shared pool it is in, else the best shared pool
    /// of its type (the one it would be put in).
    pub async fn wanted_pool_ready_nodes(&self, account_id: Uuid) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT CASE WHEN a.offer = 'sla' THEN
                    (SELECT COUNT(*) FROM pools p JOIN nodes n ON n.pool_id = p.id
                     WHERE p.account_id = a.id AND p.kind = 'dedicated' AND p.state IN ('creating', 'ready', 'retained')
                       AND n.state = 'ready')
                 WHEN EXISTS (SELECT 1 FROM account_pool_mappings m JOIN pools p ON p.id = m.pool_id
                              WHERE m.account_id = a.id AND p.kind = 'shared') THEN
                    (SELECT COUNT(*) FROM account_pool_mappings m JOIN nodes n ON n.pool_id = m.pool_id
                     WHERE m.account_id = a.id AND n.state = 'ready')
                 ELSE
                    (SELECT COALESCE(MAX(c), 0) FROM (SELECT COUNT(*) AS c FROM shared_pools s JOIN nodes n ON n.pool_id = s.pool_id
                     WHERE s.origin_type = a.origin_type AND n.state = 'ready' GROUP BY s.pool_id) ready)
                 END
                 FROM accounts a WHERE a.id = $1",
            )
            .bind(account_id)
            .fetch_one(p)
            .await?)
        })
    }

    /// Deletes released pools whose nodes have all stopped (and whose grace for
    /// routers is over, `released_before`): their node rows, the nodes' probe
    /// history and router sightings, and the pool row. Returns the pools deleted.
    pub async fn purge_released_pools(&self, released_before: UnixMs, now: UnixMs) -> Result<Vec<Uuid>> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let pools: Vec<Uuid> = sqlx::query_scalar(
                "SELECT p.id FROM pools p
                 WHERE p.state = 'deleting' AND p.updated_at < $1
                   AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.pool_id = p.id AND n.state IN ('starting', 'ready', 'draining'))
                   AND NOT EXISTS (SELECT 1 FROM account_pool_mappings m WHERE m.pool_id = p.id)
                   AND NOT EXISTS (SELECT 1 FROM global_allocations g WHERE g.pool_id = p.id)
                 ORDER BY p.id",
            )
            .bind(released_before)
            .fetch_all(&mut *tx)
            .await?;
            for pool in &pools {
                let nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE pool_id = $1")
                    .bind(pool)
                    .fetch_one(&mut *tx)
                    .await?;
                for q in [
                    "DELETE FROM probes WHERE node_id IN (SELECT id FROM nodes WHERE pool_id = $1)",
                    "DELETE FROM router_sightings WHERE node_id IN (SELECT id FROM nodes WHERE pool_id = $1)",
                    "DELETE FROM nodes WHERE pool_id = $1",
                    "UPDATE account_pool_mappings SET previous_pool_id = NULL WHERE previous_pool_id = $1",
                    "UPDATE accounts SET staged_pool_id = NULL WHERE staged_pool_id = $1",
                    "DELETE FROM shared_pools WHERE pool_id = $1",
                    "DELETE FROM pools WHERE id = $1",
                ] {
                    sqlx::query(q).bind(pool).execute(&mut *tx).await?;
                }
                event!(
                    tx,
                    now,
                    "collector",
                    "pool.deleted",
                    format!("pool:{pool}"),
                    format!("{nodes} node rows removed")
                )?;
            }
            tx.commit().await?;
            Ok(pools)
        })
    }

    /// Sets a pool's desired size, with the reason in the event trail.
    pub async fn set_pool_desired(&self, pool: Uuid, nodes: i32, reason: &str, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query("UPDATE pools SET desired_nodes = $2, updated_at = $3 WHERE id = $1")
                .bind(pool)
                .bind(nodes)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            event!(tx, now, "autoscaler", "pool.scaled", format!("pool:{pool}"), format!("{nodes} nodes: {reason}"))?;
            tx.commit().await?;
            Ok(())
        })
    }
}

impl Store {
    /// Counts `count` nodes of `pool` that failed before they were ready: no launch
    /// before `launch_after`, and the pool degraded for `reason` (one
    /// `pool.degraded` event when it becomes so). Returns the failures in a row.
    pub async fn record_launch_failures(
        &self,
        pool: Uuid,
        count: i32,
        reason: &str,
        launch_after: UnixMs,
        now: UnixMs,
    ) -> Result<i32> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let was: Option<String> = sqlx::query_scalar("SELECT degraded_reason FROM pools WHERE id = $1")
                .bind(pool)
                .fetch_one(&mut *tx)
                .await?;
            let failures: i32 = sqlx::query_scalar(
                "UPDATE pools SET launch_failures = launch_failures + $5, launch_after = $2,
                     degraded_since = COALESCE(degraded_since, $4), degraded_reason = $3
                 WHERE id = $1 RETURNING launch_failures",
            )
            .bind(pool)
            .bind(launch_after)
            .bind(reason)
            .bind(now)
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            if was.is_none() {
                event!(tx, now, "reconciler", "pool.degraded", format!("pool:{pool}"), reason)?;
            }
            tx.commit().await?;
            Ok(failures)
        })
    }

    /// A node became ready after the pool degraded: launches go on at once.
    pub async fn clear_degraded(&self, pool: Uuid, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "UPDATE pools SET launch_failures = 0, launch_after = NULL, degraded_reason = NULL, degraded_since = NULL
                 WHERE id = $1 AND (degraded_since IS NOT NULL OR launch_failures > 0)",
            )
            .bind(pool)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                event!(tx, now, "reconciler", "pool.recovered", format!("pool:{pool}"), "a node became ready")?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A pool being made serves with the nodes it owes: `creating` -> `ready`.
    pub async fn mark_pool_ready(&self, pool: Uuid, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done =
                sqlx::query("UPDATE pools SET state = 'ready', updated_at = $2 WHERE id = $1 AND state = 'creating'")
                    .bind(pool)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() > 0 {
                event!(tx, now, "reconciler", "pool.ready", format!("pool:{pool}"), "its nodes are ready")?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes the failed node rows of a pool beyond its newest `keep` (with their
    /// probes), so a crash loop leaves a bounded trail. Returns how many went.
    pub async fn trim_failed_nodes(&self, pool: Uuid, keep: i64) -> Result<u64> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let old: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM nodes WHERE pool_id = $1 AND state = 'failed' AND id NOT IN
                     (SELECT id FROM nodes WHERE pool_id = $1 AND state = 'failed' ORDER BY id DESC LIMIT $2)",
            )
            .bind(pool)
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
            for id in &old {
                sqlx::query("DELETE FROM probes WHERE node_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM router_sightings WHERE node_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(old.len() as u64)
        })
    }
}
