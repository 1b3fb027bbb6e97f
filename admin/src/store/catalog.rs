//! Operator-side tables: origin types and images, and the read-only views of pools,
//! nodes, the global allocation table and the event trail.

use uuid::Uuid;

use super::{
    AllocationRow, BeginWrite, EventRow, NodeRow, OriginTypeRow, PoolRow, Result, Store, StoreError, event, on_pool,
    origin_type_columns,
};
use crate::clock::UnixMs;

/// The settings of an origin type that an operator can set.
#[derive(Debug, Clone)]
pub struct OriginTypeSettings {
    pub node_capacity_mbps: i32,
    pub sla_increment_mbps: i32,
    pub trial_cap_mbps: i32,
    pub payg_cap_mbps: i32,
    /// The largest SLA one account may buy.
    pub max_sla_mbps: i32,
}

/// The types every installation starts with: HLS and DASH from pre-packaged
/// content, and `jit`, packaged from MP4 files on request.
pub const BUILTIN_TYPES: [&str; 3] = ["hls", "dash", JIT_TYPE];

/// The origin type whose nodes package HLS and DASH from MP4 files on request.
pub const JIT_TYPE: &str = "jit";

impl OriginTypeSettings {
    pub const DEFAULT: Self = Self {
        node_capacity_mbps: 100,
        sla_increment_mbps: 100,
        trial_cap_mbps: 10,
        payg_cap_mbps: 50,
        max_sla_mbps: 1000,
    };
}

impl Store {
    /// Creates the built-in origin types when missing; leaves existing ones alone.
    pub async fn seed_builtin_types(&self, now: UnixMs) -> Result<()> {
        let s = OriginTypeSettings::DEFAULT;
        for name in BUILTIN_TYPES {
            on_pool!(self, |p| {
                sqlx::query(
                    "INSERT INTO origin_types (name, node_capacity_mbps, sla_increment_mbps, trial_cap_mbps,
                         payg_cap_mbps, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(s.node_capacity_mbps)
                .bind(s.sla_increment_mbps)
                .bind(s.trial_cap_mbps)
                .bind(s.payg_cap_mbps)
                .bind(now)
                .execute(p)
                .await?;
            });
        }
        Ok(())
    }

    pub async fn origin_types(&self) -> Result<Vec<OriginTypeRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!("SELECT ", origin_type_columns!(), " FROM origin_types ORDER BY name"))
                .fetch_all(p)
                .await?)
        })
    }

    pub async fn origin_type(&self, name: &str) -> Result<Option<OriginTypeRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!("SELECT ", origin_type_columns!(), " FROM origin_types WHERE name = $1"))
                .bind(name)
                .fetch_optional(p)
                .await?)
        })
    }

    /// Creates an origin type; `Conflict` when the name is taken.
    pub async fn create_origin_type(
        &self,
        name: &str,
        s: &OriginTypeSettings,
        actor: &str,
        now: UnixMs,
    ) -> Result<OriginTypeRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row = sqlx::query_as(concat!(
                "INSERT INTO origin_types (name, node_capacity_mbps, sla_increment_mbps, trial_cap_mbps,
                     payg_cap_mbps, created_at, updated_at, max_sla_mbps) VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                " RETURNING ",
                origin_type_columns!()
            ))
            .bind(name)
            .bind(s.node_capacity_mbps)
            .bind(s.sla_increment_mbps)
            .bind(s.trial_cap_mbps)
            .bind(s.payg_cap_mbps)
            .bind(now)
            .bind(s.max_sla_mbps)
            .fetch_one(&mut *tx)
            .await?;
            event!(tx, now, actor, "origin_type.created", format!("origin_type:{name}"), "requested by the operator")?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Replaces the settings of an origin type. Changing the SLA increment is refused
    /// by the schema when an existing SLA is not a multiple of the new one.
    pub async fn update_origin_type(
        &self,
        name: &str,
        s: &OriginTypeSettings,
        actor: &str,
        now: UnixMs,
    ) -> Result<OriginTypeRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: Option<OriginTypeRow> = sqlx::query_as(concat!(
                "UPDATE origin_types SET node_capacity_mbps = $2, sla_increment_mbps = $3, trial_cap_mbps = $4,
                     payg_cap_mbps = $5, updated_at = $6, max_sla_mbps = $7 WHERE name = $1",
                " RETURNING ",
                origin_type_columns!()
            ))
            .bind(name)
            .bind(s.node_capacity_mbps)
            .bind(s.sla_increment_mbps)
            .bind(s.trial_cap_mbps)
            .bind(s.payg_cap_mbps)
            .bind(now)
            .bind(s.max_sla_mbps)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.ok_or(StoreError::NotFound)?;
            let misfits: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM accounts WHERE origin_type = $1 AND sla_mbps IS NOT NULL AND state <> 'deleted'
                   AND sla_mbps % $2 <> 0",
            )
            .bind(name)
            .bind(s.sla_increment_mbps)
            .fetch_one(&mut *tx)
            .await?;
            if misfits > 0 {
                return Err(StoreError::Constraint(format!(
                    "{misfits} account(s) have an SLA that is not a multiple of {} Mbit/s",
                    s.sla_increment_mbps
                )));
            }
            event!(tx, now, actor, "origin_type.updated", format!("origin_type:{name}"), "requested by the operator")?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Pools in id (creation) order, after `cursor`.
    pub async fn pools(&self, cursor: Option<Uuid>, limit: i64) -> Result<Vec<PoolRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT p.id, p.origin_type, p.kind, p.image_version, p.desired_nodes, p.state, p.created_at, p.updated_at,
                        p.degraded_reason, p.launch_after, p.waiting_reason,
                        (SELECT COUNT(*) FROM account_pool_mappings m WHERE m.pool_id = p.id) AS accounts,
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state = 'ready') AS ready_nodes
                 FROM pools p WHERE ($1 IS NULL OR p.id > $1) ORDER BY p.id LIMIT $2",
            )
            .bind(cursor)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    pub async fn nodes(&self, cursor: Option<Uuid>, limit: i64) -> Result<Vec<NodeRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, pool_id, handle, address, image_version, upgrade_domain, state, last_heartbeat, egress_mbps,
                        open_connections, cache_hit_ratio, created_at, updated_at, target, tls_address, cert_not_after FROM nodes WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2",
            )
            .bind(cursor)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    pub async fn allocations(&self, cursor: Option<Uuid>, limit: i64) -> Result<Vec<AllocationRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT g.account_id, a.name AS account_name, g.origin_type, g.offer, g.sla_mbps, g.pool_id, g.locator,
                        g.state, g.updated_at
                 FROM global_allocations g JOIN accounts a ON a.id = g.account_id
                 WHERE ($1 IS NULL OR g.account_id > $1) ORDER BY g.account_id LIMIT $2",
            )
            .bind(cursor)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Events, newest first, before `cursor`.
    pub async fn events(&self, cursor: Option<i64>, limit: i64) -> Result<Vec<EventRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, at, actor, action, subject, reason FROM events
                 WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
            )
            .bind(cursor)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }
}

impl Store {
    /// Events after `after`, oldest first (for a live feed).
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, at, actor, action, subject, reason FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// The newest event's id (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(id) FROM events").fetch_one(p).await?.unwrap_or(0))
        })
    }

    /// Writes one event on its own (for changes outside the store's tables).
    pub async fn record_event(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        reason: &str,
        now: UnixMs,
    ) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            event!(tx, now, actor, action, subject, reason)?;
            tx.commit().await?;
            Ok(())
        })
    }
}
