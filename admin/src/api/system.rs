//! Health, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::AppState;

/// The admin's Prometheus metrics.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub rate_limited: IntCounter,
    /// Share of admin's probes of each account's nodes that succeeded (5 minutes).
    pub availability: prometheus::GaugeVec,
    /// The fleet as the store has it, at each scrape (see `FleetGauges`).
    pub pool_desired: IntGaugeVec,
    pub pool_ready: IntGaugeVec,
    pub sla_mbps: IntGaugeVec,
    pub ready_capacity_mbps: IntGaugeVec,
    pub upgrade_halted: IntGaugeVec,
    /// The control loops' own cost (see `ControlMetrics`).
    pub control: crate::control::ControlMetrics,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("headwater_admin".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "API requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "API request handling time")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["method", "route"],
        )?;
        let rate_limited = IntCounter::new("rate_limited_total", "requests refused with 429")?;
        let availability = prometheus::GaugeVec::new(
            Opts::new("account_availability", "share of successful probes of the account's nodes over 5 minutes"),
            &["account"],
        )?;
        let gauge = |name: &str, help: &str, label: &str| IntGaugeVec::new(Opts::new(name, help), &[label]);
        let pool_desired = gauge("pool_nodes_desired", "nodes a live pool should have", "pool")?;
        let pool_ready = gauge("pool_nodes_ready", "ready nodes of a live pool", "pool")?;
        let sla_mbps = gauge("account_sla_mbps", "an SLA account's bandwidth SLA in Mbit/s", "account")?;
        let ready_capacity_mbps = gauge(
            "account_ready_capacity_mbps",
            "bandwidth of an SLA account's ready nodes in Mbit/s (below its SLA: the SLA is missed)",
            "account",
        )?;
        let upgrade_halted =
            gauge("upgrade_halted", "1 when the newest upgrade of an origin type halted (failed)", "origin_type")?;
        for g in [&pool_desired, &pool_ready, &sla_mbps, &ready_capacity_mbps, &upgrade_halted] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(availability.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        let control = crate::control::ControlMetrics::new()?;
        control.register(&registry)?;
        Ok(Self {
            registry,
            requests,
            latency,
            rate_limited,
            availability,
            pool_desired,
            pool_ready,
            sla_mbps,
            ready_capacity_mbps,
            upgrade_halted,
            control,
        })
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers, every migration is applied, and the bus answers.
#[utoipa::path(get, path = "/readyz", tag = "system", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if let Err(e) = s.bus.ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("bus unreachable: {e}\n"));
    }
    match s.store.ready().await {
        Ok(true) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "migrations pending\n".to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {e}\n")),
    }
}

/// Prometheus text exposition, for the metrics token (or the operator token):
/// it names every account.
#[utoipa::path(get, path = "/metrics", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> axum::response::Response {
    let settings = &s.settings;
    if !headwater_serve::bearer_is(&headers, &settings.metrics_token)
        && !headwater_serve::bearer_is(&headers, &settings.operator_token)
    {
        return super::problem::ApiError::Unauthorized("metrics need the metrics or the operator token")
            .into_response();
    }
    let since = s.clock.now_ms() - super::accounts::AVAILABILITY_WINDOW_MS;
    match s.store.availabilities(since).await {
        Ok(rows) => {
            s.metrics.availability.reset();
            for (account, share) in rows {
                s.metrics.availability.with_label_values(&[account.as_str()]).set(share);
            }
        }
        Err(e) => tracing::warn!(error = %e, "availability for metrics"),
    }
    match s.store.fleet_gauges().await {
        Ok(f) => {
            let m = &s.metrics;
            for g in [&m.pool_desired, &m.pool_ready, &m.sla_mbps, &m.ready_capacity_mbps, &m.upgrade_halted] {
                g.reset();
            }
            for (pool, desired, ready) in f.pools {
                let pool = pool.to_string();
                m.pool_desired.with_label_values(&[pool.as_str()]).set(desired);
                m.pool_ready.with_label_values(&[pool.as_str()]).set(ready);
            }
            for (account, sla, capacity) in f.slas {
                m.sla_mbps.with_label_values(&[account.as_str()]).set(sla);
                m.ready_capacity_mbps.with_label_values(&[account.as_str()]).set(capacity);
            }
            for (origin_type, halted) in f.upgrades {
                m.upgrade_halted.with_label_values(&[origin_type.as_str()]).set(i64::from(halted));
            }
        }
        Err(e) => tracing::warn!(error = %e, "fleet gauges for metrics"),
    }
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&s.metrics.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string().into_bytes())
            .into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}
