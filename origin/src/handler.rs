//! One request to the node: health and metrics, test content under `/_probe/`, and
//! account content under `/{account}/{asset}/{file}`, shaped and counted. The
//! answer is the same for both protocols; [`crate::h1`] sends it over HTTP/1.1
//! (files by `sendfile`), [`handle`] hands it to hyper for HTTP/2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use headwater_content::{ContentError, ContentPath};
use headwater_protocol::{PROBE_PREFIX, Packaging};
use headwater_serve::access_log::{AccessLog, Entry, Pending};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use prometheus::{Encoder, IntCounter};

use crate::files::{Body, Reply};
use crate::node::{Node, Served};
use crate::packaging::PackError;
use crate::shaper::CHUNK;

pub type ResBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What an answer carries.
pub enum Payload {
    /// A small body in memory: health, metrics, problems; empty for HEAD, 304, 416.
    Full(Bytes),
    /// Content, sent as the shaper allows and counted as it goes.
    Content(Sent, Body),
}

fn full(b: impl Into<Bytes>) -> Response<Payload> {
    Response::new(Payload::Full(b.into()))
}

/// A small problem+json answer, like the rest of the platform's errors.
fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Payload> {
    headwater_serve::problem(status, kind, detail).map(Payload::Full)
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// It presented a router's certificate of the node CA (mutual TLS).
    pub router: bool,
}

