//! An account's CDN authorization (as MediaPackage's CDN identifier header): a
//! secret the account's CDN sends in `X-Headwater-CDN-Secret`. Once an account
//! has one, routers and nodes serve only requests carrying one of its secrets
//! (two during a rotation), and those need no playback token: a CDN caches one
//! URL for every viewer and checks its viewers itself. Secrets are kept as
//! SHA-256 only, like API keys.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::accounts::find;
use super::auth::Caller;
use super::middleware::ShownOnce;
use super::problem::{ApiError, Problem};
use crate::clock::rfc3339;
use crate::store::CdnSecret;

/// Secrets an account holds at once: the current one and the one before it.
pub const MAX_SECRETS: usize = 2;
const HEADER: &str = "X-Headwater-CDN-Secret";

#[derive(Debug, Serialize, ToSchema)]
pub struct CdnSecretInfo {
    pub id: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CdnAuthorization {
    /// The header the CDN sends the secret in.
    pub header: String,
    /// When not empty, only requests with one of these secrets are served.
    pub secrets: Vec<CdnSecretInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewCdnSecret {
    pub id: String,
    /// Set it as the value of `header` in the CDN's origin settings: shown this once.
    pub secret: String,
    pub header: String,
    pub created_at: String,
    /// The secret retired to make room (an account holds two).
    pub retired: Option<String>,
}

fn view(secrets: &[CdnSecret]) -> CdnAuthorization {
    CdnAuthorization {
        header: HEADER.into(),
        secrets: secrets
            .iter()
            .map(|c| CdnSecretInfo { id: c.id.clone(), created_at: rfc3339(c.created_at) })
            .collect(),
    }
}

/// The account's CDN secrets (ids only).
#[utoipa::path(get, path = "/v1/accounts/{name}/cdn-secrets", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = CdnAuthorization), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<CdnAuthorization>, ApiError> {
    let a = find(&s, caller, &name).await?;
    Ok(Json(view(&a.cdn_secrets.0)))
}

/// A new CDN secret; from the first one on, only requests carrying a secret are
/// served. The older of two is retired (give the CDN the new one first).
#[utoipa::path(post, path = "/v1/accounts/{name}/cdn-secrets", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 201, body = NewCdnSecret), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let a = find(&s, caller, &name).await?;
    let now = s.clock.now_ms();
    let id = crate::keys::short_id();
    let secret = crate::keys::secret();
    let before = &a.cdn_secrets.0;
    let mut secrets = before.clone();
    secrets.push(CdnSecret {
        id: id.clone(),
        sha256: headwater_playback::cdn_hash(secret.as_bytes()),
        created_at: now,
    });
    let retired = (secrets.len() > MAX_SECRETS).then(|| secrets.remove(0).id);
    s.store.set_cdn_secrets(a.id, before, &secrets, now).await?;
    let created = NewCdnSecret { id, secret, header: HEADER.into(), created_at: rfc3339(now), retired };
    Ok((StatusCode::CREATED, Extension(ShownOnce("a CDN secret")), Json(created)))
}

/// Retires a CDN secret at once; with none left, the account is served to
/// everyone again (playback tokens apply as before).
#[utoipa::path(delete, path = "/v1/accounts/{name}/cdn-secrets/{id}", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let a = find(&s, caller, &name).await?;
    let before = &a.cdn_secrets.0;
    let secrets: Vec<CdnSecret> = before.iter().filter(|c| c.id != id).cloned().collect();
    if secrets.len() == before.len() {
        return Err(ApiError::NotFound(format!("CDN secret {id}")));
    }
    s.store.set_cdn_secrets(a.id, before, &secrets, s.clock.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}
