//! Signed playback URLs through the real binary (`up --demo`): keys, a locator
//! that then needs a token, the token reaching every child playlist and segment,
//! ffmpeg decoding a signed URL, and refusals at the router and at the node
//! itself (as players in redirect mode reach it): no token, expired, another
//! path, another client, tampered, a retired key. The CLI signs too.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{NodeCleanup, value, wait_status};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

struct Api {
    http: reqwest::Client,
    admin: String,
    key: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        support::call_json(&self.http, &self.admin, &self.key, method, path, body).await
    }

    async fn sign(&self, body: Value) -> String {
        let (status, v) = self.call(Method::POST, "/v1/accounts/demo-sla/playback-tokens", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["url"].as_str().unwrap().to_owned()
    }
}

/// A 403 problem from the data plane naming why.
async fn refused(http: &reqwest::Client, url: &str, why: &str) {
    let res = http.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "{url}");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["type"], "/problems/playback-token", "{p}");
    assert!(p["detail"].as_str().unwrap().contains(why), "{url}: {p}");
}

/// `url` with a later expiry spliced into its genuine token.
fn tampered(url: &str) -> String {
    let (head, tail) = url.split_once("/~").unwrap();
    let (token, rest) = tail.split_once('/').unwrap();
    let mut fields: Vec<String> = token.split('.').map(str::to_owned).collect();
    fields[2].push('9');
    format!("{head}/~{}/{rest}", fields.join("."))
}

