//! Starts the real `headwater` binary for end-to-end tests: a random port, a fresh
//! database (SQLite in a temporary directory, or a new PostgreSQL database), and a
//! client that speaks to it over HTTP.

#![allow(dead_code)]

#[path = "../../admin/tests/support/mod.rs"]
mod db;

pub mod browser;
pub mod media;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_headwater");

/// The `/metrics` token of every admin, node and router the tests start.
pub const METRICS_TOKEN: &str = "hw-test-metrics";

/// A component's Prometheus text, fetched with the metrics token.
pub async fn metrics(base: &str) -> String {
    let res = reqwest::Client::new().get(format!("{base}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{base}/metrics");
    res.text().await.unwrap()
}

/// Redis for tests: `HEADWATER_TEST_REDIS_URL`, default the local server.
pub fn redis_url() -> String {
    std::env::var("HEADWATER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running `headwater admin` process.
pub struct Admin {
    pub url: String,
    pub db_url: String,
    pub operator_token: String,
    pub data_dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The content store URL, shared with the origin nodes.
    pub content: String,
    /// Environment for the admin and its nodes (e.g. AWS_* for S3).
    pub env: Vec<(String, String)>,
    child: Child,
    pub http: reqwest::Client,
    /// The first admin of a database drops it (a PostgreSQL one) when dropped;
    /// its replicas do not.
    owns_db: bool,
}

async fn spawn(
    db_url: &str,
    data_dir: &std::path::Path,
    token: &str,
    extra: &[String],
    content: &str,
    env: &[(String, String)],
    listen: &str,
) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["admin", "--listen", listen, "--database-url", db_url, "--operator-token", token])
        .args(["--metrics-token", METRICS_TOKEN])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--content", content])
        // Nodes are registered by hand unless a test asks for the process driver.
        .args(if extra.iter().any(|a| a == "--driver") || env.iter().any(|(k, _)| k == "HEADWATER_DRIVER") {
            &[][..]
        } else {
            &["--driver", "none"][..]
        })
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HEADWATER_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn headwater admin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("headwater admin listening on ") {
                return url.to_owned();
            }
        }
        panic!("headwater admin exited before listening");
    })
    .await
    .expect("admin did not start within 60 s");
    // Keep draining stdout (the https line follows), so admin never writes to a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

impl Admin {
    pub async fn start(backend: Backend, extra: &[&str]) -> Self {
        Self::start_with(backend, extra, None, Vec::new()).await
    }

    /// Like `start`, with a content store URL (default: a directory in the data
    /// dir) and environment variables, both passed on to origin nodes too.
    pub async fn start_with(
        backend: Backend,
        extra: &[&str],
        content: Option<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::start_at(backend, extra, content, env, "127.0.0.1:0").await
    }

