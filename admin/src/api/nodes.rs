//! The node side of the API: registration (operator), heartbeats, configuration and
//! usage (the node itself, by its token), drain (operator).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use headwater_protocol::{Heartbeat, HeartbeatAck, NodeConfig, UsageReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::{NodeAuth, OperatorAuth, RouterAuth};
use super::model::Node;
use super::problem::{ApiError, ApiJson, Problem};
use crate::bus::HEARTBEATS;
use crate::control::node_config::node_config;
use crate::keys;
use crate::states::NodeState;
use crate::store::{HeartbeatRecord, Placement, StoreError, UsageRecorded, UsageWindowRow};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    pub pool_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeRegistered {
    pub id: Uuid,
    pub pool_id: Uuid,
    /// The node's token: shown once, passed to `headwater origin --node-token`.
    pub token: String,
    /// Or its one-time join token (`headwater origin --join-token`): the node
    /// makes its own key and gets a certificate of the node CA with it.
    pub join_token: String,
}

/// Registers a node that will run elsewhere (`headwater origin … --node-token`).
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])), request_body = RegisterNode,
    responses((status = 201, body = NodeRegistered), (status = 404, body = Problem)))]
pub async fn register(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiJson(b): ApiJson<RegisterNode>,
) -> Result<(StatusCode, axum::Extension<super::middleware::ShownOnce>, Json<NodeRegistered>), ApiError> {
    let id = Uuid::now_v7();
    let (token, token_hash) = keys::node_token(id);
    let (join_token, join_hash) = keys::join_token(id);
    s.store
        .register_node(id, b.pool_id, &token_hash, &join_hash, Placement::default(), "operator", s.clock.now_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("pool {}", b.pool_id)),
            other => other.into(),
        })?;
    let shown = axum::Extension(super::middleware::ShownOnce("a node token"));
    Ok((StatusCode::CREATED, shown, Json(NodeRegistered { id, pool_id: b.pool_id, token, join_token })))
}

/// A node's heartbeat: its state, load and self-probe.
#[utoipa::path(post, path = "/v1/nodes/{id}/heartbeat", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Object, description = "headwater_protocol::Heartbeat"),
    responses((status = 200, description = "HeartbeatAck"), (status = 401, body = Problem)))]
pub async fn heartbeat(
    State(s): State<AppState>,
    NodeAuth(id): NodeAuth,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let record = HeartbeatRecord {
        state: hb.state,
        address: hb.address.clone(),
        image_version: hb.image_version.clone(),
        egress_mbps: hb.egress_mbps.max(0.0),
        open_connections: i64::try_from(hb.open_connections).unwrap_or(i64::MAX),
        cache_hit_ratio: hb.cache_hit_ratio.clamp(0.0, 1.0),
        config_version: i64::try_from(hb.config_version).unwrap_or(0),
        probe_ok: hb.self_probe.ok,
        probe_latency_ms: i32::try_from(hb.self_probe.latency_ms).unwrap_or(i32::MAX),
        probe_error: hb.self_probe.error.clone(),
        tls_address: hb.tls_address.clone(),
    };
    let node = s.store.node_at_stamp(id).await?;
    let state = node.state.after_heartbeat(record.state);
    s.heartbeats.push((id, record, s.clock.now_ms())).await.map_err(|e| ApiError::Internal(e.into()))?;
    let serving = s.serving.get(&s.store, id, &node, s.clock.now_ms()).await?;
    // An asset the node cannot package is an event of its account (one the
    // node serves; at most a few per heartbeat).
    for u in hb.unpackable.iter().take(16) {
        if !serving.accounts.iter().any(|a| a.name == u.account) {
            continue;
        }
        let Ok(account) = s.store.account(&u.account, None).await else { continue };
        let reason: String = u.reason.chars().take(500).collect();
        let asset: String = u.asset.chars().take(100).collect();
        let detail = format!("{asset}: {reason}");
        let subject = format!("account:{}", account.id);
        s.store.record_event(&format!("node:{id}"), "asset.unpackable", &subject, &detail, s.clock.now_ms()).await?;
    }
    let config = node_config(id, &serving);
    if s.bus.is_shared() {
        let payload = serde_json::json!({"node": id, "state": state, "heartbeat": hb}).to_string();
        s.bus.notify(HEARTBEATS, payload);
    }
    Ok(Json(HeartbeatAck {
        config_version: config.version,
        drain: state == NodeState::Draining,
        node_ca: Some(s.node_ca.generation()),
    }))
}

/// What the node serves: its accounts, their caps and allow-lists.
#[utoipa::path(get, path = "/v1/nodes/{id}/config", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, description = "NodeConfig"), (status = 401, body = Problem)))]
pub async fn config(State(s): State<AppState>, NodeAuth(id): NodeAuth) -> Result<Json<NodeConfig>, ApiError> {
    let now = s.clock.now_ms();
    let serving = s.store.node_serving(id, now).await?;
    let generation = serving.generation;
    let config = crate::control::node_config::opened(node_config(id, &serving), &s.settings.sealer);
    // The node applies what it fetched at once: a worker waiting for it to serve
    // an account need not wait for its next heartbeat to say so.
    s.store.set_config_fetched(id, i64::try_from(config.version).unwrap_or(0), generation, now).await?;
    Ok(Json(config))
}

/// What a usage report came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageAccepted {
    /// Windows added.
    pub accepted: usize,
    /// Windows refused: another pool's account, or more bytes than the node
    /// could have sent in a minute.
    pub refused: usize,
    /// The report (its `id`) was added before; nothing was added again.
    pub duplicate: bool,
}

