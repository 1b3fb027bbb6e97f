//! Serving HTTP for admin and the router: HTTP/1.1 and h2c on one listener,
//! keep-alive, a header-read timeout so slow clients cannot hold connections, and a
//! graceful drain: on shutdown the listener closes, in-flight requests finish (up to
//! a deadline), then `run` returns. Origin nodes serve HTTP/1.1 themselves, to send
//! files by `sendfile`, and share this crate's timeouts, CORS and problem answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod access_log;
mod flood;
pub mod mtls;
pub mod tls;
pub use flood::{ControlBudget, FloodGuard};

/// Timeouts of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// A client must send its request headers within this time, counted from
    /// when it connects or starts a request.
    pub header_read_timeout: Duration,
    /// After shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Serves `make(peer)` on every connection accepted from `listener` until
/// `shutdown`, then drains. Returns how many connections were still open when the
/// drain deadline passed (0 after a clean drain).
///
/// A client must start within `header_read_timeout` of connecting (a socket that
/// never sends a byte is closed like one that sends half a head); an HTTP/1.1
/// connection idle between requests is closed by the same timeout (hyper starts it
/// when it waits for a head), an HTTP/2 one with no stream for `idle_timeout`.
pub async fn run<F, S, B>(listener: TcpListener, make: F, shutdown: CancellationToken, cfg: ServeConfig) -> usize
where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_listener(listener, None, make, shutdown, cfg).await
}

/// [`run`] over TLS: the handshake must finish within `header_read_timeout` of
/// the accept; ALPN picks HTTP/2 or HTTP/1.1.
pub async fn run_tls<F, S, B>(
    listener: TcpListener,
    tls: Arc<tls::Tls>,
    make: F,
    shutdown: CancellationToken,
    cfg: ServeConfig,
) -> usize
where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_listener(listener, Some(tls), make, shutdown, cfg).await
}

/// [`run`] on `plain` and, when given, [`run_tls`] on the TLS listener, the
/// same service on both; returns when both have drained.
pub async fn run_both<F, S, B>(
    plain: TcpListener,
    tls: Option<(TcpListener, Arc<tls::Tls>)>,
    make: F,
    shutdown: CancellationToken,
    cfg: ServeConfig,
) -> usize
where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let plain = run(plain, &make, shutdown.clone(), cfg);
    match tls {
        None => plain.await,
        Some((listener, tls)) => {
            let (a, b) = tokio::join!(plain, run_tls(listener, tls, &make, shutdown, cfg));
            a + b
        }
    }
}

async fn serve_listener<F, S, B>(
    listener: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    make: F,
    shutdown: CancellationToken,
    cfg: ServeConfig,
) -> usize
where
    F: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let service = make(peer);
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            if let Err(e) = connection(stream, tls, service, shutdown, cfg).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
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

async fn connection<S, B>(
    stream: TcpStream,
    tls: Option<Arc<tls::Tls>>,
    service: S,
    shutdown: CancellationToken,
    cfg: ServeConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tls {
        None => {
            let h2 = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                sniffed = tokio::time::timeout(cfg.header_read_timeout, sniff(&stream)) => match sniffed {
                    Ok(Ok(Some(h2))) => h2,
                    // Silent past the timeout, closed, or gone.
                    _ => return Ok(()),
                },
            };
            serve_io(stream, h2, service, shutdown, cfg).await
        }
        Some(tls) => {
            let (stream, h2) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                done = tls.handshake(stream, cfg.header_read_timeout) => match done {
                    Some(done) => done,
                    None => return Ok(()),
                },
            };
            let peer = mtls::TlsPeer(stream.get_ref().1.peer_certificates().map(|c| c.to_vec().into()));
            serve_io(stream, h2, WithExtension { inner: service, value: peer }, shutdown, cfg).await
        }
    }
}

