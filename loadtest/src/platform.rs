//! The platform under test: an admin and a router started here (in a temporary
//! data directory, with a Redis of their own when asked), or one already running;
//! and what the scenario does to it — accounts, uploads, faults.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::scenario::Platform as Spec;

pub struct Platform {
    pub admin_url: String,
    pub router_url: String,
    pub operator_token: String,
    pub origin_type: String,
    http: reqwest::Client,
    own: Option<Own>,
}

/// What this run started and must stop.
struct Own {
    program: PathBuf,
    data: tempfile::TempDir,
    admin: tokio::sync::Mutex<Child>,
    admin_listen: String,
    router: Child,
    redis: Option<(tokio::sync::Mutex<Child>, u16)>,
}

async fn spawn_until(cmd: &mut Command, prefix: &str) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .env("HEADWATER_LOG", std::env::var("HEADWATER_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a headwater process")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        bail!("exited before printing '{prefix}'")
    })
    .await
    .context("waiting for a headwater process to listen")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, found))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_redis(port: u16) -> anyhow::Result<Child> {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (platform.redis = true)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

impl Own {
    fn admin_command(&self) -> Command {
        admin_command(&self.program, self.data.path(), &self.admin_listen, self.redis.as_ref().map(|r| r.1))
    }
}

fn admin_command(program: &Path, d: &Path, listen: &str, redis_port: Option<u16>) -> Command {
    {
        let mut c = Command::new(program);
        c.arg("admin")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(d)
            .arg("--database-url")
            .arg(format!("sqlite://{}", d.join("headwater.db").display()))
            .arg("--content")
            .arg(d.join("content"))
            // Many sign-ups from one address, many calls per key.
            .args(["--signup-rate-limit", "100000", "--rate-limit-per-key", "100000"]);
        if let Some(port) = redis_port {
            c.args(["--redis-url", &format!("redis://127.0.0.1:{port}")]);
        }
        c
    }
}

impl Platform {
    /// Starts (or connects to) the platform of `spec`.
    pub async fn start(spec: &Spec, program: &Path) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        if let (Some(a), Some(r), Some(t)) = (&spec.admin_url, &spec.router_url, &spec.operator_token) {
            return Ok(Self {
                admin_url: a.trim_end_matches('/').to_owned(),
                router_url: r.trim_end_matches('/').to_owned(),
                operator_token: t.clone(),
                origin_type: spec.origin_type.clone(),
                http,
                own: None,
            });
        }
        let data = tempfile::tempdir()?;
        let redis = match spec.redis {
            true => {
                let port = free_port()?;
                Some((start_redis(port).await?, port))
            }
            false => None,
        };
        let admin_listen = format!("127.0.0.1:{}", free_port()?);
        let redis_port = redis.as_ref().map(|r| r.1);
        let (admin, admin_url) = spawn_until(
            &mut admin_command(program, data.path(), &admin_listen, redis_port),
            "headwater admin listening on ",
        )
        .await?;
        let operator_token = std::fs::read_to_string(data.path().join("operator-token"))?.trim().to_owned();
        let mut router = Command::new(program);
        router.args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--admin-url",
            &admin_url,
            "--operator-token",
            &operator_token,
        ]);
        if let Some(port) = redis_port {
            router.args(["--redis-url", &format!("redis://127.0.0.1:{port}")]);
        }
        let (router, router_url) = spawn_until(&mut router, "headwater router listening on ").await?;
        let redis = redis.map(|(child, port)| (tokio::sync::Mutex::new(child), port));
        let own = Own {
            program: program.to_owned(),
            data,
            admin: tokio::sync::Mutex::new(admin),
            admin_listen,
            router,
            redis,
        };
        Ok(Self { admin_url, router_url, operator_token, origin_type: spec.origin_type.clone(), http, own: Some(own) })
    }

    /// Calls admin; the answer's JSON, or its problem as the error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.admin_url));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    /// Applies the type settings of the scenario.
    pub async fn configure(&self, spec: &Spec) -> anyhow::Result<()> {
        let mut patch = serde_json::Map::new();
        for (k, v) in [
            ("node_capacity_mbps", spec.node_capacity_mbps),
            ("payg_cap_mbps", spec.payg_cap_mbps),
            ("trial_cap_mbps", spec.trial_cap_mbps),
        ] {
            if let Some(v) = v {
                patch.insert(k.into(), json!(v));
            }
        }
        if !patch.is_empty() {
            let path = format!("/v1/origin-types/{}", self.origin_type);
            self.call(reqwest::Method::PATCH, &path, &self.operator_token, Some(Value::Object(patch))).await?;
        }
        Ok(())
    }

    async fn wait_operation(&self, id: &str, token: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let op = self.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), token, None).await?;
            match op["state"].as_str() {
                Some("succeeded") => return Ok(()),
                Some("failed") => bail!("operation {id} failed: {}", op["last_error"]),
                _ => {}
            }
            anyhow::ensure!(Instant::now() < deadline, "operation {id} still {}", op["state"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs a customer up with one account holding the demo asset; returns its API key.
    pub async fn account(
        &self,
        name: &str,
        offer: &str,
        mbps: Option<u32>,
        demo: &[(&str, &[u8])],
    ) -> anyhow::Result<String> {
        let unique = format!("{name}-{}", std::process::id());
        let c = self
            .call(
                reqwest::Method::POST,
                "/v1/customers",
                "",
                Some(json!({"name": name, "email": format!("{unique}@loadtest.local")})),
            )
            .await?;
        let key = c["api_key"].as_str().context("no api_key")?.to_owned();
        let offer = match mbps {
            Some(m) => json!({"kind": offer, "mbps": m}),
            None => json!({"kind": offer}),
        };
        let a = self
            .call(
                reqwest::Method::POST,
                "/v1/accounts",
                &key,
                Some(json!({"name": name, "origin_type": self.origin_type, "offer": offer})),
            )
            .await?;
        self.wait_operation(a["operation"]["id"].as_str().context("no operation")?, &key).await?;
        for (path, bytes) in demo {
            let url = format!("{}/v1/accounts/{name}/assets/demo/{path}", self.admin_url);
            let res = self.http.put(url).bearer_auth(&key).body(bytes.to_vec()).send().await?;
            anyhow::ensure!(res.status().is_success(), "uploading {path}: {}", res.status());
        }
        Ok(key)
    }

    /// The account's locator for the demo asset.
    pub fn locator(&self, account: &str, format: crate::scenario::Format) -> String {
        match format {
            crate::scenario::Format::Hls => format!("{}/{account}/demo/hls/master.m3u8", self.router_url),
            crate::scenario::Format::Dash => format!("{}/{account}/demo/dash/manifest.mpd", self.router_url),
        }
    }

    /// `kill -9` one ready node serving `account` (own platform: its pid is in the
    /// process driver's state file).
    pub async fn kill_node(&self, account: &str, key: &str) -> anyhow::Result<String> {
        let own = self.own.as_ref().context("kill-node needs the scenario's own platform")?;
        let a = self.call(reqwest::Method::GET, &format!("/v1/accounts/{account}"), key, None).await?;
        let pool = a["pool"]["id"].as_str().context("no pool")?.to_owned();
        let nodes = self.call(reqwest::Method::GET, "/v1/nodes?limit=500", &self.operator_token, None).await?;
        let node = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["pool_id"] == pool.as_str() && n["state"] == "ready")
            .and_then(|n| n["id"].as_str())
            .context("no ready node to kill")?
            .to_owned();
        let state: Value = serde_json::from_slice(&std::fs::read(own.data.path().join(format!("nodes/{node}.json")))?)?;
        let pid = state["pid"].as_u64().context("no pid")?;
        Command::new("kill").args(["-9", &pid.to_string()]).status().await?;
        Ok(node)
    }

    /// `kill -9` admin, and start it again after `down` on the same address.
    pub async fn kill_admin(&self, down: Duration) -> anyhow::Result<()> {
        let own = self.own.as_ref().context("kill-admin needs the scenario's own platform")?;
        let mut admin = own.admin.lock().await;
        admin.start_kill()?;
        let _ = admin.wait().await;
        tokio::time::sleep(down).await;
        let (again, _) = spawn_until(&mut own.admin_command(), "headwater admin listening on ").await?;
        *admin = again;
        Ok(())
    }

    pub async fn stop_redis(&self) -> anyhow::Result<()> {
        let own = self.own.as_ref().context("stop-redis needs the scenario's own platform")?;
        if let Some((child, _)) = &own.redis {
            let mut child = child.lock().await;
            child.start_kill()?;
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Stops what this run started, the origin nodes included.
    pub async fn stop(mut self) {
        let Some(own) = self.own.as_mut() else { return };
        for child in [&mut own.router, own.admin.get_mut()] {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Ok(dir) = std::fs::read_dir(own.data.path().join("nodes")) {
            for entry in dir.flatten() {
                let Ok(bytes) = std::fs::read(entry.path()) else { continue };
                if let Some(pid) = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["pid"].as_u64()) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status().await;
                }
            }
        }
        if let Some((child, _)) = own.redis.as_mut() {
            let _ = child.get_mut().start_kill();
        }
    }
}
