//! Quotas: what one customer may hold. The operator's defaults (admin's flags and
//! each origin type's largest SLA) apply unless the operator overrides them for a
//! customer (`PATCH /v1/customers/{id}`). Accounts and SLA totals are checked in
//! the store, in the transaction that makes the change; the largest SLA and the
//! storage here, before anything is written.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::problem::ApiError;
use crate::domain::Offer;
use crate::store::{AccountLimits, CustomerRow, OriginTypeRow, QuotaOverrides, QuotaUse};

/// The operator's defaults, from admin's flags.
#[derive(Debug, Clone, Copy)]
pub struct QuotaDefaults {
    pub max_accounts: i64,
    pub max_total_sla_mbps: i64,
    /// Per account.
    pub max_storage_bytes: i64,
}

/// A customer's quotas as they apply: overrides, else the defaults.
#[derive(Debug, Clone, Copy)]
pub struct Effective {
    pub accounts: AccountLimits,
    /// The customer's own largest SLA per account; `None`: each type's.
    pub max_sla_mbps: Option<i32>,
    pub max_storage_bytes: i64,
}

impl Effective {
    pub fn of(c: &CustomerRow, d: &QuotaDefaults) -> Self {
        Self {
            accounts: AccountLimits {
                max_accounts: c.max_accounts.map_or(d.max_accounts, i64::from),
                max_total_sla_mbps: c.max_total_sla_mbps.map_or(d.max_total_sla_mbps, i64::from),
            },
            max_sla_mbps: c.max_sla_mbps,
            max_storage_bytes: c.max_storage_bytes.unwrap_or(d.max_storage_bytes),
        }
    }

    /// Refuses an SLA above the largest one account of `t` may buy.
    pub fn check_offer(&self, offer: Offer, t: &OriginTypeRow) -> Result<(), ApiError> {
        let Some(sla) = offer.sla_mbps() else { return Ok(()) };
        let (max, whose) = match self.max_sla_mbps {
            Some(m) => (m, "this customer's"),
            None => (t.max_sla_mbps, "the origin type's"),
        };
        if sla > max {
            return Err(ApiError::QuotaExceeded {
                quota: "max_sla_mbps",
                field: Some("offer.mbps".into()),
                detail: format!(
                    "an account of {} may have an SLA of at most {max} Mbit/s ({whose} quota); ask the operator to raise it",
                    t.name
                ),
            });
        }
        Ok(())
    }
}

/// A customer's quotas for the API: each limit as it applies.
pub async fn effective(s: &AppState, customer: Uuid) -> Result<(CustomerRow, Effective), ApiError> {
    let c = s.store.customer(customer).await?;
    let e = Effective::of(&c, &s.settings.quotas);
    Ok((c, e))
}

/// A customer's quotas and what it holds against them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quotas {
    pub max_accounts: i64,
    pub max_total_sla_mbps: i64,
    /// The largest SLA per account; `null`: each origin type's (`max_sla_mbps`).
    pub max_sla_mbps: Option<i32>,
    /// Per account.
    pub max_storage_bytes: i64,
    pub used: QuotaUsed,
    /// The operator's overrides; `null` fields take the defaults.
    pub overrides: QuotaSettings,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUsed {
    pub accounts: i64,
    pub total_sla_mbps: i64,
    pub storage_bytes: i64,
}

impl Quotas {
    pub fn new(c: &CustomerRow, e: &Effective, used: QuotaUse) -> Self {
        Self {
            max_accounts: e.accounts.max_accounts,
            max_total_sla_mbps: e.accounts.max_total_sla_mbps,
            max_sla_mbps: e.max_sla_mbps,
            max_storage_bytes: e.max_storage_bytes,
            used: QuotaUsed {
                accounts: used.accounts,
                total_sla_mbps: used.total_sla_mbps,
                storage_bytes: used.storage_bytes,
            },
            overrides: QuotaSettings {
                max_accounts: c.max_accounts,
                max_total_sla_mbps: c.max_total_sla_mbps,
                max_sla_mbps: c.max_sla_mbps,
                max_storage_bytes: c.max_storage_bytes,
            },
        }
    }
}

/// A customer's quota overrides, as the operator sets them: the object replaces
/// the customer's overrides; a field left out or `null` takes the default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 0, maximum = 10000)]
    pub max_accounts: Option<i32>,
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub max_total_sla_mbps: Option<i32>,
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_sla_mbps: Option<i32>,
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 0, maximum = 1125899906842624_i64)]
    pub max_storage_bytes: Option<i64>,
}

impl QuotaSettings {
    /// Validated overrides for the store.
    pub fn parse(&self) -> Result<QuotaOverrides, ApiError> {
        let within = |field: &str, v: Option<i64>, lo: i64, hi: i64| match v {
            Some(v) if !(lo..=hi).contains(&v) => {
                Err(ApiError::invalid(format!("quotas.{field}"), format!("must be between {lo} and {hi}")))
            }
            _ => Ok(()),
        };
        within("max_accounts", self.max_accounts.map(i64::from), 0, 10_000)?;
        within("max_total_sla_mbps", self.max_total_sla_mbps.map(i64::from), 0, 1_000_000)?;
        within("max_sla_mbps", self.max_sla_mbps.map(i64::from), 1, 1_000_000)?;
        within("max_storage_bytes", self.max_storage_bytes, 0, 1 << 50)?;
        Ok(QuotaOverrides {
            max_accounts: self.max_accounts,
            max_total_sla_mbps: self.max_total_sla_mbps,
            max_sla_mbps: self.max_sla_mbps,
            max_storage_bytes: self.max_storage_bytes,
        })
    }
}
