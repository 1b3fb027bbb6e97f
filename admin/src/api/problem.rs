//! API errors as RFC 9457 problem details (`application/problem+json`). Every error
//! the API returns passes through [`ApiError`]'s one `IntoResponse`.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::domain::Invalid;
use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `/problems/invalid-value`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, where there is one (`offer.mbps`, `ip_allow[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The quota a `quota-exceeded` problem hit (`max_sla_mbps`, `max_accounts`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request body: {detail}")]
    Malformed { detail: String },
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Valid credentials of the wrong scope for the route.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A quota of the customer or the origin type would be passed.
    #[error("{detail}")]
    QuotaExceeded { quota: &'static str, field: Option<String>, detail: String },
    /// A replay of a request whose answer held a secret shown once.
    #[error(
        "the first request with this Idempotency-Key was answered with a secret ({what}), shown once and never kept; it is not replayed"
    )]
    SecretNotReplayed { what: &'static str },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{detail}")]
    Conflict { detail: String, field: Option<String> },
    #[error("request body too large")]
    TooLarge,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// An MP4 uploaded to a `jit` account that the packager cannot package.
    #[error("{detail}")]
    Unpackable { detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Invalid(Invalid::new(field, detail))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<String>) {
        match self {
            ApiError::Malformed { .. } => (StatusCode::BAD_REQUEST, "malformed-request", "Malformed request", None),
            ApiError::Invalid(i) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", "Invalid value", Some(i.field.clone()))
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", None)
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden", None),
            ApiError::QuotaExceeded { field, .. } => {
                (StatusCode::CONFLICT, "quota-exceeded", "Quota exceeded", field.clone())
            }
            ApiError::SecretNotReplayed { .. } => {
                (StatusCode::CONFLICT, "secret-not-replayed", "Secret not replayed", Some("Idempotency-Key".into()))
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found", None),
            ApiError::Conflict { field, .. } => (StatusCode::CONFLICT, "conflict", "Conflict", field.clone()),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Request body too large", None),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests", None),
            // A conflict with the request the key was first used for.
            ApiError::IdempotencyMismatch => (
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key reused",
                Some("Idempotency-Key".into()),
            ),
            ApiError::Unpackable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unpackable", "Cannot be packaged", Some("path".into()))
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", None),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, kind, title, field) = self.parts();
        let detail = match self {
            ApiError::Invalid(i) => i.detail.clone(),
            // Never leak internals; the log has them.
            ApiError::Internal(_) => "the server failed to handle the request; it has been logged".into(),
            other => other.to_string(),
        };
        let quota = match self {
            ApiError::QuotaExceeded { quota, .. } => Some((*quota).to_owned()),
            _ => None,
        };
        Problem {
            kind: format!("/problems/{kind}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            field,
            quota,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource".into()),
            StoreError::Conflict { field } => {
                ApiError::Conflict { detail: format!("{field} is already taken"), field: Some(field.into()) }
            }
            StoreError::InvalidState(detail) => ApiError::Conflict { detail, field: None },
            StoreError::Quota { quota, detail } => {
                let field = (quota == "max_total_sla_mbps").then(|| "offer.mbps".to_owned());
                ApiError::QuotaExceeded { quota, field, detail: format!("{detail}; ask the operator to raise it") }
            }
            StoreError::Constraint(detail) => ApiError::Conflict { detail, field: None },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "internal error");
        }
        let p = self.problem();
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(p)).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unauthorized(_) => {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

/// A JSON body whose errors are problems: 400 for syntax, 422 (naming the field)
/// for a value of the wrong shape, 413 past the size limit, 415 without JSON.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::Malformed { detail: e.body_text() }
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    return Err(ApiError::Malformed { detail: inner.to_string() });
                }
                let msg = inner.to_string();
                // A missing field is reported at its parent, and so is an unknown
                // one inside a tagged body; name the field itself.
                let name = msg.split('`').nth(1);
                let field = match name {
                    Some(f) if msg.starts_with("missing field") && path == "." => f.to_owned(),
                    Some(f) if msg.starts_with("missing field") => format!("{path}.{f}"),
                    Some(f) if msg.starts_with("unknown field") && path == "." => f.to_owned(),
                    _ => path,
                };
                let detail = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                Err(ApiError::invalid(field, detail))
            }
        }
    }
}

/// A query string whose errors are problems (422 naming the query).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." => "query".to_owned(),
                p => p,
            };
            ApiError::invalid(field, e.into_inner().to_string())
        })
    }
}