/// An HTTP/2 request, answered through hyper.
pub async fn handle(node: Arc<Node>, peer: Peer, req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
    let res = answer(&node, peer, req.method(), req.uri().path(), req.uri().query(), req.headers()).await;
    Ok(res.map(|payload| match payload {
        Payload::Full(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
        Payload::Content(sent, body) => shaped(sent, body),
    }))
}

/// The answer to a request, whichever protocol carried it.
pub async fn answer(
    node: &Arc<Node>,
    peer: Peer,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Payload> {
    let started = Instant::now();
    // One look at the configuration for the whole request.
    let served = node.served();
    let mut res = route(node, &served, peer, method, path, query, headers).await;
    // The account's CORS policy (the first path segment names the account,
    // decoded as the file's path is).
    let raw = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let decoded = if raw.contains('%') { ContentPath::from_url(raw).ok() } else { None };
    let account = decoded.as_ref().map_or(raw, ContentPath::first);
    let allowed = served.accounts.get(account).map_or(&[][..], |a| a.allow_origins.as_slice());
    headwater_serve::cors_for(res.headers_mut(), allowed, headers.get(header::ORIGIN));
    res.headers_mut().insert("x-headwater-node", node.id_header.clone());
    node.metrics.latency.observe(started.elapsed().as_secs_f64());
    // Preflights are answered for the request that follows (the router logs
    // none either).
    if let Some(log) = &node.access_log
        && method != Method::OPTIONS
        && let Some(a) = served.accounts.get(account)
        && !via_router(peer, headers, &node.trusted_proxies)
    {
        log_answer(node, log, a.name.clone(), peer, method, path, headers, &mut res, started);
    }
    res
}

/// The request came through a router, which logs it: over mutual TLS with a
/// router's certificate, or with the router's `Via` from a router's address
/// (a trusted proxy; from any address when the node was given none, as a
/// node told nothing of its routers cannot tell them apart).
fn via_router(peer: Peer, headers: &HeaderMap, routers: &[ipnet::IpNet]) -> bool {
    peer.router
        || (headers.get(header::VIA).is_some_and(|v| v == headwater_protocol::ROUTER_VIA)
            && (routers.is_empty() || routers.iter().any(|n| n.contains(&peer.addr.ip()))))
}

/// Hands the access log the entry of an answer to a player: now for a small
/// answer, when its body is done for content.
#[allow(clippy::too_many_arguments)]
fn log_answer(
    node: &Node,
    log: &AccessLog,
    account: Arc<str>,
    peer: Peer,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    res: &mut Response<Payload>,
    started: Instant,
) {
    let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
    let (_, unsigned) = headwater_playback::split(path);
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let entry = Entry {
        at_ms: now_ms() - elapsed,
        path: headwater_serve::access_log::path_under(&unsigned).to_owned(),
        account,
        method: method.clone(),
        status: res.status().as_u16(),
        bytes: 0,
        duration_ms: 0,
        client: node.client_ip(peer.addr.ip(), forwarded, peer.router),
        user_agent: headers.get(header::USER_AGENT).cloned(),
        node: Some(node.id),
        cache_hit: res
            .headers()
            .get(headwater_protocol::CACHE_HEADER)
            .map(|v| v.as_bytes().eq_ignore_ascii_case(b"hit")),
    };
    let mut pending = Pending::new(log.clone(), entry, started);
    match res.body_mut() {
        Payload::Content(sent, _) => sent.log = Some(Box::new(pending)),
        // Sent with the head (nothing for HEAD): logged now.
        Payload::Full(b) if method != Method::HEAD => pending.sent(b.len() as u64),
        Payload::Full(_) => {}
    }
}

async fn route(
    node: &Arc<Node>,
    served: &Served,
    peer: Peer,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Payload> {
    match path {
        "/healthz" => return full("ok\n"),
        "/readyz" => {
            // Configured, heard by admin, not draining, and the content store answers.
            let ready = node.is_ready() && node.files.store().ping().await.is_ok();
            let mut res = full(if ready { "ready\n" } else { "not ready\n" });
            if !ready {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return res;
        }
        "/metrics" => {
            // It names every account: for the scraper's token only.
            let allowed = node.metrics_token.as_deref().is_some_and(|t| headwater_serve::bearer_is(headers, t));
            if !allowed {
                return headwater_serve::metrics_refused(node.metrics_token.is_some()).map(Payload::Full);
            }
            return metrics(node);
        }
        _ => {}
    }
    if method == Method::OPTIONS {
        // CORS preflight for players on other origins asking for ranges.
        return headwater_serve::preflight().map(Payload::Full);
    }
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut res = problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "only GET and HEAD");
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return res;
    }
    // A signed URL's token segment is not part of the file's path.
    let (token, path) = headwater_playback::split(path);
    let content = match ContentPath::from_url(path.trim_start_matches('/')) {
        Ok(p) => p,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "invalid-path", &e.to_string()),
    };
    // account/asset/file at least.
    if content.as_str().split('/').count() < 3 {
        return problem(StatusCode::NOT_FOUND, "not-found", "no such file");
    }
    let (account, counted, ok_counter, bytes_counter, encryption) = if content.first() == PROBE_PREFIX {
        (node.probe_account.clone(), false, &node.probe_ok_requests, &node.probe_bytes, None)
    } else {
        let Some(a) = served.accounts.get(content.first()) else {
            return count(
                node,
                "-",
                problem(StatusCode::NOT_FOUND, "not-found", "this node does not serve that account"),
            );
        };
        if !a.active {
            return count(node, &a.name, problem(StatusCode::GONE, "gone", "the account is deactivated"));
        }
        if node.routers_only && !peer.router {
            return count(
                node,
                &a.name,
                problem(
                    StatusCode::FORBIDDEN,
                    "routers-only",
                    "this node serves accounts' content to routers only, over mutual TLS",
                ),
            );
        }
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let client = node.client_ip(peer.addr.ip(), forwarded, peer.router);
        if !a.allows(client) {
            return count(
                node,
                &a.name,
                problem(StatusCode::FORBIDDEN, "forbidden", "your address is not allowed for this account"),
            );
        }
        // Under the account, decoded: the path of the file served.
        let rest = content.as_str().split_once('/').map_or("", |(_, r)| r);
        let cdn = headers.get(headwater_playback::CDN_HEADER).map(HeaderValue::as_bytes);
        let allowed = headwater_playback::check_cdn(&a.cdn_secrets, cdn).and_then(|via_cdn| {
            // The CDN checks its own viewers; anyone else needs the token.
            if via_cdn {
                return Ok(());
            }
            headwater_playback::check(&a.name, a.playback.as_ref(), token, rest, client, now_ms() as u64 / 1000)
        });
        if let Err(refused) = allowed {
            return count(node, &a.name, problem(StatusCode::FORBIDDEN, refused.kind(), refused.detail()));
        }
        // A content key goes to a valid token only, whoever forwards the request
        // (a CDN's secret included): checked again for `.key` paths alone.
        let signed = rest.ends_with(".key")
            && token.is_some()
            && headwater_playback::check(&a.name, a.playback.as_ref(), token, rest, client, now_ms() as u64 / 1000)
                .is_ok();
        (a.name.clone(), true, &a.ok_requests, &a.bytes, a.encryption.as_ref().map(|e| (e, signed)))
    };
    // A `jit` pool packages the packager's paths; everything else is a file
    // (the MP4s themselves download as stored).
    if counted
        && served.packaging == Packaging::Jit
        && let Some((dir, rest, request)) = packaged_request(&content)
    {
        let (encryption, signed) = (encryption.map(|(e, _)| e), encryption.is_some_and(|(_, s)| s));
        if matches!(request, headwater_jit::Request::Key(_)) && encryption.is_some() && !signed {
            let detail = "a content key is handed to signed playback URLs only";
            return count(node, &account, problem(StatusCode::FORBIDDEN, "playback-token", detail));
        }
        return match node.packager.reply(&dir, &request, rest, query, headers, head, encryption).await {
            Ok(reply) => finish(node, account, counted, bytes_counter, ok_counter, reply),
            Err(e) => {
                // An unpackable asset is logged once, when it is packaged.
                if let PackError::Store(e) = &e {
                    tracing::warn!(error = %e, path = %content, "content store");
                }
                let (status, kind) = e.status_kind();
                let detail = match &e {
                    PackError::Store(_) => "the content store failed".to_owned(),
                    e => e.to_string(),
                };
                count(node, &account, problem(status, kind, &detail))
            }
        };
    }
    // An encrypting account's MP4s are its clear media: never served as files.
    if counted
        && served.packaging == Packaging::Jit
        && encryption.is_some()
        && content.as_str().to_ascii_lowercase().ends_with(".mp4")
    {
        let detail = "the account encrypts its streams: its MP4 files are not served";
        return count(node, &account, problem(StatusCode::FORBIDDEN, "encrypted", detail));
    }
    // A token on a manifest goes into its absolute URIs too (relative ones carry it).
    let manifest = if counted { token.zip(crate::carry::Manifest::of(content.as_str())) } else { None };
    let reply = match manifest {
        Some((token, kind)) => {
            let segment = format!("~{token}");
            let rewrite = |b: &[u8]| crate::carry::carry_token(b, kind, &account, &segment);
            node.files.reply_rewritten(&content, headers, head, token, rewrite).await
        }
        None => node.files.reply(&content, headers, head).await,
    };
    let reply = match reply {
        Ok(r) => r,
        Err(ContentError::NotFound) => {
            return count(node, &account, problem(StatusCode::NOT_FOUND, "not-found", "no such file"));
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %content, "content store");
            return count(
                node,
                &account,
                problem(StatusCode::BAD_GATEWAY, "content-store", "the content store failed"),
            );
        }
    };
    finish(node, account, counted, bytes_counter, ok_counter, reply)
}

