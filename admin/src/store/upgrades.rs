//! Rolling upgrades in the store: which pools of an origin type run an image, and
//! moving them to a new one a few at a time. The reconciler does the per-node work
//! (a node on the new image up, then one old node drained); this decides which
//! pools are being upgraded and when an upgrade is done or must halt.

use serde::Serialize;
use sqlx::types::Json;
use uuid::Uuid;

use super::{BeginWrite, ImageRow, Result, Store, event, on_pool};
use crate::clock::UnixMs;

/// Failed nodes on the new image, in one pool, that halt an upgrade.
pub const HALT_AFTER_FAILED_NODES: i64 = 2;

/// Where an upgrade stands, as shown on its operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpgradeProgress {
    pub version: String,
    pub pools_total: usize,
    pub pools_done: usize,
    pub in_progress: Vec<Uuid>,
    /// Why the upgrade stopped, when it did.
    pub halted: Option<String>,
}

impl UpgradeProgress {
    pub fn finished(&self) -> bool {
        self.halted.is_none() && self.pools_done == self.pools_total
    }
}

#[derive(sqlx::FromRow)]
struct UpgradePool {
    id: Uuid,
    image_version: Option<String>,
    /// Nodes still serving on another image.
    old_nodes: i64,
    /// Nodes on the new image that failed since the upgrade started.
    failed_new: i64,
}

impl Store {
    /// An image of an origin type.
    pub async fn image(&self, origin_type: &str, version: &str) -> Result<Option<ImageRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT origin_type, version, command, args, created_at FROM images WHERE origin_type = $1 AND version = $2",
            )
            .bind(origin_type)
            .bind(version)
            .fetch_optional(p)
            .await?)
        })
    }

    /// One look at an upgrade of `origin_type` to `version` (started at `since`):
    /// halts it if a pool being upgraded had [`HALT_AFTER_FAILED_NODES`] nodes on
    /// the new image fail; otherwise starts the next pools, shared and unassigned
    /// ones before dedicated pools of accounts, so that at most `max_concurrent`
    /// are in progress. A pool is done when it targets `version` and no node of
    /// another image is left.
    pub async fn advance_upgrade(
        &self,
        origin_type: &str,
        version: &str,
        since: UnixMs,
        max_concurrent: usize,
        now: UnixMs,
    ) -> Result<UpgradeProgress> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let pools: Vec<UpgradePool> = sqlx::query_as(
                "SELECT p.id, p.image_version,
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state IN ('starting', 'ready', 'draining')
                           AND (n.image_version IS NULL OR n.image_version <> $2)) AS old_nodes,
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state = 'failed'
                           AND n.image_version = $2 AND n.created_at >= $3) AS failed_new
                 FROM pools p
                 WHERE p.origin_type = $1 AND p.state IN ('creating', 'ready', 'retained')
                 ORDER BY CASE WHEN p.kind = 'dedicated' AND p.account_id IS NOT NULL THEN 1 ELSE 0 END, p.id",
            )
            .bind(origin_type)
            .bind(version)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            let mut progress =
                UpgradeProgress { version: version.to_owned(), pools_total: pools.len(), ..UpgradeProgress::default() };
            let targets = |pool: &UpgradePool| pool.image_version.as_deref() == Some(version);
            for pool in pools.iter().filter(|p| targets(p)) {
                if pool.failed_new >= HALT_AFTER_FAILED_NODES {
                    progress.halted = Some(format!(
                        "{} nodes on image {version} failed in pool {}; the upgrade is halted",
                        pool.failed_new, pool.id
                    ));
                }
                if pool.old_nodes == 0 {
                    progress.pools_done += 1;
                } else {
                    progress.in_progress.push(pool.id);
                }
            }
            if progress.halted.is_none() {
                for pool in pools.iter().filter(|p| !targets(p)) {
                    if progress.in_progress.len() >= max_concurrent {
                        break;
                    }
                    sqlx::query("UPDATE pools SET image_version = $2, updated_at = $3 WHERE id = $1")
                        .bind(pool.id)
                        .bind(version)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let from = pool.image_version.as_deref().unwrap_or("the built-in image");
                    event!(
                        tx,
                        now,
                        "upgrader",
                        "pool.upgrading",
                        format!("pool:{}", pool.id),
                        format!("{from} -> {version}")
                    )?;
                    if pool.old_nodes == 0 {
                        progress.pools_done += 1;
                    } else {
                        progress.in_progress.push(pool.id);
                    }
                }
            }
            tx.commit().await?;
            Ok(progress)
        })
    }

    /// Shows how far an operation got.
    pub async fn set_progress(&self, op: Uuid, progress: &serde_json::Value, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query("UPDATE allocation_operations SET progress = $2, updated_at = $3 WHERE id = $1")
                .bind(op)
                .bind(Json(progress))
                .bind(now)
                .execute(p)
                .await?;
        });
        Ok(())
    }
}
