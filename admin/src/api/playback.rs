//! Signed playback URLs, per account and opt-in: signing keys (at most two, so a
//! rotation never cuts a player off), whether the locator needs a token, and
//! tokens made for a path. Routers and nodes check tokens with the keys the
//! routing table and node configurations carry (`headwater_playback`).

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::{Json, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::accounts::find;
use super::auth::Caller;
use super::middleware::ShownOnce;
use super::problem::{ApiError, ApiJson, Problem};
use crate::clock::rfc3339;
use crate::control::signing::key_context;
use crate::rules;
use crate::store::StoredKey;

/// What a path segment of a URL must escape (RFC 3986 pchar aside).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Keys an account holds at once: the current one and the one before it.
pub const MAX_KEYS: usize = 2;
/// Longest a token may live.
pub const MAX_EXPIRES_IN_SECS: u32 = 7 * 24 * 3600;
const DEFAULT_EXPIRES_IN_SECS: u32 = 3600;

#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybackKeyInfo {
    pub id: String,
    pub created_at: String,
}

/// An account's signed-playback settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybackPolicy {
    /// Whether the locator serves only URLs with a valid token.
    pub required: bool,
    /// The keys tokens may be signed with, newest last.
    pub keys: Vec<PlaybackKeyInfo>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPlaybackPolicy {
    pub required: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewPlaybackKey {
    pub id: String,
    /// The HMAC-SHA256 key (base64url), to sign tokens yourself: shown this once.
    pub secret: String,
    pub created_at: String,
    /// The key retired to make room (an account holds two).
    pub retired: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignPlaybackUrl {
    /// The file to play, under the account: `{asset}/{file}`.
    pub path: String,
    /// How long the token is good for, in seconds (default an hour, at most a week).
    #[serde(default, deserialize_with = "super::whole::present")]
    #[schema(nullable = false, minimum = 1, maximum = 604800)]
    pub expires_in_secs: Option<u32>,
    /// What else the token plays: `asset` (default: every file of `path`'s
    /// asset, `demo/` for `demo/hls/master.m3u8`), `directory` (the files beside
    /// `path` and below, `demo/hls/`), or `account` (every file of the account).
    pub scope: Option<PlaybackScope>,
    /// The one client address the token is good for (default: any).
    pub client_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlaybackScope {
    Account,
    #[default]
    Asset,
    Directory,
}

impl PlaybackScope {
    /// The path prefix a token of this scope for `path` (`{asset}/{file}`) carries.
    fn prefix(self, path: &str) -> String {
        match self {
            PlaybackScope::Account => String::new(),
            PlaybackScope::Asset => format!("{}/", path.split('/').next().unwrap_or_default()),
            PlaybackScope::Directory => path.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/")),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybackToken {
    pub token: String,
    /// The locator of `path` with the token in it: give this to the player.
    pub url: String,
    pub expires_at: String,
    pub key_id: String,
    pub path_prefix: String,
}

fn policy(required: bool, keys: &[StoredKey]) -> PlaybackPolicy {
    PlaybackPolicy {
        required,
        keys: keys.iter().map(|k| PlaybackKeyInfo { id: k.id.clone(), created_at: rfc3339(k.created_at) }).collect(),
    }
}

/// The account's signed-playback settings.
#[utoipa::path(get, path = "/v1/accounts/{name}/playback", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PlaybackPolicy), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlaybackPolicy>, ApiError> {
    let a = find(&s, caller, &name).await?;
    Ok(Json(policy(a.playback_required, &a.playback_keys.0)))
}

/// Requires a token on the account's locator, or stops requiring one. Routers
/// and nodes apply it within a second or two.
#[utoipa::path(put, path = "/v1/accounts/{name}/playback", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SetPlaybackPolicy,
    responses((status = 200, body = PlaybackPolicy), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "no key to sign tokens with yet"),
              (status = 422, body = Problem)))]
pub async fn set_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetPlaybackPolicy>,
) -> Result<Json<PlaybackPolicy>, ApiError> {
    let a = find(&s, caller, &name).await?;
    let keys = &a.playback_keys.0;
    if body.required && keys.is_empty() {
        return Err(ApiError::Conflict {
            detail: "create a playback key first (POST /v1/accounts/{name}/playback-keys): nothing could play".into(),
            field: Some("required".into()),
        });
    }
    s.store.set_playback(a.id, (a.playback_required, keys), body.required, keys, s.clock.now_ms()).await?;
    Ok(Json(policy(body.required, keys)))
}

