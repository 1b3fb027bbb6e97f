//! Leases: a named right held by one admin replica until it expires or is renewed,
//! so one replica runs the control loops (reconciler, warm keeper, collector)
//! while every replica serves the API.

use super::{Result, Store, on_pool};
use crate::clock::UnixMs;

impl Store {
    /// Takes or renews lease `name` for `holder` until `now + ttl_ms`: it succeeds
    /// when nobody holds the lease, `holder` already does, or the holder's lease
    /// expired. Returns whether `holder` holds it now.
    pub async fn acquire_lease(&self, name: &str, holder: &str, now: UnixMs, ttl_ms: i64) -> Result<bool> {
        let taken = on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE leases.holder = excluded.holder OR leases.until < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(now + ttl_ms)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(taken == 1)
    }

    /// Gives lease `name` up if `holder` has it, so another replica takes it at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Who holds lease `name` at `now`, if anyone.
    pub async fn lease_holder(&self, name: &str, now: UnixMs) -> Result<Option<String>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1 AND until >= $2")
                .bind(name)
                .bind(now)
                .fetch_optional(p)
                .await?)
        })
    }
}
