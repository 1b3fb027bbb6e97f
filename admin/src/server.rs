//! `headwater admin`: configuration and the serving loop.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState, Metrics, RateLimits, Rates};
use crate::bus::Bus;
use crate::clock::{Clock, SystemClock};
use crate::control::health::Prober;
use crate::control::partition::PartitionPolicy;
use crate::control::reconciler::{HealthPolicy, NodeTemplate, NodeTls, Reconciler, ScalePolicy};
use crate::control::worker::Worker;
use crate::keys;
use crate::store::Store;
use headwater_content::ContentStore;
use headwater_provisioner::{Driver, ProcessDriver};
use headwater_serve::tls::Tls;
use headwater_serve::{ServeConfig, with_peer};

/// Flags of `headwater admin`; each also reads a `HEADWATER_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminConfig {
    /// Address of the REST API.
    #[arg(long, env = "HEADWATER_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// `sqlite://PATH` (embedded, created on first start) or `postgres://…`.
    #[arg(long, env = "HEADWATER_DATABASE_URL", default_value = "sqlite://headwater-data/headwater.db")]
    pub database_url: String,
    /// Redis for the bus between admin replicas (operation wake-ups); in-process without it.
    #[arg(long, env = "HEADWATER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the Redis channels, so deployments can share one Redis.
    #[arg(long, env = "HEADWATER_REDIS_PREFIX", default_value = "headwater")]
    pub redis_prefix: String,
    /// Where generated credentials are kept.
    #[arg(long, env = "HEADWATER_DATA_DIR", default_value = "headwater-data")]
    pub data_dir: PathBuf,
    /// Bearer token of operator routes; generated into DATA_DIR/operator-token when unset.
    #[arg(long, env = "HEADWATER_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Bearer token of `/metrics` (for Prometheus; the operator token works too),
    /// handed to the nodes admin runs; generated into DATA_DIR/metrics-token when unset.
    #[arg(long, env = "HEADWATER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Bearer token of routers: it reads the routing table and reports what the
    /// router reaches, nothing else; generated into DATA_DIR/router-token when unset.
    #[arg(long, env = "HEADWATER_ROUTER_TOKEN", hide_env_values = true)]
    pub router_token: Option<String>,
    /// The master key secrets at rest are sealed under (playback keys): 32 random
    /// bytes, base64url; generated into DATA_DIR/master-key when unset. Every
    /// admin replica needs the same one.
    #[arg(long, env = "HEADWATER_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// CAs (a PEM file) trusted for accounts' own domains besides the web's
    /// public roots: a private PKI's. Customers' certificates must chain to one.
    #[arg(long, env = "HEADWATER_DOMAIN_CA")]
    pub domain_ca: Option<PathBuf>,
    /// Base URL of the router, from which each account's locator is made.
    #[arg(long, env = "HEADWATER_LOCATOR_BASE", default_value = "http://127.0.0.1:7401")]
    pub locator_base: String,
    /// How long a deactivated account's pool is kept, in hours.
    #[arg(long, env = "HEADWATER_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u32,
    /// How long access records are kept, in hours.
    #[arg(long, env = "HEADWATER_ACCESS_LOG_RETENTION_HOURS", default_value_t = 168,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub access_log_retention_hours: u32,
    /// The nodes admin runs keep only the client's network in their access
    /// records: an IPv4 /24, an IPv6 /48 (routers take the same flag).
    #[arg(long = "access-log-truncate-clients", env = "HEADWATER_ACCESS_LOG_TRUNCATE_CLIENTS")]
    pub access_log_truncate_clients: bool,
    /// API requests per second per customer (all its keys together), node, or the
    /// operator (bursts to twice that).
    #[arg(long, env = "HEADWATER_RATE_LIMIT_PER_KEY", default_value = "20")]
    pub rate_limit_per_key: NonZeroU32,
    /// File uploads per second per customer (bursts to twice that).
    #[arg(long, env = "HEADWATER_UPLOAD_RATE_LIMIT", default_value = "100")]
    pub upload_rate_limit: NonZeroU32,
    /// Requests per second per client IP without valid credentials (bursts to twice that).
    #[arg(long, env = "HEADWATER_UNAUTHENTICATED_RATE_LIMIT", default_value = "20")]
    pub unauthenticated_rate_limit: NonZeroU32,
    /// Sign-ups per minute per client IP.
    #[arg(long, env = "HEADWATER_SIGNUP_RATE_LIMIT", default_value = "10")]
    pub signup_rate_limit: NonZeroU32,
    /// Operation workers in this process (0 serves the API only).
    #[arg(long, env = "HEADWATER_WORKERS", default_value_t = 1)]
    pub workers: u16,
    /// How often an idle worker looks for work without being told, in milliseconds.
    #[arg(long, env = "HEADWATER_WORKER_POLL_MS", default_value_t = 1000)]
    pub worker_poll_ms: u64,
    /// Where assets are stored: a directory, file:///dir, or s3://bucket/prefix
    /// (endpoint and credentials from AWS_ENDPOINT, AWS_ACCESS_KEY_ID, …).
    #[arg(long = "content", env = "HEADWATER_CONTENT_URL", default_value = "headwater-data/content")]
    pub content_url: String,
    /// Largest uploaded file in bytes.
    #[arg(long, env = "HEADWATER_MAX_UPLOAD_BYTES", default_value_t = 4 << 30)]
    pub max_upload_bytes: u64,
    /// How origin nodes are run: `process` (local processes that outlive an admin
    /// restart, on process targets, and pods on Kubernetes targets), `kubernetes`
    /// (pods on Kubernetes targets only: admin runs no processes, as in a cluster)
    /// or `none` (nodes are registered and started by hand).
    #[arg(long, env = "HEADWATER_DRIVER", value_enum, default_value_t = NodeDriver::Process)]
    pub driver: NodeDriver,
    /// Targets to create at start (a JSON array of `POST /v1/targets` bodies),
    /// each unless one of its name exists; after that the API changes them.
    #[arg(long = "targets", env = "HEADWATER_TARGETS_FILE")]
    pub targets_file: Option<PathBuf>,
    /// The program nodes run (`headwater` itself by default).
    #[arg(long, env = "HEADWATER_NODE_PROGRAM")]
    pub node_program: Option<PathBuf>,
    /// The admin URL(s) nodes report to, comma-separated (each node fails over to
    /// the next when one is down): the replicas' shared address, or each replica's.
    /// Default: this admin's own listen address.
    #[arg(long, env = "HEADWATER_NODE_ADMIN_URL")]
    pub node_admin_url: Option<String>,
    /// The CA of the certificate at the node admin URL (a PEM file), when that
    /// URL is https: nodes trust it alone for their reports (it travels in their
    /// environment as HEADWATER_ADMIN_CA).
    #[arg(long, env = "HEADWATER_NODE_ADMIN_CA")]
    pub node_admin_ca: Option<PathBuf>,
    /// How long a certificate of the node CA (nodes', routers') is valid; they
    /// renew after two thirds of it.
    #[arg(long, env = "HEADWATER_NODE_CERT_LIFETIME_SECS", default_value_t = 12 * 3600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub node_cert_lifetime_secs: u64,
    /// How long a rotation's new node CA is trusted before it signs, so every
    /// node and router trusts it before any presents a certificate of it (they
    /// hear of a new one within a heartbeat).
    #[arg(long, env = "HEADWATER_NODE_CA_STAGE_SECS", default_value_t = 10)]
    pub node_ca_stage_secs: u64,
    /// What the nodes admin runs serve to routers: `off` (plain HTTP), `beside`
    /// (mutual TLS with their node certificate beside plain HTTP), or
    /// `routers-only` (accounts' content over mutual TLS to routers'
    /// certificates only; plain HTTP keeps test content, health and metrics).
    #[arg(long, env = "HEADWATER_NODE_TLS", value_enum, default_value_t = NodeTls::Off)]
    pub node_tls: NodeTls,
    /// The routers' addresses (CIDR, repeat or comma-separate): the nodes admin
    /// runs believe the client address a router forwards (`X-Forwarded-For`, for IP
    /// allow-lists) from these only. None by default: no forwarded address is
    /// believed. `up` sets its router's.
    #[arg(long = "trusted-proxy", env = "HEADWATER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A node without a heartbeat for this long is failed and replaced.
    #[arg(long, env = "HEADWATER_HEARTBEAT_TIMEOUT_MS", default_value_t = 3000)]
    pub heartbeat_timeout_ms: u64,
    /// A target is cut off (`unreachable`) when at least this share of its
    /// heartbeating nodes (and at least two) go unheard together while their
    /// instances still run; its nodes are then not all replaced at once.
    #[arg(long, env = "HEADWATER_PARTITION_FRACTION", default_value_t = 0.5)]
    pub partition_fraction: f64,
    /// Nodes of a cut-off target replaced per minute (the first a minute after
    /// it was cut off).
    #[arg(long, env = "HEADWATER_PARTITION_REPLACEMENTS_PER_MINUTE", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=600))]
    pub partition_replacements_per_minute: u32,
    /// A shared pool grows (or shrinks) after its egress stays above 70 % (below
    /// 30 %) of its capacity for this long, in seconds.
    #[arg(long, env = "HEADWATER_SCALE_WINDOW_SECS", default_value_t = 30)]
    pub scale_window_secs: u64,
    /// How often admin probes every node's test content (availability), in ms.
    #[arg(long, env = "HEADWATER_PROBE_INTERVAL_MS", default_value_t = 2000)]
    pub probe_interval_ms: u64,
    /// Accounts one customer may hold, unless the operator sets its own quota.
    #[arg(long, env = "HEADWATER_QUOTA_ACCOUNTS", default_value_t = 10)]
    pub quota_accounts: u32,
    /// The SLAs of one customer's accounts may add up to this many Mbit/s.
    #[arg(long, env = "HEADWATER_QUOTA_SLA_MBPS", default_value_t = 1000)]
    pub quota_sla_mbps: u32,
    /// What one account may store, in GiB.
    #[arg(long, env = "HEADWATER_QUOTA_STORAGE_GIB", default_value_t = 100)]
    pub quota_storage_gib: u32,
    /// Largest request body in bytes.
    #[arg(long, env = "HEADWATER_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// A client must send a whole request head within this time of connecting (or
    /// of its previous answer); slower ones, and silent ones, are disconnected.
    #[arg(long, env = "HEADWATER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Time a request may take, including reading its body, in seconds.
    #[arg(long, env = "HEADWATER_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// For tests: `POST /v1/test/clock` moves the retention collector's clock
    /// forward, so days of retention pass in a moment.
    #[arg(long, env = "HEADWATER_TEST_CLOCK", hide = true)]
    pub test_clock: bool,
    #[command(flatten)]
    pub tls: headwater_serve::tls::TlsArgs,
}