/// The asset folder (`account/asset`), the path under it and what it asks the
/// packager for; `None` for any other path.
fn packaged_request(content: &ContentPath) -> Option<(ContentPath, &str, headwater_jit::Request<'_>)> {
    let mut parts = content.as_str().splitn(3, '/');
    let (account, asset, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let request = headwater_jit::Request::parse(rest)?;
    let dir = ContentPath::parse(&format!("{account}/{asset}")).ok()?;
    Some((dir, rest, request))
}

/// Sends `reply`, counting it.
fn finish(
    node: &Arc<Node>,
    account: Arc<str>,
    counted: bool,
    bytes_counter: &IntCounter,
    ok_counter: &IntCounter,
    reply: Reply,
) -> Response<Payload> {
    let res = respond(node, account.clone(), counted, bytes_counter.clone(), reply);
    if res.status() == StatusCode::OK {
        ok_counter.inc();
        res
    } else {
        count(node, &account, res)
    }
}

fn count(node: &Node, account: &str, res: Response<Payload>) -> Response<Payload> {
    node.metrics.requests.with_label_values(&[account, res.status().as_str()]).inc();
    res
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn respond(node: &Arc<Node>, account: Arc<str>, counted: bool, bytes: IntCounter, reply: Reply) -> Response<Payload> {
    let Reply { status, headers, body } = reply;
    let body = match body {
        None => Payload::Full(Bytes::new()),
        Some(b) => Payload::Content(Sent::new(node.clone(), account, counted, bytes), b),
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// A body for hyper, in pieces the shaper grants (see [`Sent::grant`]).
fn shaped(sent: Sent, body: Body) -> ResBody {
    let source = body.into_stream();
    struct St {
        sent: Sent,
        source: BoxStream<'static, Result<Bytes, ContentError>>,
        buf: Bytes,
        failed: bool,
    }
    let st = St { sent, source, buf: Bytes::new(), failed: false };
    let frames = stream::unfold(st, |mut st| async move {
        if st.failed {
            return None;
        }
        if st.buf.is_empty() {
            match st.source.next().await {
                Some(Ok(b)) => st.buf = b,
                Some(Err(e)) => {
                    st.failed = true;
                    return Some((Err(std::io::Error::other(e)), st));
                }
                None => return None,
            }
        }
        let granted = st.sent.grant(st.buf.len()).await;
        let piece = st.buf.split_to(granted);
        st.sent.record(piece.len());
        Some((Ok(Frame::data(piece)), st))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A response being sent: counted in flight until its body is dropped, when its
/// bytes go to the account's usage and metrics.
pub struct Sent {
    node: Arc<Node>,
    account: Arc<str>,
    /// Account content (test content is never counted as usage).
    counted: bool,
    bytes: u64,
    /// `bytes_total{account}`.
    counter: IntCounter,
    /// The player's request in the access log, finished when this drops.
    pub log: Option<Box<Pending>>,
}

impl Sent {
    fn new(node: Arc<Node>, account: Arc<str>, counted: bool, counter: IntCounter) -> Self {
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        node.metrics.in_flight.inc();
        Self { node, account, counted, bytes: 0, counter, log: None }
    }

    /// Waits until the shaper lets bytes of a `want`-byte piece go and says how
    /// many: all of them in one grant when the tokens are there and nobody waits,
    /// otherwise one [`CHUNK`], so waiting accounts interleave. The hot path is one
    /// shaper grant; usage and per-account metrics are recorded once, at the end.
    pub async fn grant(&self, want: usize) -> usize {
        let node = &self.node;
        if node.shaper.try_acquire(&self.account, want) {
            return want;
        }
        let n = want.min(CHUNK);
        let waited = Instant::now();
        node.shaper.acquire(&self.account, n).await;
        node.metrics.throttled_seconds.inc_by(waited.elapsed().as_secs_f64());
        n
    }

    /// Counts `n` bytes handed to the connection.
    pub fn record(&mut self, n: usize) {
        self.node.egress_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.bytes += n as u64;
        if let Some(p) = &mut self.log {
            p.sent(n as u64);
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.node.metrics.in_flight.dec();
        self.counter.inc_by(self.bytes);
        if self.counted {
            self.node.count_usage(&self.account, self.bytes, 1, now_ms());
        }
    }
}

fn metrics(node: &Node) -> Response<Payload> {
    let stats = node.files.stats();
    let m = &node.metrics;
    m.cache_hits.inc_by(stats.hits.saturating_sub(m.cache_hits.get()));
    m.cache_misses.inc_by(stats.misses.saturating_sub(m.cache_misses.get()));
    m.cache_bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    let jit = node.packager.stats();
    m.jit_hits.inc_by(jit.hits.saturating_sub(m.jit_hits.get()));
    m.jit_misses.inc_by(jit.misses.saturating_sub(m.jit_misses.get()));
    m.jit_bytes.set(i64::try_from(jit.bytes).unwrap_or(i64::MAX));
    let mut buf = Vec::new();
    if prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut buf).is_err() {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "metrics encoding failed");
    }
    let mut res = full(buf);
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a router forwards is the router's to log; a player saying it is
    /// a router is logged all the same when the node knows its routers.
    #[test]
    fn only_a_router_s_requests_go_unlogged() {
        let routers: Vec<ipnet::IpNet> = vec!["127.0.0.2/32".parse().unwrap()];
        let peer = |ip: &str, router: bool| Peer { addr: SocketAddr::new(ip.parse().unwrap(), 40000), router };
        let mut via = HeaderMap::new();
        via.insert(header::VIA, HeaderValue::from_static(headwater_protocol::ROUTER_VIA));
        assert!(via_router(peer("127.0.0.2", false), &via, &routers), "a router's address and Via");
        assert!(via_router(peer("192.0.2.9", true), &HeaderMap::new(), &routers), "a router's certificate");
        assert!(!via_router(peer("127.0.0.1", false), &via, &routers), "Via from a player");
        assert!(!via_router(peer("127.0.0.2", false), &HeaderMap::new(), &routers), "a router's address, no Via");
        let mut other = HeaderMap::new();
        other.insert(header::VIA, HeaderValue::from_static("1.1 some-cdn"));
        assert!(!via_router(peer("127.0.0.2", false), &other, &routers), "another proxy's Via");
        // Told of no router, the node takes the router's Via as it comes.
        assert!(via_router(peer("192.0.2.9", false), &via, &[]), "the router's Via, no routers known");
        assert!(!via_router(peer("192.0.2.9", false), &other, &[]), "another Via, no routers known");
    }
}
