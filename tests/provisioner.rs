//! The provisioner through real processes: accounts get origin nodes started by
//! the process driver; failed nodes are replaced; nodes outlive an admin crash and
//! are adopted again.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");
const PROCESS_DRIVER: &[&str] = &["--driver", "process"];

async fn nodes_of(admin: &Admin, pool: &str) -> Vec<Value> {
    let v = admin.call(Method::GET, "/v1/nodes?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    v["items"].as_array().unwrap().iter().filter(|n| n["pool_id"] == pool).cloned().collect()
}

/// Waits (deadline 60 s) until the pool has `n` ready nodes; returns all its nodes.
async fn wait_ready(admin: &Admin, pool: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = nodes_of(admin, pool).await;
        if nodes.iter().filter(|x| x["state"] == "ready").count() == n {
            return nodes;
        }
        assert!(Instant::now() < deadline, "pool {pool} never had {n} ready nodes: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(admin: &Admin, key: &str, body: Value) -> (String, Value) {
    let a = admin.call(Method::POST, "/v1/accounts", Some(key), Some(body), StatusCode::ACCEPTED).await;
    let started = Instant::now();
    let op = admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), key, Duration::from_secs(60)).await;
    eprintln!("account {} ready after {:?}", a["account"]["name"], started.elapsed());
    assert_eq!(op["state"], "succeeded", "{op}");
    let name = a["account"]["name"].as_str().unwrap();
    let account = admin.call(Method::GET, &format!("/v1/accounts/{name}"), Some(key), None, StatusCode::OK).await;
    (account["pool"]["id"].as_str().unwrap().to_owned(), op)
}

async fn an_sla_account_gets_its_nodes_and_a_killed_node_is_replaced(backend: Backend) {
    let admin = Admin::start(backend, PROCESS_DRIVER).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    // 300 Mbit/s on 100 Mbit/s nodes: three to carry it plus a spare.
    let (pool, op) =
        create(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}}))
            .await;
    let steps: Vec<_> =
        op["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_owned()).collect();
    assert_eq!(steps, ["pool_prepared", "nodes_ready", "nodes_configured", "pool_assigned", "allocation_recorded"]);
    let nodes = wait_ready(&admin, &pool, 4).await;
    assert_eq!(nodes.len(), 4);
    let domains: Vec<i64> = nodes.iter().map(|n| n["upgrade_domain"].as_i64().unwrap()).collect();
    assert_eq!(
        (domains.iter().filter(|d| **d == 0).count(), domains.iter().filter(|d| **d == 1).count()),
        (2, 2),
        "spread over upgrade domains: {domains:?}"
    );
    let procs = admin.node_processes();
    assert_eq!(procs.len(), 4, "{procs:?}");
    for n in &nodes {
        assert!(procs.iter().any(|(id, _)| n["id"] == id.as_str()), "node {} has no process", n["id"]);
    }

    // The account's content is served by its nodes.
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let node_url = format!("http://{}", nodes[0]["address"].as_str().unwrap());
    let got = reqwest::get(format!("{node_url}/ana-vod/demo/hls/master.m3u8")).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap());

    // Admin probes every node from outside: availability in the account and in /metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
        if a["availability"].as_f64() == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no availability figure: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = support::metrics(&admin.url).await;
    assert!(metrics.lines().any(|l| l == "headwater_admin_account_availability{account=\"ana-vod\"} 1"), "{metrics}");

    // kill -9 one node: it is marked failed and a replacement becomes ready.
    let (victim, pid) = procs[0].clone();
    let killed = Instant::now();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = nodes_of(&admin, &pool).await;
        let failed = nodes.iter().any(|n| n["id"] == victim.as_str() && n["state"] == "failed");
        let ready: Vec<_> = nodes.iter().filter(|n| n["state"] == "ready").collect();
        if failed && ready.len() == 4 && ready.iter().all(|n| n["id"] != victim.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement within 60 s: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("node kill -> replacement ready after {:?}", killed.elapsed());
    assert_eq!(admin.node_processes().len(), 4);
    assert!(admin.has_event("node.failed", &format!("node:{victim}")).await, "a node.failed event");
}

