//! The router's certificate of admin's node CA (`router.headwater`): asked for
//! with the router token and a CSR of a key made here, renewed after two thirds
//! of its life or at once when the routing table names a new generation (a CA
//! rotated or retired). With it the router reaches nodes that serve mutual TLS
//! over it, verifying each node's certificate names the node it asked for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use headwater_protocol::{CertificateRequest, IssuedCertificate};
use headwater_serve::mtls::{Credentials, Issued, Peer};
use tokio_util::sync::CancellationToken;

use crate::table::{AdminApi, Shared};

/// Asks admin for a certificate and installs it.
pub async fn obtain(
    http: &reqwest::Client,
    admin: &AdminApi,
    name: &str,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let csr = credentials.csr(Peer::Router)?;
    let res = http
        .post(admin.url("/v1/routing/certificate"))
        .bearer_auth(&admin.token)
        .json(&CertificateRequest { csr, name: Some(name.to_owned()) })
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "admin answered {}", res.status());
    let IssuedCertificate { certificate, ca, generation, not_after_ms, .. } = res.json().await?;
    credentials.install(&Issued { certificate, ca, generation, not_after_ms }).map_err(anyhow::Error::msg)
}

/// Renews the certificate whenever it is due (checked every second) until
/// `stop`; the first one it gets turns mutual TLS to nodes on.
pub async fn keep(
    table: Arc<Shared>,
    admin: AdminApi,
    name: String,
    credentials: Arc<Credentials>,
    stop: CancellationToken,
) {
    let http = match admin.client(|b| b.timeout(Duration::from_secs(5))) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "certificate client");
            return;
        }
    };
    let mut failing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !credentials.due(table.get().node_ca.as_deref()) {
            continue;
        }
        match obtain(&http, &admin, &name, &credentials).await {
            Ok(()) => {
                failing = false;
                table.certificates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation = ?credentials.generation(), "router certificate of the node CA installed");
                if !table.mtls.swap(true, Ordering::Relaxed) {
                    table.refresh();
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "no router certificate from admin; trying again every second");
            }
            Err(_) => {}
        }
    }
}
