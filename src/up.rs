//! `headwater up`: the whole platform on one machine — admin, the reconciler with
//! its node processes, and the router — with the embedded defaults (SQLite, an
//! in-process bus, a local content directory) under one data directory.
//! `--demo` adds a customer, a trial and an SLA account holding the demo asset.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use headwater_admin::clock::SystemClock;
use headwater_admin::server::{Admin, AdminConfig};
use headwater_provisioner::{Driver, ProcessDriver};
use headwater_router::{Mode, RouterConfig};
use headwater_serve::tls::TlsArgs;
use headwater_serve::tls::local_ca::LocalCa;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct UpConfig {
    /// Where the database, the content, node state and generated credentials live.
    #[arg(long, env = "HEADWATER_DATA_DIR", default_value = "headwater-data")]
    pub data_dir: PathBuf,
    /// The admin API.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// The router (the locators).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub router_listen: String,
    /// The admin API over HTTPS, with a certificate of the local CA
    /// (DATA_DIR/tls/ca.pem, made on first start).
    #[arg(long, default_value = "127.0.0.1:7444")]
    pub admin_https_listen: String,
    /// The router over HTTPS (HTTP/1.1 and h2), with a certificate of the local CA.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub router_https_listen: String,
    /// Also create a demo customer, a trial and an SLA account with the demo asset.
    #[arg(long)]
    pub demo: bool,
    /// Leave the origin nodes running on exit (the next `up` adopts them).
    #[arg(long)]
    pub keep_nodes: bool,
}

/// The loopback address `up`'s router connects to nodes from, so nodes tell it
/// from any other local client.
const ROUTER_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// The admin flags `up` runs with, parsed like `headwater admin` (so `HEADWATER_*`
/// variables apply) from the data directory's paths.
#[derive(Parser)]
struct AdminArgs {
    #[command(flatten)]
    admin: AdminConfig,
}

/// What the local CA's sealed key belongs to (associated data of the seal).
const LOCAL_CA_CONTEXT: &str = "local-ca";

