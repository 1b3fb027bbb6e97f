//! Warm pools in the store: dedicated pools made ready before anyone asks, with no
//! account yet (`pools.account_id` NULL), which an SLA sign-up claims at once.

use sqlx::types::Json;
use uuid::Uuid;

use super::{BeginWrite, OriginTypeRow, Result, Store, StoreError, event, on_pool, origin_type_columns};
use crate::clock::UnixMs;

/// A warm pool: its size in nodes and how many of them are ready.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WarmPool {
    pub id: Uuid,
    pub desired_nodes: i32,
    pub ready_nodes: i64,
}

impl Store {
    /// Sets (or with `None` clears) how many warm pools a type keeps.
    pub async fn set_warm_pools(
        &self,
        name: &str,
        warm: Option<&serde_json::Value>,
        actor: &str,
        now: UnixMs,
    ) -> Result<OriginTypeRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: Option<OriginTypeRow> = sqlx::query_as(concat!(
                "UPDATE origin_types SET warm_pools = $2, updated_at = $3 WHERE name = $1",
                " RETURNING ",
                origin_type_columns!()
            ))
            .bind(name)
            .bind(warm.map(Json))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.ok_or(StoreError::NotFound)?;
            let what = warm.map_or_else(|| "none".to_owned(), ToString::to_string);
            event!(tx, now, actor, "origin_type.warm_pools", format!("origin_type:{name}"), what)?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Sets how long a deactivated account's pool is kept for a type.
    pub async fn set_retention_hours(&self, name: &str, hours: i32, actor: &str, now: UnixMs) -> Result<OriginTypeRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: Option<OriginTypeRow> = sqlx::query_as(concat!(
                "UPDATE origin_types SET retention_hours = $2, updated_at = $3 WHERE name = $1",
                " RETURNING ",
                origin_type_columns!()
            ))
            .bind(name)
            .bind(hours)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.ok_or(StoreError::NotFound)?;
            event!(tx, now, actor, "origin_type.retention", format!("origin_type:{name}"), format!("{hours} hours"))?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// The warm pools of a type that are not being deleted.
    pub async fn warm_pools(&self, origin_type: &str) -> Result<Vec<WarmPool>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT p.id, p.desired_nodes,
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state = 'ready') AS ready_nodes
                 FROM pools p
                 WHERE p.origin_type = $1 AND p.kind = 'dedicated' AND p.account_id IS NULL
                   AND p.state IN ('creating', 'ready')
                 ORDER BY p.id",
            )
            .bind(origin_type)
            .fetch_all(p)
            .await?)
        })
    }

    /// Makes a warm pool of `size` nodes on the type's current image.
    pub async fn create_warm_pool(&self, origin_type: &str, size: i32, now: UnixMs) -> Result<Uuid> {
        let id = Uuid::now_v7();
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO pools (id, origin_type, kind, desired_nodes, state, image_version, created_at, updated_at)
                 VALUES ($1, $2, 'dedicated', $3, 'creating', (SELECT current_image FROM origin_types WHERE name = $2), $4, $4)",
            )
            .bind(id)
            .bind(origin_type)
            .bind(size)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            event!(
                tx,
                now,
                "warm-keeper",
                "pool.warmed",
                format!("pool:{id}"),
                format!("{size} nodes of {origin_type}")
            )?;
            tx.commit().await?;
        });
        Ok(id)
    }

    /// Releases a warm pool nobody claimed (its nodes stop); `false` if it was
    /// claimed meanwhile.
    pub async fn release_warm_pool(&self, id: Uuid, now: UnixMs) -> Result<bool> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "UPDATE pools SET state = 'deleting', desired_nodes = 0, updated_at = $2
                 WHERE id = $1 AND account_id IS NULL AND kind = 'dedicated' AND state IN ('creating', 'ready')",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if done {
                event!(tx, now, "warm-keeper", "pool.released", format!("pool:{id}"), "more warm pools than wanted")?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// SLA sign-ups of a type since `since`: (when, SLA in Mbit/s).
    pub async fn sla_signups(&self, origin_type: &str, since: UnixMs) -> Result<Vec<(UnixMs, i32)>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT created_at, sla_mbps FROM accounts
                 WHERE origin_type = $1 AND sla_mbps IS NOT NULL AND created_at >= $2 ORDER BY created_at",
            )
            .bind(origin_type)
            .bind(since)
            .fetch_all(p)
            .await?)
        })
    }
}
