//! The routing table routers serve from: account → ready nodes, read from the
//! store, versioned so a router never lets an older table replace a newer one, and
//! published when it changes — on Redis as a notice (its version and digest
//! only: the table carries playback keys and certificates' private keys, and
//! Redis is no place for them), on which routers fetch it from admin, and on
//! `GET /v1/routing/stream` for routers without Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwater_protocol::{CustomDomain, Route, RouteNode, RoutingTable};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, ROUTING};
use crate::control::signing::{domain_key_context, open_rule, sealed_rule};
use crate::node_ca::NodeCa;
use crate::sealed::Sealer;
use crate::store::{RouteRow, Store, StoreError};

/// How often the routing stamp is read while someone listens for changes (the
/// table itself only when the stamp moved).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// A table as handed out, with its JSON line (`/v1/routing/stream` sends it as
/// is, to every router that follows it, serialised once).
#[derive(Debug, Default)]
pub struct Published {
    pub table: RoutingTable,
    /// The table's JSON and a newline.
    pub line: bytes::Bytes,
}

impl Published {
    fn new(table: RoutingTable) -> Self {
        let mut line = serde_json::to_vec(&table).unwrap_or_default();
        line.push(b'\n');
        Self { table, line: line.into() }
    }
}

/// The last table read, and what it was read at: while neither the store's
/// routing stamp nor the node CA's generation moved, it is the current table.
struct Built {
    stamp: i64,
    node_ca: String,
    published: Arc<Published>,
}

/// The tables this admin hands out, newest last.
pub struct Routing {
    latest: watch::Sender<Arc<Published>>,
    built: Mutex<Option<Built>>,
    /// The last version handed out.
    version: AtomicU64,
    /// Cancelled when admin shuts down, which ends every stream.
    closed: CancellationToken,
    /// Where each read's time and each published table's size go (`/metrics`).
    metrics: Option<crate::control::ControlMetrics>,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(Arc::default()),
            built: Mutex::new(None),
            version: AtomicU64::new(0),
            closed: CancellationToken::new(),
            metrics: None,
        }
    }
}

impl Routing {
    /// Tables whose reads and publications are counted in `metrics`.
    pub fn with_metrics(metrics: crate::control::ControlMetrics) -> Self {
        Self { metrics: Some(metrics), ..Self::default() }
    }
}

/// The table for `rows`, without a version yet; its digest is taken with the
/// playback keys sealed, then `sealer` opens them for routers.
pub fn table(rows: Vec<RouteRow>, sealer: &Sealer, node_ca: Option<String>) -> RoutingTable {
    let mut table = RoutingTable { node_ca, ..RoutingTable::default() };
    for r in rows {
        let route = table.accounts.entry(r.name).or_insert_with(|| Route {
            active: r.state != crate::states::AccountState::Deactivated,
            ip_allow: r.ip_allow.0.clone(),
            allow_origins: r.allow_origins.0.clone(),
            nodes: Vec::new(),
            playback: sealed_rule(r.playback_required, &r.playback_keys.0),
            cdn_secrets: r.cdn_secrets.0.iter().map(|c| c.sha256.clone()).collect(),
            // The key stays sealed until the digest is taken.
            custom_domain: r.custom_certificate.as_ref().map(|c| CustomDomain {
                name: c.0.name.clone(),
                certificate: c.0.certificate.clone(),
                private_key: c.0.key_sealed.clone(),
            }),
        });
        if let (Some(id), Some(address)) = (r.node_id, r.address) {
            route.nodes.push(RouteNode { id, address, tls_address: r.tls_address });
        }
    }
    let mut digest = Sha256::new();
    digest.update(serde_json::to_vec(&table.accounts).unwrap_or_default());
    digest.update(table.node_ca.as_deref().unwrap_or_default());
    let digest = digest.finalize();
    table.digest = hex::encode(&digest[..16]);
    for (name, route) in &mut table.accounts {
        if let Some(rule) = route.playback.as_mut() {
            open_rule(name, rule, sealer);
        }
        if let Some(d) = route.custom_domain.as_mut() {
            match sealer.open(&d.private_key, &domain_key_context(name, &d.name)) {
                Some(key) => d.private_key = key.to_string(),
                None => {
                    tracing::error!(account = %name, "a custom domain's key does not open under this master key");
                    route.custom_domain = None;
                }
            }
        }
    }
    table
}

