//! Admin's node CA (DESIGN.md §4, flow 10): it issues nodes and routers
//! short-lived certificates from their CSRs, naming them itself (`{node
//! id}.node.headwater`, `router.headwater`), for mutual TLS between admin,
//! routers and nodes.
//!
//! Its CAs live in `node_cas`, keys sealed under the master key. Every CA not
//! retired is trusted; the newest whose `activates_at` has come signs. A
//! rotation's new CA is trusted at once but signs only a stage later (default
//! 10 s), so every node and router trusts it before any peer presents a
//! certificate of it; then holders renew onto it, and the old CA can be
//! retired once nobody holds one of its certificates. The set has a
//! *generation* (a digest of the signing CA and the bundle): heartbeat answers
//! and the routing table carry it, and a node or router whose certificate came
//! with another generation renews at once. Every replica re-reads the table
//! every few seconds, so a rotation on one is seen by all.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use headwater_serve::mtls::{Peer, Trust};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{Clock, UnixMs};
use crate::sealed::Sealer;
use crate::store::{NodeCaRow, Store};

/// How long a CA itself is valid: rotations are the operator's, well before.
const CA_DAYS: i64 = 5 * 365;
/// Issued certificates start this much before now, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);
/// How often every replica re-reads the CAs.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

fn key_context(id: Uuid) -> String {
    format!("node_ca:{id}")
}

/// The CAs as this admin uses them now.
struct CaSet {
    /// Every CA not retired, oldest first, and the ids in that order.
    ids: Vec<Uuid>,
    active: Uuid,
    issuer: Issuer<'static, KeyPair>,
    bundle: String,
    generation: String,
}

