//! The router's view of the nodes, for admin's partition rule: every round the
//! router fetches each node's test content (as a player would, from where the
//! players' requests come from) and tells admin which nodes it reached. Admin
//! counts a node a router reached as running whatever it hears itself, so an
//! admin that loses sight of many nodes never replaces what players still reach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use headwater_protocol::{PROBE_PATH, Sightings};
use tokio_util::sync::CancellationToken;

use crate::table::{AdminApi, Shared};

/// The router's name for admin: `name`, else the host name (a pod's name), else
/// a random one.
pub fn router_name(name: Option<&str>) -> String {
    let valid = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let host = std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok());
    match name.map(str::to_owned).or(host).map(|n| n.trim().to_owned()) {
        Some(n) if valid(&n) => n,
        _ => format!("router-{:08x}", rand::random::<u32>()),
    }
}

/// Probes every node of the table each `every` and reports what it reached.
pub async fn report(
    table: Arc<Shared>,
    admin: AdminApi,
    name: String,
    every: Duration,
    source_ip: Option<std::net::IpAddr>,
    stop: CancellationToken,
) {
    let http = match admin.client(|b| b.local_address(source_ip).timeout(every.max(Duration::from_millis(500)))) {
        Ok(h) => h,
        Err(e) => return tracing::error!(error = %e, "the sightings client"),
    };
    let (url, token) = (admin.url("/v1/routing/sightings"), admin.token);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let nodes: BTreeMap<uuid::Uuid, String> = table.get().nodes.clone();
        if nodes.is_empty() {
            continue;
        }
        let probes = nodes.into_iter().map(|(id, address)| {
            let http = http.clone();
            async move {
                let res = http.get(format!("http://{address}{PROBE_PATH}")).send().await;
                res.is_ok_and(|r| r.status().is_success()).then_some(id)
            }
        });
        let reached: Vec<uuid::Uuid> = futures_util::future::join_all(probes).await.into_iter().flatten().collect();
        let body = Sightings { router: name.clone(), reached };
        match http.post(&url).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "admin refused the router's sightings"),
            Err(e) => tracing::debug!(error = %e, "reporting sightings"),
        }
    }
}
