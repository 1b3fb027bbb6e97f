//! Mutual TLS with admin's node CA (DESIGN.md §4, flow 10). Admin issues short-lived
//! certificates from CSRs; the names they carry say who holds them
//! (`{node id}.node.headwater` or `router.headwater`). This module holds what
//! both ends of such a connection need:
//!
//! - [`Trust`]: the CAs trusted now (two during a rotation), replaced whole when
//!   admin says so, with a verifier for each side of a connection over it;
//! - [`Credentials`]: a node's or router's own key (made here, never sent), the
//!   CSR for admin, and the certificate admin returned, swapped whole on renewal.
//!   They answer as the client certificate and as a node's server certificate.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use uuid::Uuid;

/// The name in a router's certificate.
pub const ROUTER_NAME: &str = "router.headwater";
const NODE_SUFFIX: &str = ".node.headwater";

/// The name in node `id`'s certificate (and the name a router asks a node's TLS for).
pub fn node_name(id: Uuid) -> String {
    format!("{}{NODE_SUFFIX}", id.simple())
}

/// Who a certificate of the node CA was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Node(Uuid),
    Router,
}

impl Peer {
    /// The one name the certificate carries.
    pub fn name(self) -> String {
        match self {
            Peer::Node(id) => node_name(id),
            Peer::Router => ROUTER_NAME.to_owned(),
        }
    }

    /// Whom `leaf` names (its DNS subject alternative names), if anyone of ours.
    fn of(leaf: &CertificateDer<'_>) -> Option<Peer> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) if *d == ROUTER_NAME => Some(Peer::Router),
            x509_parser::extensions::GeneralName::DNSName(d) => {
                d.strip_suffix(NODE_SUFFIX).and_then(|id| Uuid::try_parse(id).ok()).map(Peer::Node)
            }
            _ => None,
        })
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct TrustSet {
    /// The CA certificates, kept so the anchors below may borrow nothing.
    generation: String,
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

/// The CAs of admin's node CA trusted now. Empty until the first bundle arrives
/// (then nothing verifies).
pub struct Trust {
    set: RwLock<Arc<TrustSet>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl Trust {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { set: RwLock::new(Arc::new(TrustSet { generation: String::new(), anchors: Vec::new() })) })
    }

    /// Trusts exactly the CAs of `bundle` (PEM) from now on, named `generation`
    /// (admin's name for this set and its active CA). The reason when it does not parse.
    pub fn set(&self, bundle: &str, generation: &str) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the CA bundle: {e}"))?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        let anchors = certs
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("a CA of the bundle: {e}"))?;
        *self.set.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(TrustSet { generation: generation.to_owned(), anchors });
        Ok(())
    }

    /// The name of the set trusted now (empty before the first).
    pub fn generation(&self) -> String {
        self.current().generation.clone()
    }

    fn current(&self) -> Arc<TrustSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `chain` (leaf first) leads to a CA trusted now, is valid at `now`
    /// for `usage`, and names one of ours: whom. Admin checks it again on every
    /// request a certificate authenticates, so a kept-alive connection stops
    /// counting once its certificate expires or its CA is retired (a node checks
    /// a router's at the handshake).
    pub fn verify_at(
        &self,
        chain: &[CertificateDer<'_>],
        usage: webpki::KeyUsage,
        now: UnixTime,
    ) -> Result<Peer, String> {
        let leaf = chain.first().ok_or("no certificate")?;
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate does not parse: {e}"))?;
        let set = self.current();
        ee.verify_for_usage(algorithms().all, &set.anchors, &chain[1..], now, usage, None, None)
            .map_err(|e| format!("not a certificate of the node CA valid now: {e}"))?;
        Peer::of(leaf).ok_or_else(|| "the certificate names neither a node nor a router".to_owned())
    }

    /// [`Trust::verify_at`] now, for a client.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<Peer, String> {
        self.verify_client_at(chain, UnixTime::now())
    }

    /// [`Trust::verify_at`] for a client at `now`.
    pub fn verify_client_at(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<Peer, String> {
        self.verify_at(chain, webpki::KeyUsage::client_auth(), now)
    }
}

/// The handshake signature checks of a verifier: ring's, as everywhere.
macro_rules! ring_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms().supported_schemes()
        }
    };
}

/// Servers' side: asks every client for a certificate, lets one without in (its
/// bearer token may authenticate it), and refuses one whose certificate does
/// not verify against the node CA's trusted set.
#[derive(Debug)]
pub struct OptionalClientCerts(pub Arc<Trust>);

