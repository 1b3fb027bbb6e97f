//! TLS on a listener (rustls, ring): certificates from PEM files, picked by SNI,
//! reloaded when the files change. A handshake only reads the current set, so a
//! reload changes what new connections see and leaves open ones alone. ALPN
//! offers `h2` and `http/1.1`; what the client picks decides the protocol.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// One certificate: its chain and its private key, each a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS flags of a server (`--tls-listen`, `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve HTTPS on this address too (HTTP/1.1 and h2 by ALPN), with the
    /// certificates of --tls-cert and --tls-key (an origin node without them
    /// serves its certificate of the node CA, to routers).
    #[arg(long, env = "HEADWATER_TLS_LISTEN")]
    pub tls_listen: Option<std::net::SocketAddr>,
    /// A PEM certificate chain; repeat (or comma-separate), each with its
    /// --tls-key, to serve several names: each connection gets the first whose
    /// names (wildcards too) cover the name the client asks for (SNI), else the first.
    /// Reloaded when the files change.
    #[arg(long = "tls-cert", env = "HEADWATER_TLS_CERT", value_delimiter = ',', requires = "tls_key")]
    pub tls_cert: Vec<PathBuf>,
    /// The PEM private key of each --tls-cert, in the same order.
    #[arg(long = "tls-key", env = "HEADWATER_TLS_KEY", value_delimiter = ',')]
    pub tls_key: Vec<PathBuf>,
}

impl TlsArgs {
    /// The certificate pairs, or an error naming what does not match up.
    pub fn pairs(&self) -> Result<Vec<CertFiles>, TlsError> {
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(TlsError::Config(format!(
                "{} --tls-cert but {} --tls-key: give each certificate its key",
                self.tls_cert.len(),
                self.tls_key.len()
            )));
        }
        Ok(self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(c, k)| CertFiles { cert: c.clone(), key: k.clone() })
            .collect())
    }

    /// The TLS listener of `--tls-listen`, bound, with its certificates loaded
    /// (an error names the file at fault) and watched for changes until
    /// `shutdown`; `None` without the flag.
    pub async fn bind(&self, shutdown: &CancellationToken) -> anyhow::Result<Option<(TcpListener, Arc<Tls>)>> {
        let Some(addr) = self.tls_listen else { return Ok(None) };
        let certs = Certs::load(self.pairs()?)?;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        certs.clone().watch(RELOAD_EVERY, shutdown.clone());
        Ok(Some((listener, Tls::new(certs))))
    }
}

/// How often certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// What identifies a version of a file: changed when it is rewritten or swapped
/// (as Kubernetes swaps a mounted secret's symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64);

fn stamp(path: &Path) -> io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp(m.modified().ok(), m.len()))
}

struct Loaded {
    keys: Vec<Arc<CertifiedKey>>,
    stamps: Vec<(Stamp, Stamp)>,
}

/// The certificates a listener serves, picked by SNI, swapped whole on reload.
pub struct Certs {
    pairs: Vec<CertFiles>,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("pairs", &self.pairs).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads one certificate and its key, checked: the chain parses, its first
/// certificate is one webpki accepts, and the key is the certificate's.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, format!("no private key: {e}")))?;
    certified(chain, key_der).map_err(|reason| file_error(cert, reason))
}

/// The certificates of a PEM file (a CA bundle, say).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// A chain and its key from PEM text (a customer's upload, say); the reason it
/// is refused otherwise.
pub fn parse_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("no private key: {e}"))?;
    certified(chain, key)
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, String> {
    let leaf = chain.first().ok_or("no certificate in the file")?;
    webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate does not parse: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| format!("the key is not this certificate's: {e}"))
}

/// Whether `cert`'s chain leads to a root of the web PKI (Mozilla's, as
/// browsers trust) or one of `extra_roots` (a private CA), and is valid now for
/// a server; the reason otherwise.
pub fn verify_chain(cert: &CertifiedKey, extra_roots: &[CertificateDer<'static>]) -> Result<(), String> {
    let leaf = cert.cert.first().ok_or("no certificate")?;
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut anchors = webpki_roots::TLS_SERVER_ROOTS.to_vec();
    for root in extra_roots {
        anchors.push(webpki::anchor_from_trusted_cert(root).map_err(|e| format!("a trusted CA: {e}"))?);
    }
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &cert.cert[1..],
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("the chain is not trusted (a public CA's, and valid now): {e}"))
}

