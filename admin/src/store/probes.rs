//! Probes of nodes' test content (admin's and the nodes' own) and the
//! availability of accounts computed from them.

use uuid::Uuid;

use super::{Result, Store, on_pool};
use crate::clock::UnixMs;

impl Store {
    /// Nodes that should be serving, with their addresses.
    pub async fn probe_targets(&self) -> Result<Vec<(Uuid, String)>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, address FROM nodes WHERE state IN ('starting', 'ready') AND address IS NOT NULL ORDER BY id",
            )
            .fetch_all(p)
            .await?)
        })
    }

    pub async fn record_probe(
        &self,
        node: Uuid,
        source: &str,
        ok: bool,
        latency_ms: i32,
        detail: Option<&str>,
        now: UnixMs,
    ) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO probes (node_id, at, source, ok, latency_ms, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(node)
            .bind(now)
            .bind(source)
            .bind(ok)
            .bind(latency_ms)
            .bind(detail)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Per live account: the share of admin's probes of its pool's nodes since
    /// `since` that succeeded (accounts with no probes in the window are absent).
    pub async fn availabilities(&self, since: UnixMs) -> Result<Vec<(String, f64)>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT a.name, CAST(AVG(CASE WHEN r.ok THEN 1.0 ELSE 0.0 END) AS DOUBLE PRECISION) AS availability
                 FROM accounts a JOIN account_pool_mappings m ON m.account_id = a.id
                 JOIN nodes n ON n.pool_id = m.pool_id JOIN probes r ON r.node_id = n.id
                 WHERE a.state <> 'deleted' AND r.source = 'admin' AND r.at >= $1
                 GROUP BY a.name ORDER BY a.name",
            )
            .bind(since)
            .fetch_all(p)
            .await?)
        })
    }

    /// One account's availability since `since`.
    pub async fn availability(&self, account_id: Uuid, since: UnixMs) -> Result<Option<f64>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT CAST(AVG(CASE WHEN r.ok THEN 1.0 ELSE 0.0 END) AS DOUBLE PRECISION) FROM account_pool_mappings m
                 JOIN nodes n ON n.pool_id = m.pool_id JOIN probes r ON r.node_id = n.id
                 WHERE m.account_id = $1 AND r.source = 'admin' AND r.at >= $2",
            )
            .bind(account_id)
            .bind(since)
            .fetch_one(p)
            .await?)
        })
    }
}

/// What `/metrics` reports of the fleet, read at each scrape.
#[derive(Debug, Default)]
pub struct FleetGauges {
    /// Live pools: id, desired nodes, ready nodes.
    pub pools: Vec<(Uuid, i64, i64)>,
    /// SLA accounts: name, SLA in Mbit/s, capacity of their ready nodes in Mbit/s.
    pub slas: Vec<(String, i64, i64)>,
    /// Every origin type, and whether its newest upgrade failed (halted).
    pub upgrades: Vec<(String, bool)>,
}

impl Store {
    pub async fn fleet_gauges(&self) -> Result<FleetGauges> {
        on_pool!(self, |p| {
            let pools = sqlx::query_as(
                "SELECT p.id, CAST(p.desired_nodes AS BIGINT),
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state = 'ready')
                 FROM pools p WHERE p.state IN ('creating', 'ready') ORDER BY p.id",
            )
            .fetch_all(p)
            .await?;
            let slas = sqlx::query_as(
                "SELECT a.name, CAST(a.sla_mbps AS BIGINT),
                        CAST(t.node_capacity_mbps AS BIGINT) *
                        (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = m.pool_id AND n.state = 'ready')
                 FROM accounts a JOIN account_pool_mappings m ON m.account_id = a.id
                 JOIN origin_types t ON t.name = a.origin_type
                 WHERE a.state = 'active' AND a.offer = 'sla' AND a.sla_mbps IS NOT NULL ORDER BY a.name",
            )
            .fetch_all(p)
            .await?;
            let upgrades = sqlx::query_as(
                "SELECT t.name, EXISTS (SELECT 1 FROM allocation_operations o
                        WHERE o.kind = 'upgrade' AND o.origin_type = t.name AND o.state = 'failed'
                          AND o.created_at = (SELECT MAX(l.created_at) FROM allocation_operations l
                                              WHERE l.kind = 'upgrade' AND l.origin_type = t.name))
                 FROM origin_types t ORDER BY t.name",
            )
            .fetch_all(p)
            .await?;
            Ok(FleetGauges { pools, slas, upgrades })
        })
    }
}