impl ClientCertVerifier for OptionalClientCerts {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> =
            std::iter::once(end_entity.clone()).chain(intermediates.iter().cloned()).collect();
        self.0.verify_at(&chain, webpki::KeyUsage::client_auth(), now).map(|_| ClientCertVerified::assertion()).map_err(
            |e| rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Refused(e))))),
        )
    }

    ring_signatures!();
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A router's side towards nodes: the node's certificate must come from the
/// node CA and name the node asked for (the server name is its [`node_name`]).
#[derive(Debug)]
pub struct NodeServerCerts(pub Arc<Trust>);

impl ServerCertVerifier for NodeServerCerts {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> =
            std::iter::once(end_entity.clone()).chain(intermediates.iter().cloned()).collect();
        let refused = |e: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Refused(e)))))
        };
        let peer = self.0.verify_at(&chain, webpki::KeyUsage::server_auth(), now).map_err(refused)?;
        match (peer, server_name) {
            (Peer::Node(id), ServerName::DnsName(name)) if node_name(id) == name.as_ref() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
        }
    }

    ring_signatures!();
}

/// A request extension on every request that came over TLS: the certificates
/// the client presented and the handshake verified (leaf first), if any.
#[derive(Debug, Clone)]
pub struct TlsPeer(pub Option<Arc<[CertificateDer<'static>]>>);

/// A certificate admin issued: what a node or router installs.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM (the leaf; the CA is in `ca`).
    pub certificate: String,
    /// Every CA trusted now, PEM.
    pub ca: String,
    /// Admin's name for the trusted set and its active CA: a new one means renew.
    pub generation: String,
    pub not_after_ms: i64,
}

struct Held {
    certified: Arc<CertifiedKey>,
    issued_at_ms: i64,
    not_after_ms: i64,
    generation: String,
}

/// A node's or router's own key and the certificate admin issued for it.
pub struct Credentials {
    key: rcgen::KeyPair,
    held: RwLock<Option<Arc<Held>>>,
    /// The CAs trusted for peers, as admin's last answer gave them.
    pub trust: Arc<Trust>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl Credentials {
    /// A new ECDSA P-256 key, no certificate yet.
    pub fn new() -> Result<Arc<Self>, rcgen::Error> {
        Ok(Arc::new(Self { key: rcgen::KeyPair::generate()?, held: RwLock::new(None), trust: Trust::new() }))
    }

    /// A CSR for `peer`, signed with the key (admin sets the names and lifetime itself).
    pub fn csr(&self, peer: Peer) -> Result<String, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(vec![peer.name()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, peer.name());
        params.serialize_request(&self.key)?.pem()
    }

    /// Installs what admin issued; the reason when it is not a certificate of
    /// this key or the bundle does not parse (then nothing changes).
    pub fn install(&self, issued: &Issued) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(issued.certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
        let certified = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("the certificate is not for this key: {e}"))?;
        self.trust.set(&issued.ca, &issued.generation)?;
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Held {
            certified: Arc::new(certified),
            issued_at_ms: now_ms(),
            not_after_ms: issued.not_after_ms,
            generation: issued.generation.clone(),
        }));
        Ok(())
    }

    fn held(&self) -> Option<Arc<Held>> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The certificate in use, if admin issued one and it has not expired (an
    /// expired one is never offered: a peer would refuse the handshake, where
    /// without one a bearer token still works).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.held().filter(|h| now_ms() < h.not_after_ms).map(|h| h.certified.clone())
    }

    /// The generation the certificate in use came with.
    pub fn generation(&self) -> Option<String> {
        self.held().map(|h| h.generation.clone())
    }

    /// Whether to ask for a new certificate: none yet, two thirds of its life
    /// gone, or admin now names another generation (a CA rotated or retired).
    pub fn due(&self, admin_generation: Option<&str>) -> bool {
        let Some(h) = self.held() else { return true };
        let renew_at = h.issued_at_ms + (h.not_after_ms - h.issued_at_ms) * 2 / 3;
        now_ms() >= renew_at || admin_generation.is_some_and(|g| g != h.generation)
    }

    /// When the certificate in use expires (Unix ms).
    pub fn not_after_ms(&self) -> Option<i64> {
        self.held().map(|h| h.not_after_ms)
    }

    /// A client configuration that trusts `roots` for the server and presents
    /// these credentials when asked.
    pub fn client_config(self: &Arc<Self>, roots: rustls::RootCertStore) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.clone())
    }

    /// A client configuration for a router towards nodes: their certificates
    /// verified against [`Credentials::trust`], these credentials presented.
    pub fn node_client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeServerCerts(self.trust.clone())))
            .with_client_cert_resolver(self.clone())
    }
}

