//! Operator routes: origin types and images, and the platform's tables (pools,
//! nodes, the global allocation table, the event trail), paged.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use super::AppState;
use super::auth::OperatorAuth;
use super::model::{
    Allocation, CreateImage, CreateOriginType, Event, EventsQuery, Node, Operation, OriginType, OriginTypeList, Page,
    PageQuery, Pool, UpdateOriginType, page_limit,
};
use super::problem::{ApiError, ApiJson, ApiQuery, Problem};
use crate::domain::{Mbps, OriginTypeName};
use crate::states::{OperationKind, OperationState};
use crate::store::{ImageRow, NewOperation, OriginTypeSettings, StoreError};

fn mbps(field: &str, v: i64) -> Result<i32, ApiError> {
    Ok(i32::try_from(Mbps::parse(field, v)?.get()).unwrap_or(i32::MAX))
}

fn type_not_found(name: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("origin type {name}")),
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/v1/origin-types", tag = "operator", security(("bearer" = [])),
    responses((status = 200, body = OriginTypeList), (status = 401, body = Problem)))]
pub async fn list_origin_types(State(s): State<AppState>, _op: OperatorAuth) -> Result<Json<OriginTypeList>, ApiError> {
    Ok(Json(OriginTypeList { items: s.store.origin_types().await?.into_iter().map(Into::into).collect() }))
}

