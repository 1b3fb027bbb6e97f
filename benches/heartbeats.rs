//! Heartbeat fan-in: N synthetic nodes heartbeating at 1 Hz into one real
//! `headwater admin` process. Reports the admin's CPU use and the heartbeat
//! handling time (client-side percentiles, and the admin's own histogram).
//!
//!   cargo bench --bench heartbeats                       # 2000 nodes, 20 s, SQLite
//!   HEARTBEAT_NODES=500 HEARTBEAT_SECS=10 cargo bench --bench heartbeats
//!   HEADWATER_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1/hwbench cargo bench --bench heartbeats
//!
//! Under `cargo test --all-targets` (no `--bench`) it makes a small run of 20
//! nodes for 2 s, so the suite keeps it working; speed is measured, never asserted.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{cpu_ticks, percentile, size};

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nodes = size("HEARTBEAT_NODES", 2000, 20) as usize;
    let secs = size("HEARTBEAT_SECS", 20, 2);
    let dir = tempfile::tempdir().unwrap();
    let db = std::env::var("HEADWATER_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/db.sqlite", dir.path().display()));
    let token = "bench-operator";
    let args = ["--driver", "none", "--operator-token", token, "--rate-limit-per-key", "100000"];
    let mut admin =
        support::start_admin(dir.path(), &db, &[&args[..], &["--probe-interval-ms", "3600000"]].concat()).await;
    let (pid, url) = (admin.pid, admin.url.clone());
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let signup: Value = http
        .post(format!("{url}/v1/customers"))
        .json(&json!({"name": "Bench", "email": "bench@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = signup["api_key"].as_str().unwrap().to_owned();
    http.post(format!("{url}/v1/accounts"))
        .bearer_auth(&key)
        .json(&json!({"name": "bench-vod", "origin_type": "hls", "offer": {"kind": "payg"}}))
        .send()
        .await
        .unwrap();
    let pool = loop {
        let a: Value = http
            .get(format!("{url}/v1/accounts/bench-vod"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(p) = a["pool"]["id"].as_str() {
            break p.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("registering {nodes} nodes…");
    let mut registered = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let v: Value = http
            .post(format!("{url}/v1/nodes"))
            .bearer_auth(token)
            .json(&json!({"pool_id": pool}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        registered.push((v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned()));
    }

    eprintln!("{nodes} nodes heartbeating at 1 Hz for {secs} s…");
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(nodes * secs as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, (id, tok)) in registered.into_iter().enumerate() {
        let http = http.clone();
        let url = format!("{url}/v1/nodes/{id}/heartbeat");
        let latencies = latencies.clone();
        let errors = errors.clone();
        // Spread the nodes evenly over the second.
        let offset = Duration::from_micros((i as u64 * 1_000_000) / nodes as u64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let hb = json!({
                "image_version": "bench", "state": "ready", "address": "127.0.0.1:9", "egress_mbps": 12.5,
                "open_connections": 3, "cache_hit_ratio": 0.9,
                "self_probe": {"ok": true, "latency_ms": 1}, "config_version": 0
            });
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end {
                    return;
                }
                let t = Instant::now();
                match http.post(&url).bearer_auth(&tok).json(&hb).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0; // USER_HZ is 100 on Linux
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let metrics = http.get(format!("{url}/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    let server_p99 = histogram_p99(&metrics, "/v1/nodes/{id}/heartbeat");
    println!(
        "heartbeat fan-in: {nodes} nodes at 1 Hz for {elapsed:.1} s on {}",
        if db.starts_with("postgres") { "PostgreSQL" } else { "SQLite" }
    );
    println!(
        "  handled       {} heartbeats ({:.0}/s), {} errors",
        lat.len(),
        lat.len() as f64 / elapsed,
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "  client p50    {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    println!("  admin p99     <= {server_p99} s (its own histogram bucket)");
    println!("  admin CPU     {:.1} % of one core ({cpu:.1} s over {elapsed:.1} s)", cpu / elapsed * 100.0);
    let _ = admin.child.kill().await;
}

/// The upper bound of the histogram bucket holding the 99th percentile.
fn histogram_p99(metrics: &str, route: &str) -> String {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        if line.starts_with("headwater_admin_http_request_duration_seconds_bucket")
            && line.contains(&format!("route=\"{route}\""))
            && line.contains("method=\"POST\"")
        {
            let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("+Inf");
            let count: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            buckets.push((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, count));
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets.iter().find(|b| b.1 >= total * 0.99).map(|b| b.0.to_string()).unwrap_or_else(|| "?".into())
}
