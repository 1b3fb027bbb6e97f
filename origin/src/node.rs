//! The node's shared state: what it serves (from admin), and what it has served
//! (usage per account per minute, egress, in-flight responses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use headwater_protocol::{NodeConfig, Packaging, UsageReport, UsageWindow};
use ipnet::IpNet;
use uuid::Uuid;

use crate::files::Files;
use crate::metrics::Metrics;
use crate::packaging::Packager;
use crate::shaper::Shaper;

/// (account, minute start in ms) → (bytes, requests).
type UsageCounts = HashMap<(Arc<str>, i64), (u64, u64)>;

/// An account as this node serves it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: Arc<str>,
    /// `requests_total{account, status="200"}` and `bytes_total{account}`, resolved once.
    pub ok_requests: prometheus::IntCounter,
    pub bytes: prometheus::IntCounter,
    pub allow: Vec<IpNet>,
    /// Web origins whose pages may read the content (CORS); empty: any.
    pub allow_origins: Vec<String>,
    pub active: bool,
    /// Signed playback: whether a token is required, and the keys.
    pub playback: Option<headwater_protocol::Playback>,
    /// Hashes of the secrets the account's CDN sends (none: no CDN rule).
    pub cdn_secrets: Vec<String>,
    /// A `jit` account's encryption of packaged answers.
    pub encryption: Option<Encrypted>,
}

/// How an account's packaged answers are encrypted: the scheme, and the secret
/// asset keys are derived from (`None` when it did not decode: packaged answers
/// then fail rather than go out clear).
#[derive(Clone)]
pub struct Encrypted {
    pub scheme: headwater_protocol::EncryptionScheme,
    pub dash: headwater_protocol::DashScheme,
    pub secret: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted").field("scheme", &self.scheme).field("dash", &self.dash).finish_non_exhaustive()
    }
}

impl Encrypted {
    fn of(e: &headwater_protocol::Encryption) -> Self {
        use base64::Engine;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&e.secret).ok().filter(|s| s.len() >= 16);
        Self { scheme: e.scheme, dash: e.dash, secret: secret.map(Arc::from) }
    }
}

impl Account {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// The configuration in force.
#[derive(Debug, Default)]
pub struct Served {
    /// 0 until the first configuration arrives.
    pub version: u64,
    pub accounts: HashMap<String, Account>,
    /// The pool's packaging: files as stored, or packaged from MP4s.
    pub packaging: Packaging,
}

pub struct Node {
    pub id: Uuid,
    /// `X-Headwater-Node`, made once.
    pub id_header: http::HeaderValue,
    /// The pseudo-account of the test content, and its 200 counter.
    pub probe_account: Arc<str>,
    pub probe_ok_requests: prometheus::IntCounter,
    pub probe_bytes: prometheus::IntCounter,
    pub image_version: String,
    pub files: Files,
    /// Packages `jit` accounts' assets.
    pub packager: Packager,
    pub shaper: Shaper,
    pub metrics: Metrics,
    pub served: RwLock<Arc<Served>>,
    /// Proxies (the router) whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpNet>,
    /// The bearer token of `/metrics` (off without one).
    pub metrics_token: Option<String>,
    /// Bytes of account content sent, per (account, minute start in ms): bytes, requests.
    usage: Mutex<UsageCounts>,
    /// A usage report sent whose answer has not come; sent again with its id.
    pending_usage: Mutex<Option<UsageReport>>,
    /// All bytes sent (test content included), for the egress figure.
    pub egress_bytes: AtomicU64,
    pub in_flight: AtomicU64,
    pub draining: AtomicBool,
    /// The last heartbeat reached admin.
    pub admin_ok: AtomicBool,
    /// Accounts' content only to routers' certificates (`--routers-only`).
    pub routers_only: bool,
    /// Its key and certificate of the node CA, and the CAs it trusts for routers.
    pub credentials: Option<Arc<headwater_serve::mtls::Credentials>>,
    /// Where the records of players' requests it answers go (none: not logged).
    pub access_log: Option<headwater_serve::access_log::AccessLog>,
}

impl Node {
    pub fn new(
        id: Uuid,
        image_version: String,
        files: Files,
        shaper: Shaper,
        metrics: Metrics,
        trusted_proxies: Vec<IpNet>,
        metrics_token: Option<String>,
    ) -> Self {
        let id_header =
            http::HeaderValue::from_str(&id.to_string()).unwrap_or(http::HeaderValue::from_static("unknown"));
        let probe_ok_requests = metrics.requests.with_label_values(&[headwater_protocol::PROBE_PREFIX, "200"]);
        Self {
            id,
            id_header,
            probe_account: Arc::from(headwater_protocol::PROBE_PREFIX),
            probe_ok_requests,
            probe_bytes: metrics.bytes.with_label_values(&[headwater_protocol::PROBE_PREFIX]),
            image_version,
            // The default size; `run` sets the configured one.
            packager: Packager::new(files.store().clone(), 256, headwater_jit::Settings::default()),
            files,
            shaper,
            metrics,
            served: RwLock::new(Arc::new(Served::default())),
            trusted_proxies,
            metrics_token,
            usage: Mutex::new(HashMap::new()),
            pending_usage: Mutex::new(None),
            egress_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            routers_only: false,
            credentials: None,
            access_log: None,
            admin_ok: AtomicBool::new(false),
        }
    }