    /// Like `start_with`, listening on `listen` (e.g. a port chosen with [`free_port`]).
    pub async fn start_at(
        backend: Backend,
        extra: &[&str],
        content: Option<String>,
        env: Vec<(String, String)>,
        listen: &str,
    ) -> Self {
        // The one crypto provider, as the binary installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let db_url = match backend {
            Backend::Sqlite => format!("sqlite://{}/headwater.db", data_dir.path().display()),
            Backend::Postgres => db::fresh_postgres_url().await,
        };
        let operator_token = format!("op-{}", uuid::Uuid::new_v4().simple());
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let content = content.unwrap_or_else(|| data_dir.path().join("content").display().to_string());
        let (child, url) = spawn(&db_url, data_dir.path(), &operator_token, &extra, &content, &env, listen).await;
        Self {
            url,
            db_url,
            operator_token,
            data_dir,
            extra,
            content,
            env,
            child,
            http: reqwest::Client::new(),
            owns_db: true,
        }
    }

    /// Another admin process on the same database (a second replica).
    pub async fn replica(&self, extra: &[&str]) -> Admin {
        self.replica_at(extra, "127.0.0.1:0").await
    }

    /// Another replica, listening on `listen`.
    pub async fn replica_at(&self, extra: &[&str], listen: &str) -> Admin {
        let data_dir = tempfile::tempdir().expect("temp dir");
        // Every replica needs the same master key (the node CA's key is sealed under it).
        std::fs::copy(self.data_dir.path().join("master-key"), data_dir.path().join("master-key"))
            .expect("the first admin's master key");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (child, url) =
            spawn(&self.db_url, data_dir.path(), &self.operator_token, &extra, &self.content, &self.env, listen).await;
        Admin {
            url,
            db_url: self.db_url.clone(),
            operator_token: self.operator_token.clone(),
            data_dir,
            extra,
            content: self.content.clone(),
            env: self.env.clone(),
            child,
            http: reqwest::Client::new(),
            owns_db: false,
        }
    }

    /// Kills the process with SIGKILL (a crash) and waits until it is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill -9 admin");
    }

    /// Kills the process with SIGKILL (a crash) and starts it again on the same
    /// database and data directory.
    pub async fn crash_and_restart(&mut self) {
        self.child.kill().await.expect("kill -9 admin");
        let (child, url) = spawn(
            &self.db_url,
            self.data_dir.path(),
            &self.operator_token,
            &self.extra,
            &self.content,
            &self.env,
            self.url.trim_start_matches("http://"),
        )
        .await;
        self.child = child;
        self.url = url;
    }

    /// The node processes the process driver runs for this admin (pid per node id).
    pub fn node_processes(&self) -> Vec<(String, u32)> {
        let dir = self.data_dir.path().join("nodes");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap_or_default()).unwrap_or(Value::Null);
                if let (Some(id), Some(pid)) = (v["id"].as_str(), v["pid"].as_u64()) {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let zombie = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z");
                    if !stat.is_empty() && !zombie {
                        out.push((id.to_owned(), pid as u32));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Stops the process with SIGTERM (it drains and exits 0) and starts it again
    /// on the same database.
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert!(status.success(), "admin exited with {status} on SIGTERM");
        let (child, url) = spawn(
            &self.db_url,
            self.data_dir.path(),
            &self.operator_token,
            &self.extra,
            &self.content,
            &self.env,
            self.url.trim_start_matches("http://"),
        )
        .await;
        self.child = child;
        self.url = url;
    }

    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.expect("kill");
        assert!(killed.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exit within 30 s").expect("wait")
    }

    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request")
    }

    /// Whether one of the last 500 events is `action` on `subject`.
    pub async fn has_event(&self, action: &str, subject: &str) -> bool {
        let events =
            self.call(Method::GET, "/v1/events?limit=500", Some(&self.operator_token), None, StatusCode::OK).await;
        events["items"].as_array().unwrap().iter().any(|e| e["action"] == action && e["subject"] == subject)
    }

    /// A request whose answer must have `status`; returns the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let res = self.request(method.clone(), path, token, body).await;
        let got = res.status();
        let text = res.text().await.expect("body");
        assert_eq!(got, status, "{method} {path}: {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON body") }
    }

    /// Signs up a customer; returns (id, api key).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        let v = self
            .call(
                Method::POST,
                "/v1/customers",
                None,
                Some(serde_json::json!({"name": "Test", "email": email})),
                StatusCode::CREATED,
            )
            .await;
        (v["id"].as_str().unwrap().to_owned(), v["api_key"].as_str().unwrap().to_owned())
    }

    /// Polls an operation until it ends: succeeded, failed or superseded (deadline 30 s).
    pub async fn wait_operation(&self, id: &str, token: &str) -> Value {
        self.wait_operation_for(id, token, Duration::from_secs(30)).await
    }

    pub async fn wait_operation_for(&self, id: &str, token: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let op = self.call(Method::GET, &format!("/v1/operations/{id}"), Some(token), None, StatusCode::OK).await;
            if op["state"] == "succeeded" || op["state"] == "failed" || op["state"] == "superseded" {
                return op;
            }
            assert!(tokio::time::Instant::now() < deadline, "operation {id} still {} after {limit:?}", op["state"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn content_dir(&self) -> std::path::PathBuf {
        self.data_dir.path().join("content")
    }

    /// Creates an account for `key` and waits for its operation; returns the pool id.
    pub async fn account(&self, key: &str, body: Value) -> String {
        let a = self.call(Method::POST, "/v1/accounts", Some(key), Some(body), StatusCode::ACCEPTED).await;
        let op = self.wait_operation(a["operation"]["id"].as_str().unwrap(), key).await;
        assert_eq!(op["state"], "succeeded", "{op}");
        let name = a["account"]["name"].as_str().unwrap();
        let now = self.call(Method::GET, &format!("/v1/accounts/{name}"), Some(key), None, StatusCode::OK).await;
        now["pool"]["id"].as_str().unwrap().to_owned()
    }

    /// The live (starting, ready or draining) nodes of `pool`.
    pub async fn live_nodes(&self, pool: &str) -> Vec<Value> {
        let v = self.call(Method::GET, "/v1/nodes?limit=500", Some(&self.operator_token), None, StatusCode::OK).await;
        let live = ["starting", "ready", "draining"];
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["pool_id"] == pool && live.contains(&n["state"].as_str().unwrap_or_default()))
            .cloned()
            .collect()
    }

    /// Waits (deadline 60 s) until `pool` has exactly `n` live nodes, all ready
    /// (an account's operation is done before its spare is); returns them.
    pub async fn settled(&self, pool: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = self.live_nodes(pool).await;
            if nodes.len() == n && nodes.iter().all(|x| x["state"] == "ready") {
                return nodes;
            }
            assert!(std::time::Instant::now() < deadline, "pool {pool} never settled on {n} ready nodes: {nodes:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uploads every file of the repository's demo asset as `asset` of `account`.
    pub async fn upload_demo(&self, key: &str, account: &str, asset: &str) -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
        let mut uploaded = Vec::new();
        for rel in demo_files() {
            let bytes = std::fs::read(root.join(&rel)).unwrap();
            let res = self
                .http
                .put(format!("{}/v1/accounts/{account}/assets/{asset}/{rel}", self.url))
                .bearer_auth(key)
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED, "{rel}: {}", res.text().await.unwrap());
            uploaded.push(rel);
        }
        uploaded
    }

    /// Registers a node of `pool`; returns (id, token).
    pub async fn register_node(&self, pool: &str) -> (String, String) {
        let v = self
            .call(
                Method::POST,
                "/v1/nodes",
                Some(&self.operator_token),
                Some(serde_json::json!({"pool_id": pool})),
                StatusCode::CREATED,
            )
            .await;
        (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
    }

    pub async fn count(&self, sql: &str) -> i64 {
        db::raw_count(&self.db_url, sql).await
    }

    /// One text value read with raw SQL.
    pub async fn text(&self, sql: &str) -> Option<String> {
        db::raw_text(&self.db_url, sql).await
    }
}

/// The secret part of a credential as the server splits it: what follows the
/// id in `hw_{id}_{secret}`, `hwn_{id}_{secret}` and `hwj_{id}_{secret}`, what follows the prefix in
/// `hwop_{secret}`, and the whole of any other token. The secret is base64url,
/// so it may itself hold `_`: splitting from the right would give a short tail
/// that any text can hold.
pub fn secret_of(credential: &str) -> &str {
    if let Some(secret) = credential.strip_prefix("hwop_") {
        return secret;
    }
    let id_first = credential.strip_prefix("hw_").or_else(|| credential.strip_prefix("hwn_"));
    match id_first.or_else(|| credential.strip_prefix("hwj_")) {
        Some(rest) => rest.split_once('_').map_or(rest, |(_id, secret)| secret),
        None => credential,
    }
}

/// `method path` on `base` with `token`: the status and the JSON body (`null` when empty).
pub async fn call_json(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, format!("{base}{path}")).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

/// Asserts a problem+json answer and returns its body.
pub async fn expect_problem(res: Response, status: StatusCode, kind: &str, field: Option<&str>) -> Value {
    assert_eq!(res.status(), status);
    let ctype = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(ctype, "application/problem+json");
    let body: Value = res.json().await.expect("problem body");
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    assert_eq!(body["field"].as_str(), field, "{body}");
    body
}

/// Declares each listed `async fn(Backend)` as a test per store backend.
#[macro_export]
macro_rules! e2e_on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::support::Backend::Sqlite).await; })*
        }
        mod postgres_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::support::Backend::Postgres).await; })*
        }
    };
}