/// Fetches the master playlist at `master` and every playlist and segment it
/// leads to by its relative URIs; asserts each is the packaged file.
async fn walk_hls(http: &reqwest::Client, master: &str) -> usize {
    let base = master.trim_end_matches("master.m3u8");
    let mut fetched = 0;
    let mut queue = vec!["master.m3u8".to_owned()];
    while let Some(rel) = queue.pop() {
        let res = http.get(format!("{base}{rel}")).send().await.unwrap();
        let status = res.status();
        if status != StatusCode::OK {
            panic!("{base}{rel}: {status} {}", res.text().await.unwrap_or_default());
        }
        let body = res.bytes().await.unwrap();
        assert_eq!(body, std::fs::read(format!("{DEMO}/hls/{rel}")).unwrap(), "{rel}");
        fetched += 1;
        if rel.ends_with(".m3u8") {
            let dir = rel.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
            for line in String::from_utf8_lossy(&body).lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
                assert!(!line.contains("://") && !line.starts_with('/'), "relative URIs only: {line}");
                queue.push(format!("{dir}{line}"));
            }
        }
    }
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_playback_urls_play_and_everything_else_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let api = Api {
        http: reqwest::Client::new(),
        admin: value(&lines, "headwater admin listening on ").to_owned(),
        key: std::fs::read_to_string(data.path().join("demo-api-key")).unwrap().trim().to_owned(),
    };
    let http = reqwest::Client::new();
    let unsigned = format!("{router}/demo-sla/demo/hls/master.m3u8");

    // Requiring tokens needs a key first; the policy shows no secret.
    let (status, p) = api.call(Method::PUT, "/v1/accounts/demo-sla/playback", Some(json!({"required": true}))).await;
    assert_eq!((status, p["field"].as_str()), (StatusCode::CONFLICT, Some("required")), "{p}");
    let (status, no_key) =
        api.call(Method::POST, "/v1/accounts/demo-sla/playback-tokens", Some(json!({"path": "demo/x"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{no_key}");
    let (status, first) = api.call(Method::POST, "/v1/accounts/demo-sla/playback-keys", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first_secret = first["secret"].as_str().unwrap().to_owned();
    assert_eq!(first_secret.len(), 43, "{first}");
    let (status, p) = api.call(Method::PUT, "/v1/accounts/demo-sla/playback", Some(json!({"required": true}))).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["required"], true);
    assert_eq!(p["keys"].as_array().unwrap().len(), 1);
    assert!(!p.to_string().contains(&first_secret), "the policy shows the secret: {p}");
    // At rest the secret is sealed: the database never holds it.
    let db = std::fs::read(data.path().join("headwater.db")).unwrap();
    let wal = std::fs::read(data.path().join("headwater.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(first_secret.len()).any(|w| w == first_secret.as_bytes()),
            "the secret is stored in clear"
        );
    }

    // The unsigned locator is refused at the router, and at a node directly.
    wait_status(&http, &unsigned, StatusCode::FORBIDDEN, "a playback rule change at the router and the nodes").await;
    refused(&http, &unsigned, "needs a signed playback URL").await;
    let node = http.get(format!("{router}/demo-trial/demo/hls/master.m3u8")).send().await.unwrap();
    let node_id = node.headers()["x-headwater-node"].to_str().unwrap().to_owned();
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let nodes: Value = http
        .get(format!("{}/v1/nodes", api.admin))
        .bearer_auth(operator.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sla_pool = api.call(Method::GET, "/v1/accounts/demo-sla", None).await.1["pool"]["id"].clone();
    let sla_nodes: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == sla_pool && n["state"] == "ready")
        .map(|n| format!("http://{}", n["address"].as_str().unwrap()))
        .collect();
    assert!(!sla_nodes.is_empty(), "a ready node of the SLA pool: {nodes} (trial node {node_id})");
    let node_base = sla_nodes[0].clone();
    for node in &sla_nodes {
        wait_status(
            &http,
            &format!("{node}/demo-sla/demo/hls/master.m3u8"),
            StatusCode::FORBIDDEN,
            "a playback rule change at the router and the nodes",
        )
        .await;
    }

    // A signed URL plays: every playlist and segment by relative URIs, byte for byte.
    let hls_files = support::demo_files().iter().filter(|f| f.starts_with("hls/")).count();
    let signed = api.sign(json!({"path": "demo/hls/master.m3u8", "expires_in_secs": 600})).await;
    assert!(signed.starts_with(&format!("{router}/demo-sla/~hw1.")), "{signed}");
    assert_eq!(walk_hls(&http, &signed).await, hls_files);
    // At the node itself (redirect mode's players), the same URL path plays.
    let at_node = signed.replacen(&router, &node_base, 1);
    assert_eq!(walk_hls(&http, &at_node).await, hls_files);
    // DASH of the same asset under the same token (the prefix is the asset).
    let mpd = signed.replace("hls/master.m3u8", "dash/manifest.mpd");
    assert_eq!(http.get(&mpd).send().await.unwrap().status(), StatusCode::OK);

    // A master playlist with absolute URIs (root-relative, and the router's
    // full URL): the token is carried into them, the rest is as stored.
    let abs = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n/demo-sla/demo/hls/360p/index.m3u8\n\
         #EXT-X-STREAM-INF:BANDWIDTH=1600000,RESOLUTION=1280x720\n{router}/demo-sla/demo/hls/720p/index.m3u8\n"
    );
    let put = api
        .http
        .put(format!("{}/v1/accounts/demo-sla/assets/demo/hls/abs.m3u8", api.admin))
        .bearer_auth(&api.key)
        .header("content-type", "application/vnd.apple.mpegurl")
        .body(abs.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let abs_url = signed.replace("master.m3u8", "abs.m3u8");
    let token = signed.split('/').find(|s| s.starts_with("~hw1.")).unwrap().to_owned();
    let res = http.get(&abs_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let carried = res.text().await.unwrap();
    let uris: Vec<&str> = carried.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(
        uris,
        [
            format!("/demo-sla/{token}/demo/hls/360p/index.m3u8"),
            format!("{router}/demo-sla/{token}/demo/hls/720p/index.m3u8")
        ],
        "{carried}"
    );
    for uri in &uris {
        let url = if uri.starts_with('/') { format!("{router}{uri}") } else { (*uri).to_owned() };
        let child = http.get(&url).send().await.unwrap();
        assert_eq!(child.status(), StatusCode::OK, "{url}");
    }
    // Its validator is its own (another token, another one), the same on the
    // node directly, and revalidates.
    let other = api.sign(json!({"path": "demo/hls/abs.m3u8", "expires_in_secs": 300})).await;
    let other_etag = http.get(&other).send().await.unwrap().headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(other_etag, etag, "a validator per token");
    let direct = http.get(abs_url.replacen(&router, &node_base, 1)).send().await.unwrap();
    assert_eq!(direct.headers()["etag"].to_str().unwrap(), etag, "the same validator on every node");
    assert_eq!(direct.text().await.unwrap(), carried, "the same bytes on every node");
    let again = http.get(&abs_url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // ffmpeg decodes the signed URL.
    match support::which("ffmpeg") {
        Some(ffmpeg) => {
            let out = tokio::process::Command::new(ffmpeg)
                .args(["-v", "error", "-i", &signed, "-map", "0:v:0", "-f", "null", "-"])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
        }
        None => assert!(std::env::var("CI").is_err(), "ffmpeg is required in CI (scripts/test installs it)"),
    }

    // Another path than the token's prefix, a tampered token, another client.
    let narrow = api.sign(json!({"path": "demo/hls/360p/index.m3u8", "scope": "directory"})).await;
    assert_eq!(http.get(&narrow).send().await.unwrap().status(), StatusCode::OK);
    refused(&http, &narrow.replace("360p/index.m3u8", "720p/index.m3u8"), "not good for this path").await;
    refused(&http, &tampered(&signed), "signature").await;
    let elsewhere = api.sign(json!({"path": "demo/hls/master.m3u8", "client_ip": "192.0.2.9"})).await;
    refused(&http, &elsewhere, "another client address").await;
    refused(&http, &elsewhere.replacen(&router, &node_base, 1), "another client address").await;
    let mine = api.sign(json!({"path": "demo/hls/master.m3u8", "client_ip": "127.0.0.1"})).await;
    assert_eq!(http.get(&mine).send().await.unwrap().status(), StatusCode::OK, "through the router");
    assert_eq!(http.get(mine.replacen(&router, &node_base, 1)).send().await.unwrap().status(), StatusCode::OK);

    // Expiry: good until it passes, then refused (same URL).
    let short = api.sign(json!({"path": "demo/hls/master.m3u8", "expires_in_secs": 2})).await;
    let expires = Instant::now() + Duration::from_secs(3);
    let ok = http.get(&short).send().await.unwrap().status();
    assert!(ok == StatusCode::OK || Instant::now() >= expires, "before expiry: {ok}");
    wait_status(&http, &short, StatusCode::FORBIDDEN, "a playback rule change at the router and the nodes").await;
    refused(&http, &short, "expired").await;

    // Rotation: a second key, and tokens of both play; a third retires the
    // first, and its tokens stop.
    let (_, second) = api.call(Method::POST, "/v1/accounts/demo-sla/playback-keys", None).await;
    assert_eq!(second["retired"], Value::Null);
    let by_second = api.sign(json!({"path": "demo/hls/master.m3u8"})).await;
    // A new key reaches the router and every node within a moment.
    for node in &sla_nodes {
        wait_status(
            &http,
            &by_second.replacen(&router, node, 1),
            StatusCode::OK,
            "a playback rule change at the router and the nodes",
        )
        .await;
    }
    wait_status(&http, &by_second, StatusCode::OK, "a playback rule change at the router and the nodes").await;
    assert_eq!(http.get(&signed).send().await.unwrap().status(), StatusCode::OK, "the first key still signs");
    let (_, third) = api.call(Method::POST, "/v1/accounts/demo-sla/playback-keys", None).await;
    assert_eq!(third["retired"], first["id"], "{third}");
    wait_status(&http, &signed, StatusCode::FORBIDDEN, "a playback rule change at the router and the nodes").await;
    refused(&http, &signed, "a key this account does not have").await;
    for node in &sla_nodes {
        wait_status(
            &http,
            &signed.replacen(&router, node, 1),
            StatusCode::FORBIDDEN,
            "a playback rule change at the router and the nodes",
        )
        .await;
    }
    assert_eq!(http.get(&by_second).send().await.unwrap().status(), StatusCode::OK);

    // The CLI signs too, and its URL plays.
    let out = tokio::process::Command::new(support::BIN)
        .args(["accounts", "sign-url", "demo-sla", "demo/hls/master.m3u8", "--expires-in", "60"])
        .args(["--admin-url", &api.admin, "--api-key", &api.key])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(walk_hls(&http, &cli_url).await, hls_files, "{cli_url}");

    // Stop requiring tokens: unsigned plays again; a bad token is still refused.
    let (status, _) = api.call(Method::PUT, "/v1/accounts/demo-sla/playback", Some(json!({"required": false}))).await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&http, &unsigned, StatusCode::OK, "a playback rule change at the router and the nodes").await;
    for node in &sla_nodes {
        wait_status(
            &http,
            &format!("{node}/demo-sla/demo/hls/master.m3u8"),
            StatusCode::OK,
            "a playback rule change at the router and the nodes",
        )
        .await;
    }
    refused(&http, &tampered(&by_second), "signature").await;
    // Another customer cannot touch this account's keys.
    let res = http
        .post(format!("{}/v1/customers", api.admin))
        .json(&json!({"name": "Eve", "email": "eve@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let other: Value = res.json().await.unwrap();
    let eve = Api { key: other["api_key"].as_str().unwrap().to_owned(), ..api };
    let (status, _) = eve.call(Method::POST, "/v1/accounts/demo-sla/playback-keys", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        eve.call(Method::POST, "/v1/accounts/demo-sla/playback-tokens", Some(json!({"path": "demo/x"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
