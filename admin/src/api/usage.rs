//! An account's usage report: bytes, requests and bandwidth per minute, hour or
//! day, as JSON or CSV (`crate::usage_rollup` does the arithmetic).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::accounts::find;
use super::auth::Caller;
use super::problem::{ApiError, ApiQuery, Problem};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::usage_rollup::{Granularity, MAX_WINDOWS, Rollup, align, rollup};

/// What an answer is written as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageFormat {
    #[default]
    Json,
    /// `text/csv`: a header line, then one line per window.
    Csv,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start (RFC 3339), inclusive; default 24 hours before `to` (30 days for
    /// `day`). Hours and days are widened to whole UTC hours and days; a range
    /// of more than 10,080 windows is shortened at its start (the answer's
    /// `from` says where it begins).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End (RFC 3339), exclusive; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `minute` (the default: the minutes that served something), `hour` or
    /// `day` (every window of the range, those without traffic as 0).
    #[param(inline)]
    pub granularity: Option<Granularity>,
    /// `json` (the default) or `csv`.
    #[param(inline)]
    pub format: Option<UsageFormat>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UsageWindowView {
    /// The window's start (RFC 3339); it lasts one `granularity`.
    pub window_start: String,
    pub bytes: i64,
    pub requests: i64,
    /// The busiest minute's average, Mbit/s (10^6 bits per second).
    pub peak_mbps: f64,
    /// The 95th percentile of the window's 5-minute averages, Mbit/s (a
    /// 5-minute sample without traffic counts as 0, one not yet begun not at
    /// all); null for a minute.
    pub p95_mbps: Option<f64>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub account: String,
    pub granularity: Granularity,
    pub from: String,
    pub to: String,
    pub total_bytes: i64,
    pub total_requests: i64,
    /// The busiest minute of the range, Mbit/s.
    pub peak_mbps: f64,
    /// The 95th percentile of the range's 5-minute averages, Mbit/s.
    pub p95_mbps: f64,
    /// Bytes served per window, oldest first; test content is never counted.
    pub windows: Vec<UsageWindowView>,
}

impl Usage {
    fn of(account: String, granularity: Granularity, r: Rollup) -> Self {
        Self {
            account,
            granularity,
            from: rfc3339(r.from),
            to: rfc3339(r.to),
            total_bytes: r.total_bytes,
            total_requests: r.total_requests,
            peak_mbps: r.peak_mbps,
            p95_mbps: r.p95_mbps,
            windows: r
                .windows
                .into_iter()
                .map(|w| UsageWindowView {
                    window_start: rfc3339(w.start),
                    bytes: w.bytes,
                    requests: w.requests,
                    peak_mbps: w.peak_mbps,
                    p95_mbps: w.p95_mbps,
                })
                .collect(),
        }
    }

    /// The windows as CSV, one line each under a header.
    fn csv(&self) -> Result<Vec<u8>, ApiError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["window_start", "bytes", "requests", "peak_mbps", "p95_mbps"])
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for v in &self.windows {
            w.serialize((&v.window_start, v.bytes, v.requests, v.peak_mbps, v.p95_mbps))
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        w.into_inner().map_err(|e| ApiError::Internal(e.into_error().to_string()))
    }
}

/// Bytes, requests and bandwidth the account served, per minute, hour or day:
/// from the per-minute counts its nodes reported (each report counted once,
/// kept across restarts).
#[utoipa::path(get, path = "/v1/accounts/{name}/usage", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path), UsageQuery),
    responses(
        (status = 200, description = "The usage, as JSON or (`format=csv`) CSV",
         content((Usage = "application/json"), (String = "text/csv"))),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn usage(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    let account = find(&s, caller, &name).await?;
    let granularity = q.granularity.unwrap_or(Granularity::Minute);
    let now = s.clock.now_ms();
    let time = |field: &str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(t) => {
            parse_rfc3339(t).ok_or_else(|| ApiError::invalid(field, "an RFC 3339 time, e.g. 2026-11-25T00:00:00Z"))
        }
    };
    let to = time("to", &q.to, now + 1)?;
    // By default, a whole number of windows ending with the one `to` is in.
    let default_from = align(granularity, to, to).1.saturating_sub(granularity.default_range_ms());
    let from = time("from", &q.from, default_from)?;
    // [from, to): equal times are an empty range, `to` before `from` a mistake.
    if to < from {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    let (from, to) = align(granularity, from, to);
    // At most MAX_WINDOWS windows: the latest ones.
    let from = from.max(to - MAX_WINDOWS * granularity.window_ms());
    let minutes = s.store.usage(account.id, from, to).await?;
    let usage = Usage::of(account.name, granularity, rollup(&minutes, granularity, from, to, now));
    Ok(match q.format.unwrap_or_default() {
        UsageFormat::Json => Json(usage).into_response(),
        UsageFormat::Csv => {
            let file = format!("attachment; filename=\"{}-usage-{}.csv\"", usage.account, granularity.name());
            (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, file)],
                usage.csv()?,
            )
                .into_response()
        }
    })
}
