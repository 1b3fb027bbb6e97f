//! No secret is ever logged: `headwater up --demo` runs at debug level (admin,
//! router and the origin nodes it launches) through a scenario that uses every
//! kind of credential there is — the operator, metrics and router tokens, a
//! customer's API keys (one made and revoked), each node's token, the local
//! CA's and the HTTPS listeners' private keys, the master key and a playback
//! signing key (a signed URL played) — and then
//! every log it produced (its stderr and each node's log file) is searched for
//! every one of those secrets.

mod support;

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// The join tokens of the running node processes that `data` names, from their
/// environment (as root, `/proc/PID/environ`).
fn join_tokens(data: &std::path::Path) -> Vec<String> {
    let mut tokens = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("origin\0") || !cmdline.contains(&*data.to_string_lossy()) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for var in environ.split(|b| *b == 0) {
            if let Some(t) = String::from_utf8_lossy(var).strip_prefix("HEADWATER_JOIN_TOKEN=") {
                tokens.push(t.to_owned());
            }
        }
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _cleanup = support::NodeCleanup(data.clone());
    let stderr = std::fs::File::create(dir.path().join("up.stderr")).unwrap();
    let mut child = tokio::process::Command::new(support::BIN)
        .args(["up", "--demo", "--listen", "127.0.0.1:0", "--router-listen", "127.0.0.1:0"])
        .args(["--admin-https-listen", "127.0.0.1:0", "--router-https-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("HEADWATER_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("demo ready");
            out.push(line);
            if done {
                return;
            }
        }
        panic!("up exited: {out:?}");
    })
    .await
    .expect("the demo within 120 s");
    let admin = support::value(&out, "headwater admin listening on ").to_owned();
    let router = support::value(&out, "headwater router listening on ").to_owned();
    let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap().trim().to_owned();
    let (operator, metrics, router_token) = (read("operator-token"), read("metrics-token"), read("router-token"));
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = http.request(method, format!("{admin}{path}")).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };

    // A customer, a second key made and revoked, an account; the router's and
    // the metrics' credentials used; a wrong token tried.
    let signup = http
        .post(format!("{admin}/v1/customers"))
        .json(&json!({"name": "Ana", "email": "ana@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);
    let key = signup.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned();
    let second = call(Method::POST, "/v1/customers/me/keys", &key, Some(json!({}))).await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    let second: Value = second.json().await.unwrap();
    let second_key = second["api_key"].as_str().unwrap().to_owned();
    let revoke = call(Method::DELETE, &format!("/v1/customers/me/keys/{}", second["id"].as_str().unwrap()), &key, None);
    assert!(revoke.await.unwrap().status().is_success());
    assert_eq!(call(Method::GET, "/v1/accounts", &second_key, None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let body = json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}});
    assert_eq!(call(Method::POST, "/v1/accounts", &key, Some(body)).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(call(Method::GET, "/v1/routing", &router_token, None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(call(Method::GET, "/metrics", &metrics, None).await.unwrap().status(), StatusCode::OK);
    let listed: Value = call(Method::GET, "/v1/nodes", &operator, None).await.unwrap().json().await.unwrap();
    let node_ids: Vec<String> =
        listed["items"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    let played = http.get(format!("{router}/demo-sla/demo/hls/360p/index.m3u8")).send().await.unwrap();
    assert_eq!(played.status(), StatusCode::OK);
    // A playback signing key, a signed URL played (router and node check it).
    let demo_key = read("demo-api-key");
    let made = call(Method::POST, "/v1/accounts/demo-sla/playback-keys", &demo_key, None).await.unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let playback_secret = made.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    let body = json!({"path": "demo/hls/360p/index.m3u8"});
    let signed = call(Method::POST, "/v1/accounts/demo-sla/playback-tokens", &demo_key, Some(body)).await.unwrap();
    let signed: Value = signed.json().await.unwrap();
    let signed_url = signed["url"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http.get(&signed_url).send().await.unwrap().status() != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the signed URL never played");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes = join_tokens(&data);
    assert!(nodes.len() >= 3, "the demo's node processes and their join tokens: {}", nodes.len());
    // A join token read from a node's environment opens nothing: it was used
    // for the node's join (its certificate is its credential now).
    for t in &nodes {
        let id = t.strip_prefix("hwj_").and_then(|r| r.split_once('_')).map(|(id, _)| id).unwrap();
        let id = uuid::Uuid::try_parse(id).unwrap();
        let joined = call(Method::POST, &format!("/v1/nodes/{id}/join"), t, Some(json!({"csr": "x"}))).await.unwrap();
        let problem = support::expect_problem(joined, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        assert!(problem["detail"].as_str().unwrap().contains("already used"), "{problem}");
        let heartbeat = call(Method::GET, &format!("/v1/nodes/{id}/config"), t, None).await.unwrap();
        assert_eq!(heartbeat.status(), StatusCode::UNAUTHORIZED);
    }

    // Stopped cleanly (SIGTERM), so every log is complete.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("up stops").unwrap();

    let mut logs = vec![(dir.path().join("up.stderr"), std::fs::read_to_string(dir.path().join("up.stderr")).unwrap())];
    for entry in std::fs::read_dir(data.join("nodes")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            logs.push((entry.path(), std::fs::read_to_string(entry.path()).unwrap()));
        }
    }
    let lines: usize = logs.iter().map(|(_, l)| l.lines().count()).sum();
    assert!(
        logs.len() >= 4 && lines > 100,
        "debug logs of admin, router and nodes: {} files, {lines} lines",
        logs.len()
    );
    // The search sees what is logged: the nodes' ids (no secret) are there.
    assert!(node_ids.iter().all(|id| logs.iter().any(|(_, text)| text.contains(id.as_str()))), "{node_ids:?}");
    let mut secrets: Vec<(&str, String)> = vec![
        ("the operator token", operator.clone()),
        ("the metrics token", metrics.clone()),
        ("the router token", router_token.clone()),
        ("an API key", key.clone()),
        ("an API key's secret", support::secret_of(&key).to_owned()),
        ("a revoked API key", second_key.clone()),
    ];
    secrets.push(("the master key", read("master-key")));
    secrets.push(("a playback signing key", playback_secret.clone()));
    // The TLS private keys (the local CA's and the listeners'), line by line of
    // their PEM (a log would show a line, not the whole file).
    let master = headwater_admin::sealed::Sealer::from_text(&read("master-key")).unwrap();
    let ca_key = master
        .open(&read("tls/ca-key.sealed"), "local-ca" /* src/up.rs LOCAL_CA_CONTEXT */)
        .expect("the sealed CA key");
    for (what, pem) in [("the local CA's key", ca_key.to_string()), ("the TLS key", read("tls/server-key.pem"))] {
        for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            secrets.push((what, line.to_owned()));
        }
    }
    for t in &nodes {
        secrets.push(("a join token", t.clone()));
        secrets.push(("a join token's secret", support::secret_of(t).to_owned()));
    }
    for (path, text) in &logs {
        for (what, secret) in &secrets {
            assert!(secret.len() >= 16, "{what} is too short to search for");
            assert!(!text.contains(secret.as_str()), "{what} appears in {}", path.display());
        }
    }
}
