//! Accounts and their operations. Every change answers 202 with the operation that
//! carries it out; the account's desired state is written in the same transaction.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, CustomerAuth};
use super::model::{
    Account, AccountAccepted, AccountsQuery, CreateAccount, OfferBody, Operation, Page, UpdateAccount, page_limit,
};
use super::problem::{ApiError, ApiJson, ApiQuery, Problem};
use super::quotas::{self, Effective};
use crate::domain::{AccountName, AllowOrigins, IpAllow, Offer, OriginTypeName};
use crate::states::{OperationKind, OperationState};
use crate::store::{AccountChange, AccountRow, NewAccount, NewOperation, OperationFilter, OperationQuery, StoreError};

/// Availability is the share of admin's probes that succeeded over this window.
pub const AVAILABILITY_WINDOW_MS: i64 = 5 * 60 * 1000;

fn not_found(name: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("account {name}")),
        other => other.into(),
    }
}

async fn type_of(s: &AppState, origin_type: &str) -> Result<crate::store::OriginTypeRow, ApiError> {
    s.store.origin_type(origin_type).await?.ok_or_else(|| ApiError::NotFound(format!("origin type {origin_type}")))
}

/// An offer valid for the type (its SLA increment) and within the customer's
/// largest SLA.
fn parse_offer(o: &OfferBody, t: &crate::store::OriginTypeRow, q: &Effective) -> Result<Offer, ApiError> {
    let offer = Offer::parse(o.kind(), o.mbps(), 1)?;
    // The increment is the type's (it may change): a conflict with it, not a
    // malformed value.
    if let Offer::Sla(m) = offer
        && m.get() % u32::try_from(t.sla_increment_mbps).unwrap_or(1).max(1) != 0
    {
        return Err(ApiError::Conflict {
            detail: format!("an SLA of {} must be a multiple of {} Mbit/s", t.name, t.sla_increment_mbps),
            field: Some("offer.mbps".into()),
        });
    }
    q.check_offer(offer, t)?;
    Ok(offer)
}

/// Creates an account: trial and payg join a shared pool, sla gets a dedicated pool.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), request_body = CreateAccount,
    responses((status = 202, body = AccountAccepted), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 404, body = Problem, description = "no such origin type"),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_account(
    State(s): State<AppState>,
    auth: CustomerAuth,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let name = AccountName::parse(&body.name)?;
    let origin_type = OriginTypeName::parse("origin_type", &body.origin_type)?;
    let t = type_of(&s, origin_type.as_str()).await?;
    let (_, quotas) = quotas::effective(&s, auth.customer_id).await?;
    let offer = parse_offer(&body.offer, &t, &quotas)?;
    let ip_allow = IpAllow::parse(body.ip_allow.as_deref().unwrap_or_default())?;
    let allow_origins = AllowOrigins::parse(body.allow_origins.as_deref().unwrap_or_default())?.into_strings();
    let account_id = Uuid::now_v7();
    let locator = format!("{}/{}/", s.settings.locator_base.trim_end_matches('/'), name);
    let new = NewAccount {
        customer_id: auth.customer_id,
        name,
        origin_type: origin_type.as_str().to_owned(),
        offer,
        ip_allow,
        allow_origins,
        locator,
    };
    let op = NewOperation {
        account_id: Some(account_id),
        customer_id: Some(auth.customer_id),
        origin_type: Some(new.origin_type.clone()),
        input: serde_json::json!({"offer": body.offer}),
        ..NewOperation::new(OperationKind::Create)
    };
    let (account, operation) =
        s.store.create_account(&new, &op, &quotas.accounts, s.clock.now_ms()).await.map_err(|e| match e {
            StoreError::Conflict { field: "origin_type" } => ApiError::Conflict {
                detail: format!("this customer already has a live {} account", new.origin_type),
                field: Some("origin_type".into()),
            },
            StoreError::Conflict { field } => {
                ApiError::Conflict { detail: format!("account name {} is taken", new.name), field: Some(field.into()) }
            }
            other => other.into(),
        })?;
    s.bus.operation_enqueued().await;
    Ok((StatusCode::ACCEPTED, Json(AccountAccepted { account: account.into(), operation: operation.into() })))
}

