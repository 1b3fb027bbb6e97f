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

/// What became of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageRecorded {
    /// Added: this many windows were refused (another pool's account, or more
    /// bytes than the node could have sent in a minute).
    Added { refused: usize },
    /// A report with this id was added before: nothing is added again.
    Duplicate,
}

/// One window of a usage report: account, minute, bytes, requests.
pub type UsageWindowRow = (String, UnixMs, u64, u64);

/// The most bytes a node could send in one minute window at `capacity_mbps`,
/// with room for bursts at the window's edges: twice the capacity.
pub fn window_bytes_limit(capacity_mbps: i32) -> u64 {
    u64::try_from(capacity_mbps.max(1)).unwrap_or(1) * 125_000 * 60 * 2
}

impl Store {
    /// Adds a node's usage report once (a report id seen before adds nothing).
    /// Only accounts mapped to the node's pool count, and no window past what the
    /// node could send ([`window_bytes_limit`]); totals saturate instead of wrapping.
    pub async fn record_usage(
        &self,
        node_id: Uuid,
        report: Option<Uuid>,
        windows: &[UsageWindowRow],
        now: UnixMs,
    ) -> Result<UsageRecorded> {
        let mut refused = 0;
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            if let Some(report) = report {
                let fresh = sqlx::query(
                    "INSERT INTO usage_reports (node_id, report_id, received_at) VALUES ($1, $2, $3)
                     ON CONFLICT (node_id, report_id) DO NOTHING",
                )
                .bind(node_id)
                .bind(report)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !fresh {
                    return Ok(UsageRecorded::Duplicate);
                }
            }
            let capacity: Option<i32> = sqlx::query_scalar(
                "SELECT t.node_capacity_mbps FROM nodes n JOIN pools p ON p.id = n.pool_id
                 JOIN origin_types t ON t.name = p.origin_type WHERE n.id = $1",
            )
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?;
            let limit = window_bytes_limit(capacity.unwrap_or(1));
            for (account, window_start, bytes, requests) in windows {
                if *bytes > limit {
                    refused += 1;
                    continue;
                }
                let (bytes, requests) =
                    (i64::try_from(*bytes).unwrap_or(i64::MAX), i64::try_from(*requests).unwrap_or(i64::MAX));
                let account_id: Option<Uuid> = sqlx::query_scalar(
                    "SELECT a.id FROM accounts a JOIN account_pool_mappings m ON m.account_id = a.id
                     JOIN nodes n ON n.pool_id = m.pool_id OR n.pool_id = a.staged_pool_id
                       OR (n.pool_id = m.previous_pool_id AND m.moved_at > $3)
                     WHERE a.name = $1 AND n.id = $2",
                )
                .bind(account)
                .bind(node_id)
                .bind(now - crate::domain::REPORT_GRACE_MS)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(account_id) = account_id else {
                    refused += 1;
                    continue;
                };
                // Saturating sums: a total never wraps to a small number.
                sqlx::query(
                    "INSERT INTO usage (account_id, window_start, bytes, requests) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (account_id, window_start) DO UPDATE
                     SET bytes = CASE WHEN usage.bytes > 9223372036854775807 - excluded.bytes
                                      THEN 9223372036854775807 ELSE usage.bytes + excluded.bytes END,
                         requests = CASE WHEN usage.requests > 9223372036854775807 - excluded.requests
                                         THEN 9223372036854775807 ELSE usage.requests + excluded.requests END",
                )
                .bind(account_id)
                .bind(window_start)
                .bind(bytes)
                .bind(requests)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(UsageRecorded::Added { refused })
        })
    }

    /// Forgets usage report ids received before `before` (nodes resend within
    /// seconds; a day is plenty).
    pub async fn forget_usage_reports(&self, before: UnixMs) -> Result<u64> {
        on_pool!(self, |p| {
            Ok(sqlx::query("DELETE FROM usage_reports WHERE received_at < $1")
                .bind(before)
                .execute(p)
                .await?
                .rows_affected())
        })
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

/// What an account stores, for its storage quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Stored {
    /// Bytes of every file of the account.
    pub total: i64,
    /// Bytes of the file at the path asked about (0 if none).
    pub this_path: i64,
}

impl Store {
    /// The account's stored bytes, and those of the file at `path` (an upload
    /// there replaces it).
    pub async fn stored(&self, account: Uuid, path: &str) -> Result<Stored> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS total,
                        CAST(COALESCE(SUM(CASE WHEN path = $2 THEN bytes ELSE 0 END), 0) AS BIGINT) AS this_path
                 FROM stored_files WHERE account_id = $1",
            )
            .bind(account)
            .bind(path)
            .fetch_one(p)
            .await?)
        })
    }

    /// A stored file of the account that `path` would collide with: a file where
    /// `path` needs a folder (`a/b` over a file `a`), or a folder where it would
    /// be a file (`a` over `a/b`).
    pub async fn path_conflict(&self, account: Uuid, path: &str) -> Result<Option<String>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT path FROM stored_files WHERE account_id = $1
                   AND (substr(CAST($2 AS TEXT), 1, length(path) + 1) = path || '/'
                        OR substr(path, 1, length(CAST($2 AS TEXT)) + 1) = CAST($2 AS TEXT) || '/')
                 LIMIT 1",
            )
            .bind(account)
            .bind(path)
            .fetch_optional(p)
            .await?)
        })
    }

    /// Records the file an upload wrote (replacing what was at `path`).
    pub async fn record_stored_file(&self, account: Uuid, path: &str, bytes: i64, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO stored_files (account_id, path, bytes, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id, path) DO UPDATE SET bytes = excluded.bytes, updated_at = excluded.updated_at",
            )
            .bind(account)
            .bind(path)
            .bind(bytes)
            .bind(now)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Forgets the files of an asset that was deleted.
    pub async fn forget_stored_asset(&self, account: Uuid, asset: &str) -> Result<u64> {
        on_pool!(self, |p| {
            Ok(sqlx::query(
                "DELETE FROM stored_files WHERE account_id = $1
                   AND substr(path, 1, length(CAST($2 AS TEXT)) + 1) = CAST($2 AS TEXT) || '/'",
            )
            .bind(account)
            .bind(asset)
            .execute(p)
            .await?
            .rows_affected())
        })
    }
}
