//! Usage: bytes and requests per account per minute, reported by nodes (test
//! content excluded).

use uuid::Uuid;

use super::{BeginWrite, Result, Store, on_pool};
use crate::clock::UnixMs;

/// One minute of usage of one account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub window_start: UnixMs,
    pub bytes: i64,
    pub requests: i64,
}

impl Store {
    /// Adds a node's usage report. Only accounts mapped to the node's pool count;
    /// returns how many windows were refused for naming other accounts.
    pub async fn record_usage(&self, node_id: Uuid, windows: &[(String, UnixMs, i64, i64)]) -> Result<usize> {
        let mut refused = 0;
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            for (account, window_start, bytes, requests) in windows {
                let account_id: Option<Uuid> = sqlx::query_scalar(
                    "SELECT a.id FROM accounts a JOIN account_pool_mappings m ON m.account_id = a.id
                     JOIN nodes n ON n.pool_id = m.pool_id OR n.pool_id = m.previous_pool_id OR n.pool_id = a.staged_pool_id
                     WHERE a.name = $1 AND n.id = $2",
                )
                .bind(account)
                .bind(node_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(account_id) = account_id else {
                    refused += 1;
                    continue;
                };
                sqlx::query(
                    "INSERT INTO usage (account_id, window_start, bytes, requests) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (account_id, window_start) DO UPDATE
                     SET bytes = usage.bytes + excluded.bytes, requests = usage.requests + excluded.requests",
                )
                .bind(account_id)
                .bind(window_start)
                .bind(bytes)
                .bind(requests)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(refused)
    }

    /// An account's usage per minute in `[from, to)`.
    pub async fn usage(&self, account_id: Uuid, from: UnixMs, to: UnixMs) -> Result<Vec<UsageRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT window_start, bytes, requests FROM usage WHERE account_id = $1 AND window_start >= $2 AND window_start < $3
                 ORDER BY window_start",
            )
            .bind(account_id)
            .bind(from)
            .bind(to)
            .fetch_all(p)
            .await?)
        })
    }
}
