//! Talking to admin: the heartbeat loop (self-probe, state, load), configuration
//! refresh when admin's version differs, and usage reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::RwLock;

use headwater_protocol::{
    CertificateRequest, Heartbeat, HeartbeatAck, IssuedCertificate, NodeConfig, NodeState, SelfProbe, UsageReport,
};
use headwater_serve::mtls::{Credentials, Issued, Peer};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// The test file the node fetches from itself.
pub use headwater_protocol::PROBE_PATH;

/// Admin as the node reaches it: one URL or several (replicas), the one in use
/// first; a request that cannot reach one, or that it answers 5xx, goes to the next.
/// Over https the node presents its certificate of the node CA; its bearer
/// token, when it has one, goes with every request.
#[derive(Clone)]
pub struct Admin {
    /// Made again after each new certificate, so no pooled connection keeps
    /// presenting the one before.
    http: Arc<RwLock<reqwest::Client>>,
    roots: rustls::RootCertStore,
    urls: Arc<[String]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Arc<RwLock<Option<String>>>,
    pub credentials: Arc<Credentials>,
}

/// Where the node is reached: plain, and over mutual TLS when it serves it.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub public: String,
    pub tls: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("admin: {0}")]
    Http(#[from] reqwest::Error),
    #[error("admin answered {0}")]
    Status(reqwest::StatusCode),
    #[error("no admin URL")]
    NoAdmin,
    #[error("the certificate admin issued: {0}")]
    Certificate(String),
}

fn client(roots: &rustls::RootCertStore, credentials: &Arc<Credentials>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(credentials.client_config(roots.clone()))
        .timeout(Duration::from_secs(5))
        .build()
}

impl Admin {
    pub fn new(
        urls: &[String],
        roots: rustls::RootCertStore,
        credentials: Arc<Credentials>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let urls: Vec<String> =
            urls.iter().map(|u| u.trim().trim_end_matches('/').to_owned()).filter(|u| !u.is_empty()).collect();
        Ok(Self {
            http: Arc::new(RwLock::new(client(&roots, &credentials)?)),
            roots,
            urls: urls.into(),
            current: Arc::default(),
            token: Arc::new(RwLock::new(token)),
            credentials,
        })
    }

