//! One player request: resolve the account (path or Host), check it, pick a ready
//! node (the one sending the fewest of this account's responses, then power of two
//! choices on outstanding requests, skipping nodes that just failed), and stream
//! the node's answer back — or try the next node if this one fails before
//! answering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use rustls::pki_types::ServerName;

use crate::Mode;
use crate::table::Shared;
use headwater_serve::access_log::{AccessLog, Entry, Pending};

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How long a node that failed is skipped before admin notices.
const EJECT_MS: i64 = 5_000;
/// Time for a node to start answering.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct NodeStats {
    outstanding: AtomicU64,
    ejected_until: AtomicI64,
}

/// One account's series in `/metrics`, looked up once per request.
struct AccountMetrics {
    bytes: IntCounter,
    retries: IntCounter,
    upstream_errors: IntCounter,
    latency: Histogram,
}

/// The label of requests for accounts the table does not know, so unknown names
/// cannot grow the metrics without bound.
const UNKNOWN: &str = "-";

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    bytes: IntCounterVec,
    retries: IntCounterVec,
    upstream_errors: IntCounterVec,
    latency: HistogramVec,
    accounts: RwLock<HashMap<String, Arc<AccountMetrics>>>,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("headwater_router".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "player requests by account and status"),
            &["account", "status"],
        )?;
        let bytes = IntCounterVec::new(Opts::new("bytes_total", "body bytes sent to players"), &["account"])?;
        let retries =
            IntCounterVec::new(Opts::new("retries_total", "requests tried again on another node"), &["account"])?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("upstream_errors_total", "node failures seen (refused, reset, timeout, 5xx)"),
            &["account"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("response_seconds", "time from a player's request to the node's response headers")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["account"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { registry, requests, bytes, retries, upstream_errors, latency, accounts: RwLock::default() })
    }

    fn account(&self, name: &str) -> Arc<AccountMetrics> {
        if let Some(m) = self.accounts.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name) {
            return m.clone();
        }
        let m = Arc::new(AccountMetrics {
            bytes: self.bytes.with_label_values(&[name]),
            retries: self.retries.with_label_values(&[name]),
            upstream_errors: self.upstream_errors.with_label_values(&[name]),
            latency: self.latency.with_label_values(&[name]),
        });
        self.accounts.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned(), m.clone());
        m
    }
}

/// How a router serves, beside its routing table.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mode: Mode,
    /// Serve `{account}.DOMAIN` by Host too.
    pub domain: Option<String>,
    /// The address to connect to nodes from.
    pub source_ip: Option<std::net::IpAddr>,
    /// The bearer token `/metrics` asks for (off without one).
    pub metrics_token: Option<String>,
    /// The router's certificate of the node CA, for nodes that serve mutual TLS.
    pub credentials: Option<Arc<headwater_serve::mtls::Credentials>>,
    /// Where a record of each player request goes (none: not logged).
    pub access_log: Option<AccessLog>,
}

pub struct Router {
    table: Arc<Shared>,
    mode: Mode,
    domain: Option<String>,
    metrics_token: Option<String>,
    /// The pool of connections to nodes, and the certificate count it was made for.
    client: RwLock<(u64, Arc<NodeClient>)>,
    source_ip: Option<std::net::IpAddr>,
    credentials: Option<Arc<headwater_serve::mtls::Credentials>>,
    nodes: Mutex<HashMap<String, Arc<NodeStats>>>,
    /// The routing table version `nodes` was last pruned for: nodes that left
    /// the table leave the map, so it never grows with the fleet's history.
    pruned: AtomicU64,
    sending: Arc<Mutex<Sending>>,
    metrics: Metrics,
    access_log: Option<AccessLog>,
}

/// The node that answered a response, for its access record.
#[derive(Debug, Clone, Copy)]
struct AnsweredBy(Option<uuid::Uuid>);

/// Responses being sent (awaiting headers or streaming the body), per account
/// and node. Spreading an account evenly is what lets it reach its cap in a
/// shared pool, where each of N nodes holds it to 1/N.
type Sending = HashMap<String, HashMap<String, u64>>;

/// One response counted in [`Sending`] until dropped (with its body).
struct SendingGuard {
    sending: Arc<Mutex<Sending>>,
    key: (String, String),
}

impl Drop for SendingGuard {
    fn drop(&mut self) {
        let mut m = self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (account, node) = &self.key;
        if let Some(nodes) = m.get_mut(account) {
            if let Some(n) = nodes.get_mut(node) {
                *n -= 1;
                if *n == 0 {
                    nodes.remove(node);
                }
            }
            if nodes.is_empty() {
                m.remove(account);
            }
        }
    }
}

type NodeClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for nodes: plain HTTP, or mutual TLS with the router's certificate
/// where the table gives a node's TLS address (its certificate must name the
/// node the table puts there).
fn node_client(
    table: &Arc<Shared>,
    source_ip: Option<std::net::IpAddr>,
    credentials: Option<&Arc<headwater_serve::mtls::Credentials>>,
) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(source_ip);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let tls = match credentials {
        Some(c) => c.node_client_config(),
        None => headwater_serve::mtls::anonymous_node_client_config(),
    };
    let names = table.clone();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .with_server_name_resolver(move |uri: &Uri| {
            let at = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            match names.get().tls_nodes.get(at) {
                Some(id) => ServerName::try_from(headwater_serve::mtls::node_name(*id)).map_err(|e| e.to_string()),
                None => Err(format!("{at} is no node of the routing table")),
            }
        })
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Body> {
    let mut res = headwater_serve::problem(status, kind, detail).map(full);
    headwater_serve::cors(res.headers_mut());
    res
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Router {
    /// One attempt on one node; a failure (refused, reset, timeout, 5xx) ejects it
    /// for a while.
    async fn forward(
        &self,
        account: &AccountMetrics,
        node: &str,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Response<Incoming>, ()> {
        let uri = format!("{node}{path}").parse::<Uri>().map_err(|_| ())?;
        let mut up = Request::new(Empty::<Bytes>::new());
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        let stats = self.stats(node);
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        let client = self.client();
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(up)).await;
        stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        let why = match answer {
            Ok(Ok(res)) if !res.status().is_server_error() => return Ok(res),
            Ok(Ok(res)) => format!("status {}", res.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timeout".to_owned(),
        };
        tracing::warn!(%node, %why, "node failed; trying another");
        account.upstream_errors.inc();
        stats.ejected_until.store(now_ms() + EJECT_MS, Ordering::Relaxed);
        Err(())
    }

    pub fn new(table: Arc<Shared>, options: Options) -> Result<Self, prometheus::Error> {
        let Options { mode, domain, source_ip, metrics_token, credentials, access_log } = options;
        let client = RwLock::new((0, Arc::new(node_client(&table, source_ip, credentials.as_ref()))));
        Ok(Self {
            table,
            mode,
            domain,
            metrics_token,
            client,
            source_ip,
            credentials,
            nodes: Mutex::default(),
            pruned: AtomicU64::new(0),
            sending: Arc::default(),
            metrics: {
                let m = Metrics::new()?;
                if let Some(log) = &access_log {
                    m.registry.register(Box::new(log.dropped()))?;
                }
                m
            },
            access_log,
        })
    }

    /// The pool of connections to nodes, made again once after each new certificate.
    fn client(&self) -> Arc<NodeClient> {
        let certificates = self.table.certificates.load(Ordering::Relaxed);
        {
            let current = self.client.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.0 == certificates {
                return current.1.clone();
            }
        }
        let mut current = self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != certificates {
            *current = (certificates, Arc::new(node_client(&self.table, self.source_ip, self.credentials.as_ref())));
        }
        current.1.clone()
    }

    /// Forgets the stats of nodes no longer in `table` (once per table version).
    fn prune(&self, table: &crate::table::Table) {
        // A read on the hot path; the write only when the table changed.
        if self.pruned.load(Ordering::Relaxed) == table.version
            || self.pruned.swap(table.version, Ordering::Relaxed) == table.version
        {
            return;
        }
        let live: std::collections::HashSet<&str> =
            table.accounts.values().flat_map(|a| a.nodes.iter().map(String::as_str)).collect();
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|addr, _| live.contains(addr.as_str()));
    }

    fn stats(&self, addr: &str) -> Arc<NodeStats> {
        let mut m = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = m.get(addr) {
            return s.clone();
        }
        m.entry(addr.to_owned()).or_default().clone()
    }

    /// The order to try nodes in for `account`: first a healthy node sending the
    /// fewest of the account's responses (of two such, the one with fewer
    /// outstanding requests), then the other healthy ones, then the ejected ones
    /// as a last resort.
    fn order(&self, account: &str, nodes: &[String]) -> Vec<String> {
        let now = now_ms();
        let stats: Vec<_> = nodes.iter().map(|a| (a, self.stats(a))).collect();
        let (mut healthy, ejected): (Vec<_>, Vec<_>) =
            stats.into_iter().partition(|(_, s)| s.ejected_until.load(Ordering::Relaxed) <= now);
        if healthy.len() >= 2 {
            let sending = self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mine = sending.get(account);
            let loads: Vec<(u64, u64)> = healthy
                .iter()
                .map(|(addr, s)| {
                    let n = mine.and_then(|m| m.get(addr.as_str())).copied().unwrap_or(0);
                    (n, s.outstanding.load(Ordering::Relaxed))
                })
                .collect();
            drop(sending);
            let first = choose(&loads, rand::random_range(0..usize::MAX));
            healthy.swap(0, first);
        }
        healthy.into_iter().chain(ejected).map(|(a, _)| a.clone()).collect()
    }

    /// Counts a response of `account` from `node` until the guard is dropped.
    fn sending(&self, account: &str, node: &str) -> SendingGuard {
        let mut m = self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry(account.to_owned()).or_default().entry(node.to_owned()).or_default() += 1;
        drop(m);
        SendingGuard { sending: self.sending.clone(), key: (account.to_owned(), node.to_owned()) }
    }

    pub async fn handle(self: &Arc<Self>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/healthz" => return Response::new(full("ok\n")),
            "/readyz" => {
                let ready = self.table.get().version != 0;
                let mut res = Response::new(full(if ready { "ready\n" } else { "no routing table yet\n" }));
                if !ready {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                return res;
            }
            "/metrics" => {
                // It names every account: for the scraper's token only.
                let allowed =
                    self.metrics_token.as_deref().is_some_and(|t| headwater_serve::bearer_is(req.headers(), t));
                if !allowed {
                    return headwater_serve::metrics_refused(self.metrics_token.is_some()).map(full);
                }
                let mut buf = Vec::new();
                let _ = prometheus::TextEncoder::new().encode(&self.metrics.registry.gather(), &mut buf);
                return Response::new(full(buf));
            }
            _ => {}
        }
        // The account: from the Host (`{account}.{domain}`) or the first path segment.
        // HTTP/1.1 sends `Host`; HTTP/2 the request's authority.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(|h| h.split(':').next().unwrap_or(h));
        let table = self.table.get();
        // `{account}.{domain}`, then an account's own domain (never one under
        // the router's domain: those names are the platform's).
        let by_host = match (&self.domain, host) {
            (Some(d), Some(h)) => {
                h.strip_suffix(d.as_str()).and_then(|a| a.strip_suffix('.')).filter(|a| !a.contains('.'))
            }
            _ => None,
        };
        let under_domain = |h: &str| self.domain.as_deref().is_some_and(|d| h == d || h.ends_with(&format!(".{d}")));
        let by_host = by_host.or_else(|| {
            host.filter(|h| !table.domains.is_empty() && !under_domain(h))
                .and_then(|h| match table.domains.get(h) {
                    Some(d) => Some(d),
                    None => table.domains.get(&h.to_ascii_lowercase()),
                })
                .map(|(a, _)| a.as_str())
        });
        let (account, path) = match by_host {
            Some(a) => (a.to_owned(), format!("/{a}{}", req.uri().path())),
            None => {
                let p = req.uri().path();
                let a = p.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
                (a, p.to_owned())
            }
        };
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let allowed = table.accounts.get(&account).map_or(&[][..], |a| a.allow_origins.as_slice());
        let origin = req.headers().get(header::ORIGIN);
        if req.method() == Method::OPTIONS {
            // CORS preflight: answered here, as a browser asks it before the
            // request that gets the real answer.
            let mut res = headwater_serve::preflight().map(full);
            headwater_serve::cors_for(res.headers_mut(), allowed, origin);
            return res;
        }
        let known = table.accounts.contains_key(&account);
        let label = if known { account.as_str() } else { UNKNOWN };
        let metrics = self.metrics.account(label);
        let started = Instant::now();
        let at_ms = now_ms();
        let res = self.route(&table, &metrics, peer, &req, &account, &path_and_query).await;
        metrics.latency.observe(started.elapsed().as_secs_f64());
        self.metrics.requests.with_label_values(&[label, res.status().as_str()]).inc();
        let (mut parts, body) = res.into_parts();
        // The account's CORS policy, whatever the node said.
        headwater_serve::cors_for(&mut parts.headers, allowed, origin);
        let mut record = match &self.access_log {
            // In redirect mode the node a player is sent to logs what it
            // serves; the router logs only what it answers itself.
            Some(log) if known && !(self.mode == Mode::Redirect && parts.status == StatusCode::FOUND) => {
                let entry = Entry {
                    at_ms,
                    path: logged_path(&path_and_query),
                    account: account.into(),
                    method: req.method().clone(),
                    status: parts.status.as_u16(),
                    bytes: 0,
                    duration_ms: 0,
                    client: peer.ip(),
                    user_agent: req.headers().get(header::USER_AGENT).cloned(),
                    node: parts.extensions.get::<AnsweredBy>().and_then(|a| a.0),
                    cache_hit: parts
                        .headers
                        .get(headwater_protocol::CACHE_HEADER)
                        .map(|v| v.as_bytes().eq_ignore_ascii_case(b"hit")),
                };
                Some(Pending::new(log.clone(), entry, started))
            }
            _ => None,
        };
        let bytes = metrics.bytes.clone();
        let body = body
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    bytes.inc_by(d.len() as u64);
                    if let Some(r) = &mut record {
                        r.sent(d.len() as u64);
                    }
                }
                f
            })
            .boxed_unsync();
        Response::from_parts(parts, body)
    }

    async fn route(
        self: &Arc<Self>,
        table: &crate::table::Table,
        metrics: &Arc<AccountMetrics>,
        peer: SocketAddr,
        req: &Request<Incoming>,
        account: &str,
        path: &str,
    ) -> Response<Body> {
        self.prune(table);
        let Some(a) = table.accounts.get(account) else {
            return problem(StatusCode::NOT_FOUND, "not-found", "no such account");
        };
        if !a.active {
            return problem(StatusCode::GONE, "gone", "the account is deactivated");
        }
        if !a.allows(peer.ip()) {
            return problem(StatusCode::FORBIDDEN, "forbidden", "your address is not allowed for this account");
        }
        // The CDN's secret or a signed URL's token, checked here (and again by
        // the node, which serves direct and redirected players too).
        let only_path = path.split_once('?').map_or(path, |(p, _)| p);
        let (token, unsigned) = headwater_playback::split(only_path);
        let rest = unsigned.trim_start_matches('/').split_once('/').map_or("", |(_, r)| r);
        // Decoded once, as the node reads the file's path.
        let rest = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
        let rest = rest.as_ref();
        let cdn = req.headers().get(headwater_playback::CDN_HEADER).map(HeaderValue::as_bytes);
        let allowed = headwater_playback::check_cdn(&a.cdn_secrets, cdn).and_then(|via_cdn| {
            // The CDN checks its own viewers; anyone else needs the token.
            if via_cdn {
                return Ok(());
            }
            headwater_playback::check(account, a.playback.as_ref(), token, rest, peer.ip(), now_ms() as u64 / 1000)
        });
        if let Err(refused) = allowed {
            return problem(StatusCode::FORBIDDEN, refused.kind(), refused.detail());
        }
        if a.nodes.is_empty() {
            return problem(StatusCode::SERVICE_UNAVAILABLE, "no-node", "no node is ready for this account yet");
        }
        let method = req.method().clone();
        if self.mode == Mode::Redirect {
            let node = &self.order(account, &a.nodes)[0];
            let plain = table.plain.get(node).map_or(node.as_str(), String::as_str);
            let mut res = Response::new(full(""));
            *res.status_mut() = StatusCode::FOUND;
            if let Ok(v) = HeaderValue::from_str(&format!("http://{plain}{path}")) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            headwater_serve::cors(res.headers_mut());
            return res;
        }
        if !matches!(method, Method::GET | Method::HEAD) {
            return problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "only GET, HEAD and OPTIONS");
        }
        // A GET or HEAD with a body is the player's mistake (or an attack): it is
        // refused here, never forwarded half, so no node waits for a body that
        // never comes and is then taken for a failed node.
        if !hyper::body::Body::is_end_stream(req.body()) {
            return problem(StatusCode::BAD_REQUEST, "bad-request", "GET and HEAD requests carry no body");
        }
        let headers = upstream_headers(req.headers(), peer);
        let mut order = self.order(account, &a.nodes).into_iter();
        let mut attempt = 0;
        while let Some(node) = order.next() {
            if attempt > 0 {
                metrics.retries.inc();
            }
            attempt += 1;
            let guard = self.sending(account, &node);
            match self.forward(metrics, &node, &method, path, &headers).await {
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    for h in HOP_BY_HOP {
                        parts.headers.remove(h);
                    }
                    parts.headers.insert(header::VIA, HeaderValue::from_static(headwater_protocol::ROUTER_VIA));
                    parts.extensions.insert(AnsweredBy(table.ids.get(&node).copied()));
                    let resume = Resume::plan(&method, &parts, path, headers, order.collect());
                    let body = match resume {
                        Some(r) => resumable(self.clone(), metrics.clone(), body, r),
                        None => body.map_err(Into::into).boxed_unsync(),
                    };
                    // Counted as sending until the body is done (or dropped).
                    let body = body
                        .map_frame(move |frame| {
                            let _sending = &guard;
                            frame
                        })
                        .boxed_unsync();
                    return Response::from_parts(parts, body);
                }
                Err(_) => continue,
            }
        }
        problem(StatusCode::BAD_GATEWAY, "no-node-answered", "every node of the account failed")
    }
}

