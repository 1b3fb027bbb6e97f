//! Rolling upgrades through real processes: a new image rolls over a shared pool
//! and two dedicated pools while players stream from all three through the router,
//! and no player request fails; a broken image halts its upgrade (the nodes on the
//! image before keep serving) and a rollback brings every pool back.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, Players, router_of, wait_status};

async fn image(admin: &Admin, version: &str, command: &str, args: &[&str]) -> Value {
    let body = json!({"version": version, "command": command, "args": args});
    let op = admin
        .call(
            Method::POST,
            "/v1/origin-types/hls/images",
            Some(&admin.operator_token),
            Some(body),
            StatusCode::ACCEPTED,
        )
        .await;
    admin.wait_operation_for(op["id"].as_str().unwrap(), &admin.operator_token, Duration::from_secs(180)).await
}

/// Per pool id: its image and the images of its ready nodes.
async fn pools(admin: &Admin, ids: &[String]) -> Vec<(Option<String>, Vec<Option<String>>)> {
    let nodes = admin.call(Method::GET, "/v1/nodes?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let pools = admin.call(Method::GET, "/v1/pools?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    ids.iter()
        .map(|id| {
            let pool = pools["items"].as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap();
            let ready = nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["pool_id"] == id.as_str() && n["state"] == "ready")
                .map(|n| n["image_version"].as_str().map(str::to_owned))
                .collect();
            (pool["image_version"].as_str().map(str::to_owned), ready)
        })
        .collect()
}

