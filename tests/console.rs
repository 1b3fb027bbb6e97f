//! The web console in a real browser: tests/browser/console.mjs drives Debian's
//! Chromium with Playwright (npm `playwright-core`, tests/browser) against
//! `headwater up --demo`: a wrong key shows the problem's detail, a customer
//! sees the demo accounts, plays a locator, sees its usage, uploads an asset
//! with a progress bar, changes an offer and sees its steps live; the key is in
//! no URL, no storage and no access log; an operator sees a node killed here
//! fail, in the nodes table and the live events feed. Screenshots go to
//! `$CARGO_TARGET_DIR/console-screenshots` (or `target/`).

mod support;

use reqwest::StatusCode;
use support::{NodeCleanup, value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_customers_and_operators_in_chromium() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chromium = support::browser::chromium();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap().trim().to_owned();
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap().trim().to_owned();

    // The page and its scripts come from admin itself, under a policy that
    // runs no script from elsewhere.
    let res = reqwest::get(format!("{admin}/console")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let policy = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(res.text().await.unwrap().contains(r#"<script src="/console/hls.min.js""#));
    for (path, kind) in
        [("console.js", "text/javascript"), ("console.css", "text/css"), ("hls.min.js", "text/javascript")]
    {
        let res = reqwest::get(format!("{admin}/console/{path}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }

    // `up` played the demo locator's master playlist once to see it serve:
    // what the browser plays comes on top.
    let before = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/hls/master.m3u8")).unwrap().len();
    let http = reqwest::Client::new();
    support::eventually(std::time::Duration::from_secs(60), "up's own request counted", || {
        let req = http.get(format!("{admin}/v1/accounts/demo-trial/usage")).bearer_auth(&key).send();
        async move {
            let u: serde_json::Value = req.await.unwrap().json().await.unwrap();
            u["total_bytes"].as_u64() == Some(before)
        }
    })
    .await;

    let shots = std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.mjs");
    let upload = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/hls");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .env("ADMIN", &admin)
        .env("KEY", &key)
        .env("OPERATOR", &operator)
        .env("UPLOAD_DIR", upload)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .env("USAGE_BEFORE", before.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/browser/console.mjs (npm ci --prefix tests/browser installs playwright-core)");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut result = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    while let Some(line) = tokio::time::timeout_at(deadline, out.next_line()).await.expect("the script ends").unwrap() {
        println!("{line}");
        if let Some(node) = line.strip_prefix("KILL ") {
            support::kill_processes_naming(node);
            stdin.write_all(b"killed\n").await.unwrap();
        } else if let Some(r) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<serde_json::Value>(r).unwrap());
        }
        seen.push(line);
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the browser checks failed (screenshots in {}): {seen:#?}", shots.display());
    let r = result.expect("a result");
    assert_eq!(r["accounts"], serde_json::json!(["demo-sla", "demo-trial"]), "{r}");
    assert!(r["played"].as_f64().unwrap() > 2.0, "{r}");
    let events: Vec<&str> = r["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.contains("node.failed") && e.contains("no heartbeat")), "{events:?}");
    assert_eq!(r["killed_state"], "failed", "{r}");
    assert_eq!(r["player_bytes"], r["usage_bytes"], "{r}");
    assert!(!r.to_string().contains(support::secret_of(&key)), "{r}");

    // Nor is it in an access log: the router's files and admin's copy.
    let secret = support::secret_of(&key);
    let files: String = std::fs::read_dir(data.path().join("access-logs"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(files.contains("demo/hls/master.m3u8"), "the browser's requests are in the router's files");
    assert!(!files.contains(secret));
    let logs = http
        .get(format!("{admin}/v1/accounts/demo-trial/logs?limit=500"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(logs.contains("demo/hls/master.m3u8") && !logs.contains(secret), "{logs}");
}
