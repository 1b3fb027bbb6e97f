//! Asset upload: packaged HLS/DASH files (and a `jit` account's MP4s) are
//! streamed into the content store, never held whole in memory. Paths are
//! percent-decoded once (by the router) and every segment is checked before
//! anything is read or written; an MP4 of a `jit` asset is checked by the
//! packager before it is put in place.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use headwater_content::{ContentError, ContentPath};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiError, Problem};
use crate::store::{JIT_TYPE, StoreError};

#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    pub account: String,
    pub asset: String,
    pub path: String,
    pub bytes: u64,
    /// Where players fetch it: the account's locator plus `asset/path`.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetInfo {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetList {
    pub items: Vec<AssetInfo>,
}

fn content_error(e: ContentError) -> ApiError {
    match e {
        ContentError::TooLarge { .. } => ApiError::TooLarge,
        ContentError::NotFound => ApiError::NotFound("asset".into()),
        ContentError::Body(detail) => ApiError::Malformed { detail },
        // A file where a folder is needed, or the other way round (local store).
        ContentError::PathTaken => ApiError::Conflict {
            detail: "a file and a folder of the asset would have the same path".into(),
            field: Some("path".into()),
        },
        other => ApiError::Internal(other.to_string()),
    }
}

fn path_taken(path: &str, existing: &str) -> ApiError {
    let (file, folder) = if path.len() > existing.len() { (existing, path) } else { (path, existing) };
    ApiError::Conflict {
        detail: format!("'{file}' is a file and cannot also be a folder (for '{folder}'); delete the asset first"),
        field: Some("path".into()),
    }
}

async fn account(s: &AppState, caller: Caller, name: &str) -> Result<crate::store::AccountRow, ApiError> {
    s.store.account(name, caller.customer_scope()).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("account {name}")),
        other => other.into(),
    })
}

fn asset_path(account: &str, asset: &str, rest: Option<&str>) -> Result<ContentPath, ApiError> {
    // No account has a name that is not an account name.
    if crate::domain::AccountName::parse(account).is_err() {
        return Err(ApiError::NotFound(format!("account {account}")));
    }
    if !crate::rules::IS_ASSET.matches(asset) {
        return Err(ApiError::invalid(
            "asset",
            "an asset name is one path segment of printable ASCII (no '/', '\\', '.' or '..'), at most 100",
        ));
    }
    if let Some(r) = rest
        && (r.len() > crate::rules::FILE_PATH_MAX || !crate::rules::IS_FILE_PATH.matches(r))
    {
        return Err(ApiError::invalid(
            "path",
            "segments of printable ASCII (no '\\', '.' or '..', at most 255 each), at most 800 in all",
        ));
    }
    let full = match rest {
        Some(r) => format!("{account}/{asset}/{r}"),
        None => format!("{account}/{asset}"),
    };
    ContentPath::parse(&full).map_err(|e| ApiError::invalid("path", e.to_string()))
}

/// Uploads one file of an asset (streamed; 413 past the upload limit, 409 past the
/// account's storage quota or where a file and a folder would share a path).
#[utoipa::path(put, path = "/v1/accounts/{name}/assets/{asset}/{path}", tag = "assets", security(("bearer" = [])),
    params(("name" = String, Path), ("asset" = String, Path), ("path" = String, Path, description = "file path inside the asset")),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "the file's bytes (none for an empty file)"),
    responses((status = 201, body = Uploaded), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
        (status = 422, description = "an invalid path, or (an MP4 in a `jit` asset) a file the packager cannot package: `unpackable`, its reason in `detail`", body = Problem)))]
pub async fn upload(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, asset, path)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Validate before touching the store, and before reading the body.
    let target = asset_path(&name, &asset, Some(&path))?;
    let a = account(&s, caller, &name).await?;
    let rel = target.rest();
    if let Some(existing) = s.store.path_conflict(a.id, rel).await? {
        return Err(path_taken(rel, &existing));
    }
    // The storage quota: what the account stores, less the file this replaces.
    let (_, quotas) = super::quotas::effective(&s, a.customer_id).await?;
    let stored = s.store.stored(a.id, rel).await?;
    let room = quotas.max_storage_bytes.saturating_sub(stored.total - stored.this_path).max(0);
    let over_quota = || ApiError::QuotaExceeded {
        quota: "max_storage_bytes",
        field: None,
        detail: format!(
            "account {name} may store {} bytes and stores {}; delete an asset or ask the operator to raise the quota",
            quotas.max_storage_bytes, stored.total
        ),
    };
    let room = u64::try_from(room).unwrap_or(0);
    if declared.is_some_and(|n| n > room) {
        return Err(over_quota());
    }
    let limit = s.settings.max_upload_bytes.min(room);
    // A `jit` asset's MP4 is written aside and put in place only once the
    // packager can package it with the asset's other MP4s.
    let checked = is_source(&path) || is_subtitles(&path) || is_asset_manifest(&path);
    let staged = if a.origin_type == JIT_TYPE && checked {
        Some(
            ContentPath::parse(&format!("{STAGING}/{}/{}", a.name, uuid::Uuid::new_v4()))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        )
    } else {
        None
    };
    let written = s.content.write_stream(staged.as_ref().unwrap_or(&target), body.into_data_stream(), limit).await;
    let bytes = match written {
        Err(ContentError::TooLarge { .. }) if limit < s.settings.max_upload_bytes => return Err(over_quota()),
        other => other.map_err(content_error)?,
    };
    if let Some(staged) = &staged {
        let checked = if is_subtitles(&path) {
            check_subtitles(&s.content, &target, staged, bytes).await
        } else if is_asset_manifest(&path) {
            check_asset_manifest(&s.content, staged, bytes).await
        } else {
            check_source(&s.content, &target, staged, bytes).await
        };
        if let Err(e) = checked {
            if let Err(gone) = s.content.delete(staged).await {
                tracing::warn!(error = %gone, path = %staged, "a refused upload could not be deleted");
            }
            return Err(e);
        }
        s.content.rename(staged, &target).await.map_err(content_error)?;
    }
    s.store.record_stored_file(a.id, rel, i64::try_from(bytes).unwrap_or(i64::MAX), s.clock.now_ms()).await?;
    let url = format!("{}{}", a.locator, target.rest());
    Ok((StatusCode::CREATED, Json(Uploaded { account: name, asset, path, bytes, url })))
}

