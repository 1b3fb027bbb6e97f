//! Targets through the real binary: `local` exists from the first start; nodes
//! are placed within targets' quotas, and a sign-up that finds no room waits with
//! its reason until a quota is raised; a pool spreads over zones; a draining
//! target's nodes are replaced elsewhere while a player streams, with no failed
//! request.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, Players, expect_problem, router_of, wait_status};

const PROCESS_DRIVER: &[&str] = &["--driver", "process"];

async fn targets(admin: &Admin) -> Vec<Value> {
    let v = admin.call(Method::GET, "/v1/targets", Some(&admin.operator_token), None, StatusCode::OK).await;
    v["items"].as_array().unwrap().clone()
}

async fn patch_target(admin: &Admin, name: &str, body: Value) -> Value {
    let path = format!("/v1/targets/{name}");
    admin.call(Method::PATCH, &path, Some(&admin.operator_token), Some(body), StatusCode::OK).await
}

/// Waits (deadline 60 s) until `check` holds for the operation; returns it.
async fn wait_op(admin: &Admin, id: &str, key: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = admin.call(Method::GET, &format!("/v1/operations/{id}"), Some(key), None, StatusCode::OK).await;
        if check(&op) {
            return op;
        }
        assert!(Instant::now() < deadline, "operation never {what}: {op:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events(admin: &Admin, action: &str) -> Vec<Value> {
    let v = admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    v["items"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

async fn a_sign_up_waits_for_capacity_until_a_quota_is_raised(backend: Backend) {
    let admin = Admin::start(backend, PROCESS_DRIVER).await;
    let op_token = admin.operator_token.clone();
    // `local` is there from the first start, without limits.
    let local = &targets(&admin).await[0];
    assert_eq!(
        (&local["name"], &local["kind"], &local["zone"], &local["state"]),
        (&json!("local"), &json!("process"), &json!("local"), &json!("active"))
    );
    assert_eq!(local["quotas"], json!({"max_nodes": null, "max_mbps": null}));

    // Bad input is a problem naming the field, and changes nothing.
    for (body, field) in [
        (json!({"name": "Zone_B", "kind": "process", "zone": "b"}), "name"),
        (json!({"name": "k", "kind": "kubernetes", "zone": "b"}), "kubernetes"),
        (json!({"name": "k", "kind": "vm", "zone": "b"}), "kind"),
        (
            json!({"name": "k", "kind": "kubernetes", "zone": "b", "kubernetes": {"namespace": "Bad_NS", "image": "x"}}),
            "kubernetes.namespace",
        ),
        (
            json!({"name": "b", "kind": "process", "zone": "b", "kubernetes": {"namespace": "ns", "image": "x"}}),
            "kubernetes",
        ),
        (json!({"name": "b", "kind": "process", "zone": "b", "quotas": {"max_nodes": -1}}), "quotas.max_nodes"),
        (json!({"name": "b", "kind": "process", "zone": "-b"}), "zone"),
        (
            json!({"name": "b", "kind": "process", "zone": "b", "settings": {"node_listen": "nope"}}),
            "settings.node_listen",
        ),
    ] {
        let res = admin.request(Method::POST, "/v1/targets", Some(&op_token), Some(body)).await;
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some(field)).await;
    }
    let taken = json!({"name": "local", "kind": "process", "zone": "x"});
    let res = admin.request(Method::POST, "/v1/targets", Some(&op_token), Some(taken)).await;
    expect_problem(res, StatusCode::CONFLICT, "conflict", Some("name")).await;
    let res =
        admin.request(Method::PATCH, "/v1/targets/local", Some(&op_token), Some(json!({"state": "unreachable"}))).await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("state")).await;
    assert_eq!(targets(&admin).await.len(), 1);
    assert_eq!(targets(&admin).await[0]["state"], "active");

    // Room for two nodes; an SLA of 300 needs four.
    let local = patch_target(&admin, "local", json!({"quotas": {"max_nodes": 2}})).await;
    assert_eq!(local["quotas"]["max_nodes"], 2);
    let (_, key) = admin.sign_up("ana@example.com").await;
    let body = json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}});
    let a = admin.call(Method::POST, "/v1/accounts", Some(&key), Some(body), StatusCode::ACCEPTED).await;
    let op_id = a["operation"]["id"].as_str().unwrap().to_owned();
    let op = wait_op(&admin, &op_id, &key, "waiting", |op| op["progress"]["waiting"].is_string()).await;
    let why = op["progress"]["waiting"].as_str().unwrap();
    assert_eq!(
        why, "waiting for capacity: no target has room for a 100 Mbit/s node (local: 2 of 2 nodes)",
        "the reason names the target and its quota"
    );
    assert_eq!(op["state"], "running");
    // The account's pool (the one dedicated pool) shows why it waits.
    let pools = admin.call(Method::GET, "/v1/pools?limit=500", Some(&op_token), None, StatusCode::OK).await;
    let dedicated: Vec<&Value> =
        pools["items"].as_array().unwrap().iter().filter(|p| p["kind"] == "dedicated").collect();
    assert_eq!(dedicated.len(), 1, "{pools:#}");
    assert_eq!(dedicated[0]["waiting"], why);
    let pool = dedicated[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(admin.live_nodes(&pool).await.len(), 2, "the quota holds");
    let waiting = events(&admin, "pool.waiting").await;
    assert_eq!(waiting.len(), 1, "one event, not one per pass: {waiting:?}");
    assert_eq!(waiting[0]["reason"], why);

    // A second target with room for one more: still short, and the reason says so.
    let b = json!({"name": "zone-b", "kind": "process", "zone": "b", "region": "r1", "quotas": {"max_nodes": 1}});
    let created = admin.call(Method::POST, "/v1/targets", Some(&op_token), Some(b), StatusCode::CREATED).await;
    assert_eq!((&created["region"], &created["used"]["nodes"]), (&json!("r1"), &json!(0)));
    wait_op(&admin, &op_id, &key, "waiting on both targets", |op| {
        op["progress"]["waiting"].as_str().is_some_and(|w| w.contains("zone-b: 1 of 1 nodes"))
    })
    .await;
    // Raised: the sign-up goes on and completes.
    patch_target(&admin, "zone-b", json!({"quotas": {"max_nodes": 2}})).await;
    let op = admin.wait_operation_for(&op_id, &key, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "succeeded", "{op:#}");
    assert!(op["progress"].is_null(), "nothing is waited for any more: {op:#}");
    // The operation is done with three ready (the spare aside); the spare follows.
    support::eventually(Duration::from_secs(30), "the spare", || async { admin.live_nodes(&pool).await.len() == 4 })
        .await;
    let nodes = admin.live_nodes(&pool).await;
    let on = |t: &str| nodes.iter().filter(|n| n["target"] == t).count();
    assert_eq!((on("local"), on("zone-b")), (2, 2), "{nodes:#?}");
    let used: Vec<(Value, Value)> =
        targets(&admin).await.iter().map(|t| (t["name"].clone(), t["used"]["nodes"].clone())).collect();
    assert_eq!(used, [(json!("local"), json!(2)), (json!("zone-b"), json!(2))]);
    assert_eq!(events(&admin, "pool.placed").await.len(), 1);
    // A target that holds nodes cannot be deleted.
    let res = admin.request(Method::DELETE, "/v1/targets/zone-b", Some(&op_token), None).await;
    let p = expect_problem(res, StatusCode::CONFLICT, "conflict", None).await;
    assert!(p["detail"].as_str().unwrap().contains("holds 2 live nodes"), "{p}");
}

