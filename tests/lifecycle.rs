//! The account lifecycle through real processes: deactivate (410 at once, the
//! dedicated pool kept at one node), reactivate (served again behind the same
//! locator, the pool sized again), retention passing on the collector's clock
//! (the pool, its nodes, the mapping and the allocation row deleted, other
//! accounts untouched), and DELETE doing the same at once.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, router_of, wait_status};

async fn get(admin: &Admin, path: &str) -> Value {
    admin.call(Method::GET, path, Some(&admin.operator_token), None, StatusCode::OK).await
}

/// The pool's nodes that are not stopped (ids), and all its node rows.
async fn pool_nodes(admin: &Admin, pool: &str) -> (Vec<String>, usize) {
    let v = get(admin, "/v1/nodes?limit=500").await;
    let rows: Vec<&Value> = v["items"].as_array().unwrap().iter().filter(|n| n["pool_id"] == pool).collect();
    let live = rows
        .iter()
        .filter(|n| matches!(n["state"].as_str(), Some("starting" | "ready" | "draining")))
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    (live, rows.len())
}

/// Waits (deadline 60 s) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_nodes(admin: &Admin, pool: &str) -> Vec<String> {
    let v = get(admin, "/v1/nodes?limit=500").await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == pool && n["state"] == "ready")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn deactivate_reactivate_and_retention(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(backend, &["--driver", "process", "--test-clock"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    // One live account per customer and type: Bob and Cat are other customers.
    let (_, bob_key) = admin.sign_up("bob@example.com").await;
    let (_, cat_key) = admin.sign_up("cat@example.com").await;
    // SLA 200 on 100 Mbit/s nodes: a dedicated pool of 3 (two carry it, one spare).
    let pool = admin
        .account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 200}}))
        .await;
    let other_pool =
        admin.account(&bob_key, json!({"name": "bob-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    admin.upload_demo(&bob_key, "bob-vod", "demo").await;
    let (_router, router) = router_of(&admin, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{router}/ana-vod/demo/hls/master.m3u8");
    let other_url = format!("{router}/bob-vod/demo/hls/master.m3u8");
    wait_status(&http, &url, StatusCode::OK, "ana-vod through the router").await;
    wait_status(&http, &other_url, StatusCode::OK, "bob-vod through the router").await;
    let before = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    until("three ready nodes in the dedicated pool", || async { ready_nodes(&admin, &pool).await.len() == 3 }).await;

    // The type keeps deactivated pools for 48 hours (admin's default is 7 days).
    let t = admin
        .call(
            Method::PATCH,
            "/v1/origin-types/hls",
            Some(&admin.operator_token),
            Some(json!({"retention_hours": 48})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["retention_hours"], 48);

    // Deactivate: 410 at once, the pool kept with one node until retain_until.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let d = admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    assert_eq!(d["account"]["state"], "deactivated");
    let retain_until = headwater_admin::clock::parse_rfc3339(d["account"]["retain_until"].as_str().unwrap()).unwrap();
    assert!((retain_until - (now_ms + 48 * 3_600_000)).abs() < 60_000, "{d}");
    wait_status(&http, &url, StatusCode::GONE, "410 after deactivation").await;
    until("the retained pool down to one node", || async { pool_nodes(&admin, &pool).await.0.len() == 1 }).await;
    let now = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(now["pool"]["id"].as_str(), Some(pool.as_str()), "the pool is kept");

    // Reactivate: served again behind the same locator, the pool sized again.
    let r = admin.call(Method::POST, "/v1/accounts/ana-vod/reactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    let started = Instant::now();
    wait_status(&http, &url, StatusCode::OK, "200 after reactivation").await;
    eprintln!("reactivated → serving through the router after {:?}", started.elapsed());
    let op = admin.wait_operation_for(r["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let now = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(now["locator"], before["locator"]);
    assert_eq!((now["pool"]["id"].as_str(), now["pool"]["desired_nodes"].as_i64()), (Some(pool.as_str()), Some(3)));
    until("three ready nodes again", || async { ready_nodes(&admin, &pool).await.len() == 3 }).await;

    // Deactivate again and let the retention (7 days by default) pass on the
    // collector's clock.
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    wait_status(&http, &url, StatusCode::GONE, "410 after the second deactivation").await;
    let other_nodes = ready_nodes(&admin, &other_pool).await;
    let clock = admin
        .call(
            Method::POST,
            "/v1/test/clock",
            Some(&admin.operator_token),
            Some(json!({"advance_ms": 7 * 24 * 3_600_000_i64 + 60_000})),
            StatusCode::OK,
        )
        .await;
    assert!(clock["now"].is_string(), "{clock}");
    until("the expired account deleted", || async {
        admin.request(Method::GET, "/v1/accounts/ana-vod", Some(&key), None).await.status() == StatusCode::NOT_FOUND
    })
    .await;
    until("the pool and its node rows deleted", || async {
        let pools = get(&admin, "/v1/pools?limit=500").await;
        let gone = !pools["items"].as_array().unwrap().iter().any(|p| p["id"] == pool.as_str());
        gone && pool_nodes(&admin, &pool).await.1 == 0
    })
    .await;
    let allocations = get(&admin, "/v1/allocations?limit=500").await;
    let names: Vec<&str> =
        allocations["items"].as_array().unwrap().iter().filter_map(|a| a["pool_id"].as_str()).collect();
    assert!(!names.contains(&pool.as_str()), "no allocation row on the deleted pool: {allocations}");
    assert!(names.contains(&other_pool.as_str()), "the other account's allocation is kept: {allocations}");
    assert!(admin.count("SELECT COUNT(*) FROM account_pool_mappings m JOIN accounts a ON a.id = m.account_id WHERE a.name = 'ana-vod'").await == 0);
    wait_status(&http, &url, StatusCode::NOT_FOUND, "404 once deleted").await;
    assert!(admin.has_event("pool.deleted", &format!("pool:{pool}")).await, "a pool.deleted event");
    // Nothing else touched: the other account serves from the same nodes.
    let res = http.get(&other_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ready_nodes(&admin, &other_pool).await, other_nodes);
    let bob = admin.call(Method::GET, "/v1/accounts/bob-vod", Some(&bob_key), None, StatusCode::OK).await;
    assert_eq!((bob["state"].as_str(), bob["pool"]["id"].as_str()), (Some("active"), Some(other_pool.as_str())));

    // DELETE does the same at once.
    let pool = admin
        .account(&cat_key, json!({"name": "cat-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}}))
        .await;
    // (The collector's clock is already a week ahead: a longer retention from here.)
    let month = json!({"retention_hours": 720});
    admin.call(Method::PATCH, "/v1/origin-types/hls", Some(&admin.operator_token), Some(month), StatusCode::OK).await;
    admin.call(Method::DELETE, "/v1/accounts/cat-vod", Some(&cat_key), None, StatusCode::ACCEPTED).await;
    until("the deleted account's pool and nodes gone", || async {
        let pools = get(&admin, "/v1/pools?limit=500").await;
        !pools["items"].as_array().unwrap().iter().any(|p| p["id"] == pool.as_str())
            && pool_nodes(&admin, &pool).await.1 == 0
    })
    .await;

    // A deleted account's name (its locator) stays reserved for the retention
    // period, then another customer may take it.
    let (_, dan_key) = admin.sign_up("dan@example.com").await;
    let take = json!({"name": "cat-vod", "origin_type": "hls", "offer": {"kind": "trial"}});
    let res = admin.request(Method::POST, "/v1/accounts", Some(&dan_key), Some(take.clone())).await;
    support::expect_problem(res, StatusCode::CONFLICT, "conflict", Some("name")).await;
    admin
        .call(
            Method::POST,
            "/v1/test/clock",
            Some(&admin.operator_token),
            Some(json!({"advance_ms": 30 * 24 * 3_600_000_i64})),
            StatusCode::OK,
        )
        .await;
    until("the name released", || async {
        admin.count("SELECT COUNT(*) FROM events WHERE action = 'account.name_released' AND reason = 'cat-vod'").await
            == 1
    })
    .await;
    let taken = admin.call(Method::POST, "/v1/accounts", Some(&dan_key), Some(take), StatusCode::ACCEPTED).await;
    assert_eq!(taken["account"]["locator"].as_str().map(|l| l.ends_with("/cat-vod/")), Some(true), "{taken}");
}

async fn the_test_clock_is_off_unless_asked_for(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let res = admin
        .request(Method::POST, "/v1/test/clock", Some(&admin.operator_token), Some(json!({"advance_ms": 1})))
        .await;
    support::expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
}

/// Warm pools of the type: (id, desired nodes, ready nodes).
async fn warm_pools(admin: &Admin) -> Vec<(String, i64, i64)> {
    let pools = get(admin, "/v1/pools?limit=500").await;
    pools["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["kind"] == "dedicated" && p["accounts"] == 0 && matches!(p["state"].as_str(), Some("creating" | "ready"))
        })
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["desired_nodes"].as_i64().unwrap(),
                p["ready_nodes"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn an_sla_sign_up_takes_a_warm_pool_and_the_stock_is_refilled(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(backend, &["--driver", "process"]).await;
    // Bad input changes nothing.
    let res = admin
        .request(
            Method::PATCH,
            "/v1/origin-types/hls",
            Some(&admin.operator_token),
            Some(json!({"warm_pools": {"0": 1}})),
        )
        .await;
    support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("warm_pools")).await;
    assert!(get(&admin, "/v1/origin-types/hls").await["warm_pools"].is_null());
    // One warm pool of two nodes (what SLA 100 on 100 Mbit/s nodes needs).
    let t = admin
        .call(
            Method::PATCH,
            "/v1/origin-types/hls",
            Some(&admin.operator_token),
            Some(json!({"warm_pools": {"2": 1}})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(t["warm_pools"], json!({"2": 1}));
    let deadline = Instant::now() + Duration::from_secs(60);
    let warm = loop {
        if let [(id, 2, 2)] = warm_pools(&admin).await.as_slice() {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "no warm pool with two ready nodes: {:?}", warm_pools(&admin).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let (_, key) = admin.sign_up("ana@example.com").await;
    let started = Instant::now();
    let a = admin
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}})),
            StatusCode::ACCEPTED,
        )
        .await;
    let op = admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
    let warm_took = started.elapsed();
    eprintln!("steps: {} created {}", op["steps"], op["created_at"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    let account = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(account["pool"]["id"].as_str(), Some(warm.as_str()), "the sign-up took the warm pool");
    assert!(admin.has_event("pool.claimed", &format!("pool:{warm}")).await, "a pool.claimed event");
    // Its nodes serve the account (configured without a restart).
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let nodes = get(&admin, "/v1/nodes?limit=500").await;
    for n in
        nodes["items"].as_array().unwrap().iter().filter(|n| n["pool_id"] == warm.as_str() && n["state"] == "ready")
    {
        let url = format!("http://{}/ana-vod/demo/hls/master.m3u8", n["address"].as_str().unwrap());
        assert_eq!(reqwest::get(url).await.unwrap().status(), StatusCode::OK);
    }
    // The stock is made again.
    until("a new warm pool ready", || async {
        matches!(warm_pools(&admin).await.as_slice(), [(id, 2, 2)] if *id != warm)
    })
    .await;

    // A size with no warm pool (4 nodes) is made cold, for comparison.
    let (_, key) = admin.sign_up("bob@example.com").await;
    let started = Instant::now();
    admin.account(&key, json!({"name": "bob-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}})).await;
    eprintln!("SLA sign-up to serving: warm pool {warm_took:?}, cold {:?}", started.elapsed());
}

e2e_on_both_backends!(
    deactivate_reactivate_and_retention,
    the_test_clock_is_off_unless_asked_for,
    an_sla_sign_up_takes_a_warm_pool_and_the_stock_is_refilled
);
