//! Live updates as Server-Sent Events: an operation's steps as they finish, for
//! `headwater operations wait` (and a console) instead of polling.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::model::Operation;
use super::problem::{ApiError, Problem};
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
