//! Accounts: the desired state of each origin service. Every change to an account
//! is written together with the operation that carries it out, in one transaction.

use sqlx::types::Json;
use uuid::Uuid;

use super::operations::insert_operation;
use super::{
    AccountLimits, AccountRow, BeginWrite, NewOperation, OperationRow, Result, Store, StoreError, event,
    lock_customer_sql, on_pool,
};
use crate::clock::UnixMs;
use crate::domain::{AccountName, IpAllow, Offer};
use crate::states::{AccountState, OperationKind};

/// The account columns plus a summary of the pool that serves it.
macro_rules! account_select {
    () => {
        "SELECT a.id, a.customer_id, a.name, a.origin_type, a.offer, a.sla_mbps, a.state, a.locator, a.ip_allow, a.allow_origins,
                a.playback_required, a.playback_keys, a.cdn_secrets, a.custom_certificate, a.deactivated_at, a.retain_until, a.created_at, a.updated_at,
                m.pool_id, p.kind AS pool_kind, p.desired_nodes AS pool_desired_nodes,
                (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = m.pool_id AND n.state = 'ready') AS pool_ready_nodes
         FROM accounts a
         LEFT JOIN account_pool_mappings m ON m.account_id = a.id
         LEFT JOIN pools p ON p.id = m.pool_id"
    };
}

/// Checks, inside the caller's transaction and with the customer's row locked, that
/// the customer may hold one account more (`adding`) and the SLAs of its serving
/// accounts other than `account`, plus `sla`, within its limits.
macro_rules! check_quotas {
    ($tx:expr, $p:expr, $customer:expr, $account:expr, $adding:expr, $sla:expr, $limits:expr) => {{
        sqlx::query(lock_customer_sql($p)).bind($customer).execute(&mut *$tx).await?;
        let (accounts, others_sla): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM accounts WHERE customer_id = $1 AND state <> 'deleted'),
                    (SELECT CAST(COALESCE(SUM(sla_mbps), 0) AS BIGINT) FROM accounts
                     WHERE customer_id = $1 AND state IN ('provisioning', 'active') AND id <> $2)",
        )
        .bind($customer)
        .bind($account)
        .fetch_one(&mut *$tx)
        .await?;
        let limits: &AccountLimits = $limits;
        if $adding && accounts >= limits.max_accounts {
            return Err(StoreError::Quota {
                quota: "max_accounts",
                detail: format!("this customer may hold {} accounts and holds {accounts}", limits.max_accounts),
            });
        }
        let sla = i64::from($sla.unwrap_or(0));
        if sla > 0 && others_sla + sla > limits.max_total_sla_mbps {
            return Err(StoreError::Quota {
                quota: "max_total_sla_mbps",
                detail: format!(
                    "this customer's SLAs may add up to {} Mbit/s; its other accounts hold {others_sla}, this one asks {sla}",
                    limits.max_total_sla_mbps
                ),
            });
        }
    }};
}

/// A new account as validated by the API.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub customer_id: Uuid,
    pub name: AccountName,
    pub origin_type: String,
    pub offer: Offer,
    pub ip_allow: IpAllow,
    pub allow_origins: Vec<String>,
    pub locator: String,
}

/// A change a customer or operator asks of an account.
#[derive(Debug, Clone)]
pub enum AccountChange {
    Update {
        offer: Option<Offer>,
        ip_allow: Option<IpAllow>,
        allow_origins: Option<Vec<String>>,
    },
    Deactivate {
        retain_until: UnixMs,
    },
    Reactivate,
    /// The name stays reserved until `name_until` (unless an earlier
    /// `retain_until` of a deactivation already passed).
    Delete {
        name_until: UnixMs,
    },
}

impl AccountChange {
    pub fn operation_kind(&self) -> OperationKind {
        match self {
            AccountChange::Update { offer: Some(_), .. } => OperationKind::ChangeOffer,
            AccountChange::Update { offer: None, .. } => OperationKind::Update,
            AccountChange::Deactivate { .. } => OperationKind::Deactivate,
            AccountChange::Reactivate => OperationKind::Reactivate,
            AccountChange::Delete { .. } => OperationKind::Delete,
        }
    }
}