/// The path under the account as the access log keeps it: no query, no
/// playback token (it is a credential).
fn logged_path(path_and_query: &str) -> String {
    let path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    let (_, unsigned) = headwater_playback::split(path);
    headwater_serve::access_log::path_under(&unsigned).to_owned()
}

/// The headers sent to a node for a player's request: the player's, less those of
/// its connection (hop-by-hop, and any its `Connection` header names) and of its
/// framing (`Content-Length`, `Transfer-Encoding`, `Expect`: the router sends no
/// body and frames its own request), with `X-Forwarded-For` extended and `Via`.
fn upstream_headers(from: &http::HeaderMap, peer: SocketAddr) -> http::HeaderMap {
    const FRAMING: [&str; 4] = ["content-length", "transfer-encoding", "expect", "x-forwarded-for"];
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = http::HeaderMap::with_capacity(from.len() + 2);
    for (k, v) in from {
        let name = k.as_str();
        if k != header::HOST
            && !HOP_BY_HOP.contains(&name)
            && !FRAMING.contains(&name)
            && !named.iter().any(|n| n == name)
        {
            headers.append(k.clone(), v.clone());
        }
    }
    let forwarded_for = match from.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(header::VIA, HeaderValue::from_static(headwater_protocol::ROUTER_VIA));
    headers
}

