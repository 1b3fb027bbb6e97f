//! The messages between Headwater's processes: what an origin node reports to admin
//! (heartbeats, usage), what a router reports (sightings, access logs) and what
//! admin tells them (configuration, the routing table). Types only:
//! no IO and no logic, so every side agrees on one definition.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The reserved first path segment under which every node serves its test content.
pub const PROBE_PREFIX: &str = "_probe";

/// The state a node reports for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Starting,
    Ready,
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
        }
    }
}

/// The node fetched its own test content through its public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfProbe {
    pub ok: bool,
    pub latency_ms: u32,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/nodes/{id}/heartbeat`, once a second by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub image_version: String,
    pub state: NodeState,
    /// The address players reach the node at (`host:port`).
    pub address: String,
    /// Egress over the last heartbeat interval.
    pub egress_mbps: f64,
    pub open_connections: u64,
    /// Share of content reads served from the node's memory cache, 0–1.
    pub cache_hit_ratio: f64,
    pub self_probe: SelfProbe,
    /// The configuration version the node runs with.
    pub config_version: u64,
    /// Where routers reach the node over mutual TLS (`host:port`), when it serves
    /// TLS with its node certificate (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_address: Option<String>,
    /// Assets the node found it cannot package since its last heartbeat that
    /// reached admin (a `jit` pool's; absent from older nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpackable: Vec<UnpackableAsset>,
}

/// An asset a node cannot package, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackableAsset {
    pub account: String,
    pub asset: String,
    pub reason: String,
}

/// Admin's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The current configuration version; a node that runs an older one fetches it.
    pub config_version: u64,
    /// Admin asks the node to drain (finish in-flight requests, then exit).
    pub drain: bool,
    /// The node CA's generation (its trusted set and active CA): a node whose
    /// certificate came with another one renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ca: Option<String>,
}

/// `POST /v1/nodes/{id}/join` (with the join token), `POST /v1/nodes/{id}/certificate`
/// and `POST /v1/routing/certificate` (renewals): a certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// PKCS#10, PEM. Admin keeps the key and ignores the names asked for: it
    /// names the holder itself.
    pub csr: String,
    /// A router's name (its sightings name); nodes send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A certificate of admin's node CA.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub certificate: String,
    /// Every CA trusted now (two during a rotation), PEM.
    pub ca: String,
    /// The node CA's generation this was issued in.
    pub generation: String,
    /// When the certificate expires, Unix ms.
    pub not_after_ms: i64,
    /// A join over plain HTTP only: the node's bearer token for an admin it
    /// cannot reach over TLS (shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("generation", &self.generation)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// One account a node serves, with its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedAccount {
    pub name: String,
    /// This node's share of the account's cap in shared pools (trial/payg),
    /// rounded up to whole Mbit/s; `None` on a dedicated pool.
    pub cap_mbps: Option<u32>,
    /// The same share in kbit/s, which nodes prefer (absent from older admins).
    #[serde(default)]
    pub cap_kbps: Option<u32>,
    /// Allowed client networks in CIDR notation; empty means everyone.
    pub ip_allow: Vec<String>,
    /// Web origins whose pages may read the content (CORS); empty means any.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// `false` once deactivated: the node answers 410.
    pub active: bool,
    /// Signed playback, when the account has keys (absent from older admins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback: Option<Playback>,
    /// The SHA-256 (hex) of each secret the account's CDN sends in
    /// `X-Headwater-CDN-Secret` (two during a rotation); when any is set, only
    /// requests carrying one are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdn_secrets: Vec<String>,
    /// A `jit` account's encryption (absent: clear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// What a `jit` account's packaged answers are encrypted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionScheme {
    /// HLS AES-128: each media segment encrypted whole (AES-128-CBC).
    Aes128,
}

/// How a `jit` account's DASH segments are encrypted (Common Encryption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DashScheme {
    /// AES-128-CTR, full subsample encryption.
    #[default]
    Cenc,
    /// AES-128-CBC with a pattern (1:9 for video) and a constant IV.
    Cbcs,
}

/// An account's encryption as nodes get it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: EncryptionScheme,
    /// DASH's Common Encryption scheme (absent from older admins: `cenc`).
    #[serde(default)]
    pub dash: DashScheme,
    /// The secret every asset's content key is derived from (base64url; sealed
    /// until admin hands the configuration to a node).
    pub secret: String,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption").field("scheme", &self.scheme).field("dash", &self.dash).finish_non_exhaustive()
    }
}

/// A key that signs an account's playback tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybackKey {
    pub id: String,
    /// The HMAC key, base64url (in admin's answers to routers and nodes only).
    pub secret: String,
}

/// An account's signed playback: whether a token is required, and the keys
/// tokens may be signed with (two during a rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Playback {
    pub required: bool,
    pub keys: Vec<PlaybackKey>,
}

/// How a node makes what players ask for from an asset's stored files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Packaging {
    /// The files as uploaded (pre-packaged HLS or DASH): the `hls` and `dash` types.
    #[default]
    Files,
    /// HLS and DASH packaged on request from the asset's MP4 files: the `jit`
    /// type. Other paths are still served as files (the MP4s themselves).
    Jit,
}

impl Packaging {
    pub fn is_files(&self) -> bool {
        *self == Self::Files
    }
}

/// `GET /v1/nodes/{id}/config`: what the node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub version: u64,
    pub node_id: Uuid,
    pub pool_id: Uuid,
    /// The node's total egress limit.
    pub capacity_mbps: u32,
    pub accounts: Vec<ServedAccount>,
    /// The pool's packaging (absent: files, as from older admins).
    #[serde(default, skip_serializing_if = "Packaging::is_files")]
    pub packaging: Packaging,
}

/// Bytes served for one account in one minute (test content excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageWindow {
    pub account: String,
    /// Start of the minute, Unix milliseconds.
    pub window_start: i64,
    pub bytes: u64,
    pub requests: u64,
}

/// `POST /v1/nodes/{id}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Names this report: a report sent again (its answer was lost) keeps its id,
    /// and admin counts it once. Absent from older nodes.
    #[serde(default)]
    pub id: Option<Uuid>,
    pub windows: Vec<UsageWindow>,
}