/// Whether `cert`'s leaf names `name` (wildcards as browsers read them).
pub fn covers(cert: &CertifiedKey, name: &str) -> bool {
    let (Some(leaf), Ok(name)) = (cert.cert.first(), ServerName::try_from(name)) else { return false };
    webpki::EndEntityCert::try_from(leaf).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

impl Certs {
    /// Loads every pair; an error names the first file that does not load.
    pub fn load(pairs: Vec<CertFiles>) -> Result<Arc<Self>, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::Config("TLS needs a certificate: give --tls-cert and --tls-key".into()));
        }
        let loaded = Self::read(&pairs)?;
        Ok(Arc::new(Self { pairs, loaded: RwLock::new(Arc::new(loaded)) }))
    }

    fn read(pairs: &[CertFiles]) -> Result<Loaded, TlsError> {
        let mut keys = Vec::with_capacity(pairs.len());
        let mut stamps = Vec::with_capacity(pairs.len());
        for p in pairs {
            // Stamped before reading: a write during the read is seen next time.
            let s = (
                stamp(&p.cert).map_err(|e| file_error(&p.cert, e))?,
                stamp(&p.key).map_err(|e| file_error(&p.key, e))?,
            );
            keys.push(Arc::new(load_pair(&p.cert, &p.key)?));
            stamps.push(s);
        }
        Ok(Loaded { keys, stamps })
    }

    /// Reloads when a file changed: `Ok(true)` when new certificates are in use.
    /// A set that does not load leaves the current one serving (the error says why).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let current = self.current();
        let changed = self
            .pairs
            .iter()
            .zip(&current.stamps)
            .any(|(p, (c, k))| stamp(&p.cert).ok().as_ref() != Some(c) || stamp(&p.key).ok().as_ref() != Some(k));
        if !changed {
            return Ok(false);
        }
        let loaded = Self::read(&self.pairs)?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Checks the files every `every` until `shutdown`, reloading on change.
    pub fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match self.reload_if_changed() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(files = ?self.pairs, "TLS certificates reloaded");
                    }
                    Ok(false) => {}
                    // Once per failure, not every check: a half-written pair
                    // usually loads at the next one.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "TLS certificates changed but do not load; still serving the previous ones");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The certificate for a client asking for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let current = self.current();
        sni.and_then(|name| current.keys.iter().find(|k| covers(k, name))).unwrap_or(&current.keys[0]).clone()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A listener's TLS: the acceptor over its certificates.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The certificates of its files (none for a node serving its node-CA certificate).
    pub certs: Option<Arc<Certs>>,
}

impl Tls {
    pub fn new(certs: Arc<Certs>) -> Arc<Self> {
        Self::with_resolver(certs.clone(), certs)
    }

    /// TLS answering with `identity` (a node's certificate of the node CA) and
    /// asking clients for theirs, verified against `clients`.
    pub fn of_identity(identity: Arc<dyn ResolvesServerCert>, clients: Arc<crate::mtls::Trust>) -> Arc<Self> {
        Arc::new(Self { acceptor: acceptor(identity, Some(clients)), certs: None })
    }

    /// TLS answering with `resolver` (per-account certificates in front of the
    /// listener's own, say); `certs` are the listener's own, reloaded from files.
    pub fn with_resolver(certs: Arc<Certs>, resolver: Arc<dyn ResolvesServerCert>) -> Arc<Self> {
        Self::with_clients(certs, resolver, None)
    }

    /// TLS that also asks clients for a certificate of admin's node CA (nodes,
    /// routers) and lets ones without in; a certificate presented must verify.
    pub fn with_clients(
        certs: Arc<Certs>,
        resolver: Arc<dyn ResolvesServerCert>,
        clients: Option<Arc<crate::mtls::Trust>>,
    ) -> Arc<Self> {
        Arc::new(Self { acceptor: acceptor(resolver, clients), certs: Some(certs) })
    }