/// What runs the origin nodes of pools (`--driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeDriver {
    Process,
    Kubernetes,
    None,
}

/// A token from its flag, or from DATA_DIR/`file`, made and saved there (readable
/// by the owner only) on first start.
fn token(cfg: &AdminConfig, flag: Option<&String>, file: &str, what: &str) -> anyhow::Result<String> {
    if let Some(t) = flag.filter(|t| !t.is_empty()) {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join(file);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    keys::create_private_dir(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let token = keys::random_token();
    keys::write_secret_file(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{what} generated and saved in {}", path.display());
    Ok(token)
}

/// The master key of `--master-key`, or DATA_DIR/master-key (made there,
/// owner-only, on first start).
pub fn master_key(flag: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<crate::sealed::Sealer> {
    if let Some(k) = flag.filter(|k| !k.is_empty()) {
        return crate::sealed::Sealer::from_text(k).context("--master-key");
    }
    let path = data_dir.join("master-key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return crate::sealed::Sealer::from_text(&k).with_context(|| path.display().to_string());
    }
    keys::create_private_dir(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let key = keys::secret();
    keys::write_secret_file(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("master key generated and saved in {}", path.display());
    crate::sealed::Sealer::from_text(&key)
}

/// Everything `admin` runs, assembled: used by `headwater admin` and by `up`.
pub struct Admin {
    pub state: AppState,
    heartbeat_rx: tokio::sync::mpsc::Receiver<crate::control::heartbeats::Queued>,
    pub workers: Vec<Worker>,
    /// Runs the nodes of process targets; `None` with `--driver kubernetes` or `none`.
    pub driver: Option<Arc<dyn Driver>>,
    cfg: AdminConfig,
}

impl Admin {
    pub async fn build(cfg: &AdminConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = Store::connect(&cfg.database_url).await.context("opening the store")?;
        store.seed_builtin_types(clock.now_ms()).await.context("seeding origin types")?;
        let bus = match &cfg.redis_url {
            Some(url) => Bus::redis(url, &cfg.redis_prefix, Duration::from_secs(2)).await.context("the Redis URL")?,
            None => Bus::in_process(),
        };
        let sealer = Arc::new(master_key(cfg.master_key.as_deref(), &cfg.data_dir)?);
        let settings = ApiSettings {
            operator_token: token(cfg, cfg.operator_token.as_ref(), "operator-token", "operator token")?,
            metrics_token: token(cfg, cfg.metrics_token.as_ref(), "metrics-token", "metrics token")?,
            router_token: token(cfg, cfg.router_token.as_ref(), "router-token", "router token")?,
            locator_base: cfg.locator_base.clone(),
            retention_ms: i64::from(cfg.retention_hours) * 3_600_000,
            max_body_bytes: cfg.max_body_bytes,
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            max_upload_bytes: cfg.max_upload_bytes,
            upload_timeout: Duration::from_secs(3600),
            sealer: sealer.clone(),
            domain_roots: match &cfg.domain_ca {
                Some(p) => {
                    headwater_serve::tls::read_certs(p).with_context(|| format!("--domain-ca {}", p.display()))?
                }
                None => Vec::new(),
            },
            quotas: api::quotas::QuotaDefaults {
                max_accounts: i64::from(cfg.quota_accounts),
                max_total_sla_mbps: i64::from(cfg.quota_sla_mbps),
                max_storage_bytes: i64::from(cfg.quota_storage_gib) << 30,
            },
        };
        let content = ContentStore::open(&cfg.content_url).context("opening the content store")?;
        let seeded = crate::probe_content::seed(&content).await.context("writing the test content")?;
        if seeded > 0 {
            tracing::info!(files = seeded, "test content written under _probe/");
        }
        let (heartbeats, heartbeat_rx) = crate::control::heartbeats::HeartbeatQueue::new();
        let metrics = Arc::new(Metrics::new()?);
        let state = AppState {
            store: store.clone(),
            clock: clock.clone(),
            bus: bus.clone(),
            settings: Arc::new(settings),
            heartbeats,
            content,
            routing: Arc::new(crate::control::routing::Routing::with_metrics(metrics.control.clone())),
            serving: Arc::default(),
            metrics,
            limits: Arc::new(RateLimits::new(Rates {
                per_principal: cfg.rate_limit_per_key,
                uploads: cfg.upload_rate_limit,
                unauthenticated: cfg.unauthenticated_rate_limit,
                signups_per_min: cfg.signup_rate_limit,
            })),
            node_ca: crate::node_ca::NodeCa::load(
                &store,
                &sealer,
                Duration::from_secs(cfg.node_cert_lifetime_secs),
                Duration::from_secs(cfg.node_ca_stage_secs),
                clock.clone(),
            )
            .await
            .context("the node CA")?,
            test_clock: cfg.test_clock.then(Arc::default),
        };
        if let Some(path) = &cfg.targets_file {
            crate::api::targets::declare(&store, path, clock.now_ms()).await?;
        }
        let driver: Option<Arc<dyn Driver>> = match cfg.driver {
            NodeDriver::Process => Some(Arc::new(ProcessDriver::new(cfg.data_dir.join("nodes"))?)),
            NodeDriver::Kubernetes | NodeDriver::None => None,
        };
        let workers = (0..cfg.workers)
            .map(|_| {
                let mut w = Worker::new(store.clone(), clock.clone(), bus.wake.clone());
                w.poll = Duration::from_millis(cfg.worker_poll_ms);
                w.wait_for_nodes = cfg.driver != NodeDriver::None;
                w
            })
            .collect();
        Ok(Self { state, heartbeat_rx, workers, driver, cfg: cfg.clone() })
    }

    /// Serves the API on `listener` (and over TLS on `tls`, when given) and runs
    /// the worker until `shutdown`, then drains in-flight requests.
    pub async fn run(
        self,
        listener: TcpListener,
        tls: Option<(TcpListener, Arc<Tls>)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let store = self.state.store.clone();
        let limits = self.state.limits.clone();
        let workers: Vec<_> = self.workers.into_iter().map(|w| tokio::spawn(w.run(shutdown.clone()))).collect();
        // The writer outlives the server so heartbeats queued during the drain are kept.
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(crate::control::heartbeats::write(
            self.state.store.clone(),
            self.heartbeat_rx,
            writer_stop.clone(),
        ));
        let prober = Prober {
            store: self.state.store.clone(),
            clock: self.state.clock.clone(),
            http: reqwest::Client::builder().build()?,
            interval: Duration::from_millis(self.cfg.probe_interval_ms),
        };
        let prober = tokio::spawn(prober.run(shutdown.clone()));
        // Routers hear routing changes over Redis or on the routing stream.
        let routing = tokio::spawn(self.state.routing.clone().publish(
            self.state.store.clone(),
            self.state.bus.clone(),
            self.state.settings.sealer.clone(),
            self.state.node_ca.clone(),
            crate::control::routing::PUBLISH_EVERY,
            shutdown.clone(),
        ));
        let collector = crate::control::retention::Collector {
            store: self.state.store.clone(),
            bus: self.state.bus.clone(),
            clock: self.state.clock.clone(),
            retention_clock: match &self.state.test_clock {
                Some(c) => c.clone(),
                None => self.state.clock.clone(),
            },
            access_log_retention_ms: i64::from(self.cfg.access_log_retention_hours) * 3_600_000,
            every: Duration::from_secs(1),
        };
        // One replica at a time runs the loops that act on the whole fleet.
        let (leader_task, leader) =
            crate::control::leader::Leader::new(self.state.store.clone(), self.state.clock.clone())
                .spawn(shutdown.clone());
        let collector = tokio::spawn(collector.run(shutdown.clone(), leader.clone()));
        let keeper = crate::control::warm::Keeper {
            store: self.state.store.clone(),
            clock: self.state.clock.clone(),
            every: Duration::from_secs(1),
        };
        let keeper = tokio::spawn(keeper.run(shutdown.clone(), leader.clone()));
        let reconciler = match self.cfg.driver {
            NodeDriver::Process | NodeDriver::Kubernetes => {
                let program = match &self.cfg.node_program {
                    Some(p) => p.clone(),
                    None => std::env::current_exe().context("finding the headwater binary for nodes")?,
                };
                let template = NodeTemplate {
                    program,
                    admin_url: match &self.cfg.node_admin_url {
                        Some(u) => u.clone(),
                        None => format!("http://{}", listener.local_addr()?),
                    },
                    content_url: self.cfg.content_url.clone(),
                    heartbeat_ms: 1000,
                    trusted_proxies: self.cfg.trusted_proxies.iter().map(ToString::to_string).collect(),
                    metrics_token: self.state.settings.metrics_token.clone(),
                    node_tls: self.cfg.node_tls,
                    access_log_truncate_clients: self.cfg.access_log_truncate_clients,
                    admin_ca: match &self.cfg.node_admin_ca {
                        Some(p) => {
                            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                        }
                        None => None,
                    },
                };
                let policy = HealthPolicy {
                    heartbeat_timeout_ms: i64::try_from(self.cfg.heartbeat_timeout_ms).unwrap_or(3000),
                    ..HealthPolicy::default()
                };
                let scale = ScalePolicy {
                    sustain_ms: i64::try_from(self.cfg.scale_window_secs * 1000).unwrap_or(30_000),
                    ..ScalePolicy::default()
                };
                let mut r = Reconciler::new(
                    self.state.store.clone(),
                    self.driver,
                    self.state.clock.clone(),
                    template,
                    policy,
                    scale,
                );
                r.metrics = Some(self.state.metrics.control.clone());
                r.partition = PartitionPolicy {
                    fraction: self.cfg.partition_fraction.clamp(0.01, 1.0),
                    replacements_per_minute: self.cfg.partition_replacements_per_minute,
                };
                Some(tokio::spawn(r.run(shutdown.clone(), leader.clone())))
            }
            NodeDriver::None => None,
        };
        let sweeper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut every = crate::control::every::Every::new(Duration::from_secs(60), &shutdown);
                while every.next().await {
                    limits.retain_recent();
                }
            })
        };
        self.state.node_ca.clone().watch(
            self.state.store.clone(),
            self.state.settings.sealer.clone(),
            crate::node_ca::REFRESH_EVERY,
            shutdown.clone(),
        );
        // Nodes and routers may present a certificate of the node CA instead of a token.
        let trust = self.state.node_ca.trust.clone();
        let tls = match tls {
            Some((l, t)) => {
                let certs = t.certs.clone().context("admin's TLS serves certificate files")?;
                Some((l, Tls::with_clients(certs.clone(), certs, Some(trust))))
            }
            None => None,
        };
        let app = api::router(self.state);
        let serve = ServeConfig {
            drain_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_millis(self.cfg.header_read_timeout_ms),
            ..ServeConfig::default()
        };
        headwater_serve::run_both(listener, tls, |peer| with_peer(app.clone(), peer), shutdown.clone(), serve).await;
        shutdown.cancel();
        for w in workers {
            let _ = w.await;
        }
        if let Some(r) = reconciler {
            let _ = r.await;
        }
        let _ = prober.await;
        let _ = routing.await;
        let _ = collector.await;
        let _ = keeper.await;
        let _ = leader_task.await;
        writer_stop.cancel();
        let _ = writer.await;
        let _ = sweeper.await;
        store.close().await;
        Ok(())
    }
}

/// `headwater admin`: binds, prints where it listens, serves until Ctrl-C or SIGTERM.
pub async fn run(cfg: AdminConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = Admin::build(&cfg, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = admin.state.store.backend_name(), bus = admin.state.bus.backend_name(), "admin listening");
    println!("headwater admin listening on http://{addr}");
    let tls = cfg.tls.bind(&shutdown).await?;
    if let Some((l, _)) = &tls {
        println!("headwater admin listening on https://{}", l.local_addr()?);
    }
    admin.run(listener, tls, shutdown).await
}
