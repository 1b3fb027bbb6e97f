//! Encryption of a `jit` account's packaged answers: HLS with AES-128, DASH
//! with Common Encryption (`cenc` or `cbcs`, ClearKey). Each asset gets its own
//! content keys (one for HLS, one for DASH), derived on the nodes from the
//! account's content secret (made here, sealed at rest, never shown); a key is
//! handed only to a signed playback URL, so turning encryption on needs a
//! playback key.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::accounts::find;
use super::auth::Caller;
use super::problem::{ApiError, ApiJson, Problem};
use crate::control::node_config::content_secret_context;
use crate::states::{DashScheme, EncryptionScheme};
use crate::store::JIT_TYPE;

/// An account's encryption.
#[derive(Debug, Serialize, ToSchema)]
pub struct EncryptionPolicy {
    /// `aes128`: every HLS media segment encrypted whole (AES-128-CBC) and
    /// every DASH segment with Common Encryption (`dash`), the keys at
    /// `{asset}/keys/{kid}.key` for signed URLs only. `none`: clear.
    pub scheme: EncryptionScheme,
    /// DASH's Common Encryption scheme while `scheme` is `aes128`: `cenc`
    /// (AES-128-CTR) or `cbcs` (AES-128-CBC, a 1:9 pattern over video). The MPD
    /// names it, with the key id and ClearKey.
    pub dash: DashScheme,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetEncryption {
    pub scheme: EncryptionScheme,
    /// DASH's scheme; `cenc` when absent.
    #[serde(default)]
    pub dash: Option<DashScheme>,
}

/// The account's encryption.
#[utoipa::path(get, path = "/v1/accounts/{name}/encryption", tag = "encryption", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = EncryptionPolicy), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get_encryption(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EncryptionPolicy>, ApiError> {
    let a = find(&s, caller, &name).await?;
    let (scheme, dash, _) = s.store.encryption(a.id).await?;
    Ok(Json(EncryptionPolicy { scheme, dash }))
}

/// Encrypts the account's packaged answers, or stops. Nodes apply it within a
/// second or two; players then need a signed URL to get the keys.
#[utoipa::path(put, path = "/v1/accounts/{name}/encryption", tag = "encryption", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SetEncryption,
    responses((status = 200, body = EncryptionPolicy), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "not a jit account, or no playback key to sign the key URLs with"),
              (status = 422, body = Problem)))]
pub async fn set_encryption(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetEncryption>,
) -> Result<Json<EncryptionPolicy>, ApiError> {
    let a = find(&s, caller, &name).await?;
    if body.scheme != EncryptionScheme::None {
        if a.origin_type != JIT_TYPE {
            return Err(ApiError::Conflict {
                detail: format!(
                    "account {name} serves pre-packaged files ({}): encryption is for jit accounts",
                    a.origin_type
                ),
                field: Some("scheme".into()),
            });
        }
        if a.playback_keys.0.is_empty() {
            return Err(ApiError::Conflict {
                detail: format!(
                    "keys are handed to signed playback URLs only: create a playback key first \
                     (POST /v1/accounts/{name}/playback-keys)"
                ),
                field: Some("scheme".into()),
            });
        }
    }
    let secret = crate::keys::secret();
    let sealed = s
        .settings
        .sealer
        .seal(&secret, &content_secret_context(&a.name))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let dash = body.dash.unwrap_or(DashScheme::Cenc);
    s.store.set_encryption(a.id, (body.scheme, dash), &sealed, s.clock.now_ms()).await?;
    Ok(Json(EncryptionPolicy { scheme: body.scheme, dash }))
}
