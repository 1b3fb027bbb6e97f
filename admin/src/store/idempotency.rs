//! Saved responses for `Idempotency-Key`: the first request with a key runs and its
//! response is kept; a repeat with the same body gets the same response back.

use super::{Result, Store, StoreError, on_pool};
use crate::clock::UnixMs;

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
    pub async fn start_idempotent(
        &self,
        principal: &str,
        key: &str,
        request_hash: &[u8],
        now: UnixMs,
    ) -> Result<IdempotencyStart> {
        let inserted = on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, body, created_at)
                 VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (principal, key) DO NOTHING",
            )
            .bind(principal)
            .bind(key)
            .bind(request_hash)
            .bind(now)
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
}
