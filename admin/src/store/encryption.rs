//! A `jit` account's encryption: the scheme its packaged answers use and the
//! secret (sealed) its assets' content keys are derived from.

use uuid::Uuid;

use super::{Result, Store, StoreError, on_pool};
use crate::clock::UnixMs;
use crate::states::{DashScheme, EncryptionScheme};

impl Store {
    /// The account's schemes (HLS's, DASH's), and whether it has a content
    /// secret yet.
    pub async fn encryption(&self, account: Uuid) -> Result<(EncryptionScheme, DashScheme, bool)> {
        let (scheme, dash, secret): (EncryptionScheme, DashScheme, Option<String>) = on_pool!(self, |p| {
            sqlx::query_as("SELECT encryption, dash_encryption, content_secret FROM accounts WHERE id = $1")
                .bind(account)
                .fetch_optional(p)
                .await?
                .ok_or(StoreError::NotFound)?
        });
        Ok((scheme, dash, secret.is_some()))
    }

    /// Sets the account's schemes; `sealed_secret` becomes its content secret if
    /// it has none (a secret once made is kept, so keys stay the same when
    /// encryption is turned off and on again).
    pub async fn set_encryption(
        &self,
        account: Uuid,
        (scheme, dash): (EncryptionScheme, DashScheme),
        sealed_secret: &str,
        now: UnixMs,
    ) -> Result<()> {
        let done = on_pool!(self, |p| {
            sqlx::query(
                "UPDATE accounts SET encryption = $2, dash_encryption = $3, content_secret = COALESCE(content_secret, $4),
                        updated_at = $5
                 WHERE id = $1 AND state <> 'deleted'",
            )
            .bind(account)
            .bind(scheme)
            .bind(dash)
            .bind(sealed_secret)
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
}
