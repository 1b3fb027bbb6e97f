//! The health monitor's outside view: admin fetches every live node's test content
//! itself (as a player would) and records each result in `probes`. An account's
//! availability is the share of these probes of its pool's nodes that succeeded
//! over a window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Store;

/// The test file admin fetches from each node.
pub use headwater_protocol::PROBE_PATH;

pub struct Prober {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub http: reqwest::Client,
    pub interval: Duration,
}

impl Prober {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut every = crate::control::every::Every::new(self.interval, &shutdown);
        while every.next().await {
            if let Err(e) = self.probe_all().await {
                tracing::warn!(error = %e, "probing nodes");
            }
        }
    }

    /// Probes every node that should be serving, concurrently.
    pub async fn probe_all(&self) -> Result<(), crate::store::StoreError> {
        let targets = self.store.probe_targets().await?;
        let probes = targets.into_iter().map(|(node, address)| async move {
            let started = Instant::now();
            let res =
                self.http.get(format!("http://{address}{PROBE_PATH}")).timeout(Duration::from_secs(2)).send().await;
            let (ok, detail) = match res {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) if !b.is_empty() => (true, None),
                    Ok(_) => (false, Some("empty body".to_owned())),
                    Err(e) => (false, Some(e.to_string())),
                },
                Ok(r) => (false, Some(format!("status {}", r.status()))),
                Err(e) => (false, Some(e.to_string())),
            };
            let latency = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
            (node, ok, latency, detail)
        });
        let results = futures_util::future::join_all(probes).await;
        let now = self.clock.now_ms();
        for (node, ok, latency, detail) in results {
            self.store.record_probe(node, "admin", ok, latency, detail.as_deref(), now).await?;
        }
        Ok(())
    }
}
