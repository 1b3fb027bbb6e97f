//! The node's listeners (plain and, with `--tls-listen`, TLS; one connection
//! bound for both): accepts connections (at most so many, see [`conns`]),
//! tells HTTP/2 (prior knowledge, h2c) from HTTP/1.1 by the connection preface,
//! serves HTTP/1.1 itself ([`h1`]) and HTTP/2 through hyper, closes connections
//! idle too long, and drains: on shutdown the listener closes, in-flight responses
//! finish (up to a deadline), then [`serve`] returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use headwater_serve::tls::Tls;
use headwater_serve::{H2Streams, ServeConfig, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conns::{Conn, Connections};
use crate::handler::Peer;
use crate::node::Node;
use crate::{h1, handler};

/// Serves `listener` until `drain`; returns how many connections were still open
/// when the drain deadline passed (0 after a clean drain).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    node: Arc<Node>,
    conns: Arc<Connections>,
    drain: CancellationToken,
    cfg: ServeConfig,
) -> usize {
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = headwater_serve::accept(&listener, &drain).await {
        match (conns.admit(), tls.clone()) {
            (Some(conn), None) => {
                connections.spawn(connection(node.clone(), stream, peer, conn, drain.clone(), cfg));
            }
            (Some(conn), Some(tls)) => {
                connections.spawn(tls_connection(tls, node.clone(), stream, peer, conn, drain.clone(), cfg));
            }
            // Every connection is busy: a clean refusal, not a silent close.
            (None, None) => {
                connections.spawn(async move { h1::refuse_busy(stream).await });
            }
            // Over TLS an answer would cost a handshake of the busy node: closed.
            (None, Some(_)) => drop(stream),
        }
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

async fn connection(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    conn: Conn,
    drain: CancellationToken,
    cfg: ServeConfig,
) {
    // A client that sends nothing at all is cut off like one that sends half a head.
    let h2 = tokio::select! {
        _ = drain.cancelled() => return,
        _ = conn.close.cancelled() => return,
        sniffed = tokio::time::timeout(cfg.header_read_timeout, headwater_serve::sniff(&stream)) => match sniffed {
            Ok(Ok(Some(h2))) => h2,
            _ => return,
        },
    };
    serve_stream(node, stream, h2, Peer { addr: peer, router: false }, conn, drain, cfg).await;
}

/// A connection on the TLS listener: counted from the accept, the handshake
/// must finish within the header-read timeout; ALPN picks the protocol.
async fn tls_connection(
    tls: Arc<Tls>,
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    conn: Conn,
    drain: CancellationToken,
    cfg: ServeConfig,
) {
    let (stream, h2) = tokio::select! {
        _ = drain.cancelled() => return,
        _ = conn.close.cancelled() => return,
        done = tls.handshake(stream, cfg.header_read_timeout) => match done {
            Some(done) => done,
            None => return,
        },
    };
    // A router's certificate of the node CA (the handshake verified the chain).
    let router = match (&node.credentials, stream.get_ref().1.peer_certificates()) {
        (Some(creds), Some(chain)) => creds.trust.verify_client(chain) == Ok(headwater_serve::mtls::Peer::Router),
        _ => false,
    };
    serve_stream(node, stream, h2, Peer { addr: peer, router }, conn, drain, cfg).await;
}

async fn serve_stream<W: h1::Wire + AsyncWrite + 'static>(
    node: Arc<Node>,
    stream: W,
    h2: bool,
    peer: Peer,
    conn: Conn,
    drain: CancellationToken,
    cfg: ServeConfig,
) {
    let served = if h2 {
        serve_h2(node, stream, peer, &conn, drain, cfg.idle_timeout).await
    } else {
        h1::serve(node, stream, peer, &conn, drain, cfg).await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, peer = %peer.addr, "connection ended with an error");
    }
}

async fn serve_h2<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    node: Arc<Node>,
    stream: I,
    peer: Peer,
    slot: &Conn,
    drain: CancellationToken,
    idle_timeout: Duration,
) -> std::io::Result<()> {
    let streams = H2Streams::new();
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |req| {
        // Counted until the body is done (or dropped).
        let stream = counted.open();
        let node = node.clone();
        async move {
            let res = handler::handle(node, peer, req).await?;
            Ok::<_, std::convert::Infallible>(res.map(|b| StreamBody::new(b, stream)))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    headwater_serve::bound_h2(&mut builder);
    let io = TokioIo::new(headwater_serve::FloodGuard::new(stream, headwater_serve::ControlBudget::default()));
    let conn = builder.serve_connection(io, service);
    // Closed when idle too long, when the node needs its place, or on drain.
    let stop = async {
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = slot.close.cancelled() => {}
        }
    };
    let done =
        headwater_serve::drive_h2(
            conn,
            &streams,
            idle_timeout,
            stop,
            |idle| {
                if idle { slot.idle() } else { slot.busy() }
            },
        )
        .await;
    done.map_err(std::io::Error::other)
}