async fn nodes_outlive_an_admin_crash_and_are_adopted(backend: Backend) {
    let mut admin = Admin::start(backend, PROCESS_DRIVER).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let (pool, _) =
        create(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "trial"}})).await;
    // A shared pool runs two nodes.
    wait_ready(&admin, &pool, 2).await;
    let before = admin.node_processes();
    assert_eq!(before.len(), 2);
    admin.upload_demo(&key, "ana-vod", "demo").await;

    admin.crash_and_restart().await;
    // The nodes kept serving while admin was down, and keep heartbeating to the new one.
    let nodes = wait_ready(&admin, &pool, 2).await;
    for (_, pid) in &before {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "node process {pid} died with admin");
    }
    // Give the new admin's reconciler a few passes: it must launch nothing.
    let seen = admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let last = seen["items"][0]["id"].as_i64().unwrap();
    let heartbeats_after = Instant::now();
    while heartbeats_after.elapsed() < Duration::from_secs(3) {
        let fresh = nodes_of(&admin, &pool).await;
        assert!(fresh.iter().all(|n| n["state"] == "ready"), "{fresh:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(admin.node_processes(), before, "the same processes, no new ones");
    assert_eq!(nodes.len(), 2, "no node rows were added");
    let after =
        admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let launched: Vec<_> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"].as_i64().unwrap() > last && e["action"] == "node.registered")
        .collect();
    assert!(launched.is_empty(), "the restarted admin launched nodes: {launched:?}");
    let url = format!("http://{}/ana-vod/demo/hls/360p/index.m3u8", nodes[0]["address"].as_str().unwrap());
    assert_eq!(reqwest::get(url).await.unwrap().status(), StatusCode::OK);
}

async fn payg_to_sla_and_back_moves_the_account_only_to_ready_nodes(backend: Backend) {
    let admin = Admin::start(backend, PROCESS_DRIVER).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let (shared, _) =
        create(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;

    let change = json!({"offer": {"kind": "sla", "mbps": 200}});
    let a = admin.call(Method::PATCH, "/v1/accounts/ana-vod", Some(&key), Some(change), StatusCode::ACCEPTED).await;
    let op = admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let now = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    let dedicated = now["pool"]["id"].as_str().unwrap().to_owned();
    assert_ne!(dedicated, shared);
    assert_eq!((now["pool"]["kind"].as_str(), now["pool"]["desired_nodes"].as_i64()), (Some("dedicated"), Some(3)));
    assert_eq!(now["locator"], a["account"]["locator"], "the locator never changes");

    // The account was mapped to the dedicated pool only after two of its nodes were ready.
    let events =
        admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let events = events["items"].as_array().unwrap();
    let mapped =
        events.iter().find(|e| e["action"] == "account.mapped" && e["reason"] == format!("pool:{dedicated}")).unwrap();
    let pool_nodes: Vec<String> =
        nodes_of(&admin, &dedicated).await.iter().map(|n| format!("node:{}", n["id"].as_str().unwrap())).collect();
    let ready_before = events
        .iter()
        .filter(|e| e["action"] == "node.state" && e["reason"] == "starting -> ready")
        .filter(|e| pool_nodes.iter().any(|n| e["subject"] == n.as_str()))
        .filter(|e| e["id"].as_i64() < mapped["id"].as_i64())
        .count();
    assert!(ready_before >= 2, "mapped after {ready_before} ready nodes");
    // And every node of the dedicated pool serves it the moment the operation is done.
    for n in wait_ready(&admin, &dedicated, 3).await.iter().filter(|n| n["state"] == "ready") {
        let url = format!("http://{}/ana-vod/demo/hls/master.m3u8", n["address"].as_str().unwrap());
        assert_eq!(reqwest::get(url).await.unwrap().status(), StatusCode::OK);
    }

    // Back to payg: the shared pool again; the dedicated pool's nodes are stopped.
    let back = json!({"offer": {"kind": "payg"}});
    let b = admin.call(Method::PATCH, "/v1/accounts/ana-vod", Some(&key), Some(back), StatusCode::ACCEPTED).await;
    let op = admin.wait_operation_for(b["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let now = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(now["pool"]["id"].as_str(), Some(shared.as_str()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.node_processes().len() != 2 {
        assert!(Instant::now() < deadline, "dedicated nodes still running: {:?}", admin.node_processes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let allocs = admin.call(Method::GET, "/v1/allocations", Some(&admin.operator_token), None, StatusCode::OK).await;
    assert_eq!(allocs["items"][0]["offer"], "payg");
    assert_eq!(allocs["items"][0]["pool_id"].as_str(), Some(shared.as_str()));
}

/// An admin killed while an SLA account is being provisioned: the restarted admin
/// finishes the operation, and no node runs twice or without a row.
async fn an_admin_crash_during_provisioning_loses_nothing(backend: Backend) {
    let mut admin = Admin::start(backend, PROCESS_DRIVER).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let body = json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}});
    let a = admin.call(Method::POST, "/v1/accounts", Some(&key), Some(body), StatusCode::ACCEPTED).await;
    // Crash as soon as the first node has been launched.
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.node_processes().is_empty() {
        assert!(Instant::now() < deadline, "no node was launched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.crash_and_restart().await;
    let op = admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(90)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let account = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    let pool = account["pool"]["id"].as_str().unwrap().to_owned();
    wait_ready(&admin, &pool, 4).await;
    // Every running process is a live node of the pool, and there are exactly four.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<String> = nodes_of(&admin, &pool)
            .await
            .iter()
            .filter(|n| matches!(n["state"].as_str(), Some("starting" | "ready")))
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        let procs: Vec<String> = admin.node_processes().into_iter().map(|(id, _)| id).collect();
        if live.len() == 4 && procs.len() == 4 && procs.iter().all(|p| live.contains(p)) {
            break;
        }
        assert!(Instant::now() < deadline, "live nodes {live:?} vs processes {procs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pools = admin.call(Method::GET, "/v1/pools", Some(&admin.operator_token), None, StatusCode::OK).await;
    assert_eq!(
        pools["items"].as_array().unwrap().iter().filter(|p| p["kind"] == "dedicated").count(),
        1,
        "no second pool"
    );
}

e2e_on_both_backends!(
    an_sla_account_gets_its_nodes_and_a_killed_node_is_replaced,
    nodes_outlive_an_admin_crash_and_are_adopted,
    payg_to_sla_and_back_moves_the_account_only_to_ready_nodes,
    an_admin_crash_during_provisioning_loses_nothing,
);

/// Downloads segments from `nodes` until `stop`.
fn load(nodes: Vec<String>, stop: tokio_util::sync::CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for addr in nodes {
        for i in 0..2 {
            let url = format!("http://{addr}/ana-vod/demo/hls/720p/seg_00{i}.ts");
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.is_cancelled() {
                    if let Ok(mut res) = http.get(&url).send().await {
                        while let Ok(Some(_)) = res.chunk().await {
                            if stop.is_cancelled() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    tasks
}

/// Waits until `GET /v1/pools` shows `pool` as `what` says (60 s at most).
async fn wait_pool(admin: &Admin, pool: &str, wanted: &str, what: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pools = admin.call(Method::GET, "/v1/pools", Some(&admin.operator_token), None, StatusCode::OK).await;
        let p = pools["items"].as_array().unwrap().iter().find(|p| p["id"] == pool).cloned().unwrap();
        if what(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "pool never {wanted}: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_desired(admin: &Admin, pool: &str, n: i64) {
    wait_pool(admin, pool, &format!("wanted {n} nodes"), |p| p["desired_nodes"].as_i64() == Some(n)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shared_pool_grows_and_shrinks_back() {
    let admin = Admin::start(Backend::Sqlite, &["--driver", "process", "--scale-window-secs", "2"]).await;
    // 8 Mbit/s nodes: two players per node saturate them.
    let patch = json!({"node_capacity_mbps": 8});
    admin.call(Method::PATCH, "/v1/origin-types/hls", Some(&admin.operator_token), Some(patch), StatusCode::OK).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let (pool, _) =
        create(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let nodes = wait_ready(&admin, &pool, 2).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n["address"].as_str().unwrap().to_owned()).collect();
    // A shared pool whose nodes serve says so (it stayed `creating` once).
    let p = wait_pool(&admin, &pool, "ready", |p| p["state"] == "ready").await;
    assert_eq!((p["kind"].as_str(), p["health"].as_str()), (Some("shared"), Some("healthy")), "{p}");

    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = load(addrs, stop.clone());
    wait_desired(&admin, &pool, 3).await;
    wait_ready(&admin, &pool, 3).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    // Idle now: back to the minimum of two.
    wait_desired(&admin, &pool, 2).await;
    wait_ready(&admin, &pool, 2).await;
    let events =
        admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let scaled: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "pool.scaled")
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(scaled.len(), 2, "{scaled:?}");
}

/// A pool of an origin type whose image exits at start (`/bin/false`) beside a
/// healthy pool, for 30 s: its launches back off (1 s doubling) instead of one
/// every reconcile pass, its failed node rows stay few, it shows as degraded with
/// the reason and one event, and the healthy pool keeps its nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_pool_backs_off_beside_a_healthy_one() {
    let admin = Admin::start(Backend::Sqlite, PROCESS_DRIVER).await;
    let op = &admin.operator_token;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let (healthy, _) =
        create(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let serving: Vec<Value> = wait_ready(&admin, &healthy, 2).await;
    let mut serving: Vec<String> = serving.iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    serving.sort();

    admin
        .call(
            Method::POST,
            "/v1/origin-types",
            Some(op),
            Some(json!({"name": "broken", "node_capacity_mbps": 100})),
            StatusCode::CREATED,
        )
        .await;
    let bin_false = support::which("false").expect("false").display().to_string();
    let up = admin
        .call(
            Method::POST,
            "/v1/origin-types/broken/images",
            Some(op),
            Some(json!({"version": "1", "command": bin_false})),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(admin.wait_operation(up["id"].as_str().unwrap(), op).await["state"], "succeeded");
    let (_, key2) = admin.sign_up("bo@example.com").await;
    let a = admin
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&key2),
            Some(json!({"name": "bo-vod", "origin_type": "broken", "offer": {"kind": "trial"}})),
            StatusCode::ACCEPTED,
        )
        .await;
    let started = Instant::now();
    let broken_pool = || async {
        let pools = admin.call(Method::GET, "/v1/pools?limit=500", Some(op), None, StatusCode::OK).await;
        pools["items"].as_array().unwrap().iter().find(|p| p["origin_type"] == "broken").cloned()
    };
    support::eventually(Duration::from_secs(30), "the broken pool to be degraded", || async {
        broken_pool().await.is_some_and(|p| p["health"] == "degraded")
    })
    .await;
    let pool = broken_pool().await.unwrap();
    assert_eq!(pool["reason"], "node exits at start (exit status 1)", "{pool}");
    assert!(pool["next_launch_at"].is_string(), "{pool}");
    let pool_id = pool["id"].as_str().unwrap().to_owned();
    // Watch it for 30 s of crash loop.
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let launched = admin
        .count(&format!(
            "SELECT COUNT(*) FROM events WHERE action = 'node.registered' AND reason LIKE 'pool:{pool_id}%'"
        ))
        .await;
    eprintln!("30 s of crash loop: {launched} launches");
    // Without a backoff: 2 nodes every 250 ms pass, some 240.
    assert!((2..=12).contains(&launched), "{launched} launches in 30 s");
    let rows = nodes_of(&admin, &pool_id).await;
    assert!(rows.len() <= 5 + 2, "failed node rows are trimmed: {}", rows.len());
    assert_eq!(admin.count("SELECT COUNT(*) FROM events WHERE action = 'pool.degraded'").await, 1);
    // The account's operation waits, it does not fail.
    let path = format!("/v1/operations/{}", a["operation"]["id"].as_str().unwrap());
    let waiting = admin.call(Method::GET, &path, Some(&key2), None, StatusCode::OK).await;
    assert!(waiting["state"] == "running" || waiting["state"] == "pending", "{waiting}");
    // The healthy pool is untouched: the same ready nodes, healthy.
    let now: Vec<Value> = nodes_of(&admin, &healthy).await;
    let mut ready: Vec<String> =
        now.iter().filter(|n| n["state"] == "ready").map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    ready.sort();
    assert_eq!(ready, serving);
    let pools = admin.call(Method::GET, "/v1/pools?limit=500", Some(op), None, StatusCode::OK).await;
    let h = pools["items"].as_array().unwrap().iter().find(|p| p["id"] == healthy.as_str()).unwrap();
    assert_eq!(
        (h["health"].as_str(), h["state"].as_str(), h["reason"].is_null()),
        (Some("healthy"), Some("ready"), true),
        "{h}"
    );
}