/// The calling customer's live accounts, by name, a page at a time.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), params(AccountsQuery),
    responses((status = 200, body = Page<Account>), (status = 401, body = Problem)))]
pub async fn list_accounts(
    State(s): State<AppState>,
    auth: CustomerAuth,
    ApiQuery(q): ApiQuery<AccountsQuery>,
) -> Result<Json<Page<Account>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after =
        q.cursor.as_deref().map(AccountName::parse).transpose().map_err(|e| ApiError::invalid("cursor", e.detail))?;
    let rows = s.store.accounts(auth.customer_id, after.as_ref().map(AccountName::as_str), limit).await?;
    let items = rows.into_iter().map(Account::from).collect();
    Ok(Json(Page::of(items, limit, |a: &Account| a.name.clone())))
}

/// One account, with its locator and pool. Another customer's account is 404.
#[utoipa::path(get, path = "/v1/accounts/{name}", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 200, body = Account), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_account(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Account>, ApiError> {
    let row = find(&s, caller, &name).await?;
    let availability = s.store.availability(row.id, s.clock.now_ms() - AVAILABILITY_WINDOW_MS).await?;
    let mut account = Account::from(row);
    account.availability = availability;
    Ok(Json(account))
}

/// The caller's account `name` (the operator's: any); 404 otherwise.
pub(super) async fn find(s: &AppState, caller: Caller, name: &str) -> Result<AccountRow, ApiError> {
    s.store.account(name, caller.customer_scope()).await.map_err(not_found(name))
}

/// Writes `change` with its operation and answers 202.
async fn change(
    s: &AppState,
    caller: Caller,
    account: AccountRow,
    change: AccountChange,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let op = NewOperation {
        account_id: Some(account.id),
        customer_id: Some(account.customer_id),
        origin_type: Some(account.origin_type.clone()),
        ..NewOperation::new(change.operation_kind())
    };
    let (_, quotas) = quotas::effective(s, account.customer_id).await?;
    if let AccountChange::Reactivate = change
        && let Some(offer) = Offer::from_db(account.offer, account.sla_mbps)
    {
        // The largest SLA may have been lowered while it was deactivated.
        quotas.check_offer(offer, &type_of(s, &account.origin_type).await?)?;
    }
    let operation =
        s.store.change_account(&account, &change, &op, &quotas.accounts, &caller.actor(), s.clock.now_ms()).await?;
    s.bus.operation_enqueued().await;
    let account = s.store.account_by_id(account.id).await?;
    Ok((StatusCode::ACCEPTED, Json(AccountAccepted { account: account.into(), operation: Operation::from(operation) })))
}