    /// The handshake, within `timeout` (counted from the accept, like the wait
    /// for a plain request's head): the stream and whether the client chose h2.
    /// `None` when it failed, timed out or was cut.
    pub async fn handshake(&self, stream: TcpStream, timeout: Duration) -> Option<(TlsStream<TcpStream>, bool)> {
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Some((tls, h2))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// An acceptor answering with `resolver`, ALPN h2 and HTTP/1.1, session
/// tickets on, client certificates asked for when `clients` is given.
fn acceptor(
    resolver: Arc<dyn ResolvesServerCert>,
    clients: Option<Arc<crate::mtls::Trust>>,
) -> tokio_rustls::TlsAcceptor {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match clients {
        Some(trust) => builder.with_client_cert_verifier(Arc::new(crate::mtls::OptionalClientCerts(trust))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumed sessions skip the key exchange: players reconnect often.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A client that trusts only `ca` for `https://` URLs when given (PEM text, or
/// the path of a PEM file: a private CA, as admin's), the system's roots otherwise.
pub fn trusting(builder: reqwest::ClientBuilder, ca: Option<&str>) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(ca) = ca.filter(|c| !c.trim().is_empty()) else { return Ok(builder) };
    let pem = if ca.trim_start().starts_with("-----BEGIN") {
        ca.as_bytes().to_vec()
    } else {
        std::fs::read(ca).with_context(|| format!("reading the CA file {ca}"))?
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).context("the CA is not PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "the CA holds no certificate");
    Ok(builder.tls_certs_only(certs))
}

/// A certificate authority for `up` and tests: makes a CA and leaf
/// certificates signed by it (rcgen).
pub mod local_ca {
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

    /// A CA: its certificate (PEM) and what signs with it.
    pub struct LocalCa {
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl LocalCa {
        /// A new CA named `name`, valid ten years.
        pub fn new(name: &str) -> Result<Self, rcgen::Error> {
            let mut params = ca_params(name);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
        }

        /// The CA kept in `ca.pem` and `ca-key.sealed` under `dir`, made there
        /// the first time: its key sealed by `seal` and opened by `open` (admin's
        /// master key), owner-only. A `ca-key.pem` of an earlier version is
        /// sealed and removed.
        pub fn in_dir_sealed(
            dir: &Path,
            name: &str,
            seal: impl Fn(&str) -> anyhow::Result<String>,
            open: impl Fn(&str) -> Option<String>,
        ) -> anyhow::Result<Self> {
            let (cert, sealed, plain) = (dir.join("ca.pem"), dir.join("ca-key.sealed"), dir.join("ca-key.pem"));
            if cert.exists() && plain.exists() && !sealed.exists() {
                write_private(&sealed, &seal(&std::fs::read_to_string(&plain)?)?)?;
                std::fs::remove_file(&plain)?;
            }
            if cert.exists() && sealed.exists() {
                let cert_pem = std::fs::read_to_string(&cert)?;
                let key_pem = open(std::fs::read_to_string(&sealed)?.trim())
                    .ok_or_else(|| anyhow::anyhow!("{} does not open under the master key", sealed.display()))?;
                let key = KeyPair::from_pem(&key_pem)?;
                // What signing takes from the CA (its name, its key's identifier)
                // is made again from the same name and key.
                return Ok(Self { cert_pem, issuer: Issuer::new(ca_params(name), key) });
            }
            let ca = Self::new(name)?;
            write_private(&sealed, &seal(&ca.issuer.key().serialize_pem())?)?;
            std::fs::write(&cert, &ca.cert_pem)?;
            Ok(ca)
        }

        /// A server certificate for `names` (DNS names, `*.` wildcards, IP
        /// addresses), valid `days`: (certificate PEM, key PEM).
        pub fn issue(&self, names: &[&str], days: i64) -> Result<(String, String), rcgen::Error> {
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("headwater"));
            params.subject_alt_names = names
                .iter()
                .map(|n| match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
                })
                .collect::<Result<_, rcgen::Error>>()?;
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        }

        /// Issues for `names` into `cert` and `key` (the key owner-only).
        pub fn issue_files(&self, names: &[&str], days: i64, cert: &Path, key: &Path) -> anyhow::Result<()> {
            let (c, k) = self.issue(names, days)?;
            write_private(key, &k)?;
            std::fs::write(cert, c)?;
            Ok(())
        }
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }
}
