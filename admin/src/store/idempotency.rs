//! Saved responses for `Idempotency-Key`: the first request with a key runs and its
//! response is kept; a repeat with the same body gets the same response back.

use super::{Result, Store, StoreError, on_pool};
use crate::clock::UnixMs;

/// How long an `Idempotency-Key` is remembered (as Stripe does, a day).
pub const IDEMPOTENCY_TTL_MS: i64 = 86_400_000;

/// What to do with a request that carries an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// First use of the key: run the request, then [`Store::finish_idempotent`].
    Run,
    /// Seen before with the same request: answer with this.
    Replay { status: u16, body: String },
    /// Seen before with a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

impl Store {
    /// Starts a request with an idempotency key: a key first seen, or last used
    /// before `expired_before` (forgotten), runs.
    pub async fn start_idempotent(
        &self,
        principal: &str,
        key: &str,
        request_hash: &[u8],
        now: UnixMs,
        expired_before: UnixMs,
    ) -> Result<IdempotencyStart> {
        let inserted = on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, body, created_at)
                 VALUES ($1, $2, $3, 0, '', $4)
                 ON CONFLICT (principal, key) DO UPDATE SET request_hash = excluded.request_hash, status = 0,
                     body = '', created_at = excluded.created_at
                 WHERE idempotency_keys.created_at < $5",
            )
            .bind(principal)
            .bind(key)
            .bind(request_hash)
            .bind(now)
            .bind(expired_before)
            .execute(p)
            .await?
            .rows_affected()
        });
        if inserted == 1 {
            return Ok(IdempotencyStart::Run);
        }
        let (hash, status, body): (Vec<u8>, i32, String) = on_pool!(self, |p| {
            sqlx::query_as("SELECT request_hash, status, body FROM idempotency_keys WHERE principal = $1 AND key = $2")
                .bind(principal)
                .bind(key)
                .fetch_one(p)
                .await?
        });
        Ok(if hash != request_hash {
            IdempotencyStart::Mismatch
        } else if status == 0 {
            IdempotencyStart::InFlight
        } else {
            IdempotencyStart::Replay { status: u16::try_from(status).map_err(|_| StoreError::NotFound)?, body }
        })
    }

    /// Saves the response of a request that ran; a server error forgets the key
    /// instead, so the client's retry runs again.
    pub async fn finish_idempotent(&self, principal: &str, key: &str, status: u16, body: &str) -> Result<()> {
        on_pool!(self, |p| {
            if status >= 500 {
                sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2")
                    .bind(principal)
                    .bind(key)
                    .execute(p)
                    .await?;
            } else {
                sqlx::query("UPDATE idempotency_keys SET status = $3, body = $4 WHERE principal = $1 AND key = $2")
                    .bind(principal)
                    .bind(key)
                    .bind(i32::from(status))
                    .bind(body)
                    .execute(p)
                    .await?;
            }
        });
        Ok(())
    }

    /// Forgets idempotency records made before `before`.
    pub async fn forget_idempotency_keys(&self, before: UnixMs) -> Result<u64> {
        on_pool!(self, |p| {
            Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(before)
                .execute(p)
                .await?
                .rows_affected())
        })
    }
}
