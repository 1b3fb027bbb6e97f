//! Real browser players: hls.js and dash.js (from npm, `tests/browser`) in
//! headless Chromium, on a page served from another origin than the content.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Command;

const PAGE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// The player a page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Player {
    HlsJs,
    DashJs,
}

/// Debian's Chromium, which the browser tests need (scripts/test installs it).
pub fn chromium() -> std::path::PathBuf {
    super::which("chromium")
        .or_else(|| super::which("chromium-browser"))
        .expect("chromium is installed (scripts/test installs Debian's chromium)")
}

/// Serves the player page, hls.js and dash.js on a port of its own, and keeps
/// what the page reports.
async fn page_server() -> (String, Arc<Mutex<Option<Value>>>) {
    let script = |path: &str| {
        std::fs::read(format!("{PAGE_DIR}/node_modules/{path}"))
            .unwrap_or_else(|_| panic!("{path} is installed: npm ci --prefix tests/browser (scripts/test does it)"))
    };
    let hls = script("hls.js/dist/hls.min.js");
    let dash = script("dashjs/dist/modern/umd/dash.all.min.js");
    let page = std::fs::read_to_string(format!("{PAGE_DIR}/player.html")).unwrap();
    let report = Arc::new(Mutex::new(None));
    let app = axum::Router::new()
        .route("/", get(move || async move { axum::response::Html(page) }))
        .route("/hls.min.js", get(move || async move { ([("content-type", "text/javascript")], hls) }))
        .route("/dash.all.min.js", get(move || async move { ([("content-type", "text/javascript")], dash) }))
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

/// Plays `locator` for 4 s with `player` in headless Chromium; the page's
/// report, checked for a clean playback.
pub async fn play(chromium: &std::path::Path, player: Player, locator: &str) -> Value {
    play_page(chromium, player, locator, "").await
}

/// Plays ClearKey-encrypted DASH at `mpd` with dash.js: the page fetches the
/// key `kid` (hex) from `key_url` and gives it to the player.
pub async fn play_clearkey(chromium: &std::path::Path, mpd: &str, kid: &str, key_url: &str) -> Value {
    let key_url: String = form_urlencoded::byte_serialize(key_url.as_bytes()).collect();
    let got = play_page(chromium, Player::DashJs, mpd, &format!("&kid={kid}&keyurl={key_url}")).await;
    assert!(got["keySessions"].as_u64().unwrap_or(0) >= 1, "dash.js opened no key session: {got}");
    got
}

async fn play_page(chromium: &std::path::Path, player: Player, locator: &str, extra: &str) -> Value {
    let (page, report) = page_server().await;
    let profile = tempfile::tempdir().unwrap();
    let which = match player {
        Player::HlsJs => "hls",
        Player::DashJs => "dash",
    };
    let url = format!("{page}/?player={which}&seconds=4{extra}&src={locator}");
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
        .args(if std::env::var("HEADWATER_BROWSER_LOG").is_ok() {
            &["--enable-logging=stderr", "--v=0"][..]
        } else {
            &[][..]
        })
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var("HEADWATER_BROWSER_LOG").is_ok() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
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
    assert_eq!(got["supported"], true, "the player says this browser cannot play it: {got}");
    assert_eq!(got["fatal"].as_array().map(Vec::len), Some(0), "fatal player errors: {got}");
    assert_eq!(got["done"], true, "{got}");
    assert!(got["currentTime"].as_f64().unwrap() >= 4.0 || got["ended"] == true, "played too little: {got}");
    assert!(got["fragments"].as_u64().unwrap() >= 2, "{got}");
    got
}
