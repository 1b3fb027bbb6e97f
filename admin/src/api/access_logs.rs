//! Access logs: routers send the records of the player requests they answered
//! (`POST /v1/routing/access-logs`), nodes those of players they served
//! directly (`POST /v1/nodes/{id}/access-logs`, redirect mode); an account's
//! owner reads them (`GET /v1/accounts/{name}/logs`), oldest first, paged by id.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::accounts::find;
use super::auth::{Caller, NodeAuth, RouterAuth};
use super::model::{Page, page_limit};
use super::problem::{ApiError, ApiJson, ApiQuery, Problem};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::store::AccessLogsRecorded;

/// Most records in one batch (routers send up to 2000, some 700 KB: under
/// the 1 MiB body limit).
const BATCH_MAX: usize = 2_000;
/// How far ahead of admin's clock a record's time may be (writers' clocks drift).
const FUTURE_MS: i64 = 600_000;

/// One player request as the router or node that answered it saw it
/// (`headwater_protocol::AccessRecord`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRecordBody {
    /// When the request arrived, Unix milliseconds.
    pub at_ms: i64,
    pub account: String,
    /// The path under the account, without a playback token or the query.
    #[schema(max_length = 4096)]
    pub path: String,
    #[schema(max_length = 16)]
    pub method: String,
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: u64,
    /// The player's address (truncated when the router truncates).
    #[schema(max_length = 64)]
    pub client: String,
    #[schema(max_length = 1024)]
    pub user_agent: Option<String>,
    /// The node that answered.
    pub node: Option<Uuid>,
    pub cache_hit: Option<bool>,
    /// Who wrote it: `router:{name}` (a node's records are `node:{id}`,
    /// whatever it sends).
    #[schema(max_length = 80)]
    pub source: String,
}

/// `headwater_protocol::AccessLogBatch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogBatchBody {
    /// Names the batch: one sent again (its answer was lost) is kept once.
    pub id: Uuid,
    #[schema(max_items = 2000)]
    pub records: Vec<AccessRecordBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessLogsAccepted {
    /// Records kept.
    pub kept: usize,
    /// Records of accounts admin does not have (from a node: accounts its
    /// pool does not serve), or timed more than 10 minutes ahead of admin.
    pub refused: usize,
    /// The batch was kept before: nothing was added.
    pub duplicate: bool,
}

