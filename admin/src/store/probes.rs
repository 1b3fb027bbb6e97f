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
