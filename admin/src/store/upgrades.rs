//! Rolling upgrades in the store: which pools of an origin type run an image, and
//! moving them to a new one a few at a time. The reconciler does the per-node work
//! (a node on the new image up, then one old node drained); this decides which
//! pools are being upgraded and when an upgrade is done or must halt.
//!
//! One upgrade per origin type runs at a time: a newer upload (or a rollback)
//! supersedes the open one in the transaction that enqueues it, and moves the
//! pools the old one was rolling on to the newest image, never back.

use serde::Serialize;
use sqlx::types::Json;
use uuid::Uuid;

use super::operations::insert_operation;
use super::{BeginWrite, ImageRow, NewOperation, OperationRow, Result, Store, event, on_pool};
use crate::clock::UnixMs;

/// An upgrade operation as the worker runs it: the store checks, in the same
/// transaction as its changes, that the worker still holds it (not superseded).
#[derive(Debug, Clone, Copy)]
pub struct UpgradeStep<'a> {
    pub op: Uuid,
    pub owner: &'a str,
    pub origin_type: &'a str,
    pub version: &'a str,
    /// When the upgrade started: failures of new nodes are counted from then.
    pub since: UnixMs,
}

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
                "SELECT origin_type, version, command, args, container_image, created_at FROM images WHERE origin_type = $1 AND version = $2",
            )
            .bind(origin_type)
            .bind(version)
            .fetch_optional(p)
            .await?)
        })
    }

    /// One look at an upgrade: halts it if a pool being upgraded had
    /// [`HALT_AFTER_FAILED_NODES`] nodes on the new image fail; otherwise starts the
    /// next pools, shared and unassigned ones before dedicated pools of accounts,
    /// so that at most `max_concurrent` are in progress. A pool is done when it
    /// targets the version and no node of another image is left. `None` when the
    /// operation is no longer the worker's to run (superseded).
    pub async fn advance_upgrade(
        &self,
        step: &UpgradeStep<'_>,
        max_concurrent: usize,
        now: UnixMs,
    ) -> Result<Option<UpgradeProgress>> {
        let UpgradeStep { op, owner, origin_type, version, since } = *step;
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            // Holds the operation's row for the transaction (PostgreSQL), so a
            // newer upload that supersedes it waits for this pass, then moves the
            // pools on.
            let held = sqlx::query(
                "UPDATE allocation_operations SET updated_at = $3
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(op)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !held {
                return Ok(None);
            }
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
            Ok(Some(progress))
        })
    }

    /// Enqueues an upgrade of `origin_type` (a new image, or a rollback to an
    /// existing one): the open upgrade of the type, if any, is superseded in the
    /// same transaction (with an event), and the pools it had moved to its image go
    /// on to this one. Returns the new operation and the ones superseded.
    pub async fn enqueue_upgrade(
        &self,
        image: Option<&ImageRow>,
        op: &NewOperation,
        actor: &str,
        now: UnixMs,
    ) -> Result<(OperationRow, Vec<Uuid>)> {
        let origin_type = op.origin_type.clone().unwrap_or_default();
        let version = op.input.get("version").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            // Locks in the order an upgrade's step takes them (its operation, then
            // pools), and the events after both: a node the reconciler registers
            // on a superseded image locks its pool too, so it is registered (with
            // its event) before the pools move here, or sees the new image.
            let superseded: Vec<(Uuid, Json<serde_json::Value>)> = sqlx::query_as(
                "UPDATE allocation_operations SET state = 'superseded', lease_owner = NULL, lease_until = NULL,
                     updated_at = $3, last_error = $4
                 WHERE kind = 'upgrade' AND origin_type = $1 AND state IN ('pending', 'running') AND id <> $2
                 RETURNING id, input",
            )
            .bind(&origin_type)
            .bind(op.id)
            .bind(now)
            .bind(format!("superseded by operation {} (version {version})", op.id))
            .fetch_all(&mut *tx)
            .await?;
            let mut moves = Vec::with_capacity(superseded.len());
            for (old, input) in &superseded {
                let old_version = input.0.get("version").and_then(|v| v.as_str()).unwrap_or_default();
                // Pools on their way to the superseded image go on to this one.
                let moved = sqlx::query(
                    "UPDATE pools SET image_version = $3, updated_at = $4
                     WHERE origin_type = $1 AND image_version = $2 AND state IN ('creating', 'ready', 'retained')",
                )
                .bind(&origin_type)
                .bind(old_version)
                .bind(&version)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                moves.push((*old, old_version, moved));
            }
            if let Some(image) = image {
                sqlx::query(
                    "INSERT INTO images (origin_type, version, command, args, container_image, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&image.origin_type)
                .bind(&image.version)
                .bind(&image.command)
                .bind(Json(&image.args.0))
                .bind(&image.container_image)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let subject = format!("origin_type:{}", image.origin_type);
                event!(tx, now, actor, "image.created", &subject, format!("version {}", image.version))?;
            }
            for (old, old_version, moved) in moves {
                event!(
                    tx,
                    now,
                    actor,
                    "operation.superseded",
                    format!("operation:{old}"),
                    format!("upgrade to {old_version} superseded by operation:{} ({version})", op.id)
                )?;
                if moved > 0 {
                    event!(
                        tx,
                        now,
                        "upgrader",
                        "pool.upgrading",
                        format!("origin_type:{origin_type}"),
                        format!("{moved} pools {old_version} -> {version}")
                    )?;
                }
            }
            let row = insert_operation!(tx, op, now)?;
            event!(
                tx,
                now,
                actor,
                format!("operation.{}", op.kind),
                format!("operation:{}", row.id),
                op.input.to_string()
            )?;
            tx.commit().await?;
            Ok((row, superseded.into_iter().map(|(id, _)| id).collect()))
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
