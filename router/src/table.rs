//! The routing table a router serves from, kept current from admin: over Redis
//! (`listen`, with `follow` polling admin for the snapshot and as a fallback) or,
//! without Redis, over admin's routing stream (`stream`). Whatever the path, a
//! table replaces the one in force only when its version is newer, and the last
//! table stays in force while admin or Redis is unreachable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use headwater_protocol::RoutingTable;
use ipnet::IpNet;
use tokio::sync::Notify;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

/// An account as the router serves it.
#[derive(Debug, Clone)]
pub struct Account {
    pub active: bool,
    pub allow: Vec<IpNet>,
    /// Web origins whose pages may read the content (CORS); empty: any.
    pub allow_origins: Vec<String>,
    /// Where each ready node is reached: `http://host:port`, or
    /// `https://host:port` (mutual TLS, when both sides have a certificate of
    /// the node CA).
    pub nodes: Vec<String>,
    /// Signed playback: whether a token is required, and the keys.
    pub playback: Option<headwater_protocol::Playback>,
    /// Hashes of the secrets the account's CDN sends (none: no CDN rule).
    pub cdn_secrets: Vec<String>,
}

impl Account {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Default)]
pub struct Table {
    /// 0 until the first table arrives.
    pub version: u64,
    pub digest: String,
    pub accounts: HashMap<String, Account>,
    /// Every node of the table, by id: what the router probes (see `sightings`).
    pub nodes: std::collections::BTreeMap<uuid::Uuid, String>,
    /// Accounts' own domains: the account, and the certificate served for it.
    pub domains: HashMap<String, (String, Arc<rustls::sign::CertifiedKey>)>,
    /// The node behind each `https://` entry of `nodes`, by its `host:port`:
    /// the name its certificate must carry.
    pub tls_nodes: HashMap<String, uuid::Uuid>,
    /// The plain `host:port` of each entry of `nodes` (redirects send players there).
    pub plain: HashMap<String, String>,
    /// The node behind each entry of `nodes` (access records name it).
    pub ids: HashMap<String, uuid::Uuid>,
    /// The node CA's generation (see `identity`).
    pub node_ca: Option<String>,
}

/// The accounts' own domains of `t` with their certificates; one that does
/// not load (admin checked it, so rarely) is left out and logged.
fn domains(t: &RoutingTable) -> HashMap<String, (String, Arc<rustls::sign::CertifiedKey>)> {
    let mut out = HashMap::new();
    for (account, route) in &t.accounts {
        let Some(d) = &route.custom_domain else { continue };
        match headwater_serve::tls::parse_pair(d.certificate.as_bytes(), d.private_key.as_bytes()) {
            Ok(key) => {
                out.insert(d.name.clone(), (account.clone(), Arc::new(key)));
            }
            Err(why) => tracing::warn!(%account, domain = %d.name, %why, "a custom domain's certificate does not load"),
        }
    }
    out
}

impl Table {
    /// The router's table of admin's: nodes reached over mutual TLS where they
    /// serve it and `mtls` (the router holds a certificate), plain otherwise.
    fn of(t: RoutingTable, mtls: bool) -> Self {
        let nodes = t.accounts.values().flat_map(|r| r.nodes.iter().map(|n| (n.id, n.address.clone()))).collect();
        let domains = domains(&t);
        let (mut tls_nodes, mut plain, mut ids) = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut upstream = |n: &headwater_protocol::RouteNode| -> String {
            let url = match (&n.tls_address, mtls) {
                (Some(tls), true) => {
                    tls_nodes.insert(tls.clone(), n.id);
                    format!("https://{tls}")
                }
                _ => format!("http://{}", n.address),
            };
            plain.insert(url.clone(), n.address.clone());
            ids.insert(url.clone(), n.id);
            url
        };
        let accounts = t
            .accounts
            .into_iter()
            .map(|(name, r)| {
                let allow = r.ip_allow.iter().filter_map(|c| c.parse().ok()).collect();
                (
                    name,
                    Account {
                        active: r.active,
                        allow,
                        allow_origins: r.allow_origins,
                        nodes: r.nodes.iter().map(&mut upstream).collect(),
                        playback: r.playback,
                        cdn_secrets: r.cdn_secrets,
                    },
                )
            })
            .collect();
        Table {
            version: t.version,
            digest: t.digest,
            accounts,
            nodes,
            domains,
            tls_nodes,
            plain,
            ids,
            node_ca: t.node_ca,
        }
    }
}

