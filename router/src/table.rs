//! The routing table a router serves from: fetched from admin (`GET /v1/routing`,
//! polled with `If-None-Match` so an unchanged table costs a 304), kept when admin
//! is unreachable, replaced only by a newer version.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use headwater_protocol::RoutingTable;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

/// An account as the router serves it.
#[derive(Debug, Clone)]
pub struct Account {
    pub active: bool,
    pub allow: Vec<IpNet>,
    /// `host:port` of each ready node.
    pub nodes: Vec<String>,
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
    pub accounts: HashMap<String, Account>,
}

impl From<RoutingTable> for Table {
    fn from(t: RoutingTable) -> Self {
        let accounts = t
            .accounts
            .into_iter()
            .map(|(name, r)| {
                let allow = r.ip_allow.iter().filter_map(|c| c.parse().ok()).collect();
                (name, Account { active: r.active, allow, nodes: r.nodes.into_iter().map(|n| n.address).collect() })
            })
            .collect();
        Table { version: t.version, accounts }
    }
}

/// The table in force, shared by every request.
#[derive(Default)]
pub struct Shared(RwLock<Arc<Table>>);

impl Shared {
    pub fn get(&self) -> Arc<Table> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set(&self, t: Table) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(t);
    }
}

/// Polls admin every `every` until `stop`; errors keep the last table.
pub async fn follow(table: Arc<Shared>, admin_url: String, token: String, every: Duration, stop: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "routing table client");
            return;
        }
    };
    let url = format!("{}/v1/routing", admin_url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = table.get().version;
        let res = http.get(&url).bearer_auth(&token).header("if-none-match", format!("\"{current}\"")).send().await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {}
            Ok(r) if r.status().is_success() => match r.json::<RoutingTable>().await {
                Ok(t) if t.version != current => {
                    tracing::info!(version = t.version, accounts = t.accounts.len(), "routing table updated");
                    table.set(t.into());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "routing table"),
            },
            Ok(r) => tracing::warn!(status = %r.status(), "routing table"),
            Err(e) => tracing::warn!(error = %e, "routing table: admin unreachable; serving the last table"),
        }
    }
}

/// Follows the routing table admin publishes on Redis (`{prefix}:routing`), so a
/// change reaches the router at once; polling admin stays as the snapshot on start
/// and the fallback. Reconnects and re-subscribes by itself.
pub async fn listen(table: Arc<Shared>, redis_url: String, prefix: String, stop: CancellationToken) {
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
        match serde_json::from_slice::<RoutingTable>(&payload) {
            Ok(t) if t.version != table.get().version => {
                tracing::info!(version = t.version, "routing table pushed");
                table.set(t.into());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "routing table from Redis"),
        }
    }
}
