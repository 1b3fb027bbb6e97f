//! Access logs: the records routers and nodes send, kept per account for its owner until
//! their retention is over.

use std::collections::HashMap;

use uuid::Uuid;

use super::{BeginWrite, Result, Store, on_pool};
use crate::clock::UnixMs;

/// One stored access record: its id (the page cursor) and the record as sent (JSON).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessLogRow {
    pub id: i64,
    pub record: String,
}

/// What became of a batch of access records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogsRecorded {
    /// Kept, but for this many records of accounts admin does not have.
    Added { kept: usize, refused: usize },
    /// A batch with this id from this source was kept before: nothing is added again.
    Duplicate,
}

impl Store {
    /// Keeps a batch of records (account name, time, the record's JSON) from
    /// `source` once: a batch id seen before adds nothing. A node's records
    /// (`node` given) are kept only for accounts its pool serves (or served,
    /// up to `REPORT_GRACE_MS` after a move), as its usage is.
    pub async fn record_access_logs(
        &self,
        source: &str,
        node: Option<Uuid>,
        batch: Uuid,
        records: &[(String, UnixMs, String)],
        now: UnixMs,
    ) -> Result<AccessLogsRecorded> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            // Ids in commit order, as followers read `id > cursor`: PostgreSQL
            // hands a sequence's ids out at insert, so two batches at once
            // could commit a lower id after a higher one was read. (SQLite's
            // write transactions are one at a time already.)
            if matches!(self.backend, super::Backend::Postgres(_)) {
                sqlx::query("SELECT pg_advisory_xact_lock(7401020)").execute(&mut *tx).await?;
            }
            let fresh = sqlx::query(
                "INSERT INTO access_log_batches (source, batch_id, received_at) VALUES ($1, $2, $3)
                 ON CONFLICT (source, batch_id) DO NOTHING",
            )
            .bind(source)
            .bind(batch)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(AccessLogsRecorded::Duplicate);
            }
            let mut ids: HashMap<&str, Option<Uuid>> = HashMap::new();
            let (mut kept, mut refused) = (0, 0);
            for (account, at, record) in records {
                let id = match ids.get(account.as_str()) {
                    Some(id) => *id,
                    None => {
                        let id: Option<Uuid> =
                            match node {
                                None => {
                                    sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1 AND state <> 'deleted'")
                                        .bind(account)
                                        .fetch_optional(&mut *tx)
                                        .await?
                                }
                                Some(node) => sqlx::query_scalar(
                                    "SELECT a.id FROM accounts a JOIN account_pool_mappings m ON m.account_id = a.id
                                     JOIN nodes n ON n.pool_id = m.pool_id OR n.pool_id = a.staged_pool_id
                                       OR (n.pool_id = m.previous_pool_id AND m.moved_at > $3)
                                     WHERE a.name = $1 AND n.id = $2 AND a.state <> 'deleted'",
                                )
                                .bind(account)
                                .bind(node)
                                .bind(now - crate::domain::REPORT_GRACE_MS)
                                .fetch_optional(&mut *tx)
                                .await?,
                            };
                        ids.insert(account, id);
                        id
                    }
                };
                let Some(id) = id else {
                    refused += 1;
                    continue;
                };
                sqlx::query("INSERT INTO access_logs (account_id, at, record) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(at)
                    .bind(record)
                    .execute(&mut *tx)
                    .await?;
                kept += 1;
            }
            tx.commit().await?;
            Ok(AccessLogsRecorded::Added { kept, refused })
        })
    }

    /// An account's records at or after `since`, after the record `after`,
    /// oldest first.
    pub async fn access_logs(&self, account: Uuid, since: UnixMs, after: i64, limit: i64) -> Result<Vec<AccessLogRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, record FROM access_logs WHERE account_id = $1 AND at >= $2 AND id > $3
                 ORDER BY id LIMIT $4",
            )
            .bind(account)
            .bind(since)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Forgets records older than `before`, and batch ids received before `batches_before`.
    pub async fn forget_access_logs(&self, before: UnixMs, batches_before: UnixMs) -> Result<u64> {
        on_pool!(self, |p| {
            sqlx::query("DELETE FROM access_log_batches WHERE received_at < $1")
                .bind(batches_before)
                .execute(p)
                .await?;
            Ok(sqlx::query("DELETE FROM access_logs WHERE at < $1").bind(before).execute(p).await?.rows_affected())
        })
    }
}
