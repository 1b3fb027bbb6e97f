//! The web console at `/console`: a page, its script and style, and hls.js
//! (vendored, `admin/console/hls.min.js`), built into the binary. The page
//! talks to the API itself with the credential it is given; these routes need
//! none and hold no data.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const HLS: &str = include_str!("../../console/hls.min.js");

/// Scripts from here only; media and playlists from any router (locators are
/// on another origin), through hls.js's blob: media source and worker.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self' http: https:; media-src 'self' blob: http: https:; worker-src blob:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/console/", get(|| async { Redirect::permanent("/console") }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/hls.min.js", get(|| async { asset("text/javascript; charset=utf-8", HLS) }))
}