/// The test file every node serves, fetched by its own self-probe, by admin and
/// by routers (who report what they reach).
pub const PROBE_PATH: &str = "/_probe/hls/360p/index.m3u8";

/// `POST /v1/routing/sightings`: the nodes whose test content a router fetched in
/// its last round of probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sightings {
    /// The router's name (its pod or host name).
    pub router: String,
    pub reached: Vec<Uuid>,
}

/// A node a router may send an account's players to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteNode {
    pub id: Uuid,
    /// `host:port`.
    pub address: String,
    /// `host:port` of the node's mutual-TLS listener, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_address: Option<String>,
}

/// How a router treats one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `false` once deactivated: the router answers 410.
    pub active: bool,
    /// Allowed client networks in CIDR notation; empty means everyone.
    pub ip_allow: Vec<String>,
    /// Web origins whose pages may read the content (CORS); empty means any.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// The ready nodes of the account's pool.
    pub nodes: Vec<RouteNode>,
    /// The account's own domain: its players use `https://{name}/{asset}/{file}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_domain: Option<CustomDomain>,
    /// Signed playback, when the account has keys (absent from older admins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback: Option<Playback>,
    /// The SHA-256 (hex) of each secret the account's CDN sends in
    /// `X-Headwater-CDN-Secret` (two during a rotation); when any is set, only
    /// requests carrying one are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdn_secrets: Vec<String>,
}

/// An account's own domain, with the certificate routers serve for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomDomain {
    pub name: String,
    /// The certificate chain, PEM.
    pub certificate: String,
    /// Its private key, PEM (in admin's answers to routers only).
    pub private_key: String,
}

/// Secrets never show in logs: only the key's id.
impl std::fmt::Debug for PlaybackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CustomDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomDomain").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `GET /v1/routing`: account → ready nodes, published by admin for routers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// When admin read this table from the store (Unix ms, strictly increasing per
    /// admin): a router replaces its table only with a newer one, so a late update
    /// never overwrites a fresher table.
    pub version: u64,
    /// A digest of the content: equal digests, equal tables (the `ETag` of `GET /v1/routing`).
    pub digest: String,
    pub accounts: std::collections::BTreeMap<String, Route>,
    /// The node CA's generation: a router whose certificate came with another
    /// one renews it (absent when admin has no node CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ca: Option<String>,
}

/// One player request as the component that answered it saw it: a line of an
/// account's access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// When the request arrived, Unix milliseconds.
    pub at_ms: i64,
    pub account: String,
    /// The path under the account (`{asset}/{file}`), without a playback token
    /// or the query.
    pub path: String,
    pub method: String,
    pub status: u16,
    /// Body bytes sent to the player.
    pub bytes: u64,
    /// From the request's arrival to the body's last byte (or the player leaving).
    pub duration_ms: u64,
    /// The player's address (its last octets zeroed when the writer truncates).
    pub client: String,
    pub user_agent: Option<String>,
    /// The node that answered (none: the writer answered itself, a refusal).
    pub node: Option<Uuid>,
    /// Whether the node served from its cache, when it said.
    pub cache_hit: Option<bool>,
    /// Who wrote it: `router:{name}` or `node:{id}`.
    pub source: String,
}

/// The `Via` a router puts on what it forwards to a node: such a request is
/// the router's to log, not the node's.
pub const ROUTER_VIA: &str = "1.1 headwater-router";

/// The response header a node says whether its cache had the file with
/// (`HIT` or `MISS`), as CDNs do; the router's access records keep it.
pub const CACHE_HEADER: &str = "x-cache";

/// `POST /v1/routing/access-logs`: a batch of access records. A batch sent
/// again (its answer was lost) keeps its id, and admin keeps it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogBatch {
    pub id: Uuid,
    pub records: Vec<AccessRecord>,
}
