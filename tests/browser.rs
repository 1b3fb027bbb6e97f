//! A real browser player: hls.js (from npm, tests/browser) in headless Chromium, on
//! a page served from another origin than the router, plays the demo locator that
//! `headwater up --demo` prints, then the same locator signed (a playback token
//! in its path) once the account requires tokens. Needs `chromium` and `npm ci --prefix tests/browser`
//! (scripts/test does both).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use reqwest::StatusCode;
use serde_json::Value;
use support::{NodeCleanup, value};
use tokio::process::Command;

const PAGE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// Serves the player page and hls.js on a port of its own, and keeps what the page reports.
async fn page_server() -> (String, Arc<Mutex<Option<Value>>>) {
    let hls = std::fs::read(format!("{PAGE_DIR}/node_modules/hls.js/dist/hls.min.js"))
        .expect("hls.js is installed: npm ci --prefix tests/browser (scripts/test does it)");
    let page = std::fs::read_to_string(format!("{PAGE_DIR}/player.html")).unwrap();
    let report = Arc::new(Mutex::new(None));
    let app = axum::Router::new()
        .route("/", get(move || async move { axum::response::Html(page) }))
        .route("/hls.min.js", get(move || async move { ([("content-type", "text/javascript")], hls) }))
        .route(
            "/report",
            post({
                let report = report.clone();
                move |axum::Json(v): axum::Json<Value>| async move {
                    *report.lock().unwrap() = Some(v);
                    StatusCode::NO_CONTENT
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_in_chromium_plays_the_demo_locator() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = support::which("chromium")
        .or_else(|| support::which("chromium-browser"))
        .expect("chromium is installed (scripts/test installs Debian's chromium)");
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

    let got = play(&chromium, &locator).await;
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
    let got = play(&chromium, &signed).await;
    assert_eq!(got["levels"], 2, "both renditions of the signed master playlist: {got}");
}

/// Plays `locator` for 4 s with hls.js in headless Chromium; the page's report,
/// checked for a clean playback.
async fn play(chromium: &std::path::Path, locator: &str) -> Value {
    let (page, report) = page_server().await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{page}/?seconds=4&src={locator}");
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        if let Some(r) = report.lock().unwrap().take() {
            break r;
        }
        if let Ok(Some(status)) = browser.try_wait() {
            panic!("chromium exited ({status}) before the page reported");
        }
        assert!(Instant::now() < deadline, "the page never reported (is {url} reachable?)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = browser.kill().await;
    println!("player report: {got}");
    assert_eq!(got["supported"], true, "hls.js says this browser cannot play HLS: {got}");
    assert_eq!(got["fatal"].as_array().map(Vec::len), Some(0), "fatal player errors: {got}");
    assert_eq!(got["done"], true, "{got}");
    assert!(got["currentTime"].as_f64().unwrap() >= 4.0 || got["ended"] == true, "played too little: {got}");
    assert!(got["fragments"].as_u64().unwrap() >= 2, "{got}");
    got
}