/// What a certificate was issued as.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub pem: String,
    pub ca: Uuid,
    pub not_after: UnixMs,
    pub bundle: String,
    pub generation: String,
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub struct NodeCa {
    set: RwLock<Arc<CaSet>>,
    /// The CAs trusted now, for client certificates on admin's TLS listener
    /// and on every request they authenticate.
    pub trust: Arc<Trust>,
    /// How long an issued certificate is valid.
    pub lifetime: Duration,
    /// How long a rotation's new CA is trusted before it signs.
    pub stage: Duration,
    clock: Arc<dyn Clock>,
    /// One refresh at a time: the set and the trust are swapped together, so a
    /// stale read never lands after a fresh one.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCa").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

/// A new CA signing from `activates_at`: its row (key sealed) ready to insert.
fn make_ca(sealer: &Sealer, now: UnixMs, activates_at: UnixMs) -> anyhow::Result<NodeCaRow> {
    let id = Uuid::now_v7();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("Headwater node CA {}", id.simple()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at(now) - BACKDATE;
    params.not_after = at(now) + time::Duration::days(CA_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(NodeCaRow {
        id,
        cert_pem: cert.pem(),
        key_sealed: sealer.seal(&key.serialize_pem(), &key_context(id))?,
        created_at: now,
        activates_at,
        retired_at: None,
    })
}

fn at(ms: UnixMs) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The CA that signs at `now` among `rows`: the newest not retired whose
/// `activates_at` has come (the oldest not retired if none has: a clock moved back).
pub(crate) fn signing(rows: &[NodeCaRow], now: UnixMs) -> Option<&NodeCaRow> {
    let mut live = rows.iter().filter(|r| r.retired_at.is_none());
    let first = live.clone().next();
    live.rfind(|r| r.activates_at <= now).or(first)
}

fn build(rows: &[NodeCaRow], sealer: &Sealer, now: UnixMs) -> anyhow::Result<CaSet> {
    let live: Vec<&NodeCaRow> = rows.iter().filter(|r| r.retired_at.is_none()).collect();
    let active = signing(rows, now).context("no node CA")?;
    let key = sealer
        .open(&active.key_sealed, &key_context(active.id))
        .context("the node CA's key does not open under this master key")?;
    let issuer = Issuer::from_ca_cert_pem(&active.cert_pem, KeyPair::from_pem(&key)?)?;
    let bundle: String = live.iter().map(|r| r.cert_pem.as_str()).collect();
    let mut digest = Sha256::new();
    digest.update(active.id.as_bytes());
    digest.update(bundle.as_bytes());
    Ok(CaSet {
        ids: live.iter().map(|r| r.id).collect(),
        active: active.id,
        issuer,
        generation: hex::encode(&digest.finalize()[..8]),
        bundle,
    })
}

impl NodeCa {
    /// The node CA of the store, made the first time (by whichever replica gets there first).
    pub async fn load(
        store: &Store,
        sealer: &Sealer,
        lifetime: Duration,
        stage: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        let now = clock.now_ms();
        let mut rows = store.node_cas().await?;
        if rows.iter().all(|r| r.retired_at.is_some()) {
            let row = make_ca(sealer, now, now)?;
            store.insert_node_ca(&row, "admin").await?;
            tracing::info!(ca = %row.id, "node CA created");
            rows = store.node_cas().await?;
        }
        let set = build(&rows, sealer, now)?;
        let trust = Trust::new();
        trust.set(&set.bundle, &set.generation).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Arc::new(Self {
            set: RwLock::new(Arc::new(set)),
            trust,
            lifetime,
            stage,
            clock,
            refreshing: tokio::sync::Mutex::new(()),
        }))
    }

    fn current(&self) -> Arc<CaSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The generation of the set in use.
    pub fn generation(&self) -> String {
        self.current().generation.clone()
    }

    /// The CA that signs now.
    pub fn active(&self) -> Uuid {
        self.current().active
    }

    /// Re-reads the CAs; `true` when the set changed (a rotation's CA began
    /// signing, or another replica rotated or retired one).
    pub async fn refresh(&self, store: &Store, sealer: &Sealer) -> anyhow::Result<bool> {
        let _one = self.refreshing.lock().await;
        let rows = store.node_cas().await?;
        let now = self.clock.now_ms();
        let ids: Vec<Uuid> = rows.iter().filter(|r| r.retired_at.is_none()).map(|r| r.id).collect();
        let current = self.current();
        if ids == current.ids && signing(&rows, now).map(|r| r.id) == Some(current.active) {
            return Ok(false);
        }
        let set = build(&rows, sealer, now)?;
        self.trust.set(&set.bundle, &set.generation).map_err(|e| anyhow::anyhow!(e))?;
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(true)
    }

    /// Re-reads the CAs every `every` until `shutdown`.
    pub fn watch(self: Arc<Self>, store: Store, sealer: Arc<Sealer>, every: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = crate::control::every::Every::new(every, &shutdown);
            while tick.next().await {
                match self.refresh(&store, &sealer).await {
                    Ok(true) => tracing::info!(generation = %self.generation(), "node CA set changed"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the node CA"),
                }
            }
        });
    }

    /// Starts a rotation: a new CA, trusted at once, signing from
    /// [`NodeCa::stage`] on; the previous ones stay trusted until retired. The new CA's id.
    pub async fn rotate(&self, store: &Store, sealer: &Sealer, actor: &str) -> anyhow::Result<Uuid> {
        let now = self.clock.now_ms();
        let stage = i64::try_from(self.stage.as_millis()).unwrap_or(i64::MAX);
        let row = make_ca(sealer, now, now.saturating_add(stage))?;
        store.insert_node_ca(&row, actor).await?;
        self.refresh(store, sealer).await?;
        Ok(row.id)
    }

    /// A certificate for `peer` over the key of `csr` (PKCS#10 PEM, its
    /// signature checked), valid [`NodeCa::lifetime`] from `now`. The names and
    /// uses asked for are ignored: admin says who holds it.
    pub fn issue(&self, csr: &str, peer: Peer, now: UnixMs) -> Result<Certificate, Refused> {
        let mut request = CertificateSigningRequestParams::from_pem(csr)
            .map_err(|e| Refused(format!("not a signed PKCS#10 certificate request in PEM: {e}")))?;
        let name = peer.name();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name.clone());
        params.subject_alt_names =
            vec![SanType::DnsName(name.try_into().map_err(|e: rcgen::Error| Refused(e.to_string()))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let mut serial = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let lifetime_ms = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        let not_after = now.saturating_add(lifetime_ms);
        params.not_before = at(now) - BACKDATE;
        params.not_after = at(not_after);
        request.params = params;
        let set = self.current();
        let cert = request.signed_by(&set.issuer).map_err(|e| Refused(format!("the key of the CSR: {e}")))?;
        Ok(Certificate {
            pem: cert.pem(),
            ca: set.active,
            not_after,
            bundle: set.bundle.clone(),
            generation: set.generation.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use headwater_serve::mtls::{Credentials, Issued};

    async fn ca() -> (tempfile::TempDir, Store, Arc<Sealer>, Arc<NodeCa>, crate::clock::ManualClock) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/a.db", dir.path().display())).await.unwrap();
        let sealer = Arc::new(Sealer::from_text(&crate::keys::secret()).unwrap());
        let clock = crate::clock::ManualClock::new(SystemClock.now_ms());
        let ca =
            NodeCa::load(&store, &sealer, Duration::from_secs(3600), Duration::from_secs(10), Arc::new(clock.clone()))
                .await
                .unwrap();
        (dir, store, sealer, ca, clock)
    }

    fn issued(c: &Certificate) -> Issued {
        Issued {
            certificate: c.pem.clone(),
            ca: c.bundle.clone(),
            generation: c.generation.clone(),
            not_after_ms: c.not_after,
        }
    }

    #[tokio::test]
    async fn a_node_gets_a_certificate_naming_it_whatever_its_csr_asks_for() {
        let (_d, _store, _sealer, ca, clock) = ca().await;
        let (node, now) = (Uuid::now_v7(), clock.now_ms());
        let creds = Credentials::new().unwrap();
        // The node asks to be a router: admin names it by the id it authenticated as.
        let cert = ca.issue(&creds.csr(Peer::Router).unwrap(), Peer::Node(node), now).unwrap();
        assert_eq!(cert.not_after, now + 3_600_000);
        creds.install(&issued(&cert)).unwrap();
        let chain = creds.current().unwrap().cert.clone();
        assert_eq!(ca.trust.verify_client(&chain), Ok(Peer::Node(node)));
        let secs = u64::try_from(now / 1000).unwrap();
        let expired = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs + 3_601));
        assert!(ca.trust.verify_client_at(&chain, expired).is_err(), "short-lived");
        let bad = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(ca.issue(bad, Peer::Router, now).is_err());
    }

    #[tokio::test]
    async fn a_rotations_ca_is_trusted_first_signs_after_its_stage_and_the_old_retires_once_unheld() {
        let (_d, store, sealer, ca, clock) = ca().await;
        let node = Uuid::now_v7();
        let old = ca.active();
        let holder = Credentials::new().unwrap();
        let csr = holder.csr(Peer::Node(node)).unwrap();
        holder.install(&issued(&ca.issue(&csr, Peer::Node(node), clock.now_ms()).unwrap())).unwrap();
        let first = ca.generation();

        // Staged: trusted by everyone who renews, still signing with the old CA.
        let new = ca.rotate(&store, &sealer, "test").await.unwrap();
        let staged = ca.generation();
        assert_ne!(staged, first, "the new trusted set is a new generation");
        assert!(holder.due(Some(&staged)), "holders renew to learn the new CA");
        let during = ca.issue(&csr, Peer::Node(node), clock.now_ms()).unwrap();
        assert_eq!((during.ca, ca.active()), (old, old), "the old CA still signs during the stage");
        assert!(store.retire_node_ca(new, "test", clock.now_ms()).await.is_err(), "not a staged CA");

        // After the stage the new CA signs; both are trusted.
        clock.advance_ms(10_000);
        assert!(ca.refresh(&store, &sealer).await.unwrap());
        assert_eq!(ca.active(), new);
        assert_ne!(ca.generation(), staged);
        let after = Credentials::new().unwrap();
        after
            .install(&issued(&ca.issue(&after.csr(Peer::Router).unwrap(), Peer::Router, clock.now_ms()).unwrap()))
            .unwrap();
        let old_chain = holder.current().unwrap().cert.clone();
        assert_eq!(ca.trust.verify_client(&old_chain), Ok(Peer::Node(node)), "the old CA is still trusted");
        assert_eq!(ca.trust.verify_client(&after.current().unwrap().cert), Ok(Peer::Router));

        // A router still on the old CA holds its retirement; the signing CA never retires.
        store.record_router_certificate("r1", old, clock.now_ms() + 60_000, clock.now_ms()).await.unwrap();
        assert!(store.retire_node_ca(old, "test", clock.now_ms()).await.is_err());
        assert!(store.retire_node_ca(new, "test", clock.now_ms()).await.is_err());
        store.record_router_certificate("r1", new, clock.now_ms() + 60_000, clock.now_ms()).await.unwrap();
        store.retire_node_ca(old, "test", clock.now_ms()).await.unwrap();
        assert!(ca.refresh(&store, &sealer).await.unwrap());
        assert!(ca.trust.verify_client(&old_chain).is_err(), "retired: its certificates no longer verify");
        assert_eq!(ca.trust.verify_client(&after.current().unwrap().cert), Ok(Peer::Router));

        // Another replica loading the store signs with the same CA.
        let replica =
            NodeCa::load(&store, &sealer, Duration::from_secs(60), Duration::from_secs(10), Arc::new(clock.clone()))
                .await
                .unwrap();
        assert_eq!((replica.active(), replica.generation()), (ca.active(), ca.generation()));
    }
}