impl Routing {
    /// A version newer than every one handed out before: the wall clock in ms, or
    /// one more than the last when the clock has not moved on.
    fn next_version(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let prev = self.version.fetch_max(now, Ordering::SeqCst);
        if prev >= now { self.version.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
    }

    /// The table as the store has it now: the last one read while the store's
    /// routing stamp and the node CA's generation are what they were then (one
    /// read of the stamp), else read again. The version is taken before the
    /// read, so a table read later always carries the larger version.
    pub async fn current(
        &self,
        store: &Store,
        sealer: &Arc<Sealer>,
        ca: &NodeCa,
    ) -> Result<Arc<Published>, StoreError> {
        let stamp = store.routing_stamp().await?;
        let node_ca = ca.generation();
        if let Some(b) = self.built.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && b.stamp == stamp
            && b.node_ca == node_ca
        {
            return Ok(b.published.clone());
        }
        let started = std::time::Instant::now();
        let version = self.next_version();
        let rows = store.routes().await?;
        // Digesting, opening and serialising a large table takes a while (10,000
        // accounts: 90-300 ms with the read), off the workers that answer
        // heartbeats and the API.
        let (sealer, generation) = (sealer.clone(), node_ca.clone());
        let built = tokio::task::spawn_blocking(move || {
            let mut t = table(rows, &sealer, Some(generation));
            t.version = version;
            Arc::new(Published::new(t))
        });
        let published = match built.await {
            Ok(p) => p,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => return Err(StoreError::InvalidState("admin is shutting down".into())),
            },
        };
        if let Some(m) = self.metrics.as_ref() {
            m.routing_build_seconds.observe(started.elapsed().as_secs_f64());
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        // Two reads at once: the later one (the larger version) stays.
        if built.as_ref().is_none_or(|b| b.published.table.version < version) {
            *built = Some(Built { stamp, node_ca, published: published.clone() });
        }
        Ok(published)
    }

    /// Follows the latest published table (see [`Routing::publish`]).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.latest.subscribe()
    }

    /// Cancelled at shutdown.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Reads the routing stamp every `every` while anyone listens (a stream
    /// here, or routers on Redis), the table when the stamp moved, and publishes
    /// the table whenever its content changes, until `shutdown`; then ends
    /// every stream.
    pub async fn publish(
        self: Arc<Self>,
        store: Store,
        bus: Bus,
        sealer: Arc<Sealer>,
        ca: Arc<NodeCa>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut last = String::new();
        let mut tick = crate::control::every::Every::new(every, &shutdown);
        while tick.next().await {
            if !bus.is_shared() && self.latest.receiver_count() == 0 {
                last.clear();
                continue;
            }
            let started = std::time::Instant::now();
            let current = self.current(&store, &sealer, &ca).await;
            // A table that takes long to read (10,000 accounts: 90-300 ms) is read
            // at most a quarter of the time, so changes coming in all the time
            // do not keep a core reading it.
            let spent = started.elapsed();
            if spent > every / 4 {
                tick.delay(spent * 3);
            }
            match current {
                Ok(p) if p.table.digest != last => {
                    if let Some(m) = self.metrics.as_ref() {
                        m.routing_published.inc();
                        m.routing_accounts.set(i64::try_from(p.table.accounts.len()).unwrap_or(i64::MAX));
                        m.routing_bytes.set(i64::try_from(p.line.len()).unwrap_or(i64::MAX));
                    }
                    // Sent again next time if Redis did not take it, so routers
                    // catch up when Redis returns.
                    let notice = serde_json::json!({"version": p.table.version, "digest": p.table.digest}).to_string();
                    let delivered = !bus.is_shared() || bus.publish(ROUTING, notice).await;
                    if delivered {
                        last.clone_from(&p.table.digest);
                    }
                    self.latest.send_replace(p);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "routing table"),
            }
        }
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow() {
        let r = Routing::default();
        let mut prev = 0;
        for _ in 0..10_000 {
            let v = r.next_version();
            assert!(v > prev, "{v} after {prev}");
            prev = v;
        }
    }
}
