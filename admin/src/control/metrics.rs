//! What the control loops cost, for `/metrics`: the reconcile pass and the
//! routing table's reads and publications. Made once with the admin's other
//! metrics and handed to the loops; cloning shares the series.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub struct ControlMetrics {
    /// One reconcile pass over every pool, in seconds.
    pub reconcile_seconds: Histogram,
    /// Pools the last pass looked at.
    pub reconcile_pools: IntGauge,
    /// Reading and building the routing table from the store, in seconds.
    pub routing_build_seconds: Histogram,
    /// Tables published because their content changed.
    pub routing_published: IntCounter,
    /// The last published table: accounts, and its size as JSON in bytes.
    pub routing_accounts: IntGauge,
    pub routing_bytes: IntGauge,
}

impl ControlMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let seconds = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )
        };
        Ok(Self {
            reconcile_seconds: seconds("reconcile_pass_seconds", "one reconcile pass over every pool")?,
            reconcile_pools: IntGauge::new("reconcile_pools", "pools the last reconcile pass looked at")?,
            routing_build_seconds: seconds("routing_table_build_seconds", "reading and building the routing table")?,
            routing_published: IntCounter::new("routing_tables_published_total", "routing tables that changed")?,
            routing_accounts: IntGauge::new("routing_table_accounts", "accounts in the last published routing table")?,
            routing_bytes: IntGauge::new("routing_table_bytes", "the last published routing table as JSON, in bytes")?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.reconcile_seconds.clone()))?;
        registry.register(Box::new(self.reconcile_pools.clone()))?;
        registry.register(Box::new(self.routing_build_seconds.clone()))?;
        registry.register(Box::new(self.routing_published.clone()))?;
        registry.register(Box::new(self.routing_accounts.clone()))?;
        registry.register(Box::new(self.routing_bytes.clone()))?;
        Ok(())
    }
}