impl Drop for Admin {
    /// Node processes outlive admin by design; a test must not leave them behind.
    /// They name this test's data directory (their content path) on their command
    /// line, even one launched just as admin was killed.
    fn drop(&mut self) {
        kill_processes_naming(&self.data_dir.path().display().to_string());
        if self.owns_db && self.db_url.starts_with("postgres") {
            let _ = self.child.start_kill();
            db::drop_postgres(&self.db_url);
        }
    }
}

/// Kills every process whose command line contains `needle`.
pub fn kill_processes_naming(needle: &str) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && String::from_utf8_lossy(&cmdline).contains("origin") {
            // It may have exited since it was listed: that is fine, and not worth a line.
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// The media files of `assets/demo`, as paths relative to it.
pub fn demo_files() -> Vec<String> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x != "md") {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// A running `headwater origin` process.
pub struct Origin {
    pub url: String,
    /// `https://…` with `--tls-listen`.
    pub tls_url: Option<String>,
    pub id: String,
    child: Child,
}

impl Origin {
    pub async fn start(admin: &Admin, id: &str, token: &str, capacity_mbps: u32, extra: &[&str]) -> Origin {
        let mut child = Command::new(BIN)
            .args([
                "origin",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                id,
                "--node-token",
                token,
                "--admin-url",
                &admin.url,
            ])
            .args(["--capacity-mbps", &capacity_mbps.to_string(), "--heartbeat-ms", "200", "--usage-report-ms", "300"])
            .args(["--metrics-token", METRICS_TOKEN])
            .args(["--content", &admin.content])
            .envs(admin.env.iter().map(|(k, v)| (k, v)))
            .args(extra)
            .env("HEADWATER_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn headwater origin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let tls = extra.contains(&"--tls-listen");
        let (url, tls_url) = tokio::time::timeout(Duration::from_secs(60), async {
            let (mut url, mut tls_url) = (None, None);
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                match line.strip_prefix("headwater origin listening on ") {
                    Some(u) if u.starts_with("https://") => tls_url = Some(u.to_owned()),
                    Some(u) => url = Some(u.to_owned()),
                    None => {}
                }
                if let Some(url) = &url
                    && tls_url.is_some() == tls
                {
                    return (url.clone(), tls_url);
                }
            }
            panic!("headwater origin exited before listening");
        })
        .await
        .expect("origin did not start within 60 s");
        Origin { url, tls_url, id: id.to_owned(), child }
    }

    /// Waits (deadline 30 s) until admin lists this node as `state`.
    pub async fn wait_state(&self, admin: &Admin, state: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = admin.call(Method::GET, "/v1/nodes", Some(&admin.operator_token), None, StatusCode::OK).await;
            let me = nodes["items"].as_array().unwrap().iter().find(|n| n["id"] == self.id.as_str()).cloned();
            if me.as_ref().is_some_and(|n| n["state"] == state) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "node never {state}: {me:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.expect("exit within 60 s").expect("wait")
    }

    pub async fn terminate(&mut self) {
        let pid = self.child.id().expect("running");
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.expect("kill");
    }
}

/// A TCP port nothing listens on now (for a process that must know another's
/// address before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `check` holds (polling every 100 ms), failing with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of a program on PATH.
pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}

