//! The router and `headwater up` through the real binary: locators that serve the
//! demo asset byte for byte, a node killed under a playing client with no failed
//! request, a router that keeps serving while admin is down, Host-based locators,
//! redirect mode, and 410 after deactivation.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Admin, BIN, Backend};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

/// Starts a process and collects its stdout lines until one starts with `until`.
async fn start(cmd: &mut Command, until: &str) -> (Child, Vec<String>) {
    let mut child = cmd
        .env("HEADWATER_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn headwater");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with(until);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("exited before '{until}': {seen:?}");
    })
    .await
    .expect("started in time");
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, seen)
}

fn value<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no '{prefix}' in {lines:?}"))
}

/// Kills every node process `up` left in its data directory, however the test ends.
struct NodeCleanup(std::path::PathBuf);

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        support::kill_processes_naming(&self.0.display().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_serves_the_demo_and_survives_a_killed_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (mut up, lines) = start(
        Command::new(BIN)
            .args(["up", "--demo", "--listen", "127.0.0.1:0", "--router-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path()),
        "ready",
    )
    .await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    assert!(lines.iter().any(|l| l.starts_with("demo API key: hw_")), "{lines:?}");
    let locator = lines.iter().find_map(|l| l.strip_prefix("demo locator: ")).unwrap().to_owned();
    assert_eq!(locator, format!("{router}/demo-trial/demo/hls/master.m3u8"));

    // The locator's playlist and every segment, byte for byte.
    let http = reqwest::Client::new();
    let base = locator.trim_end_matches("master.m3u8").to_owned();
    for file in support::demo_files().iter().filter(|f| f.starts_with("hls/")) {
        let rel = file.trim_start_matches("hls/");
        let got = http.get(format!("{base}{rel}")).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{rel}");
        assert_eq!(got.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/{file}")).unwrap(), "{rel}");
    }

    // A player fetching segments in a loop; the node serving it is killed.
    let seg = format!("{base}720p/seg_001.ts");
    let served_by = http.get(&seg).send().await.unwrap().headers()["x-headwater-node"].to_str().unwrap().to_owned();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let player = {
        let seg = seg.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed, mut nodes) = (0, 0, std::collections::HashSet::new());
            let end = Instant::now() + Duration::from_secs(8);
            while Instant::now() < end {
                match http.get(&seg).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        nodes.insert(r.headers()["x-headwater-node"].to_str().unwrap().to_owned());
                        if r.bytes().await.is_ok() {
                            ok += 1
                        } else {
                            failed += 1
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, nodes)
        })
    };
    // Kill the node once the player is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "the player made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.path().join(format!("nodes/{served_by}.json"))).unwrap()).unwrap();
    let pid = record["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let (ok, failed, _) = player.await.unwrap();
    assert_eq!(failed, 0, "{failed} failed player requests ({ok} ok)");
    assert!(ok > 10, "{ok}");

    // The replacement appears in the routing table.
    let token = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table: serde_json::Value = http
            .get(format!("{admin}/v1/routing"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes: Vec<String> = table["accounts"]["demo-trial"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        if nodes.len() == 2 && !nodes.contains(&served_by) {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement in the routing table: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ctrl-C (SIGTERM) stops everything, nodes included.
    Command::new("kill").args(["-TERM", &up.id().unwrap().to_string()]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let left: Vec<_> = std::fs::read_dir(data.path().join("nodes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(left.is_empty(), "node state left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_keeps_serving_without_admin_and_knows_hosts_redirects_and_deactivation() {
    let mut admin = Admin::start(Backend::Sqlite, &["--driver", "process"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let router = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--admin-url",
            &admin.url,
            "--operator-token",
            &admin.operator_token,
        ])
        .args(extra);
        c
    };
    let (_proxy, lines) = start(&mut router(&["--domain", "example.test"]), "headwater router listening on ").await;
    let proxy = value(&lines, "headwater router listening on ").to_owned();
    let (_redirect, lines) = start(&mut router(&["--mode", "redirect"]), "headwater router listening on ").await;
    let redirect = value(&lines, "headwater router listening on ").to_owned();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let playlist = std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{proxy}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the router never served the account");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Host-based locator.
    let res =
        http.get(format!("{proxy}/demo/hls/master.m3u8")).header("host", "ana-vod.example.test").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), playlist);
    // Redirect mode points at a node that serves it (once that router has its table).
    let deadline = Instant::now() + Duration::from_secs(60);
    let res = loop {
        let res = http.get(format!("{redirect}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap();
        if res.status() != StatusCode::NOT_FOUND || Instant::now() > deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(reqwest::get(&location).await.unwrap().bytes().await.unwrap(), playlist);
    // Unknown accounts are 404.
    let res = http.get(format!("{proxy}/nobody/demo/hls/master.m3u8")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Admin down: the router serves from its last table.
    admin.stop().await;
    for _ in 0..5 {
        let res = http.get(format!("{proxy}/ana-vod/demo/hls/360p/seg_000.ts")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Admin back (nodes were adopted): a deactivation reaches the router as 410.
    admin.crash_and_restart().await;
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = http.get(format!("{proxy}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap().status();
        if s == StatusCode::GONE {
            break;
        }
        assert!(Instant::now() < deadline, "still {s} after deactivation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_changes_reach_the_router_over_redis() {
    let redis = support::redis_url();
    let prefix = format!("hwtest-{}", uuid::Uuid::new_v4().simple());
    let admin =
        Admin::start(Backend::Postgres, &["--driver", "process", "--redis-url", &redis, "--redis-prefix", &prefix])
            .await;
    // The router polls admin only at start (and then every 10 minutes): what it
    // learns afterwards comes over Redis.
    let (_router, lines) = start(
        Command::new(BIN)
            .args([
                "router",
                "--listen",
                "127.0.0.1:0",
                "--admin-url",
                &admin.url,
                "--operator-token",
                &admin.operator_token,
            ])
            .args(["--redis-url", &redis, "--redis-prefix", &prefix, "--refresh-ms", "600000"]),
        "headwater router listening on ",
    )
    .await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{router}/readyz")).send().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the router never got its first table");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let url = format!("{router}/ana-vod/demo/hls/master.m3u8");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(&url).send().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the new account never reached the router");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(&url).send().await.unwrap().status() != StatusCode::GONE {
        assert!(Instant::now() < deadline, "the deactivation never reached the router");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