/// A client configuration towards nodes for a router without credentials: it
/// trusts no node (none is reached over TLS without a router certificate).
pub fn anonymous_node_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerCerts(Trust::new())))
        .with_no_client_auth()
}

impl rustls::client::ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

impl rustls::server::ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The roots of a PEM bundle (text, or the path of a file), or the system's
/// (Mozilla's when it has none) without one: whom a client trusts for admin's
/// HTTPS certificate.
pub fn roots(ca: Option<&str>) -> anyhow::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    let Some(ca) = ca.filter(|c| !c.trim().is_empty()) else {
        // The system's CAs (as reqwest's default), Mozilla's when it has none.
        let (added, _) = store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        return Ok(store);
    };
    let pem = if ca.trim_start().starts_with("-----BEGIN") {
        ca.as_bytes().to_vec()
    } else {
        std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading the CA file {ca}: {e}"))?
    };
    for cert in CertificateDer::pem_slice_iter(&pem) {
        store.add(cert.map_err(|e| anyhow::anyhow!("the CA: {e}"))?)?;
    }
    anyhow::ensure!(!store.is_empty(), "the CA holds no certificate");
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair};

    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    }

    fn sign(csr: &str, issuer: &Issuer<'static, KeyPair>, names: Vec<String>, days: i64) -> String {
        let mut req = CertificateSigningRequestParams::from_pem(csr).unwrap();
        req.params.subject_alt_names =
            names.into_iter().map(|n| rcgen::SanType::DnsName(n.try_into().unwrap())).collect();
        req.params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        req.params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        req.params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth, rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        req.signed_by(issuer).unwrap().pem()
    }

    #[test]
    fn a_certificate_from_a_csr_verifies_names_its_holder_and_stops_when_its_ca_is_no_longer_trusted() {
        let (ca_pem, issuer) = ca();
        let id = Uuid::now_v7();
        let creds = Credentials::new().unwrap();
        let cert = sign(&creds.csr(Peer::Node(id)).unwrap(), &issuer, vec![node_name(id)], 1);
        let issued = Issued {
            certificate: cert,
            ca: ca_pem.clone(),
            generation: "g1".into(),
            not_after_ms: now_ms() + 86_400_000,
        };
        creds.install(&issued).unwrap();
        let chain = creds.current().unwrap().cert.clone();
        assert_eq!(creds.trust.verify_client(&chain), Ok(Peer::Node(id)));
        assert!(!creds.due(Some("g1")), "fresh, same generation");
        assert!(creds.due(Some("g2")), "a new generation means renew");

        // Another CA alone trusted: the certificate no longer counts.
        let (other, _) = ca();
        creds.trust.set(&other, "g2").unwrap();
        assert!(creds.trust.verify_client(&chain).is_err());
        // Both during a rotation: it counts again.
        creds.trust.set(&format!("{ca_pem}{other}"), "g3").unwrap();
        assert_eq!(creds.trust.verify_client(&chain), Ok(Peer::Node(id)));
    }

    #[test]
    fn a_certificate_for_another_key_is_not_installed() {
        let (ca_pem, issuer) = ca();
        let (a, b) = (Credentials::new().unwrap(), Credentials::new().unwrap());
        let cert = sign(&a.csr(Peer::Router).unwrap(), &issuer, vec![ROUTER_NAME.into()], 1);
        let issued = Issued { certificate: cert, ca: ca_pem, generation: "g".into(), not_after_ms: now_ms() + 1000 };
        assert!(b.install(&issued).is_err());
        assert!(b.current().is_none() && b.trust.generation().is_empty(), "nothing changed");
        a.install(&issued).unwrap();
        assert_eq!(a.trust.verify_client(&a.current().unwrap().cert), Ok(Peer::Router));
    }

    #[test]
    fn an_expired_certificate_does_not_verify_and_one_naming_nobody_of_ours_is_refused() {
        let (ca_pem, issuer) = ca();
        let creds = Credentials::new().unwrap();
        let cert = sign(&creds.csr(Peer::Router).unwrap(), &issuer, vec!["example.com".into()], 1);
        let issued = Issued { certificate: cert, ca: ca_pem, generation: "g".into(), not_after_ms: now_ms() + 1000 };
        creds.install(&issued).unwrap();
        let chain = creds.current().unwrap().cert.clone();
        assert!(creds.trust.verify_client(&chain).unwrap_err().contains("neither a node nor a router"));
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now_ms() / 1000).unwrap() + 3 * 86_400,
        ));
        assert!(creds.trust.verify_client_at(&chain, later).is_err());
    }
}