/// Starts a process and collects its stdout lines until one starts with `until`.
pub async fn start(cmd: &mut tokio::process::Command, until: &str) -> (tokio::process::Child, Vec<String>) {
    let mut child = cmd
        .env("HEADWATER_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::piped())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn headwater");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with(until);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("exited before '{until}': {seen:?}");
    })
    .await
    .expect("started in time");
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, seen)
}

pub fn value<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no '{prefix}' in {lines:?}"))
}

/// Kills every node process `up` left in its data directory, however the test ends.
pub struct NodeCleanup(pub std::path::PathBuf);

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        kill_processes_naming(&self.0.display().to_string());
    }
}

/// A Redis server of the test's own on a free port, so a test can stop and start
/// it without touching the shared one.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = RedisServer { port, child: None };
        r.start_again().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub async fn start_again(&mut self) {
        let redis = which("redis-server").expect("redis-server is installed (scripts/test installs it)");
        let child = Command::new(redis)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server on port {} never answered", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// A router of `admin` (`extra` flags added), started; returns it and its URL.
pub async fn router_of(admin: &Admin, extra: &[&str]) -> (tokio::process::Child, String) {
    let (child, lines) = start(
        tokio::process::Command::new(BIN)
            .args([
                "router",
                "--listen",
                "127.0.0.1:0",
                "--admin-url",
                &admin.url,
                "--operator-token",
                &admin.operator_token,
                "--metrics-token",
                METRICS_TOKEN,
            ])
            .args(extra),
        "headwater router listening on ",
    )
    .await;
    let url = value(&lines, "headwater router listening on ").to_owned();
    (child, url)
}

/// Waits (deadline 60 s) until `url` answers `status`.
pub async fn wait_status(http: &reqwest::Client, url: &str, status: StatusCode, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = http.get(url).send().await.unwrap().status();
        if got == status {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still {got}, never {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `headwater up --demo` on random ports in `data`, started; its lines up to "ready".
pub async fn up_demo(data: &std::path::Path) -> (Child, Vec<String>) {
    start(
        Command::new(BIN)
            .args(["up", "--demo", "--listen", "127.0.0.1:0", "--router-listen", "127.0.0.1:0"])
            .args(["--admin-https-listen", "127.0.0.1:0", "--router-https-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data),
        "ready",
    )
    .await
}

/// Opens an HTTP/2 connection to `addr` and sends `count` PING frames (or SETTINGS
/// with `settings`) as fast as it can; returns how many the server answered
/// (PING ACKs or SETTINGS ACKs) before it closed the connection, and whether it
/// closed it.
pub async fn h2_control_flood(addr: &str, count: usize, settings: bool) -> (usize, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(0x4, 0, &[]));
    let (mut rd, mut wr) = s.split();
    let writer = async {
        wr.write_all(&wire).await.ok();
        let one = if settings { frame(0x4, 0, &[]) } else { frame(0x6, 0, &[7; 8]) };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        for _ in 0..count / 100 {
            if wr.write_all(&batch).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let (mut acks, mut buf) = (0usize, Vec::new());
        let mut chunk = vec![0u8; 64 * 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break false,
            }
            // Count the ACK frames among the whole frames received so far.
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
                if buf.len() < at + 9 + len {
                    break;
                }
                let (kind, flags) = (buf[at + 3], buf[at + 4]);
                if flags & 1 == 1 && kind == if settings { 0x4 } else { 0x6 } {
                    acks += 1;
                }
                at += 9 + len;
            }
            buf.drain(..at);
        };
        (acks, closed)
    };
    let ((), got) = tokio::join!(writer, reader);
    got
}

/// Looping players, one per account, and what they saw.
pub struct Players {
    stop: CancellationToken,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Players {
    pub fn start(router: &str, accounts: &[&str]) -> Self {
        let stop = CancellationToken::new();
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = accounts.iter().map(|a| player(router, a, stop.clone(), ok.clone())).collect();
        Self { stop, ok, tasks }
    }

    /// Segments played so far.
    pub fn played(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops them and asserts no request failed (and that they did play).
    pub async fn finish(self) {
        self.stop.cancel();
        let mut failed = Vec::new();
        for t in self.tasks {
            failed.extend(t.await.unwrap());
        }
        let ok = self.ok.load(Ordering::Relaxed);
        eprintln!("players: {ok} segments, {} failed", failed.len());
        assert!(failed.is_empty(), "{} failed player requests ({ok} ok): {failed:?}", failed.len());
        assert!(ok > 30, "{ok}");
    }
}

/// A player fetching one segment of `account` in a loop through the router until
/// `stop`; returns its failures.
fn player(
    router: &str,
    account: &str,
    stop: CancellationToken,
    ok: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let url = format!("{router}/{account}/demo/hls/360p/seg_001.ts");
    let want = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/hls/360p/seg_001.ts")).unwrap();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut failed = Vec::new();
        while !stop.is_cancelled() {
            match http.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => match r.bytes().await {
                    Ok(b) if b == want => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(b) => failed.push(format!("{} bytes", b.len())),
                    Err(e) => failed.push(e.to_string()),
                },
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e.to_string()),
            }
        }
        failed
    })
}

/// A moto S3 server on a free port, stopped when dropped.
pub struct Moto {
    pub url: String,
    _child: tokio::process::Child,
}

pub async fn moto() -> Option<Moto> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(path) = which("moto_server") else {
        assert!(std::env::var("CI").is_err(), "moto_server is required in CI (scripts/test installs moto[server])");
        eprintln!("moto_server not installed: skipping the S3 test");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new(path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto_server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(&url).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "moto_server did not answer within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(Moto { url, _child: child })
}

impl Moto {
    /// Creates bucket `name`.
    pub async fn bucket(&self, name: &str) {
        let res = reqwest::Client::new().put(format!("{}/{name}", self.url)).send().await.unwrap();
        assert!(res.status().is_success(), "create bucket: {}", res.status());
    }
}

/// The environment admin and nodes read an S3 store at `endpoint` from.
pub fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// A TCP link to `upstream` that the test can cut and heal: cut, every open
/// connection is dropped and new ones are closed at once (as a network cut off
/// would look to a client); healed, it forwards again. It counts the bytes
/// `upstream` sends as they pass.
pub struct Link {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    down: Arc<std::sync::atomic::AtomicBool>,
    downstream: Arc<AtomicU64>,
}

impl Link {
    pub async fn to(upstream: std::net::SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let downstream = Arc::new(AtomicU64::new(0));
        let (cuts, is_down, counted) = (cut.clone(), down.clone(), downstream.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cuts = cuts.subscribe();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                return client_write.shutdown().await;
                            }
                            counted.fetch_add(n as u64, Ordering::SeqCst);
                            client_write.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = futures_util::future::try_join(up, down) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Link { addr, cut, down, downstream }
    }

    /// Bytes `upstream` has sent through the link so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.downstream.load(Ordering::SeqCst)
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}