/// How to finish a body on another node if the one sending it dies mid-way: ask
/// the next nodes for the rest with `Range` + `If-Range` (same ETag, so the same
/// bytes), so a player never sees a truncated segment.
struct Resume {
    path: String,
    headers: http::HeaderMap,
    /// The nodes not yet tried.
    others: Vec<String>,
    /// First byte of the body in the file, and the file's last byte.
    start: u64,
    end: u64,
    etag: HeaderValue,
}

impl Resume {
    fn plan(
        method: &Method,
        parts: &http::response::Parts,
        path: &str,
        headers: http::HeaderMap,
        others: Vec<String>,
    ) -> Option<Self> {
        if method != Method::GET || others.is_empty() {
            return None;
        }
        let etag = parts.headers.get(header::ETAG)?.clone();
        let (start, end) = match parts.status {
            StatusCode::OK => {
                let len: u64 = parts.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
                (0, len.checked_sub(1)?)
            }
            StatusCode::PARTIAL_CONTENT => {
                // bytes a-b/total
                let v = parts.headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
                let (a, b) = v.strip_prefix("bytes ")?.split('/').next()?.split_once('-')?;
                (a.parse().ok()?, b.parse().ok()?)
            }
            _ => return None,
        };
        Some(Self { path: path.to_owned(), headers, others, start, end, etag })
    }
}

