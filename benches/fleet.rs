//! The control plane at fleet scale: one real `headwater admin` on PostgreSQL
//! with ACCOUNTS accounts (SLA of them on dedicated pools, the rest payg in
//! shared pools) and a synthetic node for every node their pools want,
//! heartbeating at 1 Hz. No node processes run: admin runs with
//! `--driver kubernetes` and no Kubernetes target, so its reconciler makes every
//! pass it would make in a cluster (health, partitions, scaling, readiness) but
//! has nowhere to launch; the bench registers the nodes the pools want
//! (`POST /v1/nodes`) and heartbeats for them. A router-token client follows
//! `/v1/routing/stream`, so the routing table is published as for routers.
//!
//! For FLEET_SECS of steady state it reads accounts and signs new ones up, and
//! reports the reconcile pass time, API p99 for reads and sign-ups, heartbeat
//! handling p99, routing-table publication size and time, and admin's CPU and
//! memory (and PostgreSQL's CPU).
//!
//!   cargo bench --bench fleet                          # 10,000 accounts, 1,000 SLA, 60 s
//!   FLEET_ACCOUNTS=2000 FLEET_SLA=200 FLEET_SECS=20 cargo bench --bench fleet
//!
//! Under `cargo test --all-targets` (no `--bench`) it makes a small run of 40
//! accounts for 3 s, so the suite keeps it working: there every sign-up made
//! under load must become active and no heartbeat may fail.
//!
//! It makes a fresh database next to HEADWATER_BENCH_DATABASE_URL (default
//! HEADWATER_TEST_DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres)
//! and drops it at the end. Speed is measured, never asserted.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use support::{cpu_ticks, env_num, percentile, size};

const OPERATOR: &str = "bench-operator";
const ROUTER: &str = "bench-router";

/// CPU ticks of every PostgreSQL process (the server and its backends).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_ticks)
        .sum()
}

/// Resident memory of a process in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Latencies in ms, recorded by many tasks.
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<f64>>>);

impl Samples {
    fn push(&self, started: Instant) {
        self.0.lock().unwrap().push(started.elapsed().as_secs_f64() * 1000.0);
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    fn summary(&self) -> String {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        format!(
            "{:>7} requests   p50 {:7.2} ms   p99 {:7.2} ms   max {:7.2} ms",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(0.0)
        )
    }
}

/// A histogram's buckets (upper bound, cumulative count) from Prometheus text.
fn buckets(metrics: &str, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && labels.iter().all(|x| l.contains(x)))
        .map(|l| {
            let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("+Inf");
            let count = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, count)
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of what a histogram observed between two scrapes, in ms,
/// interpolated inside its bucket as Prometheus' `histogram_quantile` does.
fn quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b))).collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total == 0.0 {
        return (0.0, 0.0);
    }
    let rank = total * q;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return (lower.0 * 1000.0, total);
            }
            let share = if count > lower.1 { (rank - lower.1) / (count - lower.1) } else { 1.0 };
            return ((lower.0 + (le - lower.0) * share) * 1000.0, total);
        }
        lower = (le, count);
    }
    (lower.0 * 1000.0, total)
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn fresh_database() -> (String, String) {
    let server = std::env::var("HEADWATER_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("HEADWATER_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {server} is needed (scripts/test starts it): {e}"));
    let name = format!("hw_fleet_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    (format!("{base}/{name}"), server)
}

async fn drop_database(server: &str, url: &str) {
    let name = url.rsplit('/').next().unwrap_or_default();
    if let Ok(mut conn) = sqlx::PgConnection::connect(server).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await;
    }
}

struct Bench {
    http: reqwest::Client,
    url: String,
}

impl Bench {
    async fn get(&self, path: &str, token: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (reqwest::StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).bearer_auth(OPERATOR).send().await.unwrap().text().await.unwrap()
    }

    /// Every pool, a page at a time.
    async fn pools(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.get(&format!("/v1/pools?limit=500{cursor}"), OPERATOR).await;
            out.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return out,
            }
        }
    }

    /// Operations still open (pending or running), counted up to `limit`.
    async fn open_operations(&self) -> usize {
        let mut n = 0;
        for state in ["pending", "running"] {
            let page = self.get(&format!("/v1/operations?state={state}&limit=500"), OPERATOR).await;
            n += page["items"].as_array().map_or(0, Vec::len);
        }
        n
    }
}

