//! Cross-cutting request handling: rate limits per principal and per IP
//! (governor), `Idempotency-Key` replay, and request metrics.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::Principal;
use super::problem::ApiError;
use crate::store::{IDEMPOTENCY_TTL_MS, IdempotencyStart};

/// Keyed limiters: one bucket per principal (customer, node, operator) for API
/// requests and another for uploads; one per client IP for requests without
/// valid credentials, and one for sign-ups.
pub struct RateLimits {
    per_principal: DefaultKeyedRateLimiter<String>,
    uploads: DefaultKeyedRateLimiter<String>,
    unauthenticated_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    signup_per_ip: DefaultKeyedRateLimiter<IpAddr>,
}

/// The rates of [`RateLimits`]; each bucket bursts to twice its rate.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// API requests a second per customer (all its keys), node or the operator.
    pub per_principal: NonZeroU32,
    /// File uploads a second per principal.
    pub uploads: NonZeroU32,
    /// Requests a second per client IP without valid credentials.
    pub unauthenticated: NonZeroU32,
    /// Sign-ups a minute per client IP (bursting to that many).
    pub signups_per_min: NonZeroU32,
}

impl RateLimits {
    pub fn new(r: Rates) -> Self {
        let twice = |n: NonZeroU32| n.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        let per_second = |n: NonZeroU32| Quota::per_second(n).allow_burst(twice(n));
        Self {
            per_principal: RateLimiter::keyed(per_second(r.per_principal)),
            uploads: RateLimiter::keyed(per_second(r.uploads)),
            unauthenticated_per_ip: RateLimiter::keyed(per_second(r.unauthenticated)),
            signup_per_ip: RateLimiter::keyed(Quota::per_minute(r.signups_per_min)),
        }
    }

    /// Drops buckets that are full again, so memory does not grow with callers.
    pub fn retain_recent(&self) {
        self.per_principal.retain_recent();
        self.uploads.retain_recent();
        self.unauthenticated_per_ip.retain_recent();
        self.signup_per_ip.retain_recent();
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

fn principal(req: &Request) -> Principal {
    req.extensions().get::<Principal>().copied().unwrap_or(Principal::Anonymous)
}

fn is_signup(req: &Request) -> bool {
    req.method() == Method::POST && req.uri().path() == "/v1/customers"
}

/// 429 before any work is done: sign-ups per IP; uploads and other requests per
/// authenticated principal (however its credential is spelled), requests without
/// valid credentials per IP. Runs after [`authenticate`](super::auth::authenticate).
pub async fn rate_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let upload = req.method() == Method::PUT && req.uri().path().contains("/assets/");
    let limits = &s.limits;
    let verdict = match (is_signup(&req), principal(&req).key(), client_ip(&req)) {
        (true, _, Some(ip)) => Some(limits.signup_per_ip.check_key(&ip)),
        (_, Some(who), _) if upload => Some(limits.uploads.check_key(&who)),
        (_, Some(who), _) => Some(limits.per_principal.check_key(&who)),
        (_, None, Some(ip)) => Some(limits.unauthenticated_per_ip.check_key(&ip)),
        (_, None, None) => None,
    };
    if let Some(Err(not_until)) = verdict {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        s.metrics.rate_limited.inc();
        return ApiError::RateLimited { retry_after_secs: wait.as_secs() + 1 }.into_response();
    }
    next.run(req).await
}

/// Marks a response that shows a secret once (an API key, a node token): its
/// `Idempotency-Key` is never answered with it again.
#[derive(Debug, Clone, Copy)]
pub struct ShownOnce(pub &'static str);

/// Replays the saved response of a mutating request whose `Idempotency-Key` was
/// seen before, from the same principal, with the same method, path and body;
/// refuses a reused key with a different request. Runs after authentication:
/// a request whose credentials failed stores nothing and replays nothing, and a
/// response that showed a secret is remembered as a refusal, never as the secret.
pub async fn idempotency(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let mutating = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let key = req.headers().get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let key = match (mutating, key) {
        (true, Some(Ok(k))) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        (true, Some(_)) => {
            return ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters, no spaces")
                .into_response();
        }
        _ => return next.run(req).await,
    };
    let scope = match (principal(&req), client_ip(&req)) {
        (p, _) if p.key().is_some() => p.key().unwrap_or_default(),
        // Sign-up is the one request without credentials.
        (Principal::Anonymous, Some(ip)) if is_signup(&req) => format!("ip:{ip}"),
        // Failed or missing credentials: the route answers 401, nothing is kept.
        _ => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, s.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::TooLarge.into_response(),
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path());
    h.update([0]);
    h.update(&bytes);
    let hash = h.finalize().to_vec();
    let now = s.clock.now_ms();
    let start = s.store.start_idempotent(&scope, &key, &hash, now, now - IDEMPOTENCY_TTL_MS).await;
    match start {
        Err(e) => ApiError::from(e).into_response(),
        Ok(IdempotencyStart::Mismatch) => ApiError::IdempotencyMismatch.into_response(),
        Ok(IdempotencyStart::InFlight) => ApiError::Conflict {
            detail: "a request with this Idempotency-Key is still being handled".into(),
            field: Some("Idempotency-Key".into()),
        }
        .into_response(),
        Ok(IdempotencyStart::Replay { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let ctype = if status.is_success() { "application/json" } else { "application/problem+json" };
            let mut res = (status, body).into_response();
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            res
        }
        Ok(IdempotencyStart::Run) => {
            let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
            let (parts, body) = res.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_else(|_| Bytes::new());
            // A secret is shown this once: what is kept is a refusal to show it again.
            let (status, kept) = match parts.extensions.get::<ShownOnce>() {
                Some(ShownOnce(what)) => {
                    let refusal = ApiError::SecretNotReplayed { what };
                    (StatusCode::CONFLICT, serde_json::to_string(&refusal.problem()).unwrap_or_default())
                }
                None => (parts.status, String::from_utf8_lossy(&bytes).into_owned()),
            };
            if let Err(e) = s.store.finish_idempotent(&scope, &key, status.as_u16(), &kept).await {
                tracing::error!(error = %e, "saving an idempotent response");
            }
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}

/// Counts requests by route and status and times them.
pub async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    s.metrics.requests.with_label_values(&[method.as_str(), &route, &status]).inc();
    s.metrics.latency.with_label_values(&[method.as_str(), &route]).observe(started.elapsed().as_secs_f64());
    res
}

/// Turns the bare answers of tower layers (413 from the body limit, 408 from the
/// timeout) into problems like every other error.
pub async fn layer_errors_as_problems(res: Response) -> Response {
    let is_problem =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return res;
    }
    match res.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge.into_response(),
        StatusCode::REQUEST_TIMEOUT => {
            let mut r = ApiError::Malformed { detail: "the request took too long; send it faster or smaller".into() }
                .into_response();
            *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
            r
        }
        _ => res,
    }
}