/// A new signing key; the oldest of two is retired (its tokens stop working).
#[utoipa::path(post, path = "/v1/accounts/{name}/playback-keys", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 201, body = NewPlaybackKey), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
pub async fn create_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let a = find(&s, caller, &name).await?;
    let now = s.clock.now_ms();
    let id = crate::keys::short_id();
    let secret = crate::keys::secret();
    let sealed =
        s.settings.sealer.seal(&secret, &key_context(&a.name, &id)).map_err(|e| ApiError::Internal(e.to_string()))?;
    let before = &a.playback_keys.0;
    let mut keys = before.clone();
    keys.push(StoredKey { id: id.clone(), sealed, created_at: now });
    let retired = (keys.len() > MAX_KEYS).then(|| keys.remove(0).id);
    s.store.set_playback(a.id, (a.playback_required, before), a.playback_required, &keys, now).await?;
    let created = NewPlaybackKey { id, secret, created_at: rfc3339(now), retired };
    Ok((StatusCode::CREATED, Extension(ShownOnce("a playback key")), Json(created)))
}

/// Retires a key at once: tokens signed with it stop working.
#[utoipa::path(delete, path = "/v1/accounts/{name}/playback-keys/{id}", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "the last key of an account that requires tokens")))]
pub async fn delete_key(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let a = find(&s, caller, &name).await?;
    let before = &a.playback_keys.0;
    let keys: Vec<StoredKey> = before.iter().filter(|k| k.id != id).cloned().collect();
    if keys.len() == before.len() {
        return Err(ApiError::NotFound(format!("playback key {id}")));
    }
    if keys.is_empty() && a.playback_required {
        return Err(ApiError::Conflict {
            detail: "the account requires tokens and this is its last key: stop requiring them first".into(),
            field: None,
        });
    }
    s.store.set_playback(a.id, (a.playback_required, before), a.playback_required, &keys, s.clock.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A signed URL for a file of the account, made with its newest key.
#[utoipa::path(post, path = "/v1/accounts/{name}/playback-tokens", tag = "playback", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SignPlaybackUrl,
    responses((status = 201, body = PlaybackToken), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "the account has no playback key"),
              (status = 422, body = Problem)))]
pub async fn sign(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SignPlaybackUrl>,
) -> Result<(StatusCode, Json<PlaybackToken>), ApiError> {
    if body.path.len() > rules::FILE_PATH_MAX || !rules::IS_ASSET_FILE.matches(&body.path) {
        return Err(ApiError::invalid("path", "a file of an asset of the account: {asset}/{file}"));
    }
    let expires_in = body.expires_in_secs.unwrap_or(DEFAULT_EXPIRES_IN_SECS);
    if !(1..=MAX_EXPIRES_IN_SECS).contains(&expires_in) {
        return Err(ApiError::invalid("expires_in_secs", format!("1 to {MAX_EXPIRES_IN_SECS} seconds")));
    }
    let prefix = body.scope.unwrap_or_default().prefix(&body.path);
    let client_ip = match &body.client_ip {
        Some(ip) if rules::IS_IP_ADDRESS.matches(ip) => {
            Some(ip.parse().map_err(|_| ApiError::invalid("client_ip", "an IP address"))?)
        }
        Some(_) => return Err(ApiError::invalid("client_ip", "an IP address")),
        None => None,
    };
    let a = find(&s, caller, &name).await?;
    let Some(newest) = a.playback_keys.0.last() else {
        return Err(ApiError::Conflict {
            detail: "the account has no playback key: POST /v1/accounts/{name}/playback-keys first".into(),
            field: None,
        });
    };
    let secret = s
        .settings
        .sealer
        .open(&newest.sealed, &key_context(&a.name, &newest.id))
        .ok_or_else(|| ApiError::Internal("a playback key does not open under the master key".into()))?;
    let key = headwater_protocol::PlaybackKey { id: newest.id.clone(), secret: secret.to_string() };
    let expires = u64::try_from(s.clock.now_ms() / 1000).unwrap_or(0) + u64::from(expires_in);
    let grant = headwater_playback::Grant { expires, prefix: prefix.clone(), client_ip };
    let token = headwater_playback::sign(&a.name, &key, &grant)
        .ok_or_else(|| ApiError::Internal("a playback key is not base64url".into()))?;
    // Each segment percent-encoded as a player sends it; the token's prefix is
    // the decoded path, as routers and nodes compare it.
    let encoded: Vec<String> =
        body.path.split('/').map(|seg| percent_encoding::utf8_percent_encode(seg, SEGMENT).to_string()).collect();
    let url = format!("{}~{token}/{}", a.locator, encoded.join("/"));
    let expires_at = rfc3339(i64::try_from(expires).unwrap_or(i64::MAX / 1000) * 1000);
    Ok((StatusCode::CREATED, Json(PlaybackToken { token, url, expires_at, key_id: key.id, path_prefix: prefix })))
}
