//! Who may fetch an account's content: its signed-playback settings (whether a
//! token is required, the keys tokens are signed with, sealed) and its CDN's
//! secrets (hashed).

use sqlx::types::Json;
use uuid::Uuid;

use super::{CdnSecret, Result, Store, StoreError, StoredCertificate, StoredKey, on_pool};
use crate::clock::UnixMs;

impl Store {
    /// Replaces the account's playback settings, if they are still `expected`
    /// (required, keys; read before): a concurrent change wins and this one is
    /// refused (`InvalidState`), so no key and no requirement is lost to a race.
    pub async fn set_playback(
        &self,
        account: Uuid,
        expected: (bool, &[StoredKey]),
        required: bool,
        keys: &[StoredKey],
        now: UnixMs,
    ) -> Result<()> {
        // The same JSON text as stored (SQLite compares text; PostgreSQL jsonb).
        let done = on_pool!(self, |p| {
            sqlx::query(
                "UPDATE accounts SET playback_required = $2, playback_keys = $3, updated_at = $4
                 WHERE id = $1 AND state <> 'deleted' AND playback_keys = $5 AND playback_required = $6",
            )
            .bind(account)
            .bind(required)
            .bind(Json(keys))
            .bind(now)
            .bind(Json(expected.1))
            .bind(expected.0)
            .execute(p)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::InvalidState("the account's playback keys changed meanwhile; try again".into()));
        }
        Ok(())
    }

    /// Sets (or with `None` removes) the account's own domain and certificate;
    /// a domain another account holds is a `Conflict` on `custom_domain`.
    pub async fn set_custom_domain(&self, account: Uuid, cert: Option<&StoredCertificate>, now: UnixMs) -> Result<()> {
        let done = on_pool!(self, |p| {
            sqlx::query(
                "UPDATE accounts SET custom_domain = $2, custom_certificate = $3, updated_at = $4
                 WHERE id = $1 AND state <> 'deleted'",
            )
            .bind(account)
            .bind(cert.map(|c| c.name.clone()))
            .bind(cert.map(Json))
            .bind(now)
            .execute(p)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces the account's CDN secrets, if they are still `expected`.
    pub async fn set_cdn_secrets(
        &self,
        account: Uuid,
        expected: &[CdnSecret],
        secrets: &[CdnSecret],
        now: UnixMs,
    ) -> Result<()> {
        let done = on_pool!(self, |p| {
            sqlx::query(
                "UPDATE accounts SET cdn_secrets = $2, updated_at = $3
                 WHERE id = $1 AND state <> 'deleted' AND cdn_secrets = $4",
            )
            .bind(account)
            .bind(Json(secrets))
            .bind(now)
            .bind(Json(expected))
            .execute(p)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::InvalidState("the account's CDN secrets changed meanwhile; try again".into()));
        }
        Ok(())
    }
}