#[utoipa::path(post, path = "/v1/origin-types", tag = "operator", security(("bearer" = [])), request_body = CreateOriginType,
    responses((status = 201, body = OriginType), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_origin_type(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiJson(b): ApiJson<CreateOriginType>,
) -> Result<(StatusCode, Json<OriginType>), ApiError> {
    let name = OriginTypeName::parse("name", &b.name)?;
    let d = OriginTypeSettings::DEFAULT;
    let settings = OriginTypeSettings {
        node_capacity_mbps: mbps("node_capacity_mbps", b.node_capacity_mbps)?,
        sla_increment_mbps: b
            .sla_increment_mbps
            .map(|v| mbps("sla_increment_mbps", v))
            .transpose()?
            .unwrap_or(d.sla_increment_mbps),
        trial_cap_mbps: b.trial_cap_mbps.map(|v| mbps("trial_cap_mbps", v)).transpose()?.unwrap_or(d.trial_cap_mbps),
        payg_cap_mbps: b.payg_cap_mbps.map(|v| mbps("payg_cap_mbps", v)).transpose()?.unwrap_or(d.payg_cap_mbps),
        max_sla_mbps: b.max_sla_mbps.map(|v| mbps("max_sla_mbps", v)).transpose()?.unwrap_or(d.max_sla_mbps),
    };
    let row = s.store.create_origin_type(name.as_str(), &settings, "operator", s.clock.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[utoipa::path(get, path = "/v1/origin-types/{type}", tag = "operator", security(("bearer" = [])),
    params(("type" = String, Path)), responses((status = 200, body = OriginType), (status = 404, body = Problem)))]
pub async fn get_origin_type(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
) -> Result<Json<OriginType>, ApiError> {
    let t = s.store.origin_type(&name).await?.ok_or_else(|| ApiError::NotFound(format!("origin type {name}")))?;
    Ok(Json(t.into()))
}

#[utoipa::path(patch, path = "/v1/origin-types/{type}", tag = "operator", security(("bearer" = [])), request_body = UpdateOriginType,
    params(("type" = String, Path)),
    responses((status = 200, body = OriginType), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_origin_type(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<UpdateOriginType>,
) -> Result<Json<OriginType>, ApiError> {
    let t = s.store.origin_type(&name).await?.ok_or_else(|| ApiError::NotFound(format!("origin type {name}")))?;
    let pick = |field: &str, v: Option<i64>, cur: i32| v.map(|v| mbps(field, v)).transpose().map(|v| v.unwrap_or(cur));
    let settings = OriginTypeSettings {
        node_capacity_mbps: pick("node_capacity_mbps", b.node_capacity_mbps, t.node_capacity_mbps)?,
        sla_increment_mbps: pick("sla_increment_mbps", b.sla_increment_mbps, t.sla_increment_mbps)?,
        trial_cap_mbps: pick("trial_cap_mbps", b.trial_cap_mbps, t.trial_cap_mbps)?,
        payg_cap_mbps: pick("payg_cap_mbps", b.payg_cap_mbps, t.payg_cap_mbps)?,
        max_sla_mbps: pick("max_sla_mbps", b.max_sla_mbps, t.max_sla_mbps)?,
    };
    let warm = b.warm_pools.as_ref().map(super::model::WarmPools::to_value);
    if let Some(w) = &warm {
        crate::control::warm::WarmPolicy::parse(w).map_err(|e| ApiError::invalid("warm_pools", e))?;
    }
    let retention = b
        .retention_hours
        .map(|h| i32::try_from(h).ok().filter(|h| (1..=87_600).contains(h)))
        .map(|h| h.ok_or_else(|| ApiError::invalid("retention_hours", "1 to 87600 hours")))
        .transpose()?;
    let mut row = s
        .store
        .update_origin_type(&name, &settings, "operator", s.clock.now_ms())
        .await
        .map_err(type_not_found(&name))?;
    if let Some(w) = &warm {
        row = s.store.set_warm_pools(&name, Some(w), "operator", s.clock.now_ms()).await?;
    }
    if let Some(h) = retention {
        row = s.store.set_retention_hours(&name, h, "operator", s.clock.now_ms()).await?;
    }
    Ok(Json(row.into()))
}

/// Records a new image version for a type and starts its upgrade operation. An
/// upgrade of the type still pending or running is superseded at once: it ends
/// `superseded`, and the pools it was moving go on to this image.
#[utoipa::path(post, path = "/v1/origin-types/{type}/images", tag = "operator", security(("bearer" = [])), request_body = CreateImage,
    params(("type" = String, Path)),
    responses((status = 202, body = Operation), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_image(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<CreateImage>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let origin_type =
        s.store.origin_type(&name).await?.ok_or_else(|| ApiError::NotFound(format!("origin type {name}")))?;
    let version = b.version.as_str();
    if !crate::rules::IS_IMAGE_VERSION.matches(version) {
        return Err(ApiError::invalid("version", "1 to 64 of [A-Za-z0-9._+-]"));
    }
    if !crate::rules::IS_COMMAND.matches(&b.command) {
        return Err(ApiError::invalid(
            "command",
            "must name a program: printable characters, no whitespace at either end, at most 4096",
        ));
    }
    if let Some(i) = b.args.iter().position(|a| a.contains('\0')) {
        return Err(ApiError::invalid(format!("args[{i}]"), "must not contain NUL"));
    }
    if let Some(c) = &b.container_image
        && !crate::rules::IS_CONTAINER_IMAGE.matches(c)
    {
        return Err(ApiError::invalid("container_image", "a container image reference"));
    }
    let concurrent = b.max_concurrent_pools.unwrap_or(crate::control::worker::MAX_CONCURRENT_POOLS as i64);
    if !(1..=64).contains(&concurrent) {
        return Err(ApiError::invalid("max_concurrent_pools", "1 to 64 pools at a time"));
    }
    let now = s.clock.now_ms();
    let image = ImageRow {
        origin_type: name.clone(),
        version: version.to_owned(),
        command: b.command,
        args: SqlJson(b.args),
        container_image: b.container_image,
        created_at: now,
    };
    let op = NewOperation {
        origin_type: Some(name.clone()),
        // A rollback goes back to the last image that finished on every pool.
        input: serde_json::json!({
            "version": version, "previous": origin_type.completed_image, "max_concurrent_pools": concurrent,
        }),
        ..NewOperation::new(OperationKind::Upgrade)
    };
    let (row, _) = s.store.enqueue_upgrade(Some(&image), &op, "operator", now).await.map_err(|e| match e {
        StoreError::Conflict { .. } => {
            ApiError::Conflict { detail: format!("image {version} of {name} exists"), field: Some("version".into()) }
        }
        other => other.into(),
    })?;
    s.bus.operation_enqueued().await;
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

#[utoipa::path(get, path = "/v1/pools", tag = "operator", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<Pool>), (status = 401, body = Problem)))]
pub async fn list_pools(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Pool>>, ApiError> {
    let l = q.limit()?;
    let items = s.store.pools(q.cursor, l).await?.into_iter().map(Pool::from).collect();
    Ok(Json(Page::of(items, l, |p: &Pool| p.id.to_string())))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "operator", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<Node>), (status = 401, body = Problem)))]
pub async fn list_nodes(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Node>>, ApiError> {
    let l = q.limit()?;
    let items = s.store.nodes(q.cursor, l).await?.into_iter().map(Node::from).collect();
    Ok(Json(Page::of(items, l, |n: &Node| n.id.to_string())))
}

/// The global allocation table: one row per live account.
#[utoipa::path(get, path = "/v1/allocations", tag = "operator", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<Allocation>), (status = 401, body = Problem)))]
pub async fn list_allocations(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Allocation>>, ApiError> {
    let l = q.limit()?;
    let items = s.store.allocations(q.cursor, l).await?.into_iter().map(Allocation::from).collect();
    Ok(Json(Page::of(items, l, |a: &Allocation| a.account_id.to_string())))
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "operator", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = Page<Event>), (status = 401, body = Problem)))]
pub async fn list_events(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Page<Event>>, ApiError> {
    let l = page_limit(q.limit)?;
    if q.cursor.is_some_and(|c| c < 1) {
        return Err(ApiError::invalid("cursor", "an event id (1 or more)"));
    }
    let items = s.store.events(q.cursor, l).await?.into_iter().map(Event::from).collect();
    Ok(Json(Page::of(items, l, |e: &Event| e.id.to_string())))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceClock {
    /// How far to move the clock forward, in milliseconds.
    #[serde(deserialize_with = "super::whole::required")]
    pub advance_ms: i64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TestClock {
    /// The retention collector's time now (RFC 3339).
    pub now: String,
}

/// Tests only (admin started with `--test-clock`, else 404): moves the retention
/// collector's clock forward, so a retention period passes without waiting.
#[utoipa::path(post, path = "/v1/test/clock", tag = "operator", security(("bearer" = [])), request_body = AdvanceClock,
    responses((status = 200, body = TestClock), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn advance_test_clock(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiJson(body): ApiJson<AdvanceClock>,
) -> Result<Json<TestClock>, ApiError> {
    use crate::clock::Clock;
    let clock = s
        .test_clock
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("the test clock (start admin with --test-clock)".into()))?;
    if body.advance_ms < 0 {
        return Err(ApiError::invalid("advance_ms", "the clock only moves forward"));
    }
    clock.advance_ms(body.advance_ms);
    s.store
        .record_event(
            "operator",
            "clock.advanced",
            "clock:retention",
            &format!("{} ms", body.advance_ms),
            s.clock.now_ms(),
        )
        .await?;
    Ok(Json(TestClock { now: crate::clock::rfc3339(clock.now_ms()) }))
}

/// Returns the pools of a failed (or unwanted) upgrade to the image before it (the
/// last one that finished on every pool), the same way: a new upgrade operation
/// to that version. A superseded upgrade has nothing to roll back (409).
#[utoipa::path(post, path = "/v1/operations/{id}/rollback", tag = "operator", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 202, body = Operation), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rollback(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let missing = || ApiError::NotFound(format!("operation {id}"));
    let op_id = Uuid::try_parse(&id).map_err(|_| missing())?;
    let op = s.store.operation(op_id, crate::store::OperationFilter::Any).await.map_err(|e| match e {
        StoreError::NotFound => missing(),
        other => other.into(),
    })?;
    let conflict = |detail: String| ApiError::Conflict { detail, field: None };
    if op.kind != OperationKind::Upgrade {
        return Err(conflict(format!("operation {id} is a {}, not an upgrade", op.kind)));
    }
    match op.state {
        OperationState::Pending | OperationState::Running => {
            return Err(conflict(format!("operation {id} is still {}", op.state)));
        }
        OperationState::Superseded => {
            return Err(conflict(format!(
                "operation {id} was superseded by a newer upgrade; roll that one back instead"
            )));
        }
        OperationState::Succeeded | OperationState::Failed => {}
    }
    let Some(previous) = op.input.0.get("previous").and_then(|v| v.as_str()).map(str::to_owned) else {
        return Err(conflict(format!(
            "operation {id} started from the built-in image; there is no image to go back to"
        )));
    };
    let type_name = op.origin_type.clone().unwrap_or_default();
    let completed = s.store.origin_type(&type_name).await?.and_then(|t| t.completed_image);
    let new = NewOperation {
        origin_type: op.origin_type.clone(),
        input: serde_json::json!({
            "version": previous, "previous": completed, "rollback_of": op.id,
            "max_concurrent_pools": op.input.0.get("max_concurrent_pools"),
        }),
        ..NewOperation::new(OperationKind::Upgrade)
    };
    let (row, _) = s.store.enqueue_upgrade(None, &new, "operator", s.clock.now_ms()).await?;
    s.bus.operation_enqueued().await;
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}
