//! The routing table routers serve from: account → ready nodes, read from the
//! store, versioned so a router never lets an older table replace a newer one, and
//! published when it changes — on Redis as a notice (its version and digest
//! only: the table carries playback keys and certificates' private keys, and
//! Redis is no place for them), on which routers fetch it from admin, and on
//! `GET /v1/routing/stream` for routers without Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How often the table is read while someone listens for changes.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The tables this admin hands out, newest last.
pub struct Routing {
    latest: watch::Sender<Arc<RoutingTable>>,
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

    /// The table as the store has it now. The version is taken before the read, so
    /// a table read later always carries the larger version.
    pub async fn snapshot(&self, store: &Store, sealer: &Sealer, ca: &NodeCa) -> Result<RoutingTable, StoreError> {
        let version = self.next_version();
        let mut t = table(store.routes().await?, sealer, Some(ca.generation()));
        t.version = version;
        Ok(t)
    }

    /// Follows the latest published table (see [`Routing::publish`]).
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.latest.subscribe()
    }

    /// Cancelled at shutdown.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Reads the table every `every` while anyone listens (a stream here, or
    /// routers on Redis) and publishes it whenever its content changes, until
    /// `shutdown`; then ends every stream.
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
            let snapshot = self.snapshot(&store, &sealer, &ca).await;
            let metrics = self.metrics.as_ref();
            if let Some(m) = metrics {
                m.routing_build_seconds.observe(started.elapsed().as_secs_f64());
            }
            match snapshot {
                Ok(t) if t.digest != last => {
                    if let Some(m) = metrics {
                        m.routing_published.inc();
                        m.routing_accounts.set(i64::try_from(t.accounts.len()).unwrap_or(i64::MAX));
                        let bytes = serde_json::to_vec(&t).map_or(0, |b| b.len());
                        m.routing_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    }
                    // Sent again next time if Redis did not take it, so routers
                    // catch up when Redis returns.
                    let notice = serde_json::json!({"version": t.version, "digest": t.digest}).to_string();
                    let delivered = !bus.is_shared() || bus.publish(ROUTING, notice).await;
                    if delivered {
                        last.clone_from(&t.digest);
                    }
                    self.latest.send_replace(Arc::new(t));
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