/// The table in force, shared by every request.
#[derive(Default)]
pub struct Shared {
    table: RwLock<Arc<Table>>,
    /// Admin's table in force, kept to build the router's again (`refresh`).
    raw: RwLock<Option<RoutingTable>>,
    /// The router holds a certificate of the node CA: nodes that serve mutual
    /// TLS are reached over it.
    pub mtls: AtomicBool,
    /// Certificates installed so far: each new one starts a new pool of
    /// connections to nodes, so none keeps presenting the one before.
    pub certificates: AtomicU64,
}

impl Shared {
    pub fn get(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `t` in force if it is newer than the table in force; says whether it did.
    pub fn offer(&self, t: RoutingTable, via: &str) -> bool {
        let mut current = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.version <= current.version {
            return false;
        }
        if t.digest != current.digest {
            tracing::info!(version = t.version, accounts = t.accounts.len(), via, "routing table updated");
        }
        *self.raw.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t.clone());
        *current = Arc::new(Table::of(t, self.mtls.load(Ordering::Relaxed)));
        true
    }

    /// Builds the table in force again (mutual TLS turned on).
    pub fn refresh(&self) {
        let mut current = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = self.raw.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            *current = Arc::new(Table::of(t, self.mtls.load(Ordering::Relaxed)));
        }
    }
}

/// Where the router reaches admin: its URL, the CA it trusts for it (`--admin-ca`)
/// and the router token.
#[derive(Clone)]
pub struct AdminApi {
    pub base: String,
    pub ca: Option<String>,
    pub token: String,
}

impl AdminApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    /// A client for admin, trusting `ca` alone when set, with `settings`.
    pub fn client(
        &self,
        settings: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> anyhow::Result<reqwest::Client> {
        Ok(settings(headwater_serve::tls::trusting(reqwest::Client::builder(), self.ca.as_deref())?).build()?)
    }
}

/// Polls admin every `every` until `stop`; errors keep the last table.
/// Polls admin every `every`, and at once when `wake` is told (a notice on
/// Redis), until `stop`; errors keep the last table.
pub async fn follow(table: Arc<Shared>, admin: AdminApi, every: Duration, wake: Arc<Notify>, stop: CancellationToken) {
    let http = match admin.client(|b| b.timeout(Duration::from_secs(5))) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "routing table client");
            return;
        }
    };
    let (url, token) = (admin.url("/v1/routing"), admin.token);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        let current = table.get().digest.clone();
        let res = http.get(&url).bearer_auth(&token).header("if-none-match", format!("\"{current}\"")).send().await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {}
            Ok(r) if r.status().is_success() => match r.json::<RoutingTable>().await {
                Ok(t) => {
                    table.offer(t, "poll");
                }
                Err(e) => tracing::warn!(error = %e, "routing table"),
            },
            Ok(r) => tracing::warn!(status = %r.status(), "routing table"),
            Err(e) => tracing::warn!(error = %e, "routing table: admin unreachable; serving the last table"),
        }
    }
}

/// A stream silent for this long is taken for dead (admin sends a line every 10 s).
const STREAM_IDLE: Duration = Duration::from_secs(30);