    pub fn served(&self) -> Arc<Served> {
        self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts a configuration from admin in force: accounts, caps, capacity.
    pub fn apply(&self, config: &NodeConfig) {
        let mut accounts = HashMap::new();
        for a in &config.accounts {
            let allow = a.ip_allow.iter().filter_map(|c| c.parse::<IpNet>().ok()).collect();
            accounts.insert(
                a.name.clone(),
                Account {
                    name: Arc::from(a.name.as_str()),
                    ok_requests: self.metrics.requests.with_label_values(&[a.name.as_str(), "200"]),
                    bytes: self.metrics.bytes.with_label_values(&[a.name.as_str()]),
                    allow,
                    allow_origins: a.allow_origins.clone(),
                    active: a.active,
                    playback: a.playback.clone(),
                    cdn_secrets: a.cdn_secrets.clone(),
                    encryption: a.encryption.as_ref().map(Encrypted::of),
                },
            );
            let cap_kbps = a.cap_kbps.or(a.cap_mbps.map(|m| m.saturating_mul(1000)));
            self.shaper.set_account_cap(&a.name, cap_kbps);
        }
        self.shaper.set_capacity(config.capacity_mbps);
        let served = Served { version: config.version, accounts, packaging: config.packaging };
        *self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(served);
    }

    /// Counts a response of an account (never test content): bytes and requests.
    pub fn count_usage(&self, account: &Arc<str>, bytes: u64, requests: u64, now_ms: i64) {
        let window = now_ms - now_ms.rem_euclid(60_000);
        let mut u = self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = u.entry((account.clone(), window)).or_default();
        e.0 += bytes;
        e.1 += requests;
    }

    /// Takes the usage counted so far, to report.
    pub fn take_usage(&self) -> Vec<UsageWindow> {
        let mut u = self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        u.drain()
            .map(|((account, window_start), (bytes, requests))| UsageWindow {
                account: account.to_string(),
                window_start,
                bytes,
                requests,
            })
            .collect()
    }

    /// The report sent but not yet acknowledged, if any: it goes again as it is.
    pub fn pending_usage(&self) -> Option<UsageReport> {
        self.pending_usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Keeps `report` until admin acknowledges it.
    pub fn hold_usage(&self, report: UsageReport) -> UsageReport {
        *self.pending_usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report.clone());
        report
    }

    /// Admin acknowledged the pending report.
    pub fn usage_sent(&self) {
        *self.pending_usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The client's address: the peer, or the last hop a trusted proxy (by
    /// address, or a router by its certificate) names.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>, router: bool) -> IpAddr {
        if !router && !self.trusted_proxies.iter().any(|n| n.contains(&peer)) {
            return peer;
        }
        forwarded_for.and_then(|v| v.rsplit(',').next()).and_then(|ip| ip.trim().parse().ok()).unwrap_or(peer)
    }

    pub fn is_ready(&self) -> bool {
        self.served().version != 0 && self.admin_ok.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}