async fn serve_io<I, S, B>(
    stream: I,
    h2: bool,
    service: S,
    shutdown: CancellationToken,
    cfg: ServeConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let io = TokioIo::new(FloodGuard::new(stream, ControlBudget::default()));
        let streams = H2Streams::new();
        let counted = streams.clone();
        let service = TowerToHyperService::new(service);
        let service = hyper::service::service_fn(move |req| {
            let stream = counted.open();
            let fut = hyper::service::Service::call(&service, req);
            async move {
                let res = fut.await?;
                Ok::<_, Infallible>(res.map(|b| StreamBody::new(b, stream)))
            }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
        bound_h2(&mut builder);
        let conn = builder.serve_connection(io, service);
        drive_h2(conn, &streams, cfg.idle_timeout, shutdown.cancelled(), |_| {}).await?;
    } else {
        let io = TokioIo::new(stream);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .keep_alive(true)
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            done = conn.as_mut() => done?,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await?;
            }
        }
    }
    Ok(())
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface (`None`: it closed first).
/// Looks without reading, so the chosen protocol sees every byte; callers bound
/// it with their header-read timeout.
pub async fn sniff(stream: &TcpStream) -> std::io::Result<Option<bool>> {
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

/// The streams of an HTTP/2 connection being answered (until their bodies are
/// done), so the connection knows when it is idle.
pub struct H2Streams {
    open: AtomicUsize,
    /// Told when the first stream opens or the last one ends.
    changed: tokio::sync::Notify,
}

/// One stream counted in [`H2Streams`] until dropped (with its response body).
pub struct H2Stream(Arc<H2Streams>);

impl H2Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), changed: tokio::sync::Notify::new() })
    }

    pub fn open(self: &Arc<Self>) -> H2Stream {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_one();
        }
        H2Stream(self.clone())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// A response body that holds its stream open in [`H2Streams`] until done.
pub struct StreamBody<B> {
    inner: std::pin::Pin<Box<B>>,
    _stream: H2Stream,
}

impl<B: Body> StreamBody<B> {
    pub fn new(inner: B, stream: H2Stream) -> Self {
        Self { inner: Box::pin(inner), _stream: stream }
    }
}

impl<B: Body> Body for StreamBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Drives an HTTP/2 connection until it ends, `stop` completes, or it has had
/// no stream for `idle_timeout`; then closes it gracefully (GOAWAY, open streams
/// finish). `idle(true/false)` is told each time it becomes idle or busy.
pub async fn drive_h2<I, S, E, B>(
    conn: hyper::server::conn::http2::Connection<I, S, E>,
    streams: &H2Streams,
    idle_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
    idle: impl Fn(bool),
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    tokio::pin!(conn);
    tokio::pin!(stop);
    let mut idle_since = Some(tokio::time::Instant::now());
    let idle_out = loop {
        if streams.open.load(Ordering::Acquire) == 0 {
            idle(true);
            idle_since.get_or_insert_with(tokio::time::Instant::now);
        } else {
            idle(false);
            idle_since = None;
        }
        let quiet = async {
            match idle_since {
                Some(t) => tokio::time::sleep_until(t + idle_timeout).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => return done,
            _ = &mut stop => break false,
            _ = quiet => break true,
            _ = streams.changed.notified() => {}
        }
    };
    conn.as_mut().graceful_shutdown();
    if !idle_out {
        return conn.await;
    }
    // Nothing is in flight: a client that does not answer the GOAWAY's PING is
    // not waited for long.
    match tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await {
        Ok(done) => done,
        Err(_) => Ok(()),
    }
}

/// How long an idle HTTP/2 connection told to go away may take to close.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

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

/// Bounds what one HTTP/2 client may make a server hold: concurrent streams,
/// header list size, and streams reset before they are accepted or because they
/// erred (rapid reset); past those hyper answers GOAWAY.
pub fn bound_h2<E>(builder: &mut hyper::server::conn::http2::Builder<E>) {
    builder
        .max_concurrent_streams(256)
        .max_header_list_size(16 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
}

/// Adapts a service so each request carries the peer's `SocketAddr` as an extension.
pub fn with_peer<S: Clone>(service: S, peer: SocketAddr) -> WithPeer<S> {
    WithExtension { inner: service, value: peer }
}

/// A service whose requests carry the peer's `SocketAddr` as an extension.
pub type WithPeer<S> = WithExtension<S, SocketAddr>;

/// Adapts a service so each request carries `value` as an extension.
#[derive(Clone)]
pub struct WithExtension<S, T> {
    inner: S,
    value: T,
}

impl<S, B, T> tower::Service<Request<B>> for WithExtension<S, T>
where
    S: tower::Service<Request<B>>,
    T: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.value.clone());
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

/// Whether the request carries `Authorization: Bearer <token>` for `token`,
/// compared in constant time (digests first, so neither where they differ nor
/// their lengths show).
pub fn bearer_is(headers: &http::HeaderMap, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(presented) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    Sha256::digest(presented).ct_eq(&Sha256::digest(token.as_bytes())).into()
}

/// The answer to `/metrics` without the scrape token (it names every account):
/// 401, or 404 when the server was given no token, so its metrics are off.
pub fn metrics_refused(configured: bool) -> Response<bytes::Bytes> {
    let mut res = if configured {
        problem(http::StatusCode::UNAUTHORIZED, "unauthorized", "metrics need Authorization: Bearer <metrics token>")
    } else {
        problem(http::StatusCode::NOT_FOUND, "not-found", "metrics are off: start with --metrics-token")
    };
    if configured {
        res.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
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