/// Follows admin's routing stream (`GET /v1/routing/stream`: the table, then each
/// change, one JSON table per line) until `stop`, reconnecting with a growing pause
/// (up to 5 s) while admin is away. Used when there is no Redis.
pub async fn stream(table: Arc<Shared>, admin: AdminApi, stop: CancellationToken) {
    let http = match admin.client(|b| b.connect_timeout(Duration::from_secs(2))) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "routing stream client");
            return;
        }
    };
    let (url, token) = (admin.url("/v1/routing/stream"), admin.token);
    let mut pause = Duration::from_millis(100);
    loop {
        let connected = std::time::Instant::now();
        let followed = tokio::select! {
            _ = stop.cancelled() => return,
            r = follow_stream(&http, &url, &token, &table) => r,
        };
        // A stream that lasted was a working admin: reconnect quickly.
        if connected.elapsed() > Duration::from_secs(5) {
            pause = Duration::from_millis(100);
        }
        match followed {
            Ok(()) => tracing::warn!("routing stream ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "routing stream: admin unreachable; serving the last table"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One connection to the routing stream, until it ends or fails.
async fn follow_stream(http: &reqwest::Client, url: &str, token: &str, table: &Shared) -> anyhow::Result<()> {
    let res = http.get(url).bearer_auth(token).send().await?.error_for_status()?;
    let body = StreamReader::new(res.bytes_stream().map_err(std::io::Error::other));
    let mut lines = FramedRead::new(body, LinesCodec::new_with_max_length(64 << 20));
    loop {
        let line = match tokio::time::timeout(STREAM_IDLE, lines.next()).await {
            Err(_) => anyhow::bail!("no word from admin for {} s", STREAM_IDLE.as_secs()),
            Ok(None) => return Ok(()),
            Ok(Some(line)) => line?,
        };
        if line.is_empty() {
            continue;
        }
        table.offer(serde_json::from_str(&line)?, "stream");
    }
}

/// Follows the routing table admin publishes on Redis (`{prefix}:routing`), so a
/// change reaches the router at once; polling admin stays as the snapshot on start
/// and the fallback. Reconnects and re-subscribes by itself.
pub async fn listen(table: Arc<Shared>, redis_url: String, prefix: String, wake: Arc<Notify>, stop: CancellationToken) {
    let url = if redis_url.contains("protocol=") {
        redis_url
    } else if redis_url.contains('?') {
        format!("{redis_url}&protocol=resp3")
    } else {
        format!("{redis_url}?protocol=resp3")
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::aio::ConnectionManagerConfig::new().set_push_sender(tx).set_automatic_resubscription();
    let conn = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection_manager_with_config(config).await?;
        conn.subscribe(format!("{prefix}:routing")).await?;
        Ok::<_, redis::RedisError>(conn)
    }
    .await;
    // Held for as long as we listen: dropping it would end the subscription.
    let _conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "subscribing to routing changes on Redis; polling admin only");
            return;
        }
    };
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let payload = match (push.kind, push.data.as_slice()) {
            (redis::PushKind::Message, [_, redis::Value::BulkString(payload)]) => payload.clone(),
            _ => continue,
        };
        // What admin publishes there: which version, not the table (it carries
        // secrets); the follower then fetches it.
        let notice = serde_json::from_slice::<serde_json::Value>(&payload).ok();
        match notice.as_ref().and_then(|n| Some((n["version"].as_u64()?, n["digest"].as_str()?))) {
            Some((version, digest)) => {
                let current = table.get();
                if version > current.version && digest != current.digest {
                    wake.notify_one();
                }
            }
            None => tracing::warn!("a routing notice from Redis that does not parse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(version: u64, digest: &str) -> RoutingTable {
        RoutingTable { version, digest: digest.into(), accounts: Default::default(), node_ca: None }
    }

    #[test]
    fn an_older_table_never_replaces_a_newer_one() {
        let shared = Shared::default();
        assert!(shared.offer(t(10, "a"), "test"));
        assert!(!shared.offer(t(9, "b"), "test"), "an older version is ignored");
        assert!(!shared.offer(t(10, "b"), "test"), "the same version is ignored");
        assert_eq!(shared.get().digest, "a");
        assert!(shared.offer(t(11, "a"), "test"), "a newer version of the same content is taken");
        assert!(shared.offer(t(12, "c"), "test"));
        assert_eq!((shared.get().version, shared.get().digest.as_str()), (12, "c"));
    }
}
