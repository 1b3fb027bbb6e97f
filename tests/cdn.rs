//! CDN authorization through the real binary (`up --demo`): once an account has
//! a CDN secret, the router and its nodes serve only requests carrying one (in
//! `X-Headwater-CDN-Secret`), and those need no playback token; a rotation under
//! a looping player (the CDN) fails no request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{NodeCleanup, value};
use tokio::sync::RwLock;

const HEADER: &str = "x-headwater-cdn-secret";

/// Waits (deadline 30 s) until `url`, sent with `secret` (or none), answers `status`.
async fn until(http: &reqwest::Client, url: &str, secret: Option<&str>, status: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = http.get(url);
        if let Some(s) = secret {
            req = req.header(HEADER, s);
        }
        let got = req.send().await.unwrap().status();
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{url} with {secret:?}: still {got}, never {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cdn_is_served_and_its_secret_rotates_under_load() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap().trim().to_owned();
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let seg = "demo-trial/demo/hls/720p/seg_001.ts";
    let want = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/hls/720p/seg_001.ts")).unwrap();

    // The account's nodes, to check each of them too.
    let account = support::call_json(&http, &admin, &key, Method::GET, "/v1/accounts/demo-trial", None).await.1;
    let nodes = support::call_json(&http, &admin, &operator, Method::GET, "/v1/nodes", None).await.1;
    let bases: Vec<String> = std::iter::once(router.clone())
        .chain(
            nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["pool_id"] == account["pool"]["id"] && n["state"] == "ready")
                .map(|n| format!("http://{}", n["address"].as_str().unwrap())),
        )
        .collect();
    assert!(bases.len() >= 2, "the router and a node: {nodes}");

    let (status, first) =
        support::call_json(&http, &admin, &key, Method::POST, "/v1/accounts/demo-trial/cdn-secrets", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["header"], "X-Headwater-CDN-Secret");
    let a = first["secret"].as_str().unwrap().to_owned();
    let listed =
        support::call_json(&http, &admin, &key, Method::GET, "/v1/accounts/demo-trial/cdn-secrets", None).await.1;
    assert_eq!(listed["secrets"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&a), "the list shows the secret: {listed}");
    let shown = support::call_json(&http, &admin, &key, Method::GET, "/v1/accounts/demo-trial", None).await.1;
    assert_eq!(shown["cdn_only"], true, "{shown}");

    // Without the secret (or with a wrong one): 403 at the router and every node.
    for base in &bases {
        let url = format!("{base}/{seg}");
        until(&http, &url, None, StatusCode::FORBIDDEN).await;
        let res = http.get(&url).header(HEADER, "not-the-secret").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{url}");
        let p: Value = res.json().await.unwrap();
        assert_eq!(p["type"], "/problems/cdn-authorization", "{p}");
        let res = http.get(&url).header(HEADER, &a).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        assert_eq!(res.bytes().await.unwrap(), want);
    }
    // The CDN needs no playback token, even where tokens are required.
    let (status, _) =
        support::call_json(&http, &admin, &key, Method::POST, "/v1/accounts/demo-trial/playback-keys", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let body = json!({"required": true});
    let (status, _) =
        support::call_json(&http, &admin, &key, Method::PUT, "/v1/accounts/demo-trial/playback", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    for base in &bases {
        until(&http, &format!("{base}/demo-trial/demo/hls/master.m3u8"), Some(&a), StatusCode::OK).await;
    }

    // The CDN, playing in a loop with whichever secret it holds.
    let current = Arc::new(RwLock::new(a.clone()));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let cdn = {
        let (current, ok, failed, stop) = (current.clone(), ok.clone(), failed.clone(), stop.clone());
        // Playlists: small, so the loop makes many requests across the rotation.
        let url = format!("{router}/demo-trial/demo/hls/720p/index.m3u8");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut errors = Vec::new();
            while !stop.is_cancelled() {
                let secret = current.read().await.clone();
                match http.get(&url).header(HEADER, secret).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        if r.bytes().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "the CDN is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_start = ok.load(Ordering::Relaxed);
    // Rotation as a customer does it: a second secret, good everywhere; the CDN
    // moves to it; the first is retired.
    let (_, second) =
        support::call_json(&http, &admin, &key, Method::POST, "/v1/accounts/demo-trial/cdn-secrets", None).await;
    assert_eq!(second["retired"], Value::Null, "{second}");
    let b = second["secret"].as_str().unwrap().to_owned();
    for base in &bases {
        until(&http, &format!("{base}/{seg}"), Some(&b), StatusCode::OK).await;
    }
    *current.write().await = b.clone();
    let (status, _) = support::call_json(
        &http,
        &admin,
        &key,
        Method::DELETE,
        &format!("/v1/accounts/demo-trial/cdn-secrets/{}", first["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for base in &bases {
        until(&http, &format!("{base}/{seg}"), Some(&a), StatusCode::FORBIDDEN).await;
    }
    let before = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Relaxed) < before + 20 {
        assert!(Instant::now() < deadline, "the CDN stopped being served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let errors = cdn.await.unwrap();
    assert!(errors.is_empty(), "the CDN saw failures during the rotation: {errors:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let total = ok.load(Ordering::Relaxed);
    assert!(total >= at_start + 20, "{total} requests, {at_start} before the rotation");
    println!("CDN requests: {total}, {} during the rotation, 0 failed", total - at_start);

    // With no secret left, everyone is served again (tokens aside).
    let (status, _) = support::call_json(
        &http,
        &admin,
        &key,
        Method::DELETE,
        &format!("/v1/accounts/demo-trial/cdn-secrets/{}", second["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = support::call_json(
        &http,
        &admin,
        &key,
        Method::PUT,
        "/v1/accounts/demo-trial/playback",
        Some(json!({"required": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for base in &bases {
        until(&http, &format!("{base}/{seg}"), None, StatusCode::OK).await;
    }
    // The CLI makes and lists them.
    let out = tokio::process::Command::new(support::BIN)
        .args(["accounts", "cdn-secrets", "demo-trial", "--new", "--json", "--admin-url", &admin, "--api-key", &key])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = made["secret"].as_str().unwrap().to_owned();
    until(&http, &format!("{router}/{seg}"), Some(&c), StatusCode::OK).await;
    until(&http, &format!("{router}/{seg}"), None, StatusCode::FORBIDDEN).await;
}