impl Store {
    /// Creates an account in `provisioning` and enqueues its `create` operation.
    pub async fn create_account(
        &self,
        a: &NewAccount,
        op: &NewOperation,
        limits: &AccountLimits,
        now: UnixMs,
    ) -> Result<(AccountRow, OperationRow)> {
        let id = op.account_id.unwrap_or_else(Uuid::now_v7);
        let created = self.insert_account(id, a, op, limits, now).await;
        let op_row = match created {
            // Both unique rules may fail at once; which one a backend reports first
            // differs, so name the taken name first, the same on both.
            Err(StoreError::Conflict { .. }) => {
                let taken: i64 = on_pool!(self, |p| {
                    sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE name = $1 AND name_released_at IS NULL")
                        .bind(a.name.as_str())
                        .fetch_one(p)
                        .await?
                });
                let field = if taken > 0 { "name" } else { "origin_type" };
                return Err(StoreError::Conflict { field });
            }
            other => other?,
        };
        Ok((self.account_by_id(id).await?, op_row))
    }

    async fn insert_account(
        &self,
        id: Uuid,
        a: &NewAccount,
        op: &NewOperation,
        limits: &AccountLimits,
        now: UnixMs,
    ) -> Result<OperationRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            check_quotas!(tx, p, a.customer_id, id, true, a.offer.sla_mbps(), limits);
            sqlx::query(
                "INSERT INTO accounts (id, customer_id, name, origin_type, offer, sla_mbps, state, locator, ip_allow,
                     created_at, updated_at, allow_origins)
                 VALUES ($1, $2, $3, $4, $5, $6, 'provisioning', $7, $8, $9, $9, $10)",
            )
            .bind(id)
            .bind(a.customer_id)
            .bind(a.name.as_str())
            .bind(&a.origin_type)
            .bind(a.offer.kind())
            .bind(a.offer.sla_mbps())
            .bind(&a.locator)
            .bind(Json(a.ip_allow.to_strings()))
            .bind(now)
            .bind(Json(&a.allow_origins))
            .execute(&mut *tx)
            .await?;
            let who = format!("customer:{}", a.customer_id);
            event!(
                tx,
                now,
                &who,
                "account.created",
                format!("account:{id}"),
                format!("{} offer on {}", a.offer.kind().as_str(), a.origin_type)
            )?;
            let op_row = insert_operation!(tx, op, now)?;
            tx.commit().await?;
            Ok(op_row)
        })
    }

    pub async fn account_by_id(&self, id: Uuid) -> Result<AccountRow> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(account_select!(), " WHERE a.id = $1")).bind(id).fetch_one(p).await?)
        })
    }

    /// A live (not deleted) account by name; `customer` limits it to one customer's.
    pub async fn account(&self, name: &str, customer: Option<Uuid>) -> Result<AccountRow> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(
                account_select!(),
                " WHERE a.name = $1 AND ($2 IS NULL OR a.customer_id = $2) AND a.state <> 'deleted'"
            ))
            .bind(name)
            .bind(customer)
            .fetch_one(p)
            .await?)
        })
    }

    /// Releases the names of deleted accounts whose retention ended by `now`, so
    /// another account may take them; returns the names.
    pub async fn release_names(&self, now: UnixMs) -> Result<Vec<String>> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let released: Vec<(Uuid, String)> = sqlx::query_as(
                "UPDATE accounts SET name_released_at = $1
                 WHERE state = 'deleted' AND name_released_at IS NULL AND (retain_until IS NULL OR retain_until <= $1)
                 RETURNING id, name",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for (id, name) in &released {
                event!(tx, now, "collector", "account.name_released", format!("account:{id}"), name)?;
            }
            tx.commit().await?;
            Ok(released.into_iter().map(|(_, n)| n).collect())
        })
    }

    /// Deactivated accounts whose retention ended by `now`.
    pub async fn expired_accounts(&self, now: UnixMs) -> Result<Vec<AccountRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(
                account_select!(),
                " WHERE a.state = 'deactivated' AND a.retain_until <= $1
                    AND NOT EXISTS (SELECT 1 FROM allocation_operations o
                                    WHERE o.account_id = a.id AND o.state IN ('pending', 'running'))
                  ORDER BY a.retain_until"
            ))
            .bind(now)
            .fetch_all(p)
            .await?)
        })
    }

    /// A customer's live accounts, by name, after `after` (a cursor).
    pub async fn accounts(&self, customer: Uuid, after: Option<&str>, limit: i64) -> Result<Vec<AccountRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(concat!(
                account_select!(),
                " WHERE a.customer_id = $1 AND a.state <> 'deleted' AND ($2 IS NULL OR a.name > $2)
                  ORDER BY a.name LIMIT $3"
            ))
            .bind(customer)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Applies a change to an account's desired state and enqueues the operation
    /// that makes it real. `InvalidState` when the account cannot take the change.
    pub async fn change_account(
        &self,
        account: &AccountRow,
        change: &AccountChange,
        op: &NewOperation,
        limits: &AccountLimits,
        actor: &str,
        now: UnixMs,
    ) -> Result<OperationRow> {
        let allowed = match change {
            AccountChange::Update { .. } | AccountChange::Delete { .. } => account.state != AccountState::Deleted,
            AccountChange::Deactivate { .. } => account.state.serves(),
            AccountChange::Reactivate => account.state == AccountState::Deactivated,
        };
        if !allowed {
            return Err(StoreError::InvalidState(format!(
                "account {} is {} and cannot take a {} request",
                account.name,
                account.state,
                change.operation_kind()
            )));
        }
        // The SLA the account will hold while serving, if the change gives it one.
        let serving_sla = match change {
            AccountChange::Update { offer: Some(o), .. } => o.sla_mbps(),
            AccountChange::Reactivate => account.sla_mbps,
            AccountChange::Update { offer: None, .. }
            | AccountChange::Deactivate { .. }
            | AccountChange::Delete { .. } => None,
        };
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            check_quotas!(tx, p, account.customer_id, account.id, false, serving_sla, limits);
            // The state guard makes a concurrent change lose cleanly instead of racing.
            let q = match change {
                AccountChange::Update { offer, ip_allow, allow_origins } => {
                    let origins = allow_origins.clone().unwrap_or_else(|| account.allow_origins.0.clone());
                    let (kind, sla) = match offer {
                        Some(o) => (o.kind(), o.sla_mbps()),
                        None => (account.offer, account.sla_mbps),
                    };
                    let allow =
                        ip_allow.as_ref().map(IpAllow::to_strings).unwrap_or_else(|| account.ip_allow.0.clone());
                    // Any state but deleted: the worker activating a new account
                    // meanwhile does not make a change of its offer fail.
                    sqlx::query("UPDATE accounts SET offer = $2, sla_mbps = $3, ip_allow = $4, updated_at = $5, allow_origins = $6 WHERE id = $1 AND state <> 'deleted'")
                        .bind(account.id)
                        .bind(kind)
                        .bind(sla)
                        .bind(Json(allow))
                        .bind(now)
                        .bind(Json(origins))
                }
                AccountChange::Deactivate { retain_until } => sqlx::query(
                    "UPDATE accounts SET state = 'deactivated', deactivated_at = $2, retain_until = $3, updated_at = $2
                     WHERE id = $1 AND state = $4",
                )
                .bind(account.id)
                .bind(now)
                .bind(*retain_until)
                .bind(account.state),
                AccountChange::Reactivate => sqlx::query(
                    "UPDATE accounts SET state = 'active', deactivated_at = NULL, retain_until = NULL, updated_at = $2
                     WHERE id = $1 AND state = $3",
                )
                .bind(account.id)
                .bind(now)
                .bind(account.state),
                AccountChange::Delete { name_until } => sqlx::query(
                    "UPDATE accounts SET state = 'deleted', updated_at = $2,
                         retain_until = CASE WHEN retain_until IS NOT NULL AND retain_until < $4 THEN retain_until ELSE $4 END
                     WHERE id = $1 AND state = $3",
                )
                .bind(account.id)
                .bind(now)
                .bind(account.state)
                .bind(*name_until),
            };
            if q.execute(&mut *tx).await?.rows_affected() == 0 {
                return Err(StoreError::InvalidState(format!("account {} changed meanwhile; try again", account.name)));
            }
            let action = format!("account.{}", change.operation_kind());
            event!(tx, now, actor, action, format!("account:{}", account.id), format!("operation:{}", op.id))?;
            let row = insert_operation!(tx, op, now)?;
            tx.commit().await?;
            Ok(row)
        })
    }
}
