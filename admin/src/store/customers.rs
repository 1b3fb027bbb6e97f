//! Customers and their API keys.

use uuid::Uuid;

use super::{ApiKeyRow, BeginWrite, CustomerRow, Result, Store, StoreError, event, on_pool};
use crate::clock::UnixMs;
use crate::keys::NewKey;

impl Store {
    /// Creates a customer with its first API key.
    pub async fn create_customer(&self, name: &str, email: &str, key: &NewKey, now: UnixMs) -> Result<CustomerRow> {
        let id = Uuid::now_v7();
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: CustomerRow = sqlx::query_as(
                "INSERT INTO customers (id, name, email, created_at) VALUES ($1, $2, $3, $4)
                 RETURNING id, name, email, created_at",
            )
            .bind(id)
            .bind(name)
            .bind(email)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO api_keys (id, customer_id, secret_hash, created_at) VALUES ($1, $2, $3, $4)")
                .bind(key.id)
                .bind(id)
                .bind(&key.secret_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            event!(tx, now, format!("customer:{id}"), "customer.created", format!("customer:{id}"), "sign-up")?;
            tx.commit().await?;
            Ok(row)
        })
    }

    pub async fn customer(&self, id: Uuid) -> Result<CustomerRow> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as("SELECT id, name, email, created_at FROM customers WHERE id = $1")
                .bind(id)
                .fetch_one(p)
                .await?)
        })
    }

    /// The key row for a key id, revoked or not.
    pub async fn api_key(&self, id: Uuid) -> Result<Option<ApiKeyRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, customer_id, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(p)
            .await?)
        })
    }

    pub async fn api_keys(&self, customer_id: Uuid) -> Result<Vec<ApiKeyRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, customer_id, secret_hash, created_at, revoked_at FROM api_keys
                 WHERE customer_id = $1 ORDER BY id",
            )
            .bind(customer_id)
            .fetch_all(p)
            .await?)
        })
    }

    pub async fn add_api_key(&self, customer_id: Uuid, key: &NewKey, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query("INSERT INTO api_keys (id, customer_id, secret_hash, created_at) VALUES ($1, $2, $3, $4)")
                .bind(key.id)
                .bind(customer_id)
                .bind(&key.secret_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let who = format!("customer:{customer_id}");
            event!(tx, now, &who, "api_key.created", format!("api_key:{}", key.id), "requested by the customer")?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Revokes one of the customer's keys; `NotFound` when the key is not theirs or
    /// already revoked.
    pub async fn revoke_api_key(&self, customer_id: Uuid, key_id: Uuid, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND customer_id = $3 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(key_id)
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            let who = format!("customer:{customer_id}");
            event!(tx, now, &who, "api_key.revoked", format!("api_key:{key_id}"), "requested by the customer")?;
            tx.commit().await?;
            Ok(())
        })
    }
}
