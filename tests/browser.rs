//! A real browser player: hls.js (from npm, tests/browser) in headless Chromium, on
//! a page served from another origin than the router, plays the demo locator that
//! `headwater up --demo` prints, then the same locator signed (a playback token
//! in its path) once the account requires tokens. Needs `chromium` and `npm ci --prefix tests/browser`
//! (scripts/test does both).

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::browser::{self, Player};
use support::{NodeCleanup, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_in_chromium_plays_the_demo_locator() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = browser::chromium();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let locator = value(&lines, "demo locator: ").to_owned();

    // The router answers a browser's CORS preflight for a range request itself.
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, &locator)
        .header("origin", "http://player.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    let allowed = |h: &str| preflight.headers().get(h).map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert_eq!(allowed("access-control-allow-origin").as_deref(), Some("*"));
    assert!(allowed("access-control-allow-headers").unwrap().contains("range"));
    assert!(allowed("access-control-allow-methods").unwrap().contains("get"));

    let got = browser::play(&chromium, Player::HlsJs, &locator).await;
    assert_eq!(got["levels"], 2, "both renditions of the master playlist: {got}");

    // Signed playback: the locator then needs a token, and hls.js plays the
    // signed URL, the token reaching every child playlist and segment by the
    // relative URIs alone.
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap();
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    let api = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = api.request(method, format!("{admin}{path}")).bearer_auth(key.trim());
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let res = call(reqwest::Method::POST, "/v1/accounts/demo-trial/playback-keys", None).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body = serde_json::json!({"required": true});
    let res = call(reqwest::Method::PUT, "/v1/accounts/demo-trial/playback", Some(body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    support::wait_status(&api, &locator, StatusCode::FORBIDDEN, "the unsigned locator").await;
    let body = serde_json::json!({"path": "demo/hls/master.m3u8", "expires_in_secs": 600});
    let signed: Value = call(reqwest::Method::POST, "/v1/accounts/demo-trial/playback-tokens", Some(body))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed = signed["url"].as_str().unwrap().to_owned();
    // The key reaches each node of the pool a moment after the router: wait for
    // every one to serve the signed URL, so the player meets no node without it.
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let account: Value =
        call(reqwest::Method::GET, "/v1/accounts/demo-trial", None).await.unwrap().json().await.unwrap();
    let nodes: Value =
        api.get(format!("{admin}/v1/nodes")).bearer_auth(operator.trim()).send().await.unwrap().json().await.unwrap();
    let router = signed.split("/demo-trial/").next().unwrap().to_owned();
    for n in nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == account["pool"]["id"] && n["state"] == "ready")
    {
        let at_node = signed.replacen(&router, &format!("http://{}", n["address"].as_str().unwrap()), 1);
        support::wait_status(&api, &at_node, StatusCode::OK, "the signed URL at each node").await;
    }
    let got = browser::play(&chromium, Player::HlsJs, &signed).await;
    assert_eq!(got["levels"], 2, "both renditions of the signed master playlist: {got}");
}