async fn a_new_image_rolls_out_with_no_failed_request_and_a_broken_one_halts_and_rolls_back(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(backend, &["--driver", "process"]).await;
    let mut ids = Vec::new();
    for (name, offer) in [
        ("pay-vod", json!({"kind": "payg"})),
        ("sla-a", json!({"kind": "sla", "mbps": 100})),
        ("sla-b", json!({"kind": "sla", "mbps": 100})),
    ] {
        // One live account per customer and type: a customer each.
        let (_, key) = admin.sign_up(&format!("{name}@example.com")).await;
        ids.push(admin.account(&key, json!({"name": name, "origin_type": "hls", "offer": offer})).await);
        admin.upload_demo(&key, name, "demo").await;
    }
    let (_router, router) = router_of(&admin, &[]).await;
    let http = reqwest::Client::new();
    for name in ["pay-vod", "sla-a", "sla-b"] {
        wait_status(&http, &format!("{router}/{name}/demo/hls/master.m3u8"), StatusCode::OK, name).await;
    }
    let players = Players::start(&router, &["pay-vod", "sla-a", "sla-b"]);

    // Bad input changes nothing.
    let bad = json!({"version": "9", "command": "headwater", "args": ["origin"], "max_concurrent_pools": 0});
    let res = admin.request(Method::POST, "/v1/origin-types/hls/images", Some(&admin.operator_token), Some(bad)).await;
    support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("max_concurrent_pools")).await;

    // A new image: every pool ends on it, one node at a time.
    let started = Instant::now();
    let op = image(&admin, "2.0.0", "headwater", &["origin"]).await;
    eprintln!("upgrade of 3 pools took {:?}", started.elapsed());
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        (op["progress"]["pools_done"].as_u64(), op["progress"]["pools_total"].as_u64()),
        (Some(3), Some(3)),
        "{op}"
    );
    for (image, ready) in pools(&admin, &ids).await {
        assert_eq!(image.as_deref(), Some("2.0.0"));
        assert!(ready.len() >= 2 && ready.iter().all(|v| v.as_deref() == Some("2.0.0")), "{ready:?}");
    }
    let events =
        admin.call(Method::GET, "/v1/events?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let mut events: Vec<&Value> = events["items"].as_array().unwrap().iter().collect();
    events.sort_by_key(|e| e["id"].as_i64());
    let upgrading: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "pool.upgrading")
        .map(|e| e["subject"].as_str().unwrap().trim_start_matches("pool:").to_owned())
        .collect();
    assert_eq!(upgrading.first(), Some(&ids[0]), "the shared pool goes first: {upgrading:?}");
    // From the built-in image there is nothing to roll back to.
    let path = format!("/v1/operations/{}/rollback", op["id"].as_str().unwrap());
    let res = admin.request(Method::POST, &path, Some(&admin.operator_token), None).await;
    support::expect_problem(res, StatusCode::CONFLICT, "conflict", None).await;

    // A broken image: its nodes exit at once; the upgrade halts, the pools keep
    // serving on 2.0.0.
    let bin_false = support::which("false").expect("false");
    let broken = image(&admin, "3.0.0", &bin_false.display().to_string(), &[]).await;
    assert_eq!(broken["state"], "failed", "{broken}");
    assert!(broken["last_error"].as_str().unwrap().contains("halted"), "{broken}");
    assert!(broken["progress"]["halted"].is_string(), "{broken}");
    for (_, ready) in pools(&admin, &ids).await {
        assert!(ready.len() >= 2 && ready.iter().all(|v| v.as_deref() == Some("2.0.0")), "{ready:?}");
    }

    // Rollback: every pool back on 2.0.0.
    let path = format!("/v1/operations/{}/rollback", broken["id"].as_str().unwrap());
    let back = admin.call(Method::POST, &path, Some(&admin.operator_token), None, StatusCode::ACCEPTED).await;
    assert_eq!(back["input"]["version"], "2.0.0");
    let back =
        admin.wait_operation_for(back["id"].as_str().unwrap(), &admin.operator_token, Duration::from_secs(120)).await;
    assert_eq!(back["state"], "succeeded", "{back}");
    for (image, ready) in pools(&admin, &ids).await {
        assert_eq!(image.as_deref(), Some("2.0.0"));
        assert!(ready.iter().all(|v| v.as_deref() == Some("2.0.0")), "{ready:?}");
    }
    let origin_type =
        admin.call(Method::GET, "/v1/origin-types/hls", Some(&admin.operator_token), None, StatusCode::OK).await;
    assert_eq!(origin_type["current_image"], "2.0.0", "{origin_type}");
    // A pool made now starts on the current image.
    let (_, key) = admin.sign_up("new@example.com").await;
    let fresh = admin
        .account(&key, json!({"name": "new-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}}))
        .await;
    for (image, ready) in pools(&admin, &[fresh]).await {
        assert_eq!(image.as_deref(), Some("2.0.0"));
        assert!(!ready.is_empty() && ready.iter().all(|v| v.as_deref() == Some("2.0.0")), "{ready:?}");
    }

    players.finish().await;
}

/// Three uploads within a second under looping players: one upgrade of the type
/// runs at a time, each newer upload supersedes the one before at once (no node
/// is launched on a superseded image after that), every pool ends on the last
/// image, and a rollback goes back to the last image that finished everywhere.
async fn uploads_in_a_row_supersede_each_other_and_end_on_the_last(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(backend, &["--driver", "process"]).await;
    let op = admin.operator_token.clone();
    let mut ids = Vec::new();
    for (name, offer) in [("pay-vod", json!({"kind": "payg"})), ("sla-a", json!({"kind": "sla", "mbps": 100}))] {
        let (_, key) = admin.sign_up(&format!("{name}@example.com")).await;
        ids.push(admin.account(&key, json!({"name": name, "origin_type": "hls", "offer": offer})).await);
        admin.upload_demo(&key, name, "demo").await;
    }
    // A finished upgrade first: the image a rollback returns to.
    let first = image(&admin, "1.5.0", "headwater", &["origin"]).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    let (_router, router) = router_of(&admin, &[]).await;
    let http = reqwest::Client::new();
    for name in ["pay-vod", "sla-a"] {
        wait_status(&http, &format!("{router}/{name}/demo/hls/master.m3u8"), StatusCode::OK, name).await;
    }
    let players = Players::start(&router, &["pay-vod", "sla-a"]);

    let mut ops = Vec::new();
    let started = Instant::now();
    for version in ["2.0.0", "3.0.0", "4.0.0"] {
        let body = json!({"version": version, "command": "headwater", "args": ["origin"]});
        let v =
            admin.call(Method::POST, "/v1/origin-types/hls/images", Some(&op), Some(body), StatusCode::ACCEPTED).await;
        ops.push(v);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(2), "uploads close together");
    let last = admin.wait_operation_for(ops[2]["id"].as_str().unwrap(), &op, Duration::from_secs(180)).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    for older in &ops[..2] {
        let id = older["id"].as_str().unwrap();
        let o = admin.call(Method::GET, &format!("/v1/operations/{id}"), Some(&op), None, StatusCode::OK).await;
        assert_eq!(o["state"], "superseded", "{o}");
        assert!(admin.has_event("operation.superseded", &format!("operation:{id}")).await);
        // Nothing to roll back: a superseded upgrade is a conflict.
        let res = admin.request(Method::POST, &format!("/v1/operations/{id}/rollback"), Some(&op), None).await;
        let p = support::expect_problem(res, StatusCode::CONFLICT, "conflict", None).await;
        assert!(p["detail"].as_str().unwrap().contains("superseded"), "{p}");
    }
    for (image, ready) in pools(&admin, &ids).await {
        assert_eq!(image.as_deref(), Some("4.0.0"));
        assert!(ready.len() >= 2 && ready.iter().all(|v| v.as_deref() == Some("4.0.0")), "{ready:?}");
    }
    let hls = admin.call(Method::GET, "/v1/origin-types/hls", Some(&op), None, StatusCode::OK).await;
    assert_eq!(hls["current_image"], "4.0.0", "{hls}");
    // No node registered (so launched) on a superseded image once its upgrade was
    // superseded: in the event trail, which orders both.
    for (older, superseded) in ops[..2].iter().zip(["2.0.0", "3.0.0"]) {
        let id = older["id"].as_str().unwrap();
        let late = admin
            .count(&format!(
                "SELECT COUNT(*) FROM events WHERE action = 'node.registered' AND reason LIKE '% image {superseded}'
                 AND id > (SELECT id FROM events WHERE action = 'operation.superseded' AND subject = 'operation:{id}')"
            ))
            .await;
        assert_eq!(late, 0, "nodes on {superseded} registered after its upgrade was superseded");
        let before = admin
            .count(&format!(
                "SELECT COUNT(*) FROM events WHERE action = 'node.registered' AND reason LIKE '% image {superseded}'"
            ))
            .await;
        eprintln!("nodes registered on {superseded}: {before}, after it was superseded: {late}");
    }
    // The rollback of the last upgrade returns to 1.5.0, the last image that
    // finished on every pool, not to a superseded one.
    let path = format!("/v1/operations/{}/rollback", last["id"].as_str().unwrap());
    let back = admin.call(Method::POST, &path, Some(&op), None, StatusCode::ACCEPTED).await;
    assert_eq!(back["input"]["version"], "1.5.0", "{back}");
    let back = admin.wait_operation_for(back["id"].as_str().unwrap(), &op, Duration::from_secs(180)).await;
    assert_eq!(back["state"], "succeeded", "{back}");
    for (image, ready) in pools(&admin, &ids).await {
        assert_eq!(image.as_deref(), Some("1.5.0"));
        assert!(ready.iter().all(|v| v.as_deref() == Some("1.5.0")), "{ready:?}");
    }

    players.finish().await;
}

e2e_on_both_backends!(
    a_new_image_rolls_out_with_no_failed_request_and_a_broken_one_halts_and_rolls_back,
    uploads_in_a_row_supersede_each_other_and_end_on_the_last,
);
