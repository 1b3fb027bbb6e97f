//! The router: the stable-locator front door. It resolves account → ready nodes
//! from the routing table admin publishes and proxies each request to a node
//! (or redirects to it), retrying an idempotent request on another node when one
//! fails before answering, so players see no error. See DESIGN.md §2 (`router/`).

mod certs;
mod identity;
mod proxy;
mod sightings;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use headwater_serve::ServeConfig;
use headwater_serve::mtls::Credentials;
use headwater_serve::tls::Tls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use headwater_serve::access_log::AccessLogArgs;
pub use proxy::{Options, Router};

/// Proxy through the router, or redirect players to a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Proxy,
    Redirect,
}

/// Flags of `headwater router`; each also reads a `HEADWATER_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterConfig {
    #[arg(long, env = "HEADWATER_ROUTER_LISTEN", default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,
    #[arg(long, env = "HEADWATER_ADMIN_URL", default_value = "http://127.0.0.1:7400")]
    pub admin_url: String,
    /// Reads the routing table from admin: the router token (admin's
    /// DATA_DIR/router-token), which can do nothing else (the operator token
    /// works too, but gives a router far more than it needs).
    #[arg(
        long = "router-token",
        visible_alias = "operator-token",
        env = "HEADWATER_ROUTER_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// The CA that admin's HTTPS certificate comes from (PEM text, or a file),
    /// trusted alone for an https admin URL.
    #[arg(long, env = "HEADWATER_ADMIN_CA")]
    pub admin_ca: Option<String>,
    #[arg(long, value_enum, env = "HEADWATER_ROUTER_MODE", default_value = "proxy")]
    pub mode: Mode,
    /// Serve `http://{account}.DOMAIN/{asset}/{file}` by Host header too.
    #[arg(long, env = "HEADWATER_DOMAIN")]
    pub domain: Option<String>,
    /// Redis on which admin publishes routing changes (applied at once); without
    /// it the router follows admin's routing stream.
    #[arg(long, env = "HEADWATER_REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "HEADWATER_REDIS_PREFIX", default_value = "headwater")]
    pub redis_prefix: String,
    /// With Redis, how often admin is also polled for the routing table, in ms.
    #[arg(long, env = "HEADWATER_ROUTING_REFRESH_MS", default_value_t = 250)]
    pub refresh_ms: u64,
    /// The address the router connects to nodes from, so nodes can tell it from
    /// other clients and believe its `X-Forwarded-For` (admin's
    /// `--trusted-proxy`); e.g. 127.0.0.2 when both run on one host.
    #[arg(long, env = "HEADWATER_ROUTER_SOURCE_IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// A player must send a whole request head within this time of connecting (or
    /// of its previous answer); slower ones, and silent ones, are disconnected.
    #[arg(long, env = "HEADWATER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// `/metrics` answers only `Authorization: Bearer` this token (it names every
    /// account); without it the router's metrics are off.
    #[arg(long, env = "HEADWATER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The router's name in its reports to admin (default: the host name, a pod's name).
    #[arg(long, env = "HEADWATER_ROUTER_NAME")]
    pub name: Option<String>,
    /// How often the router probes every node's test content and tells admin
    /// which it reached (its view, for admin's partition rule), in ms; 0: never.
    #[arg(long, env = "HEADWATER_SIGHTINGS_MS", default_value_t = 1000)]
    pub sightings_ms: u64,
    #[command(flatten)]
    pub access_log: AccessLogArgs,
    #[command(flatten)]
    pub tls: headwater_serve::tls::TlsArgs,
}