/// A pool spreads over two zones, one upgrade domain per zone; draining one
/// target moves its nodes to the other, make-before-break, under a player.
async fn a_pool_spreads_over_zones_and_a_draining_target_empties_with_no_failed_request(backend: Backend) {
    let admin = Admin::start(backend, PROCESS_DRIVER).await;
    let op_token = admin.operator_token.clone();
    // This host's default target takes no new nodes; two others do, in zones a and b.
    patch_target(&admin, "local", json!({"state": "draining"})).await;
    for (name, zone) in [("host-a", "a"), ("host-b", "b")] {
        let t = json!({"name": name, "kind": "process", "zone": zone});
        admin.call(Method::POST, "/v1/targets", Some(&op_token), Some(t), StatusCode::CREATED).await;
    }
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin
        .account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}}))
        .await;
    let nodes = admin.settled(&pool, 4).await;
    let placed: Vec<(i64, String)> = nodes
        .iter()
        .map(|n| (n["upgrade_domain"].as_i64().unwrap(), n["target"].as_str().unwrap().to_owned()))
        .collect();
    for domain in [0, 1] {
        let hosts: std::collections::BTreeSet<&str> =
            placed.iter().filter(|(d, _)| *d == domain).map(|(_, t)| t.as_str()).collect();
        assert_eq!(hosts.len(), 1, "upgrade domain {domain} in one zone: {placed:?}");
    }
    let on = |t: &str| placed.iter().filter(|(_, x)| x == t).count();
    assert_eq!((on("host-a"), on("host-b"), on("local")), (2, 2, 0), "{placed:?}");

    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (_router, router) = router_of(&admin, &[]).await;
    wait_status(&reqwest::Client::new(), &format!("{router}/ana-vod/demo/hls/master.m3u8"), StatusCode::OK, "ana-vod")
        .await;
    let players = Players::start(&router, &["ana-vod"]);
    let drained = patch_target(&admin, "host-a", json!({"state": "draining"})).await;
    assert_eq!(drained["state"], "draining");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let nodes = admin.live_nodes(&pool).await;
        let ready_on_b = nodes.iter().filter(|n| n["target"] == "host-b" && n["state"] == "ready").count();
        if ready_on_b == 4 && nodes.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "host-a never emptied: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    players.finish().await;
    let ts = targets(&admin).await;
    let a = ts.iter().find(|t| t["name"] == "host-a").unwrap();
    assert_eq!(a["used"]["nodes"], 0, "{a}");
    // Empty, it can go.
    admin.call(Method::DELETE, "/v1/targets/host-a", Some(&op_token), None, StatusCode::NO_CONTENT).await;
    let res = admin.request(Method::GET, "/v1/targets/host-a", Some(&op_token), None).await;
    expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    assert_eq!(events(&admin, "target.deleted").await.len(), 1);
}

e2e_on_both_backends!(a_sign_up_waits_for_capacity_until_a_quota_is_raised);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_over_zones_and_a_draining_target_empties() {
    a_pool_spreads_over_zones_and_a_draining_target_empties_with_no_failed_request(Backend::Postgres).await;
}