/// Bytes served per account per minute. A report is counted once by its `id`;
/// windows for accounts the node's pool does not serve, or beyond what the node
/// could send, are refused (and counted in the answer).
#[utoipa::path(post, path = "/v1/nodes/{id}/usage", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Object, description = "headwater_protocol::UsageReport"),
    responses((status = 200, body = UsageAccepted), (status = 401, body = Problem)))]
pub async fn usage(
    State(s): State<AppState>,
    NodeAuth(id): NodeAuth,
    ApiJson(r): ApiJson<UsageReport>,
) -> Result<Json<UsageAccepted>, ApiError> {
    if r.windows.len() > 10_000 {
        return Err(ApiError::invalid("windows", "at most 10000 windows per report"));
    }
    let windows: Vec<UsageWindowRow> =
        r.windows.iter().map(|w| (w.account.clone(), w.window_start, w.bytes, w.requests)).collect();
    let answer = match s.store.record_usage(id, r.id, &windows, s.clock.now_ms()).await? {
        UsageRecorded::Added { refused } => {
            UsageAccepted { accepted: windows.len() - refused, refused, duplicate: false }
        }
        UsageRecorded::Duplicate => UsageAccepted { accepted: 0, refused: 0, duplicate: true },
    };
    Ok(Json(answer))
}

/// Asks a node to drain: it stops taking connections, finishes what is in flight, exits.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 202, body = Node), (status = 404, body = Problem)))]
pub async fn drain(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    let missing = || ApiError::NotFound(format!("node {id}"));
    let node_id = Uuid::try_parse(&id).map_err(|_| missing())?;
    s.store.request_drain(node_id, "operator", s.clock.now_ms()).await.map_err(|e| match e {
        StoreError::NotFound => missing(),
        other => other.into(),
    })?;
    Ok((StatusCode::ACCEPTED, Json(s.store.node(node_id).await?.into())))
}

/// The routing table for routers: account → ready nodes. Answers 304 to
/// `If-None-Match` with the current digest, so routers can poll it cheaply.
#[utoipa::path(get, path = "/v1/routing", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "headwater_protocol::RoutingTable"), (status = 304), (status = 401, body = Problem)))]
pub async fn routing(
    State(s): State<AppState>,
    _router: RouterAuth,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let current = s.routing.current(&s.store, &s.settings.sealer, &s.node_ca).await?;
    let etag = format!("\"{}\"", current.table.digest);
    if headers.get(axum::http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(axum::http::header::ETAG, etag)]).into_response());
    }
    let json = (axum::http::header::CONTENT_TYPE, "application/json");
    Ok(([(axum::http::header::ETAG, etag)], [json], current.line.clone()).into_response())
}

/// What a router reached in its last round of probes (`headwater_protocol::Sightings`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterSightings {
    /// The router's name (its pod or host name): 1 to 63 of `[A-Za-z0-9._-]`.
    pub router: String,
    /// The nodes whose test content it fetched; unknown ids are left out.
    #[schema(max_items = 10000)]
    pub reached: Vec<Uuid>,
}

/// A router's view of the nodes: the partition rule counts a node a router
/// reached within a heartbeat timeout as running, so admin losing sight of many
/// nodes that players still reach never replaces them all.
#[utoipa::path(post, path = "/v1/routing/sightings", tag = "nodes", security(("bearer" = [])),
    request_body = RouterSightings,
    responses((status = 204, description = "recorded"), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn sightings(
    State(s): State<AppState>,
    _router: RouterAuth,
    ApiJson(b): ApiJson<RouterSightings>,
) -> Result<StatusCode, ApiError> {
    if !crate::rules::IS_ZONE.matches(&b.router) {
        return Err(ApiError::invalid("router", "1 to 63 of [A-Za-z0-9._-], a letter or digit at each end"));
    }
    if b.reached.len() > 10_000 {
        return Err(ApiError::invalid("reached", "at most 10000 nodes"));
    }
    s.store.record_sightings(&b.router, &b.reached, s.clock.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An empty line this often keeps an idle stream open and tells the router it is alive.
const STREAM_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// The routing table as a stream for routers without Redis: one JSON table per
/// line (`application/x-ndjson`), the current table first, then every change as it
/// happens; an empty line every 10 s while nothing changes.
#[utoipa::path(get, path = "/v1/routing/stream", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "newline-delimited headwater_protocol::RoutingTable", content_type = "application/x-ndjson"),
        (status = 401, body = Problem)))]
pub async fn routing_stream(
    State(s): State<AppState>,
    _router: RouterAuth,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    // Subscribe before the snapshot, so no change falls between the two.
    let rx = s.routing.subscribe();
    let first = s.routing.current(&s.store, &s.settings.sealer, &s.node_ca).await?;
    let closed = s.routing.closed();
    let start = (rx, first.table.version, first.table.digest.clone());
    let changes = futures_util::stream::unfold(start, move |(mut rx, mut version, mut digest)| {
        let closed = closed.clone();
        async move {
            loop {
                let changed = tokio::select! {
                    _ = closed.cancelled() => return None,
                    c = tokio::time::timeout(STREAM_KEEPALIVE, rx.changed()) => c,
                };
                match changed {
                    Err(_) => return Some((Ok(bytes::Bytes::from_static(b"\n")), (rx, version, digest))),
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => {
                        let p = rx.borrow_and_update().clone();
                        if p.table.version > version && p.table.digest != digest {
                            version = p.table.version;
                            digest.clone_from(&p.table.digest);
                            return Some((Ok::<_, std::convert::Infallible>(p.line.clone()), (rx, version, digest)));
                        }
                    }
                }
            }
        }
    });
    let body = futures_util::stream::once(std::future::ready(Ok(first.line.clone()))).chain(changes);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(body))
        .into_response())
}
