//! Partition safety through the real binary: the nodes of one target lose their
//! link to admin (a cuttable TCP link between them and admin) while players keep
//! reaching them through the router. Admin marks the target unreachable instead
//! of replacing its nodes all at once, replaces one at the configured rate, and
//! when the link returns the unheard nodes are ready again, the target active,
//! and the surplus drained; no player request fails.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, Link, Players, router_of, wait_status};

async fn call(admin: &Admin, method: Method, path: &str, body: Option<Value>, status: StatusCode) -> Value {
    admin.call(method, path, Some(&admin.operator_token), body, status).await
}

async fn nodes(admin: &Admin, pool: &str) -> Vec<Value> {
    let v = call(admin, Method::GET, "/v1/nodes?limit=500", None, StatusCode::OK).await;
    v["items"].as_array().unwrap().iter().filter(|n| n["pool_id"] == pool).cloned().collect()
}

async fn target_state(admin: &Admin, name: &str) -> String {
    let t = call(admin, Method::GET, &format!("/v1/targets/{name}"), None, StatusCode::OK).await;
    t["state"].as_str().unwrap().to_owned()
}

async fn count_events(admin: &Admin, action: &str) -> usize {
    let v = call(admin, Method::GET, "/v1/events?limit=500", None, StatusCode::OK).await;
    v["items"].as_array().unwrap().iter().filter(|e| e["action"] == action).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_cut_off_from_admin_is_not_replaced_all_at_once() {
    // One replacement every 10 s on a cut-off target, so the test sees the rate.
    let admin =
        Admin::start(Backend::Sqlite, &["--driver", "process", "--partition-replacements-per-minute", "6"]).await;
    let admin_addr: std::net::SocketAddr = admin.url.trim_start_matches("http://").parse().unwrap();
    let link = Link::to(admin_addr).await;
    // Nodes on `far` reach admin through the link; nodes on `near` directly.
    call(&admin, Method::PATCH, "/v1/targets/local", Some(json!({"state": "draining"})), StatusCode::OK).await;
    let far = json!({"name": "far", "kind": "process", "zone": "far",
                     "settings": {"node_admin_url": format!("http://{}", link.addr)}});
    call(&admin, Method::POST, "/v1/targets", Some(far), StatusCode::CREATED).await;
    let near = json!({"name": "near", "kind": "process", "zone": "near"});
    call(&admin, Method::POST, "/v1/targets", Some(near), StatusCode::CREATED).await;

    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin
        .account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}}))
        .await;
    let settled = admin.settled(&pool, 4).await;
    let on_far: Vec<String> =
        settled.iter().filter(|n| n["target"] == "far").map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    let all: Vec<(Value, Value)> =
        nodes(&admin, &pool).await.iter().map(|n| (n["target"].clone(), n["state"].clone())).collect();
    assert_eq!(on_far.len(), 2, "two zones, two nodes each: {all:?}");
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (_router, router) = router_of(&admin, &[]).await;
    wait_status(&reqwest::Client::new(), &format!("{router}/ana-vod/demo/hls/master.m3u8"), StatusCode::OK, "ana-vod")
        .await;
    let players = Players::start(&router, &["ana-vod"]);
    // The router tells admin which nodes it reaches (its view, beside the driver's).
    support::eventually(Duration::from_secs(10), "the router's sightings of all four nodes", || async {
        admin.count("SELECT COUNT(DISTINCT node_id) FROM router_sightings").await == 4
    })
    .await;
    let registered_before = count_events(&admin, "node.registered").await;

    // Cut: both of far's nodes go unheard together, while their processes run.
    link.cut();
    let cut_at = Instant::now();
    support::eventually(Duration::from_secs(30), "far to be unreachable", || async {
        target_state(&admin, "far").await == "unreachable"
    })
    .await;
    let marked_after = cut_at.elapsed();
    assert_eq!(count_events(&admin, "target.unreachable").await, 1);
    // Until one replacement is due (10 s after the mark), none is made: the
    // unheard nodes are held, still ready, still routed.
    let failed_of_far = |ns: &[Value]| {
        ns.iter().filter(|n| on_far.contains(&n["id"].as_str().unwrap().to_owned()) && n["state"] == "failed").count()
    };
    while cut_at.elapsed() < marked_after + Duration::from_secs(8) {
        let ns = nodes(&admin, &pool).await;
        assert_eq!(failed_of_far(&ns), 0, "no node replaced before its turn: {ns:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(count_events(&admin, "node.registered").await, registered_before, "no replacement launched yet");
    // Then exactly one, placed elsewhere.
    support::eventually(Duration::from_secs(30), "one unheard node replaced", || async {
        failed_of_far(&nodes(&admin, &pool).await) == 1
    })
    .await;
    support::eventually(Duration::from_secs(30), "its replacement ready on near", || async {
        let ns = nodes(&admin, &pool).await;
        ns.iter().filter(|n| n["target"] == "near" && n["state"] == "ready").count() == 3
    })
    .await;
    let ns = nodes(&admin, &pool).await;
    assert_eq!(failed_of_far(&ns), 1, "one at a time: {ns:#?}");

    // Healed: the other unheard node is heard again, the target is active, and
    // the pool is back to the four nodes it owes.
    link.heal();
    support::eventually(Duration::from_secs(30), "far active again", || async {
        target_state(&admin, "far").await == "active"
    })
    .await;
    assert_eq!(count_events(&admin, "target.reachable").await, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ns = nodes(&admin, &pool).await;
        let live: Vec<&Value> =
            ns.iter().filter(|n| ["starting", "ready", "draining"].contains(&n["state"].as_str().unwrap())).collect();
        let far_ready = live.iter().filter(|n| n["target"] == "far" && n["state"] == "ready").count();
        if live.len() == 4 && live.iter().all(|n| n["state"] == "ready") && far_ready == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never settled on four nodes: {ns:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(failed_of_far(&nodes(&admin, &pool).await), 1, "only the one released");
    players.finish().await;
}
