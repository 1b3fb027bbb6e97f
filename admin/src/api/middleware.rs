//! Cross-cutting request handling: per-key and per-IP rate limits (governor),
//! `Idempotency-Key` replay, and request metrics.

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
use super::problem::ApiError;
use crate::store::IdempotencyStart;

/// Keyed limiters: one bucket per API key (or token), one per client IP for sign-up.
pub struct RateLimits {
    per_key: DefaultKeyedRateLimiter<String>,
    signup_per_ip: DefaultKeyedRateLimiter<IpAddr>,
}

impl RateLimits {
    /// `per_key_per_sec` requests a second per key (bursting to twice that), and
    /// `signups_per_min` sign-ups a minute per IP (bursting to that many).
    pub fn new(per_key_per_sec: NonZeroU32, signups_per_min: NonZeroU32) -> Self {
        let burst = per_key_per_sec.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        Self {
            per_key: RateLimiter::keyed(Quota::per_second(per_key_per_sec).allow_burst(burst)),
            signup_per_ip: RateLimiter::keyed(Quota::per_minute(signups_per_min)),
        }
    }

    /// Drops buckets that are full again, so memory does not grow with callers.
    pub fn retain_recent(&self) {
        self.per_key.retain_recent();
        self.signup_per_ip.retain_recent();
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

/// A short digest of the bearer token: enough to key a bucket or an idempotency
/// record, without keeping the token itself in memory or in the store.
fn token_digest(req: &Request) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?;
    Some(hex::encode(&Sha256::digest(v.as_bytes())[..16]))
}

pub async fn rate_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // Uploads are bounded by their size and timeout; a packaged asset is hundreds of
    // files, so they are not counted against the key's request rate.
    let upload = req.method() == Method::PUT && req.uri().path().contains("/assets/");
    let verdict = if upload {
        None
    } else if req.method() == Method::POST && req.uri().path() == "/v1/customers" {
        client_ip(&req).map(|ip| s.limits.signup_per_ip.check_key(&ip))
    } else {
        token_digest(&req).map(|k| s.limits.per_key.check_key(&k))
    };
    if let Some(Err(not_until)) = verdict {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        s.metrics.rate_limited.inc();
        return ApiError::RateLimited { retry_after_secs: wait.as_secs() + 1 }.into_response();
    }
    next.run(req).await
}

/// Replays the saved response of a mutating request whose `Idempotency-Key` was
/// seen before with the same method, path and body; refuses a reused key with a
/// different request.
pub async fn idempotency(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let mutating = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let key = req.headers().get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let key = match (mutating, key) {
        (true, Some(Ok(k))) if !k.is_empty() && k.len() <= 255 => k,
        (true, Some(_)) => {
            return ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters").into_response();
        }
        _ => return next.run(req).await,
    };
    let principal = match (token_digest(&req), client_ip(&req)) {
        (Some(t), _) => format!("token:{t}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_owned(),
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
    let start = s.store.start_idempotent(&principal, &key, &hash, s.clock.now_ms()).await;
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
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = s.store.finish_idempotent(&principal, &key, parts.status.as_u16(), &text).await {
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
