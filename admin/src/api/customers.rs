//! Sign-up and the customer's own keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use uuid::Uuid;

use super::AppState;
use super::auth::{CustomerAuth, OperatorAuth};
use super::middleware::ShownOnce;
use super::model::{CreateCustomer, Customer, CustomerCreated, CustomerSummary, NewApiKey, Page, PageQuery};
use super::problem::{ApiError, ApiJson, ApiQuery, Problem};
use super::quotas::{self, QuotaSettings, Quotas};
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
    let (c, q) = quotas::effective(&s, auth.customer_id).await?;
    let keys = s.store.api_keys(auth.customer_id).await?;
    let quotas = Quotas::new(&c, &q, s.store.quota_use(auth.customer_id).await?);
    Ok(Json(Customer {
        id: c.id,
        name: c.name,
        email: c.email,
        created_at: rfc3339(c.created_at),
        keys: keys.iter().map(Into::into).collect(),
        quotas,
    }))
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

/// A customer as the operator sees it: with its quotas and what it holds.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub quotas: Quotas,
}

async fn view(s: &AppState, id: Uuid) -> Result<CustomerView, ApiError> {
    let (c, q) = quotas::effective(s, id).await?;
    let used = s.store.quota_use(id).await?;
    let quotas = Quotas::new(&c, &q, used);
    Ok(CustomerView { id: c.id, name: c.name, email: c.email, created_at: rfc3339(c.created_at), quotas })
}

fn customer_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::NotFound(format!("customer {id}")))
}

/// Customers, in sign-up order (operator).
#[utoipa::path(get, path = "/v1/customers", tag = "customers", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<CustomerSummary>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_customers(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<CustomerSummary>>, ApiError> {
    let limit = q.limit()?;
    let rows = s.store.customers(q.cursor, limit).await?;
    let items = rows.into_iter().map(CustomerSummary::from).collect();
    Ok(Json(Page::of(items, limit, |c: &CustomerSummary| c.id.to_string())))
}

/// One customer with its quotas and what it holds against them (operator).
#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = CustomerView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_customer(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    let id = customer_id(&id)?;
    view(&s, id).await.map(Json).map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::NotFound(format!("customer {id}")),
        other => other,
    })
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuotas {
    pub quotas: QuotaSettings,
}

/// Sets a customer's own quotas (operator): the object replaces its overrides, a
/// field left out or `null` takes the default.
#[utoipa::path(patch, path = "/v1/customers/{id}", tag = "customers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = SetQuotas,
    responses((status = 200, body = CustomerView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn set_customer_quotas(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetQuotas>,
) -> Result<Json<CustomerView>, ApiError> {
    let id = customer_id(&id)?;
    let overrides = body.quotas.parse()?;
    s.store.set_quotas(id, &overrides, "operator", s.clock.now_ms()).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::NotFound(format!("customer {id}")),
        other => other.into(),
    })?;
    Ok(Json(view(&s, id).await?))
}
