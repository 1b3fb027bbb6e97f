//! An origin node: serves VOD playlists and segments from the content store at an
//! enforced bandwidth, serves test content, reports heartbeats (with a self-probe)
//! and usage to admin, and drains gracefully. See DESIGN.md §2 (`origin/`).

mod carry;
mod conns;
mod files;
mod h1;
mod handler;
mod metrics;
mod node;
mod packaging;
mod report;
mod server;
pub mod shaper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use headwater_content::ContentStore;
use headwater_serve::ServeConfig;
use headwater_serve::mtls::Credentials;
use headwater_serve::tls::Tls;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use report::PROBE_PATH;

/// Flags of `headwater origin`; each also reads a `HEADWATER_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct OriginConfig {
    /// Address players reach the node at.
    #[arg(long, env = "HEADWATER_LISTEN", default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// The address to report to admin, when it differs from the bound one.
    #[arg(long, env = "HEADWATER_ADVERTISE")]
    pub advertise: Option<String>,
    #[arg(long, env = "HEADWATER_NODE_ID")]
    pub node_id: Uuid,
    /// Admin's URL; several, comma-separated, for admin replicas: the node uses
    /// the first that answers and moves to the next when it stops answering.
    #[arg(long, env = "HEADWATER_ADMIN_URL", default_value = "http://127.0.0.1:7400", value_delimiter = ',')]
    pub admin_url: Vec<String>,
    /// The CA that admin's HTTPS certificate comes from (PEM text, or a file),
    /// trusted alone for an https admin URL; admin hands its `--node-admin-ca`
    /// to the nodes it runs.
    #[arg(long, env = "HEADWATER_ADMIN_CA")]
    pub admin_ca: Option<String>,
    /// The node's token from its registration (`POST /v1/nodes`).
    #[arg(long, env = "HEADWATER_NODE_TOKEN", hide_env_values = true, required_unless_present = "join_token")]
    pub node_token: Option<String>,
    /// A one-time join token (admin puts one in the environment of each node
    /// it launches): the node makes its own key, sends admin a CSR, and gets a
    /// short-lived certificate of the node CA it renews by itself. Over an
    /// https admin URL that certificate is its only credential (mutual TLS).
    #[arg(long, env = "HEADWATER_JOIN_TOKEN", hide_env_values = true, conflicts_with = "node_token")]
    pub join_token: Option<String>,
    /// The address routers reach the TLS listener at, when it differs from the
    /// bound one (a pod's IP).
    #[arg(long, env = "HEADWATER_TLS_ADVERTISE")]
    pub tls_advertise: Option<String>,
    /// Serve accounts' content only to routers presenting their certificate of
    /// the node CA on the TLS listener; plain HTTP keeps the test content,
    /// health and metrics.
    #[arg(long, env = "HEADWATER_ROUTERS_ONLY", requires = "tls_listen", conflicts_with = "tls_cert")]
    pub routers_only: bool,
    /// Total egress limit until admin's configuration says otherwise.
    #[arg(long, env = "HEADWATER_CAPACITY_MBPS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity_mbps: u32,
    /// A directory, file:///dir, or s3://bucket/prefix.
    #[arg(long, env = "HEADWATER_CONTENT_URL", default_value = "headwater-data/content")]
    pub content: String,
    /// Memory for hot playlists and segments.
    #[arg(long, env = "HEADWATER_CACHE_MIB", default_value_t = 256)]
    pub cache_mib: u64,
    /// Memory for just-in-time packaging (`jit` pools): a quarter for MP4
    /// indexes, the rest for packaged manifests and segments.
    #[arg(long, env = "HEADWATER_JIT_CACHE_MIB", default_value_t = 256)]
    pub jit_cache_mib: u64,
    #[arg(long, env = "HEADWATER_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "HEADWATER_USAGE_REPORT_MS", default_value_t = 10_000)]
    pub usage_report_ms: u64,
    /// The image version this node reports.
    #[arg(long, env = "HEADWATER_IMAGE_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub image_version: String,
    /// Proxies (routers) whose X-Forwarded-For is believed; repeat for more.
    #[arg(long = "trusted-proxy", env = "HEADWATER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Time in-flight responses get to finish when draining.
    #[arg(long, env = "HEADWATER_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// A client must send a whole request head within this time after connecting
    /// or starting a request; slower ones are disconnected.
    #[arg(long, env = "HEADWATER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// `/metrics` answers only `Authorization: Bearer` this token (it names every
    /// account); without it the node's metrics are off. Admin hands its own to
    /// the nodes it runs.
    #[arg(long, env = "HEADWATER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A keep-alive connection with no request (HTTP/1.1) or no stream (HTTP/2)
    /// for this long is closed. Above the router's 30 s pool idle time, like
    /// nginx's 75 s `keepalive_timeout`.
    #[arg(long, env = "HEADWATER_IDLE_TIMEOUT_SECS", default_value_t = 75,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Most client connections open at once. At the bound the connection idle
    /// longest is closed for a new one; with every one busy a new one gets 503.
    #[arg(long, env = "HEADWATER_MAX_CONNECTIONS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    #[command(flatten)]
    pub access_log: headwater_serve::access_log::AccessLogArgs,
    #[command(flatten)]
    pub tls: headwater_serve::tls::TlsArgs,
}

