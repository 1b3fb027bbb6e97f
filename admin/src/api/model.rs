//! The JSON shapes of the REST API (requests and responses), with their OpenAPI
//! schemas, and the conversions from store rows.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::problem::ApiError;
use crate::clock::rfc3339;
use crate::domain::OfferKind;
use crate::states::{AccountState, NodeState, OperationKind, OperationState, PoolHealth, PoolKind, PoolState};
use crate::store::{
    AccountRow, AllocationRow, ApiKeyRow, CustomerRow, EventRow, ImageRow, NodeRow, OperationRow, OriginTypeRow,
    PoolRow,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomer {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerCreated {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    /// The API key: shown this once, stored only as a hash.
    pub api_key: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRow> for ApiKeyInfo {
    fn from(k: &ApiKeyRow) -> Self {
        Self { id: k.id, created_at: rfc3339(k.created_at), revoked_at: k.revoked_at.map(rfc3339) }
    }
}

/// The calling customer: its keys (never their secrets) and its quotas.
#[derive(Debug, Serialize, ToSchema)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub keys: Vec<ApiKeyInfo>,
    pub quotas: super::quotas::Quotas,
}

/// A customer in the operator's listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSummary {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: String,
}

impl From<CustomerRow> for CustomerSummary {
    fn from(c: CustomerRow) -> Self {
        Self { id: c.id, name: c.name, email: c.email, created_at: rfc3339(c.created_at) }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKey {
    pub id: Uuid,
    /// The API key: shown this once.
    pub api_key: String,
    pub created_at: String,
}

/// An optional request field that, when given, is not `null` (the schema says
/// so, and so does the API): `{"offer": null}` is refused, not taken for absent.
pub(super) fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An offer: `trial`, `payg`, or `sla` with a guaranteed `mbps` (a multiple of the
/// origin type's SLA increment, 100 for the built-in types; at most the type's
/// or the customer's largest SLA).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfferBody {
    Trial,
    Payg,
    Sla {
        #[serde(deserialize_with = "super::whole::required")]
        #[schema(minimum = 1, maximum = 1000000, multiple_of = 100)]
        mbps: i64,
    },
}

impl OfferBody {
    pub fn kind(self) -> OfferKind {
        match self {
            OfferBody::Trial => OfferKind::Trial,
            OfferBody::Payg => OfferKind::Payg,
            OfferBody::Sla { .. } => OfferKind::Sla,
        }
    }

    pub fn mbps(self) -> Option<i64> {
        match self {
            OfferBody::Sla { mbps } => Some(mbps),
            OfferBody::Trial | OfferBody::Payg => None,
        }
    }

    fn stored(kind: OfferKind, sla_mbps: Option<i32>) -> Self {
        match (kind, sla_mbps) {
            (OfferKind::Trial, _) => OfferBody::Trial,
            (OfferKind::Payg, _) => OfferBody::Payg,
            (OfferKind::Sla, m) => OfferBody::Sla { mbps: m.map_or(0, i64::from) },
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// A DNS label: part of the locator, unique across all customers.
    pub name: String,
    pub origin_type: String,
    pub offer: OfferBody,
    /// Client networks allowed to fetch the content; empty or absent: any.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, max_items = 100)]
    pub ip_allow: Option<Vec<String>>,
    /// Web origins whose pages may read the content (CORS); empty or absent: any.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, max_items = 20)]
    pub allow_origins: Option<Vec<String>>,
}

/// A change to an account: at least one of its fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateAccount {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub offer: Option<OfferBody>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, max_items = 100)]
    pub ip_allow: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, max_items = 20)]
    pub allow_origins: Option<Vec<String>>,
}

/// The pool serving an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolSummary {
    pub id: Uuid,
    pub kind: PoolKind,
    pub desired_nodes: i32,
    pub ready_nodes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub origin_type: String,
    pub offer: OfferBody,
    pub state: AccountState,
    /// The stable URL of the account's content: `{locator}{asset}/{file}`.
    pub locator: String,
    pub ip_allow: Vec<String>,
    /// Web origins whose pages may read the content (CORS); empty: any.
    pub allow_origins: Vec<String>,
    /// Whether the locator serves only signed URLs (`/v1/accounts/{name}/playback`).
    pub playback_required: bool,
    /// Whether only the account's CDN is served (`/v1/accounts/{name}/cdn-secrets`).
    pub cdn_only: bool,
    pub pool: Option<PoolSummary>,
    /// Share of successful probes over the last window, once nodes are probed.
    pub availability: Option<f64>,
    pub created_at: String,
    pub updated_at: String,
    pub deactivated_at: Option<String>,
    pub retain_until: Option<String>,
}

impl From<AccountRow> for Account {
    fn from(a: AccountRow) -> Self {
        let pool = match (a.pool_id, a.pool_kind, a.pool_desired_nodes) {
            (Some(id), Some(kind), Some(desired_nodes)) => {
                Some(PoolSummary { id, kind, desired_nodes, ready_nodes: a.pool_ready_nodes.unwrap_or(0) })
            }
            _ => None,
        };
        Self {
            id: a.id,
            name: a.name,
            origin_type: a.origin_type,
            offer: OfferBody::stored(a.offer, a.sla_mbps),
            state: a.state,
            locator: a.locator,
            ip_allow: a.ip_allow.0,
            allow_origins: a.allow_origins.0,
            playback_required: a.playback_required,
            cdn_only: !a.cdn_secrets.0.is_empty(),
            pool,
            availability: None,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
            deactivated_at: a.deactivated_at.map(rfc3339),
            retain_until: a.retain_until.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub step: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Operation {
    pub id: Uuid,
    pub kind: OperationKind,
    pub state: OperationState,
    pub account_id: Option<Uuid>,
    pub origin_type: Option<String>,
    /// The last finished step.
    pub step: Option<String>,
    pub steps: Vec<StepView>,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// An upgrade's progress: `{"pools_total", "pools_done", "in_progress": [pool ids],
    /// "version", "halted"}`; an account's operation while it waits for nodes no
    /// target has room for: `{"waiting": "waiting for capacity: …"}`.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// What the operation was asked to do (an upgrade: `version`, `previous`).
    #[schema(value_type = Option<Object>)]
    pub input: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<OperationRow> for Operation {
    fn from(o: OperationRow) -> Self {
        Self {
            id: o.id,
            kind: o.kind,
            state: o.state,
            account_id: o.account_id,
            origin_type: o.origin_type,
            step: o.step,
            steps: o.steps.0.into_iter().map(|s| StepView { step: s.step, at: rfc3339(s.at) }).collect(),
            attempts: o.attempts,
            last_error: o.last_error,
            progress: o.progress.map(|p| p.0).filter(|p| !p.is_null()),
            input: o.input.0,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// An accepted change to an account: its state now, and the operation carrying it out.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountAccepted {
    pub account: Account,
    pub operation: Operation,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OriginType {
    pub name: String,
    pub node_capacity_mbps: i32,
    pub sla_increment_mbps: i32,
    pub trial_cap_mbps: i32,
    pub payg_cap_mbps: i32,
    /// The largest SLA one account may buy (a customer's own quota overrides it).
    pub max_sla_mbps: i32,
    pub current_image: Option<String>,
    /// Warm pools kept ready: `{"size in nodes": count}` or `"auto"`.
    #[schema(value_type = Option<Object>)]
    pub warm_pools: Option<serde_json::Value>,
    /// Retention of deactivated accounts' pools, in hours (`null`: admin's default).
    pub retention_hours: Option<i32>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<OriginTypeRow> for OriginType {
    fn from(t: OriginTypeRow) -> Self {
        Self {
            name: t.name,
            node_capacity_mbps: t.node_capacity_mbps,
            sla_increment_mbps: t.sla_increment_mbps,
            trial_cap_mbps: t.trial_cap_mbps,
            payg_cap_mbps: t.payg_cap_mbps,
            max_sla_mbps: t.max_sla_mbps,
            current_image: t.current_image,
            warm_pools: t.warm_pools.map(|w| w.0),
            retention_hours: t.retention_hours,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OriginTypeList {
    pub items: Vec<OriginType>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOriginType {
    pub name: String,
    #[serde(deserialize_with = "super::whole::required")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub node_capacity_mbps: i64,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub sla_increment_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub trial_cap_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub payg_cap_mbps: Option<i64>,
    /// The largest SLA one account may buy (default 1000).
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub max_sla_mbps: Option<i64>,
}

/// Warm pools to keep ready: `{"size in nodes": count}` (`{}` for none), or
/// `"auto"` to follow recent SLA sign-ups per size.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WarmPools {
    Auto(WarmAuto),
    /// Sizes (1 to 64 nodes) and how many pools of each (0 to 16).
    Sizes(#[serde(deserialize_with = "super::whole::counts")] std::collections::BTreeMap<String, u32>),
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarmAuto {
    Auto,
}

impl WarmPools {
    /// As the store keeps it.
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            WarmPools::Auto(_) => serde_json::Value::String("auto".into()),
            WarmPools::Sizes(m) => m.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOriginType {
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub node_capacity_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub sla_increment_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub trial_cap_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub payg_cap_mbps: Option<i64>,
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    pub max_sla_mbps: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub warm_pools: Option<WarmPools>,
    /// How long a deactivated account's pool is kept, in hours (1 to 87600).
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 87600)]
    pub retention_hours: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub version: String,
    /// The program nodes run (`headwater` is this binary), without a shell.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// The container image nodes of this version run on Kubernetes targets
    /// (absent: each target's own `kubernetes.image`).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub container_image: Option<String>,
    /// Pools upgraded at the same time (default 2).
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 64)]
    pub max_concurrent_pools: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Image {
    pub origin_type: String,
    pub version: String,
    pub command: String,
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    pub created_at: String,
}

impl From<ImageRow> for Image {
    fn from(i: ImageRow) -> Self {
        Self {
            origin_type: i.origin_type,
            version: i.version,
            command: i.command,
            args: i.args.0,
            container_image: i.container_image,
            created_at: rfc3339(i.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pool {
    pub id: Uuid,
    pub origin_type: String,
    pub kind: PoolKind,
    pub image_version: Option<String>,
    pub desired_nodes: i32,
    pub ready_nodes: i64,
    pub accounts: i64,
    pub state: PoolState,
    /// `degraded` while its nodes fail before they are ready (launches back off).
    pub health: PoolHealth,
    /// Why it is degraded, e.g. `node exits at start (exit status 1)`.
    pub reason: Option<String>,
    /// When the next node may be launched, while backing off (RFC 3339).
    pub next_launch_at: Option<String>,
    /// Why it lacks nodes no target has room for: `waiting for capacity: …`.
    pub waiting: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<PoolRow> for Pool {
    fn from(p: PoolRow) -> Self {
        Self {
            id: p.id,
            origin_type: p.origin_type,
            kind: p.kind,
            image_version: p.image_version,
            desired_nodes: p.desired_nodes,
            ready_nodes: p.ready_nodes,
            accounts: p.accounts,
            state: p.state,
            health: if p.degraded_reason.is_some() { PoolHealth::Degraded } else { PoolHealth::Healthy },
            reason: p.degraded_reason,
            next_launch_at: p.launch_after.map(rfc3339),
            waiting: p.waiting_reason,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub id: Uuid,
    pub pool_id: Uuid,
    pub address: Option<String>,
    pub image_version: Option<String>,
    pub upgrade_domain: i32,
    pub state: NodeState,
    pub last_heartbeat: Option<String>,
    pub egress_mbps: f64,
    pub open_connections: i64,
    pub cache_hit_ratio: f64,
    /// The target it runs on (`null`: a node an operator runs by hand).
    pub target: Option<String>,
    /// Where routers reach it over mutual TLS (`null`: plain HTTP only).
    pub tls_address: Option<String>,
    /// When its certificate of the node CA expires (`null`: it has none).
    pub certificate_expires_at: Option<String>,
    pub created_at: String,
}

impl From<NodeRow> for Node {
    fn from(n: NodeRow) -> Self {
        Self {
            id: n.id,
            pool_id: n.pool_id,
            address: n.address,
            image_version: n.image_version,
            upgrade_domain: n.upgrade_domain,
            state: n.state,
            last_heartbeat: n.last_heartbeat.map(rfc3339),
            egress_mbps: n.egress_mbps,
            open_connections: n.open_connections,
            cache_hit_ratio: n.cache_hit_ratio,
            target: n.target,
            tls_address: n.tls_address,
            certificate_expires_at: n.cert_not_after.map(rfc3339),
            created_at: rfc3339(n.created_at),
        }
    }
}

/// A row of the global allocation table: what is live for one account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Allocation {
    pub account_id: Uuid,
    pub account: String,
    pub origin_type: String,
    pub offer: OfferKind,
    pub sla_mbps: Option<i32>,
    pub pool_id: Uuid,
    pub locator: String,
    /// `active` or `deactivated`.
    pub state: AccountState,
    pub updated_at: String,
}

impl From<AllocationRow> for Allocation {
    fn from(a: AllocationRow) -> Self {
        Self {
            account_id: a.account_id,
            account: a.account_name,
            origin_type: a.origin_type,
            offer: a.offer,
            sla_mbps: a.sla_mbps,
            pool_id: a.pool_id,
            locator: a.locator,
            state: a.state,
            updated_at: rfc3339(a.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub reason: String,
}

impl From<EventRow> for Event {
    fn from(e: EventRow) -> Self {
        Self { id: e.id, at: rfc3339(e.at), actor: e.actor, action: e.action, subject: e.subject, reason: e.reason }
    }
}

/// One page of a listing; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> Page<T> {
    /// A page of `items` asked for with `limit`: a full page has a next cursor,
    /// the last item's key.
    pub fn of(items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() as i64 == limit { items.last().map(&key) } else { None };
        Page { items, next_cursor }
    }
}

/// A page of a listing keyed by id.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many items (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<Uuid>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        page_limit(self.limit)
    }
}

/// A page of the event trail, newest first.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// At most this many events (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`): an event id.
    #[param(minimum = 1)]
    pub cursor: Option<i64>,
}

/// A page of accounts, by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountsQuery {
    /// At most this many accounts (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`): an account name.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")]
    pub cursor: Option<String>,
}

pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(l) if (1..=500).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 500")),
    }
}