/// Changes the offer and/or the IP allow-list.
#[utoipa::path(patch, path = "/v1/accounts/{name}", tag = "accounts", security(("bearer" = [])), request_body = UpdateAccount,
    params(("name" = String, Path)),
    responses((status = 202, body = AccountAccepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_account(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateAccount>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    if body.offer.is_none() && body.ip_allow.is_none() && body.allow_origins.is_none() {
        return Err(ApiError::invalid("offer", "give an offer, an ip_allow or allow_origins"));
    }
    let account = find(&s, caller, &name).await?;
    let offer = match &body.offer {
        Some(o) => {
            let (_, quotas) = quotas::effective(&s, account.customer_id).await?;
            Some(parse_offer(o, &type_of(&s, &account.origin_type).await?, &quotas)?)
        }
        None => None,
    };
    let ip_allow = body.ip_allow.as_deref().map(IpAllow::parse).transpose()?;
    let allow_origins =
        body.allow_origins.as_deref().map(AllowOrigins::parse).transpose()?.map(AllowOrigins::into_strings);
    change(&s, caller, account, AccountChange::Update { offer, ip_allow, allow_origins }).await
}

/// Stops serving the account; its pool is kept until `retain_until`.
#[utoipa::path(post, path = "/v1/accounts/{name}/deactivate", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 202, body = AccountAccepted), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn deactivate(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let account = find(&s, caller, &name).await?;
    let retain_until = s.clock.now_ms() + retention_ms(&s, &account).await?;
    change(&s, caller, account, AccountChange::Deactivate { retain_until }).await
}

/// How long an account's pool (and, once deleted, its name) is kept: its type's
/// retention, else admin's.
async fn retention_ms(s: &AppState, account: &AccountRow) -> Result<i64, ApiError> {
    Ok(match s.store.origin_type(&account.origin_type).await?.and_then(|t| t.retention_hours) {
        Some(h) => i64::from(h) * 3_600_000,
        None => s.settings.retention_ms,
    })
}

/// Serves a deactivated account again, behind the same locator.
#[utoipa::path(post, path = "/v1/accounts/{name}/reactivate", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 202, body = AccountAccepted), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn reactivate(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    change(&s, caller, find(&s, caller, &name).await?, AccountChange::Reactivate).await
}

/// Deletes the account and releases its pool. Its name (and so its locator)
/// stays reserved for the retention period (CDNs may still cache it), then any
/// customer may take it.
#[utoipa::path(delete, path = "/v1/accounts/{name}", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 202, body = AccountAccepted), (status = 404, body = Problem)))]
pub async fn delete_account(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<AccountAccepted>), ApiError> {
    let account = find(&s, caller, &name).await?;
    let name_until = s.clock.now_ms() + retention_ms(&s, &account).await?;
    change(&s, caller, account, AccountChange::Delete { name_until }).await
}

/// An operation: its state and the steps it has finished.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = Operation), (status = 404, body = Problem)))]
pub async fn get_operation(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    let (op, _) = find_operation(&s, caller, &id).await?;
    Ok(Json(op.into()))
}

/// The operation `id` names, if the caller may see it (a customer only its
/// own), and the filter that says so.
pub(super) async fn find_operation(
    s: &AppState,
    caller: Caller,
    id: &str,
) -> Result<(crate::store::OperationRow, OperationFilter), ApiError> {
    let missing = || ApiError::NotFound(format!("operation {id}"));
    let op_id = Uuid::try_parse(id).map_err(|_| missing())?;
    let filter = match caller.customer_scope() {
        Some(c) => OperationFilter::Customer(c),
        None => OperationFilter::Any,
    };
    let op = s.store.operation(op_id, filter).await.map_err(|e| match e {
        StoreError::NotFound => missing(),
        other => other.into(),
    })?;
    Ok((op, filter))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    pub state: Option<OperationState>,
    pub kind: Option<OperationKind>,
    /// An account's name.
    pub account: Option<String>,
    pub origin_type: Option<String>,
    /// At most this many (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<Uuid>,
}

/// Operations, newest first, a page at a time: the operator sees all of them, a
/// customer only its own. Filters narrow the list.
#[utoipa::path(get, path = "/v1/operations", tag = "operations", security(("bearer" = [])), params(OperationsQuery),
    responses((status = 200, body = Page<Operation>), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn list_operations(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<OperationsQuery>,
) -> Result<Json<Page<Operation>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let before = q.cursor;
    // An account another customer owns is no account: an empty page.
    let account_id = match &q.account {
        Some(name) => match s.store.account(name, caller.customer_scope()).await {
            Ok(a) => Some(a.id),
            Err(StoreError::NotFound) => return Ok(Json(Page { items: vec![], next_cursor: None })),
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let query = OperationQuery {
        customer: caller.customer_scope(),
        state: q.state,
        kind: q.kind,
        account_id,
        origin_type: q.origin_type.clone(),
    };
    let items = s.store.operations(&query, before, limit).await?.into_iter().map(Operation::from).collect();
    Ok(Json(Page::of(items, limit, |o: &Operation| o.id.to_string())))
}
