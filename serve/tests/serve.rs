//! The serving loop over real sockets: h2c beside HTTP/1.1, slow clients cut off,
//! in-flight requests finished on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use headwater_serve::{ServeConfig, run, with_peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

async fn start(app: Router, cfg: ServeConfig) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<usize>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { run(listener, move |peer| with_peer(app.clone(), peer), s, cfg).await });
    (addr, shutdown, task)
}

fn peer_echo() -> Router {
    Router::new()
        .route("/peer", get(|axum::Extension(peer): axum::Extension<SocketAddr>| async move { peer.ip().to_string() }))
}

#[tokio::test]
async fn serves_http1_and_h2c_with_the_peer_address() {
    let (addr, shutdown, task) = start(peer_echo(), ServeConfig::default()).await;
    let h1 = reqwest::Client::new();
    let res = h1.get(format!("http://{addr}/peer")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = h2.get(format!("http://{addr}/peer")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    shutdown.cancel();
    assert_eq!(task.await.unwrap(), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let cfg = ServeConfig { header_read_timeout: Duration::from_millis(300), ..ServeConfig::default() };
    let (addr, shutdown, _task) = start(peer_echo(), cfg).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The server must close the connection (read returns 0 or an error, maybe after a 408).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was still connected after 10 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let started = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let release = std::sync::Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let app = Router::new().route(
        "/slow",
        get(move || {
            let started = started.clone();
            let release = release.clone();
            async move {
                if let Some(tx) = started.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release.lock().await.take() {
                    let _ = rx.await;
                }
                "finished"
            }
        }),
    );
    let (addr, shutdown, task) = start(app, ServeConfig::default()).await;
    let client = reqwest::Client::new();
    let in_flight =
        tokio::spawn(
            async move { client.get(format!("http://{addr}/slow")).send().await.unwrap().text().await.unwrap() },
        );
    started_rx.await.unwrap();
    shutdown.cancel();
    // The listener closes: new connections are refused.
    let refused = async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused).await.expect("listener closed");
    release_tx.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap(), "finished");
    assert_eq!(task.await.unwrap(), 0, "drained cleanly");
}

/// Reads until the server closes the connection; `false` if it was still open
/// after `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut buf)).await.is_ok()
}

#[tokio::test]
async fn a_client_that_sends_nothing_at_all_is_disconnected() {
    // The probe found 20 such sockets still open after 130 s: the timeout used to
    // start only with the first byte.
    let cfg = ServeConfig { header_read_timeout: Duration::from_millis(300), ..ServeConfig::default() };
    let (addr, shutdown, _task) = start(peer_echo(), cfg).await;
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for conn in &mut silent {
        assert!(closed_within(conn, Duration::from_secs(10)).await, "a silent connection was still open after 10 s");
    }
    // One that speaks in time is served.
    let res = reqwest::get(format!("http://{addr}/peer")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    shutdown.cancel();
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let cfg = ServeConfig {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        ..ServeConfig::default()
    };
    let (addr, shutdown, _task) = start(peer_echo(), cfg).await;
    // HTTP/1.1 keep-alive: answered, then closed once idle.
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = vec![0u8; 12];
    h1.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
    assert!(closed_within(&mut h1, Duration::from_secs(10)).await, "an idle HTTP/1.1 connection stayed open");
    // HTTP/2: a connection with no stream is sent GOAWAY and closed.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_within(&mut h2, Duration::from_secs(10)).await, "an idle HTTP/2 connection stayed open");
    shutdown.cancel();
}
