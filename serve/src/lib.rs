//! Serving HTTP for admin and the router: HTTP/1.1 and h2c on one listener,
//! keep-alive, a header-read timeout so slow clients cannot hold connections, and a
//! graceful drain: on shutdown the listener closes, in-flight requests finish (up to
//! a deadline), then `run` returns. Origin nodes serve HTTP/1.1 themselves, to send
//! files by `sendfile`, and share this crate's timeouts, CORS and problem answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Timeouts of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// A client must send its request headers within this time.
    pub header_read_timeout: Duration,
    /// After shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), drain_timeout: Duration::from_secs(30) }
    }
}

/// Serves `make(peer)` on every connection accepted from `listener` until
/// `shutdown`, then drains. Returns how many connections were still open when the
/// drain deadline passed (0 after a clean drain).
pub async fn run<F, S, B>(listener: TcpListener, make: F, shutdown: CancellationToken, cfg: ServeConfig) -> usize
where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(cfg.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let service = TowerToHyperService::new(make(peer));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        _ = graceful.shutdown() => 0,
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!(open, "drain deadline passed with connections open");
            open
        }
    }
}

/// The next connection (with `TCP_NODELAY`), or `None` once `shutdown` is
/// cancelled. A failed accept (out of file descriptors and the like) is logged and
/// retried after a moment: the server keeps serving.
pub async fn accept(listener: &TcpListener, shutdown: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Adapts a service so each request carries the peer's `SocketAddr` as an extension.
pub fn with_peer<S: Clone>(service: S, peer: SocketAddr) -> WithPeer<S> {
    WithPeer { inner: service, peer }
}

#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> tower::Service<Request<B>> for WithPeer<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        self.inner.call(req)
    }
}

/// CORS for browser players (hls.js, dash.js) on pages of other origins: any
/// origin may read, and sees the headers range requests and retries need.
pub fn cors(h: &mut http::HeaderMap) {
    use http::{HeaderValue, header};
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Range, Accept-Ranges, ETag, X-Headwater-Node"),
    );
}

/// CORS for an account that names the origins allowed (`allowed`, empty: any):
/// the request's `Origin` is echoed when it is one of them (with `Vary: Origin`),
/// and no `Access-Control-Allow-Origin` is sent otherwise, so browsers on other
/// pages cannot read the content.
pub fn cors_for(h: &mut http::HeaderMap, allowed: &[String], origin: Option<&http::HeaderValue>) {
    use http::header;
    cors(h);
    if allowed.is_empty() {
        return;
    }
    h.append(header::VARY, http::HeaderValue::from_static("Origin"));
    match origin.filter(|o| o.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))) {
        Some(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        }
        None => {
            h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        }
    }
}

/// The answer to a CORS preflight (`OPTIONS`) for `GET`/`HEAD` with ranges and
/// revalidation, cached by the browser for a day.
pub fn preflight() -> Response<bytes::Bytes> {
    use http::{HeaderValue, header};
    let mut res = Response::new(bytes::Bytes::new());
    *res.status_mut() = http::StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    cors(h);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Range, If-None-Match, If-Modified-Since"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    res
}

/// A problem answer (`application/problem+json`, RFC 9457) for the data plane
/// (origin nodes, router), shaped like the admin API's problems.
pub fn problem(status: http::StatusCode, kind: &str, detail: &str) -> Response<bytes::Bytes> {
    let body = serde_json::json!({
        "type": format!("/problems/{kind}"), "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(), "detail": detail,
    });
    let mut res = Response::new(bytes::Bytes::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/problem+json"));
    res
}
