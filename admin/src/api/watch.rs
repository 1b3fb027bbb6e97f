//! Live updates as Server-Sent Events: an operation's steps as they finish, for
//! `headwater operations wait`, and the audit trail as it is written, for
//! `headwater events --follow` (and a console) instead of polling.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, OperatorAuth};
use super::model::{Event as AuditEvent, Operation};
use super::problem::{ApiError, ApiQuery, Problem};
use crate::store::OperationFilter;

/// How often a watched operation is read again.
const POLL: Duration = Duration::from_millis(250);

/// The operation as it goes: an event stream (`text/event-stream`) of
/// `operation` events, each an `Operation` as JSON: the operation now, then
/// again each time it changes (a step finished, its state, its progress). The
/// stream ends after the event that shows it ended (`succeeded`, `failed` or
/// `superseded`); a comment every 15 s keeps it open meanwhile.
#[utoipa::path(get, path = "/v1/operations/{id}/watch", tag = "operations", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "`event: operation` lines with an `Operation` as `data`, until it has ended"),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn watch_operation(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // A 404 before the stream starts, never an empty stream.
    let (first, filter) = super::accounts::find_operation(&s, caller, &id).await?;
    let op_id = first.id;
    struct Watch {
        s: AppState,
        id: Uuid,
        filter: OperationFilter,
        next: Option<Operation>,
        last: Option<String>,
        ended: bool,
    }
    let start = Watch { s, id: op_id, filter, next: Some(first.into()), last: None, ended: false };
    let events = futures_util::stream::unfold(start, |mut w| async move {
        loop {
            if w.ended {
                return None;
            }
            let op = match w.next.take() {
                Some(op) => op,
                None => {
                    tokio::time::sleep(POLL).await;
                    match w.s.store.operation(w.id, w.filter).await {
                        Ok(op) => op.into(),
                        // Deleted with its account, or the store failed: the
                        // stream ends and the watcher asks again.
                        Err(_) => return None,
                    }
                }
            };
            let json = serde_json::to_string(&op).unwrap_or_default();
            if w.last.as_deref() == Some(json.as_str()) {
                continue;
            }
            w.ended = !op.state.open();
            w.last = Some(json.clone());
            return Some((Ok(Event::default().event("operation").data(json)), w));
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Where a watch of the audit trail starts.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsWatchQuery {
    /// Send the events after this id first (from `GET /v1/events`, or an
    /// event's `id:` line); without it, and without a `Last-Event-ID` header,
    /// only events written from now on are sent.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// Most events read at once.
const EVENTS_BATCH: i64 = 200;

/// How long a gap in the event ids is waited for before the events after it
/// are sent. PostgreSQL hands a sequence's ids out at insert, not at commit, so
/// a lower id can become visible after a higher one; a rolled-back insert
/// leaves a gap that never fills.
const GAP_WAIT: Duration = Duration::from_secs(2);

/// How many of `ids` (ascending, all after `after`) may be sent now: those
/// before the first gap in the ids after `after`, or all once the gap has
/// been waited for.
fn sendable(after: i64, ids: &[i64], gap_waited: bool) -> usize {
    if gap_waited {
        return ids.len();
    }
    ids.iter().zip(after.saturating_add(1)..).take_while(|(id, want)| **id == *want).count()
}

/// The audit trail as it is written: an event stream (`text/event-stream`) of
/// `event` events, oldest first, each an `Event` as JSON with its id as the
/// SSE `id:`, so a client that reconnects with `Last-Event-ID` (or `?after=`)
/// misses none and sees none twice. It does not end; a comment every 15 s
/// keeps it open.
#[utoipa::path(get, path = "/v1/events/watch", tag = "operator", security(("bearer" = [])),
    params(EventsWatchQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (takes precedence over `after`)")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "`event: event` lines with an `Event` as `data` and its id as `id`"),
        (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn watch_events(
    State(s): State<AppState>,
    _op: OperatorAuth,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsWatchQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "an event id (0 or more)"))?,
        ),
    };
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "an event id (0 or more)"));
    }
    let after = match resume.or(q.after) {
        Some(id) => id,
        None => s.store.last_event_id().await?,
    };
    struct Follow {
        s: AppState,
        after: i64,
        ready: VecDeque<AuditEvent>,
        /// Since when the next id has been missing while later ones are there.
        gap_since: Option<tokio::time::Instant>,
    }
    let start = Follow { s, after, ready: VecDeque::new(), gap_since: None };
    let events = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if let Some(e) = f.ready.pop_front() {
                let json = serde_json::to_string(&e).unwrap_or_default();
                return Some((Ok(Event::default().event("event").id(e.id.to_string()).data(json)), f));
            }
            match f.s.store.events_after(f.after, EVENTS_BATCH).await {
                Ok(rows) if !rows.is_empty() => {
                    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                    let waited = f.gap_since.is_some_and(|t| t.elapsed() >= GAP_WAIT);
                    let n = sendable(f.after, &ids, waited);
                    if n < ids.len() {
                        f.gap_since.get_or_insert_with(tokio::time::Instant::now);
                    } else {
                        f.gap_since = None;
                    }
                    if n == 0 {
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    f.after = ids[n - 1];
                    f.ready.extend(rows.into_iter().take(n).map(AuditEvent::from));
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                // The store failed: the stream ends and the watcher resumes
                // with Last-Event-ID.
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::sendable;

    #[test]
    fn events_after_a_gap_wait_for_it_to_fill() {
        assert_eq!(sendable(4, &[5, 6, 7], false), 3);
        // 6 not yet committed: 5 goes, 7 waits.
        assert_eq!(sendable(4, &[5, 7], false), 1);
        assert_eq!(sendable(5, &[7, 8], false), 0);
        // Waited long enough (a rolled-back insert): everything goes.
        assert_eq!(sendable(5, &[7, 8], true), 2);
    }
}