fn resumable(router: Arc<Router>, metrics: Arc<AccountMetrics>, body: Incoming, plan: Resume) -> Body {
    struct St {
        router: Arc<Router>,
        metrics: Arc<AccountMetrics>,
        body: Incoming,
        plan: Resume,
        sent: u64,
        done: bool,
    }
    let st = St { router, metrics, body, plan, sent: 0, done: false };
    let frames = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        st.sent += d.len() as u64;
                    }
                    return Some((Ok(frame), st));
                }
                None => return None,
                Some(Err(e)) => {
                    let from = st.plan.start + st.sent;
                    tracing::warn!(error = %e, from, "node failed mid-body; resuming on another node");
                    st.metrics.upstream_errors.inc();
                    let mut resumed = None;
                    while let Some(node) = (!st.plan.others.is_empty()).then(|| st.plan.others.remove(0)) {
                        let mut headers = st.plan.headers.clone();
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-{}", st.plan.end)) {
                            headers.insert(header::RANGE, v);
                        }
                        headers.insert(header::IF_RANGE, st.plan.etag.clone());
                        st.metrics.retries.inc();
                        if let Ok(res) =
                            st.router.forward(&st.metrics, &node, &Method::GET, &st.plan.path, &headers).await
                            && res.status() == StatusCode::PARTIAL_CONTENT
                        {
                            resumed = Some(res.into_body());
                            break;
                        }
                    }
                    match resumed {
                        Some(b) => st.body = b,
                        None => {
                            st.done = true;
                            return Some((Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>), st));
                        }
                    }
                }
            }
        }
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// Which of `loads` (this account's responses being sent, outstanding requests;
/// per healthy node) to try first: among the nodes sending the fewest of the
/// account's responses, the less loaded of two picked by `seed`.
fn choose(loads: &[(u64, u64)], seed: usize) -> usize {
    let fewest = loads.iter().map(|l| l.0).min().unwrap_or(0);
    let ties: Vec<usize> = (0..loads.len()).filter(|&k| loads[k].0 == fewest).collect();
    match ties.len() {
        0 => 0,
        1 => ties[0],
        n => {
            let i = seed % n;
            let j = (i + 1 + (seed / n) % (n - 1)) % n;
            if loads[ties[i]].1 <= loads[ties[j]].1 { ties[i] } else { ties[j] }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{choose, logged_path};

    #[test]
    fn the_logged_path_has_no_token_and_no_query() {
        assert_eq!(logged_path("/ana/demo/hls/master.m3u8?x=1"), "demo/hls/master.m3u8");
        assert_eq!(logged_path("/ana/~hw1.k.1.p.i.sig/demo/seg.ts"), "demo/seg.ts");
        assert_eq!(logged_path("/ana/~asset/a.ts"), "~asset/a.ts");
    }

    #[test]
    fn framing_and_connection_headers_are_rebuilt_not_copied() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("content-length", "1"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("host", "player.example"),
            ("x-forwarded-for", "198.51.100.7"),
            ("range", "bytes=0-99"),
            ("if-none-match", "\"e\""),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let out = super::upstream_headers(&h, "203.0.113.9:4000".parse().unwrap());
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["if-none-match", "range", "via", "x-forwarded-for"]);
        assert_eq!(out["x-forwarded-for"], "198.51.100.7, 203.0.113.9");
    }

    #[test]
    fn stats_of_nodes_that_left_the_table_are_forgotten() {
        use crate::table::{Account, Table};
        let table = |version: u64, nodes: &[&str]| {
            let account = Account {
                active: true,
                allow: vec![],
                allow_origins: vec![],
                nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
                playback: None,
                cdn_secrets: vec![],
            };
            Table {
                version,
                digest: version.to_string(),
                accounts: [("a".to_owned(), account)].into(),
                nodes: Default::default(),
                domains: Default::default(),
                tls_nodes: Default::default(),
                plain: Default::default(),
                ids: Default::default(),
                node_ca: None,
            }
        };
        let router = super::Router::new(Default::default(), super::Options::default()).unwrap();
        for n in ["127.0.0.1:1", "127.0.0.1:2"] {
            router.stats(n);
        }
        router.prune(&table(1, &["127.0.0.1:1", "127.0.0.1:2"]));
        assert_eq!(router.nodes.lock().unwrap().len(), 2);
        router.prune(&table(2, &["127.0.0.1:2"]));
        let left: Vec<String> = router.nodes.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, ["127.0.0.1:2"]);
    }

    #[test]
    fn the_node_sending_the_fewest_of_the_accounts_responses_goes_first() {
        // Node 1 sends none of this account's responses: it wins whatever its load.
        assert_eq!(choose(&[(2, 0), (0, 50), (1, 0)], 7), 1);
        for seed in 0..100 {
            // A tie on the account: the less loaded of the two picked.
            assert_eq!(choose(&[(1, 9), (1, 3)], seed), 1, "seed {seed}");
            // Three tied: never the most loaded one (it loses either pair).
            assert_ne!(choose(&[(0, 1), (0, 9), (0, 2)], seed), 1, "seed {seed}");
            // Never an index out of range, never one with more of the account.
            let k = choose(&[(3, 0), (0, 4), (0, 4), (5, 0)], seed);
            assert!(k == 1 || k == 2, "seed {seed}: {k}");
        }
        // Every tied node gets picked first for some seed (no node starves).
        let firsts: std::collections::HashSet<usize> = (0..100).map(|s| choose(&[(0, 0), (0, 0), (0, 0)], s)).collect();
        assert_eq!(firsts.len(), 3);
    }
}
