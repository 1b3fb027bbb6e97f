//! Who is calling: a customer by API key, or the operator by token. Both are
//! `Authorization: Bearer …`, compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use super::AppState;
use super::problem::ApiError;
use crate::keys;

/// A customer authenticated by one of its keys.
#[derive(Debug, Clone, Copy)]
pub struct CustomerAuth {
    pub customer_id: Uuid,
    pub key_id: Uuid,
}

/// The operator, authenticated by `HEADWATER_OPERATOR_TOKEN`.
#[derive(Debug, Clone, Copy)]
pub struct OperatorAuth;

/// Either kind of caller, for routes both may use.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    Customer(CustomerAuth),
    Operator,
}

impl Caller {
    /// The customer whose resources this caller may see; `None` means all (operator).
    pub fn customer_scope(self) -> Option<Uuid> {
        match self {
            Caller::Customer(c) => Some(c.customer_id),
            Caller::Operator => None,
        }
    }

    /// How the caller is named in the event trail.
    pub fn actor(self) -> String {
        match self {
            Caller::Customer(c) => format!("customer:{}", c.customer_id),
            Caller::Operator => "operator".into(),
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization: Bearer header"))?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized("expected Authorization: Bearer <token>"))
}

async fn customer(token: &str, state: &AppState) -> Result<CustomerAuth, ApiError> {
    let bad = ApiError::Unauthorized("invalid or revoked API key");
    let (key_id, secret) = keys::parse(token).ok_or(ApiError::Unauthorized("invalid or revoked API key"))?;
    let row = state.store.api_key(key_id).await?;
    match row {
        Some(k) if k.revoked_at.is_none() && keys::verify(secret, &k.secret_hash) => {
            Ok(CustomerAuth { customer_id: k.customer_id, key_id })
        }
        _ => Err(bad),
    }
}

fn operator(token: &str, state: &AppState) -> Result<OperatorAuth, ApiError> {
    if keys::tokens_equal(token, &state.settings.operator_token) {
        Ok(OperatorAuth)
    } else {
        Err(ApiError::Unauthorized("invalid operator token"))
    }
}

impl FromRequestParts<AppState> for CustomerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        customer(bearer(parts)?, state).await
    }
}

impl FromRequestParts<AppState> for OperatorAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        operator(bearer(parts)?, state)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with("hw_") {
            customer(token, state).await.map(Caller::Customer)
        } else {
            operator(token, state).map(|_| Caller::Operator)
        }
    }
}
