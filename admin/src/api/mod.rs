//! The provisioning REST API (v1). The stack in [`router`] reads top to bottom in
//! the order a request meets it.

mod access_logs;
mod accounts;
mod assets;
pub mod auth;
mod cdn;
mod console;
mod customers;
mod domains;
mod encryption;
pub mod middleware;
pub mod model;
pub mod node_ca;
pub mod nodes;
mod openapi;
mod operator;
mod playback;
pub mod problem;
pub mod quotas;
mod system;
pub(crate) mod targets;
mod usage;
mod watch;
mod whole;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use headwater_content::ContentStore;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::store::Store;
pub use middleware::{RateLimits, Rates};
pub use system::Metrics;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Compared (in constant time) with the bearer token of operator routes.
    pub operator_token: String,
    /// The bearer token of `/metrics` (the operator token works too).
    pub metrics_token: String,
    /// The bearer token of routers: the routing table and their sightings only.
    pub router_token: String,
    /// Base URL of the router; an account's locator is `{locator_base}/{name}/`.
    pub locator_base: String,
    /// How long a deactivated account's pool is kept.
    pub retention_ms: i64,
    pub max_body_bytes: usize,
    /// Largest uploaded file.
    pub max_upload_bytes: u64,
    pub request_timeout: Duration,
    /// Time an upload may take.
    pub upload_timeout: Duration,
    /// What a customer may hold unless the operator says otherwise.
    pub quotas: quotas::QuotaDefaults,
    /// Seals and opens secrets kept at rest (playback keys) under the master key.
    pub sealer: Arc<crate::sealed::Sealer>,
    /// CAs trusted for accounts' own domains besides the web's public roots.
    pub domain_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Told when an operation is enqueued, so a worker starts at once.
    pub bus: Bus,
    pub settings: Arc<ApiSettings>,
    /// Heartbeats queued for the batch writer.
    pub heartbeats: crate::control::heartbeats::HeartbeatQueue,
    /// Where assets are uploaded to (and nodes read from).
    pub content: ContentStore,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<RateLimits>,
    /// The routing table handed to routers.
    pub routing: Arc<crate::control::routing::Routing>,
    /// What each pool's nodes serve, for heartbeats' answers.
    pub serving: Arc<crate::control::node_config::ServingCache>,
    /// Issues and verifies the certificates of nodes and routers.
    pub node_ca: Arc<crate::node_ca::NodeCa>,
    /// The retention collector's clock, movable with `--test-clock`.
    pub test_clock: Option<Arc<crate::clock::OffsetClock>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Headwater admin API", description = "Provisioning of video-on-demand origin service."),
    modifiers(&BearerAuth),
    components(schemas(problem::Problem))
)]
struct ApiDoc;

struct BearerAuth;

#[derive(OpenApi)]
#[openapi(paths(assets::upload))]
struct UploadDoc;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI description, from the same handler list.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(customers::create_customer, customers::list_customers))
        .routes(routes!(customers::get_customer, customers::set_customer_quotas))
        .routes(routes!(customers::me))
        .routes(routes!(customers::create_key))
        .routes(routes!(customers::revoke_key))
        .routes(routes!(accounts::create_account, accounts::list_accounts))
        .routes(routes!(accounts::get_account, accounts::update_account, accounts::delete_account))
        .routes(routes!(accounts::deactivate))
        .routes(routes!(accounts::reactivate))
        .routes(routes!(usage::usage))
        .routes(routes!(access_logs::list))
        .routes(routes!(playback::get_policy, playback::set_policy))
        .routes(routes!(encryption::get_encryption, encryption::set_encryption))
        .routes(routes!(playback::create_key))
        .routes(routes!(playback::delete_key))
        .routes(routes!(playback::sign))
        .routes(routes!(cdn::list, cdn::create))
        .routes(routes!(cdn::delete))
        .routes(routes!(domains::get, domains::set, domains::delete))
        .routes(routes!(assets::list))
        .routes(routes!(assets::delete))
        .routes(routes!(accounts::list_operations))
        .routes(routes!(accounts::get_operation))
        .routes(routes!(watch::watch_operation))
        .routes(routes!(operator::list_origin_types, operator::create_origin_type))
        .routes(routes!(operator::get_origin_type, operator::update_origin_type))
        .routes(routes!(operator::create_image))
        .routes(routes!(operator::list_pools))
        .routes(routes!(targets::list_targets, targets::create_target))
        .routes(routes!(targets::get_target, targets::update_target, targets::delete_target))
        .routes(routes!(operator::list_nodes, nodes::register))
        .routes(routes!(nodes::heartbeat))
        .routes(routes!(node_ca::join))
        .routes(routes!(node_ca::renew_node))
        .routes(routes!(node_ca::renew_router))
        .routes(routes!(node_ca::list))
        .routes(routes!(node_ca::rotate))
        .routes(routes!(node_ca::retire))
        .routes(routes!(nodes::config))
        .routes(routes!(nodes::usage))
        .routes(routes!(access_logs::ingest_from_node))
        .routes(routes!(nodes::drain))
        .routes(routes!(nodes::routing))
        .routes(routes!(nodes::routing_stream))
        .routes(routes!(nodes::sightings))
        .routes(routes!(access_logs::ingest))
        .routes(routes!(operator::list_allocations))
        .routes(routes!(operator::list_events))
        .routes(routes!(watch::watch_events))
        .routes(routes!(operator::advance_test_clock))
        .routes(routes!(operator::rollback))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .split_for_parts()
}

/// The whole admin HTTP service.
pub fn router(state: AppState) -> Router {
    let (api, mut openapi) = routes();
    // Uploads stream large bodies: their own size limit and timeout, and no
    // idempotency buffering (a PUT of the same path is idempotent by nature).
    // The file path is a catch-all segment, which the OpenAPI document names `{path}`.
    let uploads: Router<AppState> =
        Router::new().route("/v1/accounts/{name}/assets/{asset}/{*path}", axum::routing::put(assets::upload));
    openapi.merge(UploadDoc::openapi());
    openapi::finish(&mut openapi, state.test_clock.is_some());
    let openapi = Arc::new(openapi);
    let settings = state.settings.clone();
    let track = || axum::middleware::from_fn_with_state(state.clone(), middleware::track);
    let api = api
        // Per-route metrics need the matched route, so they sit inside routing.
        .route_layer(track())
        // Replays of idempotent requests.
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::idempotency))
        // Bodies past the limit are refused while being read (413).
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        // A slow client or a stuck handler gets 408 instead of holding a connection.
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout));
    let uploads = uploads
        .route_layer(track())
        .layer(RequestBodyLimitLayer::new(usize::try_from(settings.max_upload_bytes).unwrap_or(usize::MAX)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.upload_timeout));
    api.merge(uploads)
        .route("/openapi.json", axum::routing::get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .merge(console::routes())
        .fallback(|| async { problem::ApiError::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async {
            let mut res =
                problem::ApiError::Malformed { detail: "method not allowed on this route".into() }.into_response();
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            res
        })
        // 429 before any work is done: per principal, or per IP without credentials.
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::rate_limit))
        // Who is calling, once: every layer inside and the handlers use it.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        // Answers from the layers inside are problems too.
        .layer(axum::middleware::map_response(middleware::layer_errors_as_problems))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