/// Runs a node until `shutdown` (SIGTERM) or admin's drain request; then stops
/// accepting, finishes in-flight responses, reports `draining`, and returns.
pub async fn run(cfg: OriginConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = ContentStore::open(&cfg.content).context("opening the content store")?;
    let files = files::Files::new(store, cfg.cache_mib);
    let metrics = metrics::Metrics::new()?;
    let shaper = shaper::Shaper::new(cfg.capacity_mbps);
    let credentials = Credentials::new().context("making the node's key")?;
    let mut node = node::Node::new(
        cfg.node_id,
        cfg.image_version.clone(),
        files,
        shaper,
        metrics,
        cfg.trusted_proxies.clone(),
        cfg.metrics_token.clone(),
    );
    node.routers_only = cfg.routers_only;
    node.packager =
        packaging::Packager::new(node.files.store().clone(), cfg.jit_cache_mib, headwater_jit::Settings::default());
    node.credentials = Some(credentials.clone());
    let roots = headwater_serve::mtls::roots(cfg.admin_ca.as_deref()).context("--admin-ca")?;
    let admin = report::Admin::new(&cfg.admin_url, roots, credentials.clone(), cfg.node_token.clone())?;
    // The records of the requests the node answers players directly (a
    // router's are the router's to log); stopped after the drain.
    let access_log_stop = CancellationToken::new();
    let access_log = if cfg.access_log.enabled() {
        use headwater_serve::access_log;
        let options = access_log::Options::new(&cfg.access_log, format!("node:{}", cfg.node_id));
        let destination = report::AccessLogs::new(admin.clone(), cfg.node_id);
        let dropped = node.metrics.access_records_dropped.clone();
        let (log, task) = access_log::start(options, Arc::new(destination), dropped, access_log_stop.clone())
            .context("starting the access log")?;
        node.access_log = Some(log);
        Some(task)
    } else {
        None
    };
    let node = Arc::new(node);
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let public = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
    // The first certificate: by the join token, or (a registered node) by its token.
    match &cfg.join_token {
        Some(join) => admin.join(&node, join).await.context("joining admin")?,
        None => {
            if let Err(e) = admin.renew(&node).await {
                tracing::warn!(error = %e, "no certificate of the node CA: mutual TLS is off for now");
            }
        }
    }
    // TLS from files, or (without them) with the node's certificate, to routers.
    let tls = match (&cfg.tls.tls_listen, cfg.tls.tls_cert.is_empty()) {
        (Some(at), true) => {
            let l = TcpListener::bind(at).await.with_context(|| format!("binding {at}"))?;
            Some((l, Tls::of_identity(credentials.clone(), credentials.trust.clone())))
        }
        _ => cfg.tls.bind(&shutdown).await?,
    };
    let tls_public = match &tls {
        Some((l, t)) if t.certs.is_none() => {
            let port = l.local_addr()?.port();
            Some(cfg.tls_advertise.clone().unwrap_or_else(|| match public.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{port}"),
                None => format!("{}:{port}", addr.ip()),
            }))
        }
        _ => None,
    };

    // Content store reachable before we say we listen.
    node.files.store().ping().await.context("content store unreachable")?;
    println!("headwater origin listening on http://{addr}");
    if let Some((l, _)) = &tls {
        println!("headwater origin listening on https://{}", l.local_addr()?);
    }
    tracing::info!(%addr, node = %cfg.node_id, "origin listening");

    // Drain on SIGTERM or when admin asks: one token for both.
    let drain = shutdown.child_token();
    let stop_reports = CancellationToken::new();
    let hb = tokio::spawn(report::heartbeats(
        node.clone(),
        admin.clone(),
        report::Addresses { public, tls: tls_public },
        Duration::from_millis(cfg.heartbeat_ms),
        drain.clone(),
        stop_reports.clone(),
    ));
    let usage = tokio::spawn(report::usage(
        node.clone(),
        admin,
        Duration::from_millis(cfg.usage_report_ms),
        stop_reports.clone(),
    ));
    let serve_cfg = ServeConfig {
        drain_timeout: Duration::from_secs(cfg.drain_secs),
        header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
        idle_timeout: Duration::from_secs(cfg.idle_timeout_secs),
    };
    let conns =
        conns::Connections::new(usize::try_from(cfg.max_connections).unwrap_or(usize::MAX), &node.metrics.registry)?;
    let serving = tokio::spawn(server::serve(listener, None, node.clone(), conns.clone(), drain.clone(), serve_cfg));
    let serving_tls =
        tls.map(|(l, tls)| tokio::spawn(server::serve(l, Some(tls), node.clone(), conns, drain.clone(), serve_cfg)));
    drain.cancelled().await;
    node.draining.store(true, Ordering::Relaxed);
    tracing::info!("draining");
    let mut left = serving.await.unwrap_or(0);
    if let Some(t) = serving_tls {
        left += t.await.unwrap_or(0);
    }
    access_log_stop.cancel();
    if let Some(t) = access_log {
        let _ = t.await;
    }
    stop_reports.cancel();
    let _ = tokio::join!(hb, usage);
    if left > 0 {
        tracing::warn!(left, "connections cut at the drain deadline");
    }
    tracing::info!("drained");
    Ok(())
}