/// Runs a router on `listener` (and over TLS on `tls`) until `shutdown`, then drains.
pub async fn serve(
    cfg: RouterConfig,
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<Tls>)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let table = Arc::new(table::Shared::default());
    let admin = table::AdminApi { base: cfg.admin_url.clone(), ca: cfg.admin_ca.clone(), token: cfg.token.clone() };
    // Checked here, so a bad CA stops the router instead of its followers.
    let http = admin.client(|b| b.timeout(Duration::from_secs(5)))?;
    // Its certificate of the node CA before the first table, so nodes that
    // serve mutual TLS are reached over it from the start; `keep` retries.
    let credentials = Credentials::new().context("making the router's key")?;
    let name = sightings::router_name(cfg.name.as_deref());
    match identity::obtain(&http, &admin, &name, &credentials).await {
        Ok(()) => {
            table.mtls.store(true, std::sync::atomic::Ordering::Relaxed);
            table.certificates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "no router certificate from admin yet: nodes are reached over plain HTTP"),
    }
    // With Redis: changes pushed there, the snapshot and a fallback polled from
    // admin. Without: admin's routing stream.
    let wake = Arc::new(tokio::sync::Notify::new());
    let followers = match cfg.redis_url.clone() {
        Some(url) => vec![
            tokio::spawn(table::follow(
                table.clone(),
                admin.clone(),
                Duration::from_millis(cfg.refresh_ms),
                wake.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(table::listen(table.clone(), url, cfg.redis_prefix.clone(), wake, shutdown.clone())),
        ],
        None => {
            vec![tokio::spawn(table::stream(table.clone(), admin.clone(), shutdown.clone()))]
        }
    };
    let mut followers = followers;
    followers.push(tokio::spawn(identity::keep(
        table.clone(),
        admin.clone(),
        name.clone(),
        credentials.clone(),
        shutdown.clone(),
    )));
    if cfg.sightings_ms > 0 {
        followers.push(tokio::spawn(sightings::report(
            table.clone(),
            admin.clone(),
            name.clone(),
            Duration::from_millis(cfg.sightings_ms),
            cfg.source_ip,
            shutdown.clone(),
        )));
    }
    let access_log_stop = CancellationToken::new();
    let access_log = if cfg.access_log.enabled() {
        use headwater_serve::access_log;
        let options = access_log::Options::new(&cfg.access_log, format!("router:{name}"));
        let destination = access_log::HttpDestination {
            http: admin.client(|b| b.timeout(Duration::from_secs(10)))?,
            url: admin.url("/v1/routing/access-logs"),
            token: admin.token.clone(),
        };
        let dropped = prometheus::IntCounter::new(
            "access_records_dropped_total",
            "access records dropped (queue full, or admin away too long)",
        )?;
        // Stopped after the drain below, so the requests finished while
        // draining are logged too.
        let (log, task) = access_log::start(options, Arc::new(destination), dropped, access_log_stop.clone())
            .context("starting the access log")?;
        followers.push(task);
        Some(log)
    } else {
        None
    };
    let options = Options {
        access_log,
        mode: cfg.mode,
        domain: cfg.domain.clone(),
        source_ip: cfg.source_ip,
        metrics_token: cfg.metrics_token.clone(),
        credentials: Some(credentials),
    };
    // Accounts' own domains are served with their certificates, by SNI.
    let tls = match tls {
        Some((l, own)) => {
            let own = own.certs.clone().context("the router's TLS serves certificate files")?;
            let resolver =
                Arc::new(certs::AccountCerts { table: table.clone(), own: own.clone(), domain: cfg.domain.clone() });
            Some((l, Tls::with_resolver(own, resolver)))
        }
        None => None,
    };
    let router = Arc::new(Router::new(table, options)?);
    headwater_serve::run_both(
        listener,
        tls,
        move |peer| {
            let router = router.clone();
            tower::service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, std::convert::Infallible>(router.handle(peer, req).await) }
            })
        },
        shutdown,
        ServeConfig {
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
            ..ServeConfig::default()
        },
    )
    .await;
    access_log_stop.cancel();
    for f in followers {
        let _ = f.await;
    }
    Ok(())
}

/// `headwater router`.
pub async fn run(cfg: RouterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    println!("headwater router listening on http://{}", listener.local_addr()?);
    let tls = cfg.tls.bind(&shutdown).await?;
    if let Some((l, _)) = &tls {
        println!("headwater router listening on https://{}", l.local_addr()?);
    }
    serve(cfg, listener, tls, shutdown).await
}