pub async fn run(cfg: UpConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    headwater_admin::keys::create_private_dir(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let data = cfg.data_dir.canonicalize()?;
    let router_listener =
        TcpListener::bind(&cfg.router_listen).await.with_context(|| format!("binding {}", cfg.router_listen))?;
    let admin_listener = TcpListener::bind(&cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let router_url = format!("http://{}", router_listener.local_addr()?);
    let admin_url = format!("http://{}", admin_listener.local_addr()?);
    // HTTPS with a certificate of a CA of this data directory's own.
    let tls_dir = data.join("tls");
    headwater_admin::keys::create_private_dir(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    // The CA's key sealed under the master key, as admin's secrets are.
    let master = headwater_admin::server::master_key(std::env::var("HEADWATER_MASTER_KEY").ok().as_deref(), &data)?;
    let ca = LocalCa::in_dir_sealed(
        &tls_dir,
        "Headwater local CA",
        |key| master.seal(key, LOCAL_CA_CONTEXT),
        |sealed| master.open(sealed, LOCAL_CA_CONTEXT).map(|k| k.to_string()),
    )
    .context("the local CA")?;
    let (cert, key) = (tls_dir.join("server.pem"), tls_dir.join("server-key.pem"));
    ca.issue_files(&["localhost", "127.0.0.1", "::1"], 30, &cert, &key).context("a certificate of the local CA")?;
    let tls_args = |listen: &str| -> anyhow::Result<TlsArgs> {
        Ok(TlsArgs {
            tls_listen: Some(listen.parse().with_context(|| format!("{listen} is not an address"))?),
            tls_cert: vec![cert.clone()],
            tls_key: vec![key.clone()],
        })
    };
    let admin_tls = tls_args(&cfg.admin_https_listen)?.bind(&shutdown).await?;
    let router_tls = tls_args(&cfg.router_https_listen)?.bind(&shutdown).await?;
    let https = |l: &Option<(TcpListener, _)>| -> anyhow::Result<String> {
        let (l, _) = l.as_ref().context("no TLS listener")?;
        Ok(format!("https://localhost:{}", l.local_addr()?.port()))
    };
    let (admin_https, router_https) = (https(&admin_tls)?, https(&router_tls)?);
    // Nodes and the router reach admin over HTTPS, trusting the local CA alone.
    let admin_internal = match &admin_tls {
        Some((l, _)) => format!("https://127.0.0.1:{}", l.local_addr()?.port()),
        None => admin_url.clone(),
    };
    let ca_path = tls_dir.join("ca.pem");
    let d = |p: &str| data.join(p).display().to_string();
    let args = AdminArgs::try_parse_from([
        "admin".to_owned(),
        "--data-dir".into(),
        d(""),
        "--database-url".into(),
        format!("sqlite://{}", d("headwater.db")),
        "--content".into(),
        d("content"),
        "--locator-base".into(),
        router_url.clone(),
        "--listen".into(),
        admin_listener.local_addr()?.to_string(),
        // The router below connects from this address; nodes believe it alone.
        "--trusted-proxy".into(),
        format!("{ROUTER_SOURCE}/32"),
        "--node-admin-url".into(),
        admin_internal.clone(),
        "--node-admin-ca".into(),
        ca_path.display().to_string(),
    ])?;
    let admin = Admin::build(&args.admin, Arc::new(SystemClock)).await?;
    let admin_metrics_token = admin.state.settings.metrics_token.clone();
    let router_token = admin.state.settings.router_token.clone();
    let admin_task = tokio::spawn(admin.run(admin_listener, admin_tls, shutdown.clone()));
    let router_cfg = RouterConfig {
        listen: router_listener.local_addr()?,
        admin_url: admin_internal.clone(),
        admin_ca: Some(ca_path.display().to_string()),
        token: router_token,
        mode: Mode::Proxy,
        domain: None,
        redis_url: None,
        redis_prefix: "headwater".into(),
        refresh_ms: 250,
        source_ip: Some(std::net::IpAddr::V4(ROUTER_SOURCE)),
        metrics_token: Some(admin_metrics_token),
        header_read_timeout_ms: 10_000,
        name: Some("up".into()),
        sightings_ms: 1000,
        access_log: headwater_router::AccessLogArgs { dir: Some(data.join("access-logs")), ..Default::default() },
        tls: TlsArgs::default(),
    };
    let router_task = tokio::spawn(headwater_router::serve(router_cfg, router_listener, router_tls, shutdown.clone()));
    println!("headwater admin listening on {admin_url}");
    println!("headwater admin listening on {admin_https}");
    println!("headwater router listening on {router_url}");
    println!("headwater router listening on {router_https}");
    println!("local CA in {} (trust it: curl --cacert, ffplay -ca_file, headwater --cacert)", ca_path.display());
    println!("operator token in {}", data.join("operator-token").display());
    println!("web console: {admin_url}/console (sign in with an API key or the operator token)");
    println!("metrics token in {} (Authorization: Bearer for /metrics)", data.join("metrics-token").display());

    if cfg.demo {
        match demo(&admin_url, &router_url, &router_https, &ca_path, &data).await {
            Ok(()) => {}
            Err(e) => eprintln!("demo: {e:#}"),
        }
    }
    println!("ready; Ctrl-C stops");
    shutdown.cancelled().await;
    let _ = tokio::join!(admin_task, router_task);
    if !cfg.keep_nodes {
        let driver = ProcessDriver::new(data.join("nodes"))?;
        for h in driver.list().await? {
            driver.terminate(&h, Duration::from_secs(10)).await?;
        }
        println!("origin nodes stopped");
    }
    Ok(())
}

/// Creates (or finds) the demo customer and accounts, uploads the demo asset,
/// waits until the locators serve, and prints how to play them.
async fn demo(admin: &str, router: &str, router_https: &str, ca: &Path, data: &Path) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let key_file = data.join("demo-api-key");
    let key = match std::fs::read_to_string(&key_file) {
        Ok(k) => k.trim().to_owned(),
        Err(_) => {
            let res = http
                .post(format!("{admin}/v1/customers"))
                .json(&json!({"name": "Demo", "email": "demo@headwater.local"}))
                .send()
                .await?;
            if !res.status().is_success() {
                bail!("creating the demo customer: {}", res.text().await?);
            }
            let v: Value = res.json().await?;
            let key = v["api_key"].as_str().context("no api key")?.to_owned();
            headwater_admin::keys::write_secret_file(&key_file, &key)
                .with_context(|| format!("writing {}", key_file.display()))?;
            key
        }
    };
    let accounts =
        [("demo-trial", "hls", json!({"kind": "trial"})), ("demo-sla", "dash", json!({"kind": "sla", "mbps": 100}))];
    for (name, origin_type, offer) in &accounts {
        let res = http
            .post(format!("{admin}/v1/accounts"))
            .bearer_auth(&key)
            .json(&json!({"name": name, "origin_type": origin_type, "offer": offer}))
            .send()
            .await?;
        // 409: it exists from an earlier `up`.
        if !res.status().is_success() && res.status() != reqwest::StatusCode::CONFLICT {
            bail!("creating {name}: {}", res.text().await?);
        }
        for (path, bytes) in headwater_admin::probe_content::demo_files() {
            let res = http
                .put(format!("{admin}/v1/accounts/{name}/assets/demo/{path}"))
                .bearer_auth(&key)
                .body(bytes)
                .send()
                .await?;
            if !res.status().is_success() {
                bail!("uploading {path} to {name}: {}", res.text().await?);
            }
        }
    }
    let started = Instant::now();
    for (name, _, _) in &accounts {
        let locator = format!("{router}/{name}/demo/hls/master.m3u8");
        loop {
            if http.get(&locator).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("{locator} did not serve within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("demo ready in {:.1} s", started.elapsed().as_secs_f64());
    println!("demo API key: {key}  (export HEADWATER_API_KEY={key})");
    for (name, _, _) in &accounts {
        println!("demo locator: {router}/{name}/demo/hls/master.m3u8");
        println!("demo locator: {router}/{name}/demo/dash/manifest.mpd");
    }
    println!("play it:  ffplay {router}/demo-trial/demo/hls/master.m3u8");
    println!("fetch it: curl {router}/demo-sla/demo/hls/360p/index.m3u8");
    let ca = ca.display();
    println!("over TLS: ffplay -ca_file {ca} -tls_verify 1 {router_https}/demo-trial/demo/hls/master.m3u8");
    println!("over TLS: curl --cacert {ca} {router_https}/demo-sla/demo/hls/360p/index.m3u8");
    Ok(())
}