/// A batch of access records from a router.
#[utoipa::path(post, path = "/v1/routing/access-logs", tag = "nodes", security(("bearer" = [])),
    request_body = AccessLogBatchBody,
    responses((status = 200, body = AccessLogsAccepted), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn ingest(
    State(s): State<AppState>,
    _router: RouterAuth,
    ApiJson(b): ApiJson<AccessLogBatchBody>,
) -> Result<Json<AccessLogsAccepted>, ApiError> {
    keep(&s, "router", None, b).await
}

/// A batch of access records from a node: the players it served directly
/// (routers log what they proxy). Kept for accounts the node's pool serves;
/// the others are refused (counted). Each record names this node as its
/// `node` and `node:{id}` as its `source`.
#[utoipa::path(post, path = "/v1/nodes/{id}/access-logs", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = AccessLogBatchBody,
    responses((status = 200, body = AccessLogsAccepted), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn ingest_from_node(
    State(s): State<AppState>,
    NodeAuth(id): NodeAuth,
    ApiJson(mut b): ApiJson<AccessLogBatchBody>,
) -> Result<Json<AccessLogsAccepted>, ApiError> {
    let source = format!("node:{id}");
    for r in &mut b.records {
        r.node = Some(id);
        r.source.clone_from(&source);
    }
    keep(&s, &source, Some(id), b).await
}

/// Checks a batch and keeps it once (by its id, per source).
async fn keep(
    s: &AppState,
    source: &str,
    node: Option<Uuid>,
    b: AccessLogBatchBody,
) -> Result<Json<AccessLogsAccepted>, ApiError> {
    if b.records.len() > BATCH_MAX {
        return Err(ApiError::invalid("records", "at most 2000 records"));
    }
    let now = s.clock.now_ms();
    let (mut rows, mut future) = (Vec::with_capacity(b.records.len()), 0);
    for (i, r) in b.records.iter().enumerate() {
        let too_long =
            [(&r.path, 4096, "path"), (&r.method, 16, "method"), (&r.client, 64, "client"), (&r.source, 80, "source")]
                .into_iter()
                .chain(r.user_agent.as_ref().map(|u| (u, 1024, "user_agent")))
                .find(|(v, max, _)| v.chars().count() > *max);
        if let Some((_, max, field)) = too_long {
            return Err(ApiError::invalid(format!("records[{i}].{field}"), format!("at most {max} characters")));
        }
        if !(100..=599).contains(&r.status) {
            return Err(ApiError::invalid(format!("records[{i}].status"), "an HTTP status, 100 to 599"));
        }
        // From the future (a writer's clock far ahead): never kept, as
        // retention would never delete it.
        if r.at_ms > now + FUTURE_MS {
            future += 1;
            continue;
        }
        let json = serde_json::to_string(r).map_err(|e| ApiError::Internal(e.to_string()))?;
        rows.push((r.account.clone(), r.at_ms, json));
    }
    Ok(Json(match s.store.record_access_logs(source, node, b.id, &rows, now).await? {
        AccessLogsRecorded::Added { kept, refused } => {
            AccessLogsAccepted { kept, refused: refused + future, duplicate: false }
        }
        AccessLogsRecorded::Duplicate => AccessLogsAccepted { kept: 0, refused: 0, duplicate: true },
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Records of requests at or after this time (RFC 3339); default: all kept.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Where the previous page ended (its `next_cursor`, or the last record's `id`).
    #[param(minimum = 0)]
    pub cursor: Option<i64>,
    /// At most this many records (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// One player request of the account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessLogEntry {
    /// The record's id: later records have larger ids.
    pub id: i64,
    /// When the request arrived (RFC 3339).
    pub at: String,
    /// The path under the account (`{asset}/{file}`).
    pub path: String,
    pub method: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    pub duration_ms: u64,
    pub client: String,
    pub user_agent: Option<String>,
    pub node: Option<Uuid>,
    pub cache_hit: Option<bool>,
    /// Who answered: `router:{name}`, or `node:{id}` (a player the node served
    /// directly: sent there by a router in redirect mode, or not through a router).
    pub source: String,
}

/// The account's access log: one record per player request the platform
/// answered (test content never), oldest first, kept for the retention
/// (`--access-log-retention-hours`, 7 days by default). Follow it by asking
/// again with the last record's id as `cursor`.
#[utoipa::path(get, path = "/v1/accounts/{name}/logs", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path), LogsQuery),
    responses((status = 200, body = Page<AccessLogEntry>), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<Page<AccessLogEntry>>, ApiError> {
    let account = find(&s, caller, &name).await?;
    let limit = page_limit(q.limit)?;
    let since = match &q.since {
        None => i64::MIN,
        Some(t) => {
            parse_rfc3339(t).ok_or_else(|| ApiError::invalid("since", "an RFC 3339 time, e.g. 2026-11-25T00:00:00Z"))?
        }
    };
    if q.cursor.is_some_and(|c| c < 0) {
        return Err(ApiError::invalid("cursor", "a record id (0 or more)"));
    }
    let rows = s.store.access_logs(account.id, since, q.cursor.unwrap_or(0), limit).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let r: AccessRecordBody = serde_json::from_str(&row.record)
            .map_err(|e| ApiError::Internal(format!("access record {}: {e}", row.id)))?;
        items.push(AccessLogEntry {
            id: row.id,
            at: rfc3339(r.at_ms),
            path: r.path,
            method: r.method,
            status: r.status,
            bytes: r.bytes,
            duration_ms: r.duration_ms,
            client: r.client,
            user_agent: r.user_agent,
            node: r.node,
            cache_hit: r.cache_hit,
            source: r.source,
        });
    }
    Ok(Json(Page::of(items, limit, |e: &AccessLogEntry| e.id.to_string())))
}