/// Where MP4s for `jit` accounts wait while they are checked: not an account
/// (no account name starts with `_`), so no node serves it.
const STAGING: &str = "_uploads";

/// An MP4 directly in an asset: one the packager reads.
fn is_source(path: &str) -> bool {
    !path.contains('/') && path.to_ascii_lowercase().ends_with(".mp4")
}

/// A WebVTT file directly in an asset: a subtitle rendition.
fn is_subtitles(path: &str) -> bool {
    !path.contains('/') && path.ends_with(".vtt")
}

/// The asset's manifest (`asset.json`): how the packager cuts it.
fn is_asset_manifest(path: &str) -> bool {
    path == headwater_jit::asset_manifest::FILE
}

/// Refuses an asset manifest the packager would refuse (its settings and
/// languages cannot make the asset's MP4s unpackable: nothing else to check).
async fn check_asset_manifest(
    store: &headwater_content::ContentStore,
    staged: &ContentPath,
    size: u64,
) -> Result<(), ApiError> {
    let bytes = store
        .read_range(staged, 0..size.min(headwater_jit::asset_manifest::MAX_BYTES + 1))
        .await
        .map_err(content_error)?;
    headwater_jit::AssetManifest::parse(&bytes).map_err(|u| ApiError::Unpackable { detail: u.0 })?;
    Ok(())
}

/// Refuses a subtitle file that is not WebVTT (it must start with `WEBVTT`).
async fn check_subtitles(
    store: &headwater_content::ContentStore,
    target: &ContentPath,
    staged: &ContentPath,
    size: u64,
) -> Result<(), ApiError> {
    let head = store.read_range(staged, 0..size.min(16)).await.map_err(content_error)?;
    let text = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&head);
    let webvtt = text.starts_with(b"WEBVTT") && text.get(6).is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if webvtt {
        return Ok(());
    }
    let name = target.as_str().rsplit('/').next().unwrap_or_default();
    Err(ApiError::Unpackable { detail: format!("{name}: not a WebVTT file (it must start with WEBVTT)") })
}

/// Refuses an MP4 (staged at `staged`, for `target`) that the packager cannot
/// package: malformed, truncated or of a codec it does not serve,
/// or a rendition whose keyframes do not line up with the asset's other MP4s
/// (bitrate switching would break).
async fn check_source(
    store: &headwater_content::ContentStore,
    target: &ContentPath,
    staged: &ContentPath,
    size: u64,
) -> Result<(), ApiError> {
    let name = target.as_str().rsplit('/').next().unwrap_or_default().to_owned();
    let refused = |why: String| ApiError::Unpackable { detail: format!("{name}: {why}") };
    let index = headwater_jit::read_index(store, staged, size).await.map_err(|e| match e {
        headwater_jit::IndexError::Unpackable(u) => refused(u.0),
        headwater_jit::IndexError::Store(e) => content_error(e),
    })?;
    let dir = target.as_str().rsplit_once('/').map_or("", |(d, _)| d);
    let dir = ContentPath::parse(dir).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut files = vec![(name.clone(), index)];
    for (other, meta) in store.list_files(&dir).await.map_err(content_error)? {
        if other == name || !is_source(&other) {
            continue;
        }
        let path = dir.join(&other).map_err(|e| ApiError::Internal(e.to_string()))?;
        match headwater_jit::read_index(store, &path, meta.size).await {
            Ok(index) => files.push((other, index)),
            // Put in the store behind admin's back: nodes refuse it already.
            Err(headwater_jit::IndexError::Unpackable(_)) => {}
            Err(headwater_jit::IndexError::Store(e)) => return Err(content_error(e)),
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    headwater_jit::Asset::build(&files, headwater_jit::Settings::default()).map_err(|u| refused(u.0))?;
    Ok(())
}

/// The account's assets with file counts and sizes.
#[utoipa::path(get, path = "/v1/accounts/{name}/assets", tag = "assets", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 200, body = AssetList), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AssetList>, ApiError> {
    let a = account(&s, caller, &name).await?;
    let items = s.content.assets(&a.name).await.map_err(content_error)?;
    Ok(Json(AssetList {
        items: items.into_iter().map(|i| AssetInfo { name: i.name, files: i.files, bytes: i.bytes }).collect(),
    }))
}

/// Deletes an asset and all its files.
#[utoipa::path(delete, path = "/v1/accounts/{name}/assets/{asset}", tag = "assets", security(("bearer" = [])),
    params(("name" = String, Path), ("asset" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, asset)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let prefix = asset_path(&name, &asset, None)?;
    let a = account(&s, caller, &name).await?;
    let n = s.content.delete_prefix(&prefix).await.map_err(content_error)?;
    s.store.forget_stored_asset(a.id, &asset).await?;
    if n == 0 {
        return Err(ApiError::NotFound(format!("asset {asset}")));
    }
    s.store
        .record_event(
            &caller.actor(),
            "asset.deleted",
            &format!("account:{}", a.id),
            &format!("{asset}: {n} files"),
            s.clock.now_ms(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