    pub fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Installs a certificate admin issued (and the token that came with a join).
    fn install(&self, issued: IssuedCertificate) -> Result<(), ReportError> {
        let IssuedCertificate { certificate, ca, generation, not_after_ms, token } = issued;
        self.credentials
            .install(&Issued { certificate, ca, generation, not_after_ms })
            .map_err(ReportError::Certificate)?;
        if let Some(t) = token {
            *self.token.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
        }
        let fresh = client(&self.roots, &self.credentials)?;
        *self.http.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Joins with the one-time join token: a CSR for the node's key, its first
    /// certificate back. Tried for up to a minute while admin cannot be reached;
    /// a refused token (used already, or not this node's) fails at once.
    pub async fn join(&self, node: &Node, join_token: &str) -> anyhow::Result<()> {
        let csr = self.credentials.csr(Peer::Node(node.id))?;
        let path = Self::path(node, "join");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let http = self.http();
            let sent = self
                .send_as(Some(join_token), |u| {
                    http.post(format!("{u}{path}")).json(&CertificateRequest { csr: csr.clone(), name: None })
                })
                .await;
            match sent {
                Ok(res) if res.status().is_success() => {
                    self.install(res.json().await?)?;
                    tracing::info!(not_after_ms = ?self.credentials.not_after_ms(), "joined: certificate of the node CA installed");
                    return Ok(());
                }
                Ok(res) => {
                    anyhow::bail!("admin refused the join: {} {}", res.status(), res.text().await.unwrap_or_default())
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "joining admin; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new certificate for a new CSR of the same key, as the node (its
    /// certificate, or its token).
    pub async fn renew(&self, node: &Node) -> Result<(), ReportError> {
        let csr = self.credentials.csr(Peer::Node(node.id)).map_err(|e| ReportError::Certificate(e.to_string()))?;
        let path = Self::path(node, "certificate");
        let http = self.http();
        let res = self
            .send(|u| http.post(format!("{u}{path}")).json(&CertificateRequest { csr: csr.clone(), name: None }))
            .await?;
        if !res.status().is_success() {
            return Err(ReportError::Status(res.status()));
        }
        self.install(res.json().await?)?;
        tracing::info!(generation = ?self.credentials.generation(), "certificate of the node CA renewed");
        Ok(())
    }

    async fn send(&self, make: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, ReportError> {
        self.send_as(self.token().as_deref(), make).await
    }

    /// Sends `make(url)` to the admin in use, then to the others in turn while one
    /// cannot be reached or answers 5xx; the first that answers is used from then on.
    async fn send_as(
        &self,
        token: Option<&str>,
        make: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ReportError> {
        let n = self.urls.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let k = (start + i) % n;
            let Some(url) = self.urls.get(k) else { break };
            let req = match token {
                Some(t) => make(url).bearer_auth(t),
                None => make(url),
            };
            match req.send().await {
                Ok(r) if !r.status().is_server_error() => {
                    if k != start {
                        tracing::info!(admin = %url, "reporting to another admin");
                        self.current.store(k, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Ok(r) => last = Some(ReportError::Status(r.status())),
                Err(e) => last = Some(ReportError::Http(e)),
            }
        }
        Err(last.unwrap_or(ReportError::NoAdmin))
    }

    fn path(node: &Node, what: &str) -> String {
        format!("/v1/nodes/{}/{what}", node.id)
    }

    pub async fn config(&self, node: &Node) -> Result<NodeConfig, ReportError> {
        let path = Self::path(node, "config");
        let http = self.http();
        let res = self.send(|u| http.get(format!("{u}{path}"))).await?;
        if !res.status().is_success() {
            return Err(ReportError::Status(res.status()));
        }
        Ok(res.json().await?)
    }

    async fn heartbeat(&self, node: &Node, hb: &Heartbeat) -> Result<HeartbeatAck, ReportError> {
        let path = Self::path(node, "heartbeat");
        let http = self.http();
        let res = self.send(|u| http.post(format!("{u}{path}")).json(hb)).await?;
        if !res.status().is_success() {
            return Err(ReportError::Status(res.status()));
        }
        Ok(res.json().await?)
    }

    /// Sends the usage counted so far. A report whose answer did not come is sent
    /// again as it was, with its id, before anything newer, so admin counts it once.
    pub async fn report_usage(&self, node: &Node) -> Result<(), ReportError> {
        let report = match node.pending_usage() {
            Some(r) => r,
            None => {
                let windows = node.take_usage();
                if windows.is_empty() {
                    return Ok(());
                }
                node.hold_usage(UsageReport { id: Some(uuid::Uuid::now_v7()), windows })
            }
        };
        let path = Self::path(node, "usage");
        let http = self.http();
        let res = self.send(|u| http.post(format!("{u}{path}")).json(&report)).await?;
        if !res.status().is_success() {
            return Err(ReportError::Status(res.status()));
        }
        node.usage_sent();
        Ok(())
    }
}

/// Admin as the node's access log sends to it: `POST /v1/nodes/{id}/access-logs`,
/// with the node's credentials, to the replica in use.
pub struct AccessLogs {
    admin: Admin,
    path: String,
}

impl AccessLogs {
    pub fn new(admin: Admin, node: uuid::Uuid) -> Self {
        Self { admin, path: format!("/v1/nodes/{node}/access-logs") }
    }
}

impl headwater_serve::access_log::Destination for AccessLogs {
    fn send<'a>(&'a self, batch: &'a headwater_protocol::AccessLogBatch) -> headwater_serve::access_log::Sending<'a> {
        Box::pin(async move {
            let http = self.admin.http();
            match self.admin.send(|u| http.post(format!("{u}{}", self.path)).json(batch)).await {
                Ok(res) => Ok(res.status().as_u16()),
                Err(ReportError::Status(s)) => Ok(s.as_u16()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Fetches the node's own test content through its public listener.
async fn self_probe(http: &reqwest::Client, public: &str) -> SelfProbe {
    let started = Instant::now();
    let result = async {
        let res = http.get(format!("http://{public}{PROBE_PATH}")).timeout(Duration::from_secs(2)).send().await?;
        let status = res.status();
        let body = res.bytes().await?;
        Ok::<_, reqwest::Error>((status, body.len()))
    }
    .await;
    let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    match result {
        Ok((s, n)) if s.is_success() && n > 0 => SelfProbe { ok: true, latency_ms, error: None },
        Ok((s, _)) => SelfProbe { ok: false, latency_ms, error: Some(format!("status {s}")) },
        Err(e) => SelfProbe { ok: false, latency_ms, error: Some(e.to_string()) },
    }
}

/// Heartbeats every `interval` until `stop`; fetches a new configuration when
/// admin's version differs; asks for a drain (cancels `drain`) when admin says so.
/// Sends a last heartbeat saying `draining` when stopped.
/// Heartbeat interval of a node that serves no account yet.
const IDLE_HEARTBEAT: Duration = Duration::from_millis(250);

/// How often a node without a certificate asks for one.
const NO_CERT_RETRY: Duration = Duration::from_secs(30);

pub async fn heartbeats(
    node: Arc<Node>,
    admin: Admin,
    at: Addresses,
    interval: Duration,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let mut last_egress = node.egress_bytes.load(Ordering::Relaxed);
    let mut last_at = Instant::now();
    let mut want_version = 0u64;
    let mut last_try: Option<Instant> = None;
    // After admin announces a new configuration, fetch it and report at once
    // rather than a tick later: admin waits for that report to call a change done.
    let mut again = false;
    loop {
        let stopping = if again {
            again = false;
            stop.is_cancelled()
        } else {
            // A node that serves no account yet (a warm pool's) asks more often,
            // so an account that claims its pool is served within a fraction of
            // a second; a serving node heartbeats at the configured interval.
            let pause = if node.served().accounts.is_empty() { interval.min(IDLE_HEARTBEAT) } else { interval };
            tokio::select! {
                _ = tokio::time::sleep(pause) => false,
                _ = stop.cancelled() => true,
            }
        };
        if node.served().version != want_version || want_version == 0 {
            match admin.config(&node).await {
                Ok(c) => {
                    if c.version != node.served().version {
                        tracing::info!(version = c.version, accounts = c.accounts.len(), "configuration applied");
                    }
                    node.apply(&c);
                    want_version = c.version;
                }
                Err(e) => tracing::warn!(error = %e, "fetching configuration"),
            }
        }
        let probe = self_probe(&admin.http(), &at.public).await;
        let egress = node.egress_bytes.load(Ordering::Relaxed);
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        let egress_mbps = (egress - last_egress) as f64 * 8.0 / 1e6 / secs;
        last_egress = egress;
        last_at = Instant::now();
        let stats = node.files.stats();
        let lookups = stats.hits + stats.misses;
        let state = if stopping || node.draining.load(Ordering::Relaxed) {
            NodeState::Draining
        } else if node.served().version != 0 && probe.ok {
            NodeState::Ready
        } else {
            NodeState::Starting
        };
        let hb = Heartbeat {
            image_version: node.image_version.clone(),
            state,
            address: at.public.clone(),
            egress_mbps,
            open_connections: node.in_flight.load(Ordering::Relaxed),
            cache_hit_ratio: if lookups == 0 { 0.0 } else { stats.hits as f64 / lookups as f64 },
            self_probe: probe,
            config_version: node.served().version,
            // Routers are sent there only while the node holds a certificate to serve.
            tls_address: at.tls.clone().filter(|_| node.credentials.as_ref().is_some_and(|c| c.current().is_some())),
            unpackable: node.packager.take_unpackable(),
        };
        match admin.heartbeat(&node, &hb).await {
            Ok(ack) => {
                node.admin_ok.store(true, Ordering::Relaxed);
                // Once per announced version, so a failing fetch never spins.
                again = ack.config_version != want_version && ack.config_version != node.served().version;
                want_version = ack.config_version;
                if ack.drain && !drain.is_cancelled() {
                    tracing::info!("admin asked this node to drain");
                    drain.cancel();
                }
                // Two thirds of its life gone, a CA rotated, or none yet: a new
                // certificate (without one, every 30 s at most: an admin may
                // have no node CA).
                let holding = admin.credentials.current().is_some();
                if admin.credentials.due(ack.node_ca.as_deref())
                    && (holding || last_try.is_none_or(|t: Instant| t.elapsed() >= NO_CERT_RETRY))
                {
                    last_try = Some(Instant::now());
                    if let Err(e) = admin.renew(&node).await {
                        tracing::warn!(error = %e, "renewing the certificate; trying again");
                    }
                }
            }
            Err(e) => {
                node.admin_ok.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "heartbeat");
                node.packager.keep_unpackable(hb.unpackable);
            }
        }
        if stopping {
            return;
        }
    }
}

/// Reports usage every `interval` until `stop`, then once more.
pub async fn usage(node: Arc<Node>, admin: Admin, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if let Err(e) = admin.report_usage(&node).await {
            tracing::warn!(error = %e, "usage report");
        }
        if stopping {
            return;
        }
    }
}
