//! Sign-up and the customer's own keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use uuid::Uuid;

use super::AppState;
use super::auth::CustomerAuth;
use super::middleware::ShownOnce;
use super::model::{CreateCustomer, Customer, CustomerCreated, NewApiKey};
use super::problem::{ApiError, ApiJson, Problem};
use crate::clock::rfc3339;
use crate::domain::{parse_customer_name, parse_email};
use crate::keys;

/// Signs up a customer and returns its first API key (shown once).
#[utoipa::path(post, path = "/v1/customers", tag = "customers", request_body = CreateCustomer,
    responses((status = 201, body = CustomerCreated), (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn create_customer(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<(StatusCode, Extension<ShownOnce>, Json<CustomerCreated>), ApiError> {
    let name = parse_customer_name(&body.name)?;
    let email = parse_email(&body.email)?;
    let key = keys::generate();
    let c = s.store.create_customer(&name, &email, &key, s.clock.now_ms()).await?;
    Ok((
        StatusCode::CREATED,
        Extension(ShownOnce("an API key")),
        Json(CustomerCreated {
            id: c.id,
            name: c.name,
            email: c.email,
            api_key: key.plaintext,
            created_at: rfc3339(c.created_at),
        }),
    ))
}

/// The calling customer, with its keys (never their secrets).
#[utoipa::path(get, path = "/v1/customers/me", tag = "customers", security(("bearer" = [])),
    responses((status = 200, body = Customer), (status = 401, body = Problem)))]
pub async fn me(State(s): State<AppState>, auth: CustomerAuth) -> Result<Json<Customer>, ApiError> {
    let c = s.store.customer(auth.customer_id).await?;
    let keys = s.store.api_keys(auth.customer_id).await?;
    Ok(Json(Customer::new(c, &keys)))
}

/// Adds an API key (shown once).
#[utoipa::path(post, path = "/v1/customers/me/keys", tag = "customers", security(("bearer" = [])),
    responses((status = 201, body = NewApiKey), (status = 401, body = Problem)))]
pub async fn create_key(
    State(s): State<AppState>,
    auth: CustomerAuth,
) -> Result<(StatusCode, Extension<ShownOnce>, Json<NewApiKey>), ApiError> {
    let key = keys::generate();
    let now = s.clock.now_ms();
    s.store.add_api_key(auth.customer_id, &key, now).await?;
    let created = NewApiKey { id: key.id, api_key: key.plaintext, created_at: rfc3339(now) };
    Ok((StatusCode::CREATED, Extension(ShownOnce("an API key")), Json(created)))
}

/// Revokes a key: it stops working at once.
#[utoipa::path(delete, path = "/v1/customers/me/keys/{id}", tag = "customers", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "key id")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_key(
    State(s): State<AppState>,
    auth: CustomerAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::NotFound(format!("key {id}")))?;
    s.store.revoke_api_key(auth.customer_id, id, s.clock.now_ms()).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::NotFound(format!("key {id}")),
        other => other.into(),
    })?;
    Ok(StatusCode::NO_CONTENT)
}
