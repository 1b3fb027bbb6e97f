//! The serving loop over real TLS: ALPN picks HTTP/2 or HTTP/1.1, SNI picks the
//! certificate (wildcards too), certificate files are reloaded without cutting
//! open connections, and slow handshakes and idle connections are cut off as on
//! plain HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use headwater_serve::tls::local_ca::LocalCa;
use headwater_serve::tls::{CertFiles, Certs, Tls};
use headwater_serve::{ServeConfig, run_tls, with_peer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Server {
    addr: SocketAddr,
    certs: Arc<Certs>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(pairs: Vec<CertFiles>, cfg: ServeConfig) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = Certs::load(pairs).unwrap();
    let tls = Tls::new(certs.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = Router::new()
        .route("/peer", get(|axum::Extension(peer): axum::Extension<SocketAddr>| async move { peer.ip().to_string() }));
    let s = shutdown.clone();
    tokio::spawn(async move { run_tls(listener, tls, move |peer| with_peer(app.clone(), peer), s, cfg).await });
    Server { addr, certs, shutdown }
}

/// Issues a certificate for `names` into `dir/{stem}.pem` and `dir/{stem}-key.pem`.
fn issue(ca: &LocalCa, dir: &Path, stem: &str, names: &[&str]) -> CertFiles {
    let files = CertFiles { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}-key.pem")) };
    ca.issue_files(names, 1, &files.cert, &files.key).unwrap();
    files
}

fn leaf(path: &PathBuf) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap()
}

fn connector(ca: &LocalCa, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection asking for `name`, verified against `ca`.
async fn connect(addr: SocketAddr, ca: &LocalCa, name: &str) -> std::io::Result<Client> {
    let tcp = TcpStream::connect(addr).await?;
    connector(ca, &[b"http/1.1"]).connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await
}

/// One HTTP/1.1 request on a kept-alive connection; the body.
async fn fetch(conn: &mut Client, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body[..len].to_owned();
            }
        }
    }
}

fn served_cert(conn: &Client) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

#[tokio::test]
async fn alpn_picks_h2_or_http1_and_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test CA").unwrap();
    let files = issue(&ca, dir.path(), "server", &["localhost", "127.0.0.1"]);
    let server = start(vec![files], ServeConfig::default()).await;
    let ca_cert = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{}/peer", server.addr.port());
    let h2 =
        reqwest::Client::builder().tls_certs_only([ca_cert.clone()]).resolve("localhost", server.addr).build().unwrap();
    let res = h2.get(&url).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "ALPN offers h2 and reqwest prefers it");
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    let h1 = reqwest::Client::builder()
        .tls_certs_only([ca_cert])
        .http1_only()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let res = h1.get(&url).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    // A client that trusts another CA does not get through the handshake.
    let other = LocalCa::new("another CA").unwrap();
    let err = connect(server.addr, &other, "localhost").await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn sni_picks_the_certificate_that_names_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test CA").unwrap();
    let wildcard = issue(&ca, dir.path(), "wildcard", &["vod.example", "*.vod.example"]);
    let custom = issue(&ca, dir.path(), "custom", &["video.customer.example"]);
    let server = start(vec![wildcard.clone(), custom.clone()], ServeConfig::default()).await;
    for (name, want) in [
        ("ana.vod.example", &wildcard),
        ("vod.example", &wildcard),
        ("video.customer.example", &custom),
        // Nothing names it: the first pair (the client then refuses it itself).
        ("elsewhere.example", &wildcard),
    ] {
        let pick = server.certs.pick(Some(name));
        assert_eq!(pick.cert[0], leaf(&want.cert), "{name}");
    }
    // Over the wire: the client verifies the name, so the right certificate is
    // the only one it would accept.
    let mut conn = connect(server.addr, &ca, "video.customer.example").await.unwrap();
    assert_eq!(served_cert(&conn), leaf(&custom.cert));
    assert_eq!(fetch(&mut conn, "/peer").await, "127.0.0.1");
    let conn = connect(server.addr, &ca, "ana.vod.example").await.unwrap();
    assert_eq!(served_cert(&conn), leaf(&wildcard.cert));
    let err = connect(server.addr, &ca, "elsewhere.example").await.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn changed_files_are_reloaded_without_cutting_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = LocalCa::new("old CA").unwrap();
    let files = issue(&old_ca, dir.path(), "server", &["localhost"]);
    let server = start(vec![files.clone()], ServeConfig::default()).await;
    server.certs.clone().watch(Duration::from_millis(50), server.shutdown.clone());
    let mut open = connect(server.addr, &old_ca, "localhost").await.unwrap();
    assert_eq!(fetch(&mut open, "/peer").await, "127.0.0.1");

    // Renewed by another CA (a rotation): new connections get the new one...
    let new_ca = LocalCa::new("new CA").unwrap();
    issue(&new_ca, dir.path(), "server", &["localhost"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut renewed = loop {
        if let Ok(c) = connect(server.addr, &new_ca, "localhost").await {
            break c;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(served_cert(&renewed), leaf(&files.cert));
    assert_eq!(fetch(&mut renewed, "/peer").await, "127.0.0.1");
    // ...and the connection opened before goes on being answered.
    assert_eq!(fetch(&mut open, "/peer").await, "127.0.0.1");
    assert!(connect(server.addr, &old_ca, "localhost").await.is_err(), "the old certificate is still served");

    // A broken file (half written, a key that is not the certificate's) is not
    // loaded: the renewed certificate goes on serving.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(server.certs.reload_if_changed().is_err());
    let (other_cert, _) = new_ca.issue(&["localhost"], 1).unwrap();
    std::fs::write(&files.cert, other_cert).unwrap();
    let err = server.certs.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("the key is not this certificate's"), "{err}");
    let mut still = connect(server.addr, &new_ca, "localhost").await.unwrap();
    assert_eq!(fetch(&mut still, "/peer").await, "127.0.0.1");
}

async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_silent_or_stalled_handshake_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test CA").unwrap();
    let files = issue(&ca, dir.path(), "server", &["localhost"]);
    let cfg = ServeConfig { header_read_timeout: Duration::from_millis(300), ..ServeConfig::default() };
    let server = start(vec![files], cfg).await;
    // Nothing at all, then the first bytes of a ClientHello record and nothing more.
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(opening).await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut conn, Duration::from_secs(10)).await, "{opening:?}: still open after 10 s");
        assert!(started.elapsed() >= Duration::from_millis(250), "{opening:?}: closed before the timeout");
    }
    // A handshake that then sends half a request head is cut off too.
    let mut conn = connect(server.addr, &ca, "localhost").await.unwrap();
    conn.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a TLS client that never finished its head was still connected after 10 s");
    // In time, it is answered.
    let mut conn = connect(server.addr, &ca, "localhost").await.unwrap();
    assert_eq!(fetch(&mut conn, "/peer").await, "127.0.0.1");
}

#[tokio::test]
async fn an_idle_h2_connection_over_tls_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("test CA").unwrap();
    let files = issue(&ca, dir.path(), "server", &["localhost"]);
    let cfg = ServeConfig { idle_timeout: Duration::from_millis(500), ..ServeConfig::default() };
    let server = start(vec![files], cfg).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut conn = connector(&ca, &[b"h2"]).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle h2 connection over TLS stayed open");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before its idle time");
}
