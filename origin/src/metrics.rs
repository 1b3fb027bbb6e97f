//! The node's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub bytes: IntCounterVec,
    /// Time bodies spent waiting for bandwidth.
    pub throttled_seconds: prometheus::Counter,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_bytes: IntGauge,
    /// Packaged manifests and segments served from memory, made, and the
    /// packager's memory (indexes and outputs).
    pub jit_hits: IntCounter,
    pub jit_misses: IntCounter,
    pub jit_bytes: IntGauge,
    pub latency: Histogram,
    pub in_flight: IntGauge,
    /// Access records dropped (the writer's queue full, or admin away too long).
    pub access_records_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("headwater_origin".into()), None)?;
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "requests by account and status"), &["account", "status"])?;
        let bytes = IntCounterVec::new(
            Opts::new("bytes_total", "body bytes sent by account (_probe: test content)"),
            &["account"],
        )?;
        let throttled_seconds =
            prometheus::Counter::new("throttled_seconds_total", "time response bodies waited for bandwidth")?;
        let cache_hits = IntCounter::new("cache_hits_total", "content reads served from memory")?;
        let cache_misses = IntCounter::new("cache_misses_total", "content reads that went to the store")?;
        let cache_bytes = IntGauge::new("cache_bytes", "bytes held in the memory cache")?;
        let jit_hits = IntCounter::new("jit_hits_total", "packaged answers served from memory")?;
        let jit_misses = IntCounter::new("jit_misses_total", "packaged answers made (from the MP4s in the store)")?;
        let jit_bytes = IntGauge::new("jit_cache_bytes", "bytes the packager holds: MP4 indexes and outputs")?;
        let latency = Histogram::with_opts(
            HistogramOpts::new("response_start_seconds", "time from request to response headers")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let in_flight = IntGauge::new("responses_in_flight", "responses being sent")?;
        let access_records_dropped = IntCounter::new(
            "access_records_dropped_total",
            "access records dropped (queue full, or admin away too long)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(throttled_seconds.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(jit_hits.clone()))?;
        registry.register(Box::new(jit_misses.clone()))?;
        registry.register(Box::new(jit_bytes.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(access_records_dropped.clone()))?;
        Ok(Self {
            registry,
            requests,
            bytes,
            throttled_seconds,
            cache_hits,
            cache_misses,
            cache_bytes,
            jit_hits,
            jit_misses,
            jit_bytes,
            latency,
            in_flight,
            access_records_dropped,
        })
    }
}
