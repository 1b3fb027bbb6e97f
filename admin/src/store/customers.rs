//! Customers and their API keys.

use uuid::Uuid;

use super::{ApiKeyRow, BeginWrite, CustomerRow, Result, Store, StoreError, event, on_pool};

/// The columns of a [`CustomerRow`].
macro_rules! customer_columns {
    () => {
        "id, name, email, created_at, max_accounts, max_total_sla_mbps, max_sla_mbps, max_storage_bytes"
    };
}

/// The quotas an operator sets for one customer; `None` is the default (admin's
/// flags, or the origin type's largest SLA).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaOverrides {
    pub max_accounts: Option<i32>,
    pub max_total_sla_mbps: Option<i32>,
    pub max_sla_mbps: Option<i32>,
    pub max_storage_bytes: Option<i64>,
}

/// What a customer holds against its quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct QuotaUse {
    /// Accounts not deleted.
    pub accounts: i64,
    /// The SLAs of its serving (not deactivated) accounts, in Mbit/s.
    pub total_sla_mbps: i64,
    /// Bytes its accounts store.
    pub storage_bytes: i64,
}

/// The limits an account change is checked against, inside its transaction.
#[derive(Debug, Clone, Copy)]
pub struct AccountLimits {
    pub max_accounts: i64,
    pub max_total_sla_mbps: i64,
}

impl AccountLimits {
    /// For changes no quota applies to (the collector deleting an account).
    pub const NONE: Self = Self { max_accounts: i64::MAX, max_total_sla_mbps: i64::MAX };
}
use crate::clock::UnixMs;
use crate::keys::NewKey;

impl Store {
    /// Creates a customer with its first API key.
    pub async fn create_customer(&self, name: &str, email: &str, key: &NewKey, now: UnixMs) -> Result<CustomerRow> {
        let id = Uuid::now_v7();
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: CustomerRow = sqlx::query_as(concat!(
                "INSERT INTO customers (id, name, email, created_at) VALUES ($1, $2, $3, $4) RETURNING ",
                customer_columns!()
            ))
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
            Ok(sqlx::query_as(concat!("SELECT ", customer_columns!(), " FROM customers WHERE id = $1"))
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

    /// Customers in id (sign-up) order, after `cursor`.
    pub async fn customers(&self, cursor: Option<Uuid>, limit: i64) -> Result<Vec<CustomerRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(
                "SELECT ",
                customer_columns!(),
                " FROM customers WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2"
            ))
            .bind(cursor)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Sets a customer's quota overrides (the operator's), with an event.
    pub async fn set_quotas(&self, id: Uuid, q: &QuotaOverrides, actor: &str, now: UnixMs) -> Result<CustomerRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: Option<CustomerRow> = sqlx::query_as(concat!(
                "UPDATE customers SET max_accounts = $2, max_total_sla_mbps = $3, max_sla_mbps = $4, max_storage_bytes = $5
                 WHERE id = $1 RETURNING ",
                customer_columns!()
            ))
            .bind(id)
            .bind(q.max_accounts)
            .bind(q.max_total_sla_mbps)
            .bind(q.max_sla_mbps)
            .bind(q.max_storage_bytes)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.ok_or(StoreError::NotFound)?;
            event!(tx, now, actor, "customer.quotas", format!("customer:{id}"), format!("{q:?}"))?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// What a customer holds against its quotas now.
    pub async fn quota_use(&self, id: Uuid) -> Result<QuotaUse> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM accounts WHERE customer_id = $1 AND state <> 'deleted') AS accounts,
                        (SELECT CAST(COALESCE(SUM(sla_mbps), 0) AS BIGINT) FROM accounts
                         WHERE customer_id = $1 AND state IN ('provisioning', 'active')) AS total_sla_mbps,
                        (SELECT CAST(COALESCE(SUM(f.bytes), 0) AS BIGINT) FROM stored_files f
                         JOIN accounts a ON a.id = f.account_id WHERE a.customer_id = $1) AS storage_bytes",
            )
            .bind(id)
            .fetch_one(p)
            .await?)
        })
    }
}