/// What the synthetic nodes share: what they report, and what they record.
#[derive(Clone)]
struct Nodes {
    egress_mbps: f64,
    samples: Samples,
    errors: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

/// A synthetic node: registered for its pool, heartbeating at 1 Hz until `stop`.
fn heartbeat(bench: Arc<Bench>, id: String, token: String, image: String, nodes: Nodes) {
    let Nodes { egress_mbps: egress, samples, errors, stop } = nodes;
    tokio::spawn(async move {
        let url = format!("{}/v1/nodes/{id}/heartbeat", bench.url);
        // Spread the nodes over the second.
        let offset = Duration::from_micros(u64::from_str_radix(&id[id.len() - 6..], 16).unwrap_or(0) % 1_000_000);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let port = 10_000 + u16::from_str_radix(&id[id.len() - 4..], 16).unwrap_or(0) % 50_000;
        let config_url = format!("{}/v1/nodes/{id}/config", bench.url);
        let mut config_version = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = json!({
                "image_version": image, "state": "ready", "address": format!("127.0.0.1:{port}"),
                "egress_mbps": egress, "open_connections": 3, "cache_hit_ratio": 0.9,
                "self_probe": {"ok": true, "latency_ms": 1}, "config_version": config_version
            });
            let t = Instant::now();
            let ack: Value = match bench.http.post(&url).bearer_auth(&token).json(&hb).send().await {
                Ok(r) if r.status().is_success() => {
                    let ack = r.json().await.unwrap_or(Value::Null);
                    samples.push(t);
                    ack
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // As a node does: a newer configuration is fetched, then reported.
            if ack["config_version"].as_u64().is_some_and(|v| v != config_version)
                && let Ok(r) = bench.http.get(&config_url).bearer_auth(&token).send().await
                && let Ok(config) = r.json::<Value>().await
            {
                config_version = config["version"].as_u64().unwrap_or(config_version);
            }
        }
    });
}

/// A new customer with one hls account `name`: its API key.
async fn sign_up(bench: &Bench, name: &str, offer: Value) -> String {
    let (status, v) =
        bench.post("/v1/customers", None, &json!({"name": name, "email": format!("{name}@example.com")})).await;
    assert_eq!(status, 201, "customer sign-up: {v}");
    let key = v["api_key"].as_str().unwrap().to_owned();
    let (status, v) =
        bench.post("/v1/accounts", Some(&key), &json!({"name": name, "origin_type": "hls", "offer": offer})).await;
    assert!(status.is_success(), "account sign-up: {status} {v}");
    key
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let accounts = size("FLEET_ACCOUNTS", 10_000, 40) as usize;
    let sla = (size("FLEET_SLA", 1_000, 4) as usize).min(accounts);
    let secs = size("FLEET_SECS", 60, 3);
    let read_rate = env_num("FLEET_READS_PER_SEC", 50);
    let signup_rate = env_num("FLEET_SIGNUPS_PER_SEC", 2);
    let (db, server) = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        ["--driver", "kubernetes"],
        ["--operator-token", OPERATOR],
        ["--router-token", ROUTER],
        ["--workers", "2"],
        ["--rate-limit-per-key", "100000"],
        ["--signup-rate-limit", "100000"],
        ["--unauthenticated-rate-limit", "100000"],
        ["--probe-interval-ms", "3600000"],
    ]
    .concat();
    let mut admin = support::start_admin(dir.path(), &db, &args).await;
    let pid = admin.pid;
    let url = admin.url.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let bench = Arc::new(Bench { http, url });
    let stop = tokio_util::sync::CancellationToken::new();

    // A router following the routing stream, so tables are published as in use.
    let routed = Arc::new(AtomicU64::new(0));
    {
        let (bench, routed) = (bench.clone(), routed.clone());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let r =
                bench.http.get(format!("{}/v1/routing/stream", bench.url)).bearer_auth(ROUTER).send().await.unwrap();
            let mut body = r.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                routed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
    }

    let hls = bench.get("/v1/origin-types/hls", OPERATOR).await;
    let capacity = hls["node_capacity_mbps"].as_f64().unwrap_or(100.0);
    let increment = hls["sla_increment_mbps"].as_i64().unwrap_or(100);
    // Half the capacity: no shared pool grows or shrinks while measured.
    let egress = capacity / 2.0;

    // The fleet: every pool gets the nodes it wants, as they appear.
    let heartbeats = Samples::default();
    let hb_errors = Arc::new(AtomicU64::new(0));
    let nodes = Arc::new(AtomicU64::new(0));
    let filler = {
        let fleet =
            Nodes { egress_mbps: egress, samples: heartbeats.clone(), errors: hb_errors.clone(), stop: stop.clone() };
        let (bench, nodes, stop) = (bench.clone(), nodes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut registered: HashMap<String, i64> = HashMap::new();
            while !stop.is_cancelled() {
                for p in bench.pools().await {
                    let id = p["id"].as_str().unwrap().to_owned();
                    let live = matches!(p["state"].as_str(), Some("creating" | "ready"));
                    let have = registered.entry(id.clone()).or_default();
                    let want = p["desired_nodes"].as_i64().unwrap_or(0);
                    let image = p["image_version"].as_str().unwrap_or("bench").to_owned();
                    while live && *have < want {
                        let (status, v) = bench.post("/v1/nodes", Some(OPERATOR), &json!({"pool_id": id})).await;
                        assert_eq!(status, 201, "registering a node: {v}");
                        let (nid, tok) =
                            (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned());
                        heartbeat(bench.clone(), nid, tok, image.clone(), fleet.clone());
                        *have += 1;
                        nodes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // A customer per account (one account of a type per customer): SLA first,
    // then payg, 16 sign-ups at a time.
    let setup = Instant::now();
    let signups_setup = Samples::default();
    eprintln!("signing up {accounts} customers with an account each ({sla} SLA)…");
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..accounts {
        let (bench, samples, permit) =
            (bench.clone(), signups_setup.clone(), gate.clone().acquire_owned().await.unwrap());
        let offer = if i < sla { json!({"kind": "sla", "mbps": increment}) } else { json!({"kind": "payg"}) };
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let key = sign_up(&bench, &format!("f{i:05}"), offer).await;
            samples.push(t);
            drop(permit);
            key
        }));
    }
    let mut keys = Vec::with_capacity(accounts);
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    let keys = Arc::new(keys);
    let accepted = setup.elapsed();
    eprintln!("accepted in {:.1} s; waiting for every account to be provisioned…", accepted.as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(1800);
    while bench.open_operations().await > 0 {
        assert!(Instant::now() < deadline, "accounts still provisioning after 30 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let provisioned = setup.elapsed();
    let pools = bench.pools().await;
    let dedicated = pools.iter().filter(|p| p["kind"] == "dedicated").count();
    eprintln!(
        "{accounts} accounts on {} pools ({dedicated} dedicated), {} nodes, in {:.1} s; measuring {secs} s…",
        pools.len(),
        nodes.load(Ordering::Relaxed),
        provisioned.as_secs_f64()
    );

    // Steady state: heartbeats go on; reads and sign-ups at a steady rate.
    heartbeats.clear();
    hb_errors.store(0, Ordering::Relaxed);
    let (reads, signups) = (Samples::default(), Samples::default());
    let metrics_before = bench.metrics().await;
    let (cpu_before, pg_before) = (cpu_ticks(pid), postgres_ticks());
    let started = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let reader = {
        let (bench, keys, reads) = (bench.clone(), keys.clone(), reads.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / read_rate.max(1) as u32);
            let mut inflight = Vec::new();
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                // xorshift: any account, not the cached few.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % accounts as u64) as usize;
                let (bench, keys, reads) = (bench.clone(), keys.clone(), reads.clone());
                inflight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let a = bench.get(&format!("/v1/accounts/f{i:05}"), &keys[i]).await;
                    assert_eq!(a["state"], "active", "{a}");
                    reads.push(t);
                }));
            }
            for t in inflight {
                t.await.unwrap();
            }
        })
    };
    let signer = {
        let (bench, signups) = (bench.clone(), signups.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / signup_rate.max(1) as u32);
            let mut keys = Vec::new();
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let t = Instant::now();
                keys.push(sign_up(&bench, &format!("n{:05}", keys.len()), json!({"kind": "payg"})).await);
                signups.push(t);
            }
            keys
        })
    };
    reader.await.unwrap();
    let signed_up = signer.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0; // USER_HZ is 100 on Linux
    let pg_cpu = (postgres_ticks() - pg_before) as f64 / 100.0;
    let metrics_after = bench.metrics().await;
    let rss = rss_mib(pid);

    // How long the sign-ups made under load took to be active (their create
    // operation, from asked for to done), read once each is done.
    let provisioning = Samples::default();
    let mut waiting: Vec<String> = signed_up;
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for key in waiting {
            let page = bench.get("/v1/operations?limit=1", &key).await;
            let op = &page["items"][0];
            match op["state"].as_str() {
                Some("succeeded") => {
                    let at = |f: &str| {
                        let t = op[f].as_str().unwrap_or_default();
                        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
                    };
                    let ms = (at("updated_at") - at("created_at")).as_seconds_f64() * 1000.0;
                    provisioning.0.lock().unwrap().push(ms);
                }
                Some("failed") => failed += 1,
                _ => still.push(key),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // A router's full fetch of the table, as on a Redis notice.
    let mut fetch = Vec::new();
    let mut table_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let body = bench
            .http
            .get(format!("{}/v1/routing", bench.url))
            .bearer_auth(ROUTER)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        fetch.push(t.elapsed().as_secs_f64() * 1000.0);
        table_bytes = body.len();
    }
    fetch.sort_by(f64::total_cmp);
    stop.cancel();
    let _ = filler.await;

    let hist = |name: &str, labels: &[&str]| {
        let (b, a) = (buckets(&metrics_before, name, labels), buckets(&metrics_after, name, labels));
        let (p50, n) = quantile_ms(&b, &a, 0.5);
        let (p99, _) = quantile_ms(&b, &a, 0.99);
        format!("{n:>7} observed   p50 {p50:7.2} ms   p99 {p99:7.2} ms (interpolated in its buckets)")
    };
    let admin_hist = |route: &str, method: &str| {
        hist(
            "headwater_admin_http_request_duration_seconds",
            &[&format!("route=\"{route}\""), &format!("method=\"{method}\"")],
        )
    };
    println!(
        "fleet: {accounts} accounts ({sla} SLA on dedicated pools) on {} pools, {} synthetic nodes at 1 Hz, PostgreSQL, {elapsed:.1} s",
        pools.len(),
        nodes.load(Ordering::Relaxed)
    );
    println!(
        "  setup            sign-ups accepted in {:.1} s, all provisioned in {:.1} s; {}",
        accepted.as_secs_f64(),
        provisioned.as_secs_f64(),
        signups_setup.summary()
    );
    println!(
        "  reconcile pass   {}   ({} pools)",
        hist("headwater_admin_reconcile_pass_seconds", &[]),
        gauge(&metrics_after, "headwater_admin_reconcile_pools")
    );
    println!("  account reads    client {}", reads.summary());
    println!("                   admin  {}", admin_hist("/v1/accounts/{name}", "GET"));
    println!("  sign-ups         client {}   (customer, then its account)", signups.summary());
    println!("                   admin  {}   (accounts)", admin_hist("/v1/accounts", "POST"));
    println!("                   admin  {}   (customers)", admin_hist("/v1/customers", "POST"));
    println!(
        "  to active        {}   ({} still provisioning after 2 minutes, {failed} failed)",
        provisioning.summary().replace("requests", "accounts"),
        waiting.len()
    );
    println!("  heartbeats       client {}   {} errors", heartbeats.summary(), hb_errors.load(Ordering::Relaxed));
    println!("                   admin  {}", admin_hist("/v1/nodes/{id}/heartbeat", "POST"));
    println!("  routing build    {}", hist("headwater_admin_routing_table_build_seconds", &[]));
    println!(
        "  routing table    {} accounts, {:.0} KiB as published, {} published; a full fetch {:.0} KiB in p50 {:.1} ms",
        gauge(&metrics_after, "headwater_admin_routing_table_accounts"),
        gauge(&metrics_after, "headwater_admin_routing_table_bytes") / 1024.0,
        gauge(&metrics_after, "headwater_admin_routing_tables_published_total"),
        table_bytes as f64 / 1024.0,
        percentile(&fetch, 0.5)
    );
    println!(
        "  admin            CPU {:.1} % of one core ({cpu:.1} s over {elapsed:.1} s), RSS {rss:.0} MiB; PostgreSQL CPU {:.1} % of one core",
        cpu / elapsed * 100.0,
        pg_cpu / elapsed * 100.0
    );
    println!("  routing stream   {:.1} MiB streamed to the router", routed.load(Ordering::Relaxed) as f64 / 1048576.0);
    if !support::measuring() {
        assert!(waiting.is_empty() && failed == 0, "{} sign-ups still provisioning, {failed} failed", waiting.len());
        assert_eq!(hb_errors.load(Ordering::Relaxed), 0, "heartbeats failed");
        assert!(!provisioning.0.lock().unwrap().is_empty(), "no sign-up was made under load");
    }
    let _ = admin.child.kill().await;
    let _ = admin.child.wait().await;
    drop_database(&server, &db).await;
}
