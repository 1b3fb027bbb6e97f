//! The node's listener: accepts connections, tells HTTP/2 (prior knowledge, h2c)
//! from HTTP/1.1 by the connection preface, serves HTTP/1.1 itself ([`h1`]) and
//! HTTP/2 through hyper, and drains: on shutdown the listener closes, in-flight
//! responses finish (up to a deadline), then [`serve`] returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use headwater_serve::ServeConfig;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::{h1, handler};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `listener` until `drain`; returns how many connections were still open
/// when the drain deadline passed (0 after a clean drain).
pub async fn serve(listener: TcpListener, node: Arc<Node>, drain: CancellationToken, cfg: ServeConfig) -> usize {
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = headwater_serve::accept(&listener, &drain).await {
        connections.spawn(connection(node.clone(), stream, peer, drain.clone(), cfg));
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => 0,
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            let open = connections.len();
            tracing::warn!(open, "drain deadline passed with connections open");
            open
        }
    }
}

async fn connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr, drain: CancellationToken, cfg: ServeConfig) {
    let h2 = tokio::select! {
        _ = drain.cancelled() => return,
        sniffed = tokio::time::timeout(cfg.header_read_timeout, is_h2(&stream)) => match sniffed {
            Ok(Ok(Some(h2))) => h2,
            _ => return,
        },
    };
    let served = if h2 {
        serve_h2(node, stream, peer, drain).await
    } else {
        h1::serve(node, stream, peer, drain, cfg.header_read_timeout).await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Whether the client opens with the HTTP/2 preface (`None`: it closed first).
/// Looks without reading, so the chosen protocol sees every byte.
async fn is_h2(stream: &TcpStream) -> std::io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // Part of the preface so far (it nearly always comes in one packet).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_h2(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
) -> std::io::Result<()> {
    let service = hyper::service::service_fn(move |req| handler::handle(node.clone(), peer, req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        _ = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    done.map_err(std::io::Error::other)
}
