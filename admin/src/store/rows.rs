//! Rows as the store returns them. The API turns them into its own response types.

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::clock::UnixMs;
use crate::domain::OfferKind;
use crate::states::{AccountState, NodeState, OperationKind, OperationState, PoolKind, PoolState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: UnixMs,
    /// The operator's overrides of the default quotas (`None`: the default).
    pub max_accounts: Option<i32>,
    pub max_total_sla_mbps: Option<i32>,
    pub max_sla_mbps: Option<i32>,
    pub max_storage_bytes: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub created_at: UnixMs,
    pub revoked_at: Option<UnixMs>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OriginTypeRow {
    pub name: String,
    pub node_capacity_mbps: i32,
    pub sla_increment_mbps: i32,
    pub trial_cap_mbps: i32,
    pub payg_cap_mbps: i32,
    pub current_image: Option<String>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// Warm pools to keep: `{"size in nodes": count}` or `"auto"`.
    pub warm_pools: Option<Json<serde_json::Value>>,
    /// Retention of deactivated accounts' pools, in hours (`None`: admin's default).
    pub retention_hours: Option<i32>,
    /// The last image an upgrade finished on every pool (`None`: the built-in one).
    pub completed_image: Option<String>,
    /// The largest SLA one account of this type may buy (a customer's own quota
    /// overrides it).
    pub max_sla_mbps: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ImageRow {
    pub origin_type: String,
    pub version: String,
    pub command: String,
    pub args: Json<Vec<String>>,
    /// The container image of nodes on Kubernetes targets (else the target's).
    pub container_image: Option<String>,
    pub created_at: UnixMs,
}

/// A playback signing key as stored: its secret sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub sealed: String,
    pub created_at: UnixMs,
}

/// A secret of the account's CDN as stored: its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CdnSecret {
    pub id: String,
    pub sha256: String,
    pub created_at: UnixMs,
}

/// An account's own domain and certificate as stored: the key sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredCertificate {
    pub name: String,
    pub certificate: String,
    pub key_sealed: String,
}

/// An account with a summary of the pool currently serving it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub origin_type: String,
    pub offer: OfferKind,
    pub sla_mbps: Option<i32>,
    pub state: AccountState,
    pub locator: String,
    pub ip_allow: Json<Vec<String>>,
    pub allow_origins: Json<Vec<String>>,
    pub playback_required: bool,
    pub playback_keys: Json<Vec<StoredKey>>,
    pub cdn_secrets: Json<Vec<CdnSecret>>,
    pub custom_certificate: Option<Json<StoredCertificate>>,
    pub deactivated_at: Option<UnixMs>,
    pub retain_until: Option<UnixMs>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    pub pool_id: Option<Uuid>,
    pub pool_kind: Option<PoolKind>,
    pub pool_desired_nodes: Option<i32>,
    pub pool_ready_nodes: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PoolRow {
    pub id: Uuid,
    pub origin_type: String,
    pub kind: PoolKind,
    pub image_version: Option<String>,
    pub desired_nodes: i32,
    pub state: PoolState,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// Accounts mapped to the pool.
    pub accounts: i64,
    pub ready_nodes: i64,
    /// Why the pool is degraded (nodes failing at start), if it is.
    pub degraded_reason: Option<String>,
    /// The next node launch waits until then (backing off after failures).
    pub launch_after: Option<UnixMs>,
    /// Why no target takes the nodes it needs now, if none does.
    pub waiting_reason: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    pub id: Uuid,
    pub pool_id: Uuid,
    pub handle: Option<String>,
    pub address: Option<String>,
    pub image_version: Option<String>,
    pub upgrade_domain: i32,
    pub state: NodeState,
    pub last_heartbeat: Option<UnixMs>,
    pub egress_mbps: f64,
    pub open_connections: i64,
    pub cache_hit_ratio: f64,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// The target it runs on (`None`: run by hand).
    pub target: Option<String>,
    /// Its mutual-TLS listener, as it reports it.
    pub tls_address: Option<String>,
    /// When its certificate of the node CA expires.
    pub cert_not_after: Option<UnixMs>,
}

/// One row of the global allocation table: what is live for an account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AllocationRow {
    pub account_id: Uuid,
    pub account_name: String,
    pub origin_type: String,
    pub offer: OfferKind,
    pub sla_mbps: Option<i32>,
    pub pool_id: Uuid,
    pub locator: String,
    /// `active` or `deactivated`.
    pub state: AccountState,
    pub updated_at: UnixMs,
}

/// A finished step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub at: UnixMs,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRow {
    pub id: Uuid,
    pub kind: OperationKind,
    pub account_id: Option<Uuid>,
    pub origin_type: Option<String>,
    pub customer_id: Option<Uuid>,
    pub state: OperationState,
    pub step: Option<String>,
    pub steps: Json<Vec<StepRecord>>,
    pub input: Json<serde_json::Value>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<UnixMs>,
    pub not_before: UnixMs,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// How far a long operation got (an upgrade: pools done / total, in progress).
    pub progress: Option<Json<serde_json::Value>>,
}

impl OperationRow {
    /// Whether `step` has already finished (so a resumed operation skips it).
    pub fn done(&self, step: &str) -> bool {
        self.steps.0.iter().any(|s| s.step == step)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: UnixMs,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub reason: String,
}

/// A new operation to enqueue beside the change that asks for it.
#[derive(Debug, Clone)]
pub struct NewOperation {
    pub id: Uuid,
    pub kind: OperationKind,
    pub account_id: Option<Uuid>,
    pub origin_type: Option<String>,
    pub customer_id: Option<Uuid>,
    pub input: serde_json::Value,
}

impl NewOperation {
    pub fn new(kind: OperationKind) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            account_id: None,
            origin_type: None,
            customer_id: None,
            input: serde_json::Value::Null,
        }
    }
}
