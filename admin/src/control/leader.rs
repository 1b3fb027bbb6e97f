//! Which admin replica runs the control loops. Every replica serves the API and
//! runs operation workers (the queue's leases keep them apart); the reconciler,
//! the warm keeper and the collector act on the whole fleet, so one replica at a
//! time runs them: the one holding the `control` lease in the store. It renews the
//! lease every second; when it dies, the lease expires and another replica takes
//! it within the lease's time to live.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Store;

/// The lease the control loops run under.
pub const CONTROL_LEASE: &str = "control";

pub struct Leader {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Names this replica in the lease.
    pub holder: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often it is renewed (or tried for).
    pub every: Duration,
}

impl Leader {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            holder: format!("admin-{}", uuid::Uuid::now_v7().simple()),
            ttl: Duration::from_secs(5),
            every: Duration::from_secs(1),
        }
    }

    /// Holds (or waits for) the lease until `shutdown`, then gives it up. The
    /// receiver says whether this replica leads now; a store it cannot reach means
    /// it does not.
    pub fn spawn(self, shutdown: CancellationToken) -> (tokio::task::JoinHandle<()>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(5_000);
            let mut every = super::every::Every::new(self.every, &shutdown);
            while every.next().await {
                let leads = match self.store.acquire_lease(CONTROL_LEASE, &self.holder, self.clock.now_ms(), ttl).await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the control lease");
                        false
                    }
                };
                if leads != *tx.borrow() {
                    if leads {
                        tracing::info!(holder = %self.holder, "this replica runs the control loops");
                    } else {
                        tracing::info!(holder = %self.holder, "another replica runs the control loops");
                    }
                    tx.send_replace(leads);
                }
            }
            tx.send_replace(false);
            if let Err(e) = self.store.release_lease(CONTROL_LEASE, &self.holder).await {
                tracing::warn!(error = %e, "releasing the control lease");
            }
        });
        (task, rx)
    }
}
