//! The command-line client of the admin REST API: `customers`, `accounts`,
//! `operations`, `assets`, `usage`, `logs`, `events`, `origin-types`. Human tables by default, `--json` for scripts;
//! a problem answer is printed readably and exits non-zero.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The admin service.
    #[arg(long, global = true, env = "HEADWATER_ADMIN_URL", default_value = "http://127.0.0.1:7400")]
    admin_url: String,
    /// A customer API key.
    #[arg(long, global = true, env = "HEADWATER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The operator token.
    #[arg(long, global = true, env = "HEADWATER_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Trust only this CA (PEM) for an https admin URL, as `curl --cacert`
    /// (`up` makes one in DATA_DIR/tls/ca.pem).
    #[arg(long, global = true, env = "HEADWATER_CA_FILE")]
    cacert: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign up and manage API keys.
    Customers {
        #[command(subcommand)]
        cmd: CustomersCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create and manage accounts (origin services).
    Accounts {
        #[command(subcommand)]
        cmd: AccountsCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow operations.
    Operations {
        #[command(subcommand)]
        cmd: OperationsCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Upload, list and delete an account's assets.
    Assets {
        #[command(subcommand)]
        cmd: AssetsCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// An account's usage: bytes, requests and Mbit/s (peak minute, 95th
    /// percentile of 5-minute samples) per minute, hour or day.
    Usage {
        account: String,
        #[arg(long, value_enum, default_value = "hour")]
        granularity: GranularityArg,
        /// Start (RFC 3339); default 24 hours before `--to` (30 days for `day`).
        #[arg(long)]
        from: Option<String>,
        /// End (RFC 3339), exclusive; default now.
        #[arg(long)]
        to: Option<String>,
        /// Print the API's CSV export instead of a table.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// An account's access log: a record per player request, oldest first;
    /// `--follow` keeps printing new ones.
    Logs {
        account: String,
        /// Requests at or after this time (RFC 3339); default: every record kept.
        #[arg(long)]
        since: Option<String>,
        /// At most this many records per page (1–500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Then keep asking for new records (every second) until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Operator: the audit trail (who changed what), oldest first;
    /// `--follow` keeps printing events as they are written.
    Events {
        /// How many of the newest events to print first (1–500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Then follow the trail (`GET /v1/events/watch`) until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Operator: origin types and their images.
    OriginTypes {
        #[command(subcommand)]
        cmd: OriginTypesCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomersCmd {
    /// Sign up; prints the API key once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
    },
    /// Show the customer of the API key.
    Me,
    /// Make another API key.
    NewKey,
    /// Revoke an API key by id.
    RevokeKey { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OfferArg {
    Trial,
    Payg,
    Sla,
}

impl OfferArg {
    fn body(self, mbps: Option<u32>) -> Value {
        let kind = match self {
            OfferArg::Trial => "trial",
            OfferArg::Payg => "payg",
            OfferArg::Sla => "sla",
        };
        match mbps {
            Some(m) => json!({"kind": kind, "mbps": m}),
            None => json!({"kind": kind}),
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GranularityArg {
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    /// Create an account; `--wait` waits for its operation.
    Create {
        name: String,
        #[arg(long = "type", default_value = "hls")]
        origin_type: String,
        #[arg(long, value_enum, default_value = "trial")]
        offer: OfferArg,
        /// Guaranteed Mbit/s, for `--offer sla`.
        #[arg(long)]
        mbps: Option<u32>,
        /// Allowed client networks (CIDR); repeat for more.
        #[arg(long = "ip-allow")]
        ip_allow: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    List,
    Show {
        name: String,
    },
    /// Change the offer and/or the allow-list.
    Update {
        name: String,
        #[arg(long, value_enum)]
        offer: Option<OfferArg>,
        #[arg(long)]
        mbps: Option<u32>,
        #[arg(long = "ip-allow")]
        ip_allow: Option<Vec<String>>,
        #[arg(long)]
        wait: bool,
    },
    Deactivate {
        name: String,
    },
    Reactivate {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Show signed playback (keys, whether a token is required), or change it.
    Playback {
        name: String,
        /// Serve only signed URLs.
        #[arg(long, conflicts_with = "no_require")]
        require: bool,
        /// Serve unsigned URLs too.
        #[arg(long)]
        no_require: bool,
    },
    /// A new playback signing key (its secret shown once); the older of two is retired.
    PlaybackKey {
        name: String,
    },
    /// Retire a playback key at once: its tokens stop working.
    DeletePlaybackKey {
        name: String,
        id: String,
    },
    /// Show the account's CDN secrets (ids), or make one (`--new`: its secret
    /// shown once; from the first on, only requests carrying one are served).
    CdnSecrets {
        name: String,
        #[arg(long)]
        new: bool,
    },
    /// Retire a CDN secret at once.
    DeleteCdnSecret {
        name: String,
        id: String,
    },
    /// A signed URL for PATH (`{asset}/{file}`) of the account.
    SignUrl {
        name: String,
        path: String,
        /// Seconds the URL plays for (default 3600).
        #[arg(long)]
        expires_in: Option<u32>,
        /// What else it plays: `asset` (PATH's asset, the default), `directory`
        /// (beside PATH and below) or `account` (every file).
        #[arg(long)]
        scope: Option<String>,
        /// The one client address it is good for.
        #[arg(long)]
        client_ip: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssetsCmd {
    /// Upload a packaged HLS/DASH folder (every file under DIR) as ASSET, or one
    /// file (a `jit` account's MP4).
    Upload {
        account: String,
        asset: String,
        #[arg(value_name = "DIR_OR_FILE")]
        dir: std::path::PathBuf,
    },
    List {
        account: String,
    },
    Delete {
        account: String,
        asset: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperationsCmd {
    /// Operations, newest first (the operator sees all, a customer its own).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// An account's name.
        #[arg(long)]
        account: Option<String>,
        #[arg(long = "type")]
        origin_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: String,
    },
    /// Wait until the operation succeeds (exit 0) or fails (exit 1).
    Wait {
        id: String,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum OriginTypesCmd {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        #[arg(long)]
        node_capacity_mbps: u32,
        #[arg(long)]
        sla_increment_mbps: Option<u32>,
        #[arg(long)]
        trial_cap_mbps: Option<u32>,
        #[arg(long)]
        payg_cap_mbps: Option<u32>,
    },
    Update {
        name: String,
        #[arg(long)]
        node_capacity_mbps: Option<u32>,
        #[arg(long)]
        sla_increment_mbps: Option<u32>,
        #[arg(long)]
        trial_cap_mbps: Option<u32>,
        #[arg(long)]
        payg_cap_mbps: Option<u32>,
    },
    /// Record a new image version (starts an upgrade).
    AddImage {
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        command: String,
        /// Arguments of the command; repeat for more.
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Why a command failed: the API said no (exit 1), or it could not be reached (exit 2).
enum Failure {
    Problem(Value, StatusCode),
    Transport(String),
}

struct Client {
    http: reqwest::Client,
    conn: Conn,
}

impl Client {
    fn new(conn: Conn) -> Result<Self, Failure> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &conn.cacert {
            let pem = std::fs::read(path).map_err(|e| Failure::Transport(format!("{}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Failure::Transport(format!("{}: {e}", path.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| Failure::Transport(e.to_string()))?;
        Ok(Self { http, conn })
    }

    /// Customer routes prefer the API key; operator routes the operator token.
    fn request(&self, method: Method, url: &str, operator: bool) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        let token = if operator {
            self.conn.operator_token.as_ref().or(self.conn.api_key.as_ref())
        } else {
            self.conn.api_key.as_ref().or(self.conn.operator_token.as_ref())
        };
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>, operator: bool) -> Result<Value, Failure> {
        let url = format!("{}{}", self.conn.admin_url.trim_end_matches('/'), path);
        let mut req = self.request(method, &url, operator);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
        let status = res.status();
        let text = res.text().await.map_err(|e| Failure::Transport(e.to_string()))?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status.is_success() { Ok(value) } else { Err(Failure::Problem(value, status)) }
    }

    /// The event stream at `path`, open for up to `timeout`.
    async fn events(&self, path: &str, timeout: Duration, operator: bool) -> Result<reqwest::Response, Failure> {
        let url = format!("{}{}", self.conn.admin_url.trim_end_matches('/'), path);
        let req = self.request(Method::GET, &url, operator).header(reqwest::header::ACCEPT, "text/event-stream");
        let res = req.timeout(timeout).send().await.map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let text = res.text().await.map_err(|e| Failure::Transport(e.to_string()))?;
        Err(Failure::Problem(serde_json::from_str(&text).unwrap_or(Value::String(text)), status))
    }
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn offer_text(o: &Value) -> String {
    match o.get("mbps").and_then(Value::as_i64) {
        Some(m) => format!("{} {m} Mbit/s", s(o, "kind")),
        None => s(o, "kind"),
    }
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn account_row(a: &Value) -> Vec<String> {
    let pool = a.get("pool").filter(|p| !p.is_null());
    let pool = pool
        .map(|p| format!("{} {}/{}", s(p, "kind"), s(p, "ready_nodes"), s(p, "desired_nodes")))
        .unwrap_or_else(|| "-".into());
    vec![s(a, "name"), s(a, "origin_type"), offer_text(&a["offer"]), s(a, "state"), pool, s(a, "locator")]
}

const ACCOUNT_HEADER: [&str; 6] = ["name", "type", "offer", "state", "pool (ready/desired)", "locator"];

fn print_operation(op: &Value) {
    println!("operation {}  {}  {}", s(op, "id"), s(op, "kind"), s(op, "state"));
    if let Some(steps) = op["steps"].as_array() {
        for st in steps {
            println!("  {}  {}", s(st, "at"), s(st, "step"));
        }
    }
    if let Some(e) = op["last_error"].as_str() {
        println!("  last error: {e}");
    }
}

/// Waits until the operation succeeds (its last state) or fails, following its
/// event stream (`GET /v1/operations/{id}/watch`, opened again if it breaks);
/// with `live`, prints each step as it finishes.
async fn wait_operation(c: &Client, id: &str, timeout: Duration, live: bool) -> Result<Value, Failure> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let late = |op: &Value| {
        Failure::Transport(format!("operation {id} still {} after {}s", s(op, "state"), timeout.as_secs()))
    };
    let mut last = Value::Null;
    let mut printed = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let res = c.events(&format!("/v1/operations/{id}/watch"), left.max(Duration::from_millis(1)), false).await?;
        let mut events = res.bytes_stream().eventsource();
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Err(late(&last)),
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(e))) => e,
            };
            if event.event != "operation" {
                continue;
            }
            let op: Value = serde_json::from_str(&event.data)
                .map_err(|e| Failure::Transport(format!("operation {id}: an event that is not an operation: {e}")))?;
            if live {
                if last.is_null() {
                    println!("operation {}  {}", s(&op, "id"), s(&op, "kind"));
                }
                let steps = op["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
                for st in steps.iter().skip(printed) {
                    println!("  {}  {}", s(st, "at"), s(st, "step"));
                }
                printed = printed.max(steps.len());
            }
            last = op;
            match last["state"].as_str() {
                Some("succeeded") => return Ok(last),
                Some("failed" | "superseded") => return Err(Failure::Problem(last, StatusCode::OK)),
                _ => {}
            }
        }
        // The stream broke before the operation ended (admin restarted, say).
        if tokio::time::Instant::now() >= deadline {
            return Err(late(&last));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One audit event: a line of the table, or its JSON with `--json`.
fn print_event(e: &Value, json_out: bool) {
    if json_out {
        println!("{e}");
    } else {
        println!(
            "{}  {}  {}  {}  {}  {}",
            s(e, "id"),
            s(e, "at"),
            s(e, "actor"),
            s(e, "action"),
            s(e, "subject"),
            s(e, "reason")
        );
    }
}

/// Prints the audit trail after event `after` as it is written, following
/// `GET /v1/events/watch` and opening it again with the last id seen when it
/// breaks (admin restarted, say), so no event is missed or printed twice.
/// Returns only on a problem answer (a wrong token, say).
async fn follow_events(c: &Client, mut after: i64, json_out: bool) -> Result<(), Failure> {
    use eventsource_stream::Eventsource;
    /// One connection lasts at most this long before it is opened again.
    const CONNECTION: Duration = Duration::from_secs(24 * 3600);
    loop {
        match c.events(&format!("/v1/events/watch?after={after}"), CONNECTION, true).await {
            Ok(res) => {
                let mut events = res.bytes_stream().eventsource();
                while let Some(Ok(event)) = events.next().await {
                    if event.event != "event" {
                        continue;
                    }
                    let Ok(e) = serde_json::from_str::<Value>(&event.data) else { continue };
                    let Some(id) = e["id"].as_i64().filter(|id| *id > after) else { continue };
                    after = id;
                    print_event(&e, json_out);
                }
            }
            Err(p @ Failure::Problem(..)) => return Err(p),
            // Admin unreachable for now: try again.
            Err(Failure::Transport(_)) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `/v1/{segments}?{query}`, each segment and value percent-encoded; a pair
/// without a value is left out.
fn api_path(segments: &[&str], query: &[(&str, Option<&str>)]) -> Result<String, Failure> {
    let mut url = reqwest::Url::parse("http://admin/v1").map_err(|e| Failure::Transport(e.to_string()))?;
    url.path_segments_mut().map_err(|()| Failure::Transport("a URL".into()))?.extend(segments);
    for (k, v) in query {
        if let Some(v) = v {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    Ok(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    })
}

fn opt_mbps(pairs: &[(&str, Option<u32>)]) -> Value {
    Value::Object(pairs.iter().filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), json!(v)))).collect())
}

async fn execute(cmd: ClientCommand) -> Result<(), Failure> {
    match cmd {
        ClientCommand::Customers { cmd, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let v = match cmd {
                CustomersCmd::Create { name, email } => {
                    let v = c
                        .call(Method::POST, "/v1/customers", Some(json!({"name": name, "email": email})), false)
                        .await?;
                    if !json_out {
                        println!("customer {} ({})", s(&v, "id"), s(&v, "email"));
                        println!(
                            "API key (shown once, keep it safe):\n  export HEADWATER_API_KEY={}",
                            s(&v, "api_key")
                        );
                    }
                    v
                }
                CustomersCmd::Me => {
                    let v = c.call(Method::GET, "/v1/customers/me", None, false).await?;
                    if !json_out {
                        println!("customer {}  {}  {}", s(&v, "id"), s(&v, "name"), s(&v, "email"));
                        let rows = v["keys"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|k| vec![s(k, "id"), s(k, "created_at"), s(k, "revoked_at")])
                            .collect();
                        table(&["key id", "created", "revoked"], rows);
                    }
                    v
                }
                CustomersCmd::NewKey => {
                    let v = c.call(Method::POST, "/v1/customers/me/keys", None, false).await?;
                    if !json_out {
                        println!("key {} (shown once):\n  {}", s(&v, "id"), s(&v, "api_key"));
                    }
                    v
                }
                CustomersCmd::RevokeKey { id } => {
                    c.call(Method::DELETE, &format!("/v1/customers/me/keys/{id}"), None, false).await?;
                    if !json_out {
                        println!("key {id} revoked");
                    }
                    json!({"revoked": id})
                }
            };
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        ClientCommand::Accounts { cmd, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let (v, wait) = match cmd {
                AccountsCmd::Create { name, origin_type, offer, mbps, ip_allow, wait } => {
                    let body = json!({"name": name, "origin_type": origin_type, "offer": offer.body(mbps), "ip_allow": ip_allow});
                    (c.call(Method::POST, "/v1/accounts", Some(body), false).await?, wait)
                }
                AccountsCmd::List => {
                    let v = c.call(Method::GET, "/v1/accounts", None, false).await?;
                    if !json_out {
                        table(&ACCOUNT_HEADER, v["items"].as_array().into_iter().flatten().map(account_row).collect());
                    }
                    (v, false)
                }
                AccountsCmd::Show { name } => {
                    let v = c.call(Method::GET, &format!("/v1/accounts/{name}"), None, false).await?;
                    if !json_out {
                        table(&ACCOUNT_HEADER, vec![account_row(&v)]);
                    }
                    (v, false)
                }
                AccountsCmd::Update { name, offer, mbps, ip_allow, wait } => {
                    let mut body = json!({});
                    if let Some(o) = offer {
                        body["offer"] = o.body(mbps);
                    }
                    if let Some(ip) = ip_allow {
                        body["ip_allow"] = json!(ip);
                    }
                    (c.call(Method::PATCH, &format!("/v1/accounts/{name}"), Some(body), false).await?, wait)
                }
                AccountsCmd::Deactivate { name } => {
                    (c.call(Method::POST, &format!("/v1/accounts/{name}/deactivate"), None, false).await?, false)
                }
                AccountsCmd::Reactivate { name } => {
                    (c.call(Method::POST, &format!("/v1/accounts/{name}/reactivate"), None, false).await?, false)
                }
                AccountsCmd::Delete { name } => {
                    (c.call(Method::DELETE, &format!("/v1/accounts/{name}"), None, false).await?, false)
                }
                AccountsCmd::Playback { name, require, no_require } => {
                    let path = format!("/v1/accounts/{name}/playback");
                    let v = if require || no_require {
                        c.call(Method::PUT, &path, Some(json!({"required": require})), false).await?
                    } else {
                        c.call(Method::GET, &path, None, false).await?
                    };
                    if !json_out {
                        println!("required: {}", v["required"]);
                        for k in v["keys"].as_array().into_iter().flatten() {
                            println!("key {} (created {})", s(k, "id"), s(k, "created_at"));
                        }
                    }
                    (v, false)
                }
                AccountsCmd::PlaybackKey { name } => {
                    let v = c.call(Method::POST, &format!("/v1/accounts/{name}/playback-keys"), None, false).await?;
                    if !json_out {
                        println!("key {} (secret shown once):\n  {}", s(&v, "id"), s(&v, "secret"));
                        if let Some(r) = v["retired"].as_str() {
                            println!("retired key {r}");
                        }
                    }
                    (v, false)
                }
                AccountsCmd::CdnSecrets { name, new } => {
                    let path = format!("/v1/accounts/{name}/cdn-secrets");
                    let v = if new {
                        c.call(Method::POST, &path, None, false).await?
                    } else {
                        c.call(Method::GET, &path, None, false).await?
                    };
                    if !json_out {
                        if new {
                            println!(
                                "CDN secret {} (shown once): {}: {}",
                                s(&v, "id"),
                                s(&v, "header"),
                                s(&v, "secret")
                            );
                            if let Some(r) = v["retired"].as_str() {
                                println!("retired secret {r}");
                            }
                        } else {
                            println!("header: {}", s(&v, "header"));
                            for k in v["secrets"].as_array().into_iter().flatten() {
                                println!("secret {} (created {})", s(k, "id"), s(k, "created_at"));
                            }
                        }
                    }
                    (v, false)
                }
                AccountsCmd::DeleteCdnSecret { name, id } => (
                    c.call(Method::DELETE, &format!("/v1/accounts/{name}/cdn-secrets/{id}"), None, false).await?,
                    false,
                ),
                AccountsCmd::DeletePlaybackKey { name, id } => {
                    let path = format!("/v1/accounts/{name}/playback-keys/{id}");
                    (c.call(Method::DELETE, &path, None, false).await?, false)
                }
                AccountsCmd::SignUrl { name, path, expires_in, scope, client_ip } => {
                    let mut body = json!({"path": path});
                    if let Some(e) = expires_in {
                        body["expires_in_secs"] = json!(e);
                    }
                    if let Some(scope) = scope {
                        body["scope"] = json!(scope);
                    }
                    if let Some(ip) = client_ip {
                        body["client_ip"] = json!(ip);
                    }
                    let v = c
                        .call(Method::POST, &format!("/v1/accounts/{name}/playback-tokens"), Some(body), false)
                        .await?;
                    if !json_out {
                        println!("{}", s(&v, "url"));
                    }
                    (v, false)
                }
            };
            let mut v = v;
            if let Some(op) = v.get("operation") {
                if wait {
                    let id = s(op, "id");
                    let done = wait_operation(&c, &id, Duration::from_secs(120), false).await?;
                    v["operation"] = done;
                }
            }
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let (Some(a), Some(op)) = (v.get("account"), v.get("operation")) {
                table(&ACCOUNT_HEADER, vec![account_row(a)]);
                print_operation(op);
            }
        }
        ClientCommand::Operations { cmd, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let v = match cmd {
                OperationsCmd::List { state, kind, account, origin_type, limit } => {
                    let limit = limit.to_string();
                    let path = api_path(
                        &["operations"],
                        &[
                            ("limit", Some(&limit)),
                            ("state", state.as_deref()),
                            ("kind", kind.as_deref()),
                            ("account", account.as_deref()),
                            ("origin_type", origin_type.as_deref()),
                        ],
                    )?;
                    let v = c.call(Method::GET, &path, None, false).await?;
                    if !json_out {
                        let rows = v["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|o| vec![s(o, "id"), s(o, "kind"), s(o, "state"), s(o, "step"), s(o, "created_at")])
                            .collect();
                        table(&["id", "kind", "state", "last step", "created"], rows);
                        return Ok(());
                    }
                    v
                }
                OperationsCmd::Show { id } => c.call(Method::GET, &format!("/v1/operations/{id}"), None, false).await?,
                OperationsCmd::Wait { id, timeout_secs } => {
                    let v = wait_operation(&c, &id, Duration::from_secs(timeout_secs), !json_out).await?;
                    if !json_out {
                        // Its steps are printed as they finished.
                        println!("operation {}  {}", s(&v, "id"), s(&v, "state"));
                        return Ok(());
                    }
                    v
                }
            };
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_operation(&v);
            }
        }
        ClientCommand::Usage { account, granularity, from, to, csv, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let g = match granularity {
                GranularityArg::Minute => "minute",
                GranularityArg::Hour => "hour",
                GranularityArg::Day => "day",
            };
            let path = api_path(
                &["accounts", &account, "usage"],
                &[
                    ("granularity", Some(g)),
                    ("from", from.as_deref()),
                    ("to", to.as_deref()),
                    ("format", csv.then_some("csv")),
                ],
            )?;
            let v = c.call(Method::GET, &path, None, false).await?;
            match v {
                Value::String(text) if csv => print!("{text}"),
                v if json_out => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                v => {
                    println!("{} usage per {g}, {} to {}", s(&v, "account"), s(&v, "from"), s(&v, "to"));
                    let mut rows: Vec<Vec<String>> = v["windows"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| {
                            vec![
                                s(w, "window_start"),
                                s(w, "bytes"),
                                s(w, "requests"),
                                s(w, "peak_mbps"),
                                s(w, "p95_mbps"),
                            ]
                        })
                        .collect();
                    rows.push(vec![
                        "total".into(),
                        s(&v, "total_bytes"),
                        s(&v, "total_requests"),
                        s(&v, "peak_mbps"),
                        s(&v, "p95_mbps"),
                    ]);
                    table(&["window", "bytes", "requests", "peak mbit/s", "p95 mbit/s"], rows);
                }
            }
        }
        ClientCommand::Logs { account, since, limit, follow, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let mut cursor = 0i64;
            loop {
                let (l, after) = (limit.to_string(), cursor.to_string());
                let path = api_path(
                    &["accounts", &account, "logs"],
                    &[("limit", Some(&l)), ("cursor", Some(&after)), ("since", since.as_deref())],
                )?;
                let page = c.call(Method::GET, &path, None, false).await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                for r in &items {
                    if json_out {
                        println!("{r}");
                    } else {
                        println!(
                            "{}  {}  {}  {}  {} B  {} ms  {}  {}  {}",
                            s(r, "at"),
                            s(r, "status"),
                            s(r, "method"),
                            s(r, "path"),
                            s(r, "bytes"),
                            s(r, "duration_ms"),
                            s(r, "client"),
                            s(r, "node"),
                            s(r, "user_agent")
                        );
                    }
                }
                cursor = items.last().and_then(|r| r["id"].as_i64()).unwrap_or(cursor);
                // A full page: there is more now.
                if items.len() as u32 == limit {
                    continue;
                }
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        ClientCommand::Events { limit, follow, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let page = c.call(Method::GET, &format!("/v1/events?limit={limit}"), None, true).await?;
            // The page is newest first; print it oldest first.
            let mut trail = page["items"].as_array().cloned().unwrap_or_default();
            trail.reverse();
            for e in &trail {
                print_event(e, json_out);
            }
            if follow {
                // With no event yet, every event to come is after 0.
                let after = trail.last().and_then(|e| e["id"].as_i64()).unwrap_or(0);
                follow_events(&c, after, json_out).await?;
            }
        }
        ClientCommand::Assets { cmd, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            match cmd {
                AssetsCmd::Upload { account, asset, dir } => {
                    let v = upload(&c, &account, &asset, &dir, json_out).await?;
                    if json_out {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    }
                }
                AssetsCmd::List { account } => {
                    let v = c.call(Method::GET, &format!("/v1/accounts/{account}/assets"), None, false).await?;
                    if json_out {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        let rows = v["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| vec![s(a, "name"), s(a, "files"), s(a, "bytes")])
                            .collect();
                        table(&["asset", "files", "bytes"], rows);
                    }
                }
                AssetsCmd::Delete { account, asset } => {
                    c.call(Method::DELETE, &format!("/v1/accounts/{account}/assets/{asset}"), None, false).await?;
                    if !json_out {
                        println!("asset {asset} of {account} deleted");
                    }
                }
            }
        }
        ClientCommand::OriginTypes { cmd, conn } => {
            let json_out = conn.json;
            let c = Client::new(conn)?;
            let v = match cmd {
                OriginTypesCmd::List => c.call(Method::GET, "/v1/origin-types", None, true).await?,
                OriginTypesCmd::Show { name } => {
                    c.call(Method::GET, &format!("/v1/origin-types/{name}"), None, true).await?
                }
                OriginTypesCmd::Create {
                    name,
                    node_capacity_mbps,
                    sla_increment_mbps,
                    trial_cap_mbps,
                    payg_cap_mbps,
                } => {
                    let mut body = opt_mbps(&[
                        ("node_capacity_mbps", Some(node_capacity_mbps)),
                        ("sla_increment_mbps", sla_increment_mbps),
                        ("trial_cap_mbps", trial_cap_mbps),
                        ("payg_cap_mbps", payg_cap_mbps),
                    ]);
                    body["name"] = json!(name);
                    c.call(Method::POST, "/v1/origin-types", Some(body), true).await?
                }
                OriginTypesCmd::Update {
                    name,
                    node_capacity_mbps,
                    sla_increment_mbps,
                    trial_cap_mbps,
                    payg_cap_mbps,
                } => {
                    let body = opt_mbps(&[
                        ("node_capacity_mbps", node_capacity_mbps),
                        ("sla_increment_mbps", sla_increment_mbps),
                        ("trial_cap_mbps", trial_cap_mbps),
                        ("payg_cap_mbps", payg_cap_mbps),
                    ]);
                    c.call(Method::PATCH, &format!("/v1/origin-types/{name}"), Some(body), true).await?
                }
                OriginTypesCmd::AddImage { name, version, command, args } => {
                    let body = json!({"version": version, "command": command, "args": args});
                    let op = c.call(Method::POST, &format!("/v1/origin-types/{name}/images"), Some(body), true).await?;
                    if !json_out {
                        print_operation(&op);
                    }
                    op
                }
            };
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if v.get("kind").is_none() {
                let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_else(|| vec![v.clone()]);
                let rows = items
                    .iter()
                    .map(|t| {
                        vec![
                            s(t, "name"),
                            s(t, "node_capacity_mbps"),
                            s(t, "sla_increment_mbps"),
                            s(t, "trial_cap_mbps"),
                            s(t, "payg_cap_mbps"),
                            s(t, "current_image"),
                        ]
                    })
                    .collect();
                table(&["type", "node mbps", "sla step", "trial cap", "payg cap", "image"], rows);
            }
        }
    }
    Ok(())
}

/// Every file under `dir`, as (path relative to it with `/` separators, full path,
/// size); `dir` itself when it is a file (a `jit` asset's MP4), by its name.
fn files_under(dir: &std::path::Path) -> Result<Vec<(String, std::path::PathBuf, u64)>, Failure> {
    let meta = std::fs::metadata(dir).map_err(|e| Failure::Transport(format!("{}: {e}", dir.display())))?;
    if meta.is_file() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(name, dir.to_path_buf(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Failure::Transport(format!("{}: {e}", d.display())))?;
        for e in entries {
            let e = e.map_err(|e| Failure::Transport(e.to_string()))?;
            let p = e.path();
            let meta = e.metadata().map_err(|e| Failure::Transport(e.to_string()))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, p, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Uploads every file under `dir`, streamed from disk, with a progress bar in bytes.
async fn upload(c: &Client, account: &str, asset: &str, dir: &std::path::Path, quiet: bool) -> Result<Value, Failure> {
    let files = files_under(dir)?;
    if files.is_empty() {
        return Err(Failure::Transport(format!("{} holds no files", dir.display())));
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut uploaded = Vec::new();
    for (rel, path, _) in &files {
        bar.set_message(rel.clone());
        let file =
            tokio::fs::File::open(path).await.map_err(|e| Failure::Transport(format!("{}: {e}", path.display())))?;
        let progress = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
            if let Ok(b) = chunk {
                progress.inc(b.len() as u64);
            }
        });
        let url = format!("{}/v1/accounts/{account}/assets/{asset}/{rel}", c.conn.admin_url.trim_end_matches('/'));
        let mut req = c.http.put(&url).body(reqwest::Body::wrap_stream(stream)).timeout(Duration::from_secs(3600));
        if let Some(t) = c.conn.api_key.as_ref().or(c.conn.operator_token.as_ref()) {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bar.abandon();
            return Err(Failure::Problem(v, status));
        }
        uploaded.push(v);
    }
    bar.finish_with_message(format!("{} files", files.len()));
    let base =
        uploaded.first().and_then(|u| u["url"].as_str()).map(|u| u.trim_end_matches(files[0].0.as_str()).to_owned());
    if !quiet {
        println!("uploaded {} files ({total} bytes) as {account}/{asset}", files.len());
        if let Some(b) = &base {
            println!(
                "served at {b}<file>, e.g. {b}{}",
                files
                    .iter()
                    .map(|f| f.0.as_str())
                    .find(|f| f.ends_with(".m3u8") || f.ends_with(".mpd"))
                    .unwrap_or(&files[0].0)
            );
        }
    }
    Ok(json!({"account": account, "asset": asset, "files": uploaded.len(), "bytes": total, "base_url": base}))
}

/// Runs a client command; problems print readably and exit 1, transport errors 2.
pub async fn run(cmd: ClientCommand) -> ExitCode {
    match execute(cmd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Problem(p, status)) => {
            if p.get("kind").is_some() && p.get("state").is_some() {
                eprintln!("operation {} failed: {}", s(&p, "id"), s(&p, "last_error"));
            } else if p.get("title").is_some() {
                let field =
                    p.get("field").and_then(Value::as_str).map(|f| format!(" (field: {f})")).unwrap_or_default();
                eprintln!("error {}: {}: {}{field}", status.as_u16(), s(&p, "title"), s(&p, "detail"));
            } else {
                eprintln!("error {}: {p}", status.as_u16());
            }
            ExitCode::from(1)
        }
        Err(Failure::Transport(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
