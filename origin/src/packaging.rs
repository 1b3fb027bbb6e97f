//! Just-in-time packaging on the node (the `jit` type): an asset's MP4 files are
//! indexed once and kept, its manifests and segments are made on request by
//! `headwater-jit` and kept too, both bounded by `--jit-cache-mib`. They are
//! answered like files (validators, conditional requests, ranges), with an ETag
//! made of the source files' ETags, the packager's version and settings, and the
//! path: the same on every node and after a restart, so a router resumes a
//! broken body on another node with `If-Range`, and CDNs cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use headwater_content::{ContentError, ContentPath, ContentStore, Meta};
use headwater_jit::cenc::{self, Protection};
use headwater_jit::encrypt::{self, AssetKey};
use headwater_jit::package::Subtitles;
use headwater_jit::{
    Asset, AssetManifest, BadFilter, Filter, IndexError, Request, Settings, Unpackable, asset_manifest, manifest,
};
use headwater_protocol::{DashScheme, EncryptionScheme, UnpackableAsset};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use sha2::Digest;
use tokio::time::Instant;

use crate::files::{Reply, answer_in_memory};
use crate::node::Encrypted;

/// Why a packaged answer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// No MP4 in the asset, no such rendition, or a segment past the end.
    #[error("{0}")]
    NotFound(&'static str),
    /// The asset's files cannot be packaged (a corrupt or unsupported file put
    /// in the store behind admin's back): this asset fails, nothing else.
    #[error(transparent)]
    Unpackable(#[from] Unpackable),
    #[error(transparent)]
    Store(#[from] ContentError),
    /// The account encrypts, and this node cannot make its keys (the secret it
    /// was handed did not decode): nothing goes out clear.
    #[error("this node cannot make the account's content keys")]
    KeyUnavailable,
    /// A manifest's query names a filter wrongly.
    #[error(transparent)]
    BadFilter(#[from] BadFilter),
}

impl PackError {
    /// The problem a player gets.
    pub fn status_kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::Unpackable(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unpackable"),
            Self::Store(_) => (StatusCode::BAD_GATEWAY, "content-store"),
            Self::KeyUnavailable => (StatusCode::INTERNAL_SERVER_ERROR, "encryption"),
            Self::BadFilter(_) => (StatusCode::BAD_REQUEST, "invalid-filter"),
        }
    }
}

impl From<IndexError> for PackError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Unpackable(u) => Self::Unpackable(u),
            IndexError::Store(ContentError::NotFound) => Self::NotFound("a file of the asset is gone"),
            IndexError::Store(e) => Self::Store(e),
        }
    }
}

/// An asset as packaged from the files listed: its tracks and segments, or why
/// it cannot be packaged (kept too, so a bad file is read once, not per request).
struct Packaged {
    /// The asset's MP4 files (name inside the asset, metadata), by name.
    sources: Vec<(String, Meta)>,
    asset: Result<Asset, Unpackable>,
    /// Names the sources, the packager's version and its settings: every
    /// output's cache key and ETag start from it.
    tag: Arc<str>,
}

#[derive(Clone)]
struct AssetEntry {
    packaged: Arc<Packaged>,
    checked: Instant,
}

/// What a sample row costs in memory (offset, size, times, flags).
const SAMPLE_BYTES: u64 = std::mem::size_of::<headwater_jit::index::Sample>() as u64;

#[derive(Clone)]
struct AssetWeight;

impl Weighter<String, AssetEntry> for AssetWeight {
    fn weight(&self, _: &String, e: &AssetEntry) -> u64 {
        let samples: usize = e
            .packaged
            .asset
            .as_ref()
            .map_or(0, |a| a.renditions.iter().map(|r| r.track.samples.len() + r.segments.len()).sum());
        samples as u64 * SAMPLE_BYTES + 1024
    }
}

/// A manifest or segment as made, with its validator.
struct Output {
    bytes: Bytes,
    etag: String,
}

#[derive(Clone)]
struct OutputWeight;

impl Weighter<String, Arc<Output>> for OutputWeight {
    fn weight(&self, k: &String, o: &Arc<Output>) -> u64 {
        (o.bytes.len() + o.etag.len() + k.len()) as u64 + 128
    }
}

/// The node's packager.
pub struct Packager {
    store: ContentStore,
    settings: Settings,
    /// `account/asset` → the asset as packaged.
    assets: Cache<String, AssetEntry, AssetWeight>,
    /// `{tag}/{path under the asset}` → the bytes.
    outputs: Cache<String, Arc<Output>, OutputWeight>,
    /// Outputs larger than this are made for each request, not kept.
    max_output: u64,
    /// A kept asset older than this is checked against the store: a re-upload
    /// is packaged anew within this time.
    revalidate: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Assets found unpackable, for the next heartbeat to report (at most
    /// [`REPORTED_MAX`]).
    unpackable: std::sync::Mutex<Vec<UnpackableAsset>>,
}

/// Unpackable assets kept for one heartbeat at most.
const REPORTED_MAX: usize = 16;

/// Packaging counters for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PackStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

impl Packager {
    /// A packager with `cache_mib` of memory: a quarter for indexes, the rest for
    /// manifests and segments.
    pub fn new(store: ContentStore, cache_mib: u64, settings: Settings) -> Self {
        let capacity = cache_mib.max(1) * 1024 * 1024;
        let indexes = (capacity / 4).max(1);
        let outputs = (capacity - capacity / 4).max(1);
        Self {
            store,
            settings,
            // Few items, some large (a two-hour film's index is ~10 MB): 32
            // estimated items make quick_cache keep one shard, so an index
            // may use the whole budget rather than a shard's share of it.
            assets: Cache::with_weighter(32, indexes, AssetWeight),
            outputs: Cache::with_weighter(4096, outputs, OutputWeight),
            max_output: (outputs / 8).max(1),
            revalidate: Duration::from_secs(2),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            unpackable: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The assets found unpackable since the last call (for a heartbeat).
    pub fn take_unpackable(&self) -> Vec<UnpackableAsset> {
        std::mem::take(&mut *self.unpackable.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Puts back what a heartbeat that did not reach admin carried.
    pub fn keep_unpackable(&self, mut assets: Vec<UnpackableAsset>) {
        let mut kept = self.unpackable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assets.append(&mut kept);
        assets.truncate(REPORTED_MAX);
        *kept = assets;
    }

    pub fn stats(&self) -> PackStats {
        PackStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.assets.weight() + self.outputs.weight(),
        }
    }

    /// Answers a GET or HEAD for `request`, the path `rest` under the asset
    /// folder `dir` (`account/asset`), whose `query` may filter a manifest.
    #[allow(clippy::too_many_arguments)]
    pub async fn reply(
        &self,
        dir: &ContentPath,
        request: &Request<'_>,
        rest: &str,
        query: Option<&str>,
        req: &HeaderMap,
        head: bool,
        encryption: Option<&Encrypted>,
    ) -> Result<Reply, PackError> {
        // Segments are the same whatever the query; manifests follow it.
        let filter = if request.is_manifest() { Filter::parse(query)? } else { Filter::default() };
        let keys = match encryption {
            None => None,
            Some(e) => {
                let secret = e.secret.as_deref().ok_or(PackError::KeyUnavailable)?;
                let asset = dir.as_str().rsplit('/').next().unwrap_or_default();
                let dash = match e.dash {
                    DashScheme::Cenc => cenc::Scheme::Cenc,
                    DashScheme::Cbcs => cenc::Scheme::Cbcs,
                };
                let EncryptionScheme::Aes128 = e.scheme;
                Some(Keys {
                    hls: AssetKey::derive(secret, asset),
                    dash: (dash, AssetKey::derive_cenc(secret, asset, dash)),
                })
            }
        };
        let packaged = self.asset(dir).await?;
        let asset = packaged.asset.as_ref().map_err(|e| PackError::Unpackable(e.clone()))?;
        if let Request::Key(kid) = request {
            return key_reply(keys.as_ref(), kid, req, head);
        }
        // Clear and encrypted answers are kept apart (and have other ETags).
        let variant = match &keys {
            None => "clear".to_owned(),
            Some(k) => format!("aes128.{}.{}.{}", k.hls.kid_hex(), k.dash.0.as_str(), k.dash.1.kid_hex()),
        };
        let key_string = format!("{}/{variant}/{rest}?{}", packaged.tag, filter.canonical());
        // What segment URLs carry, so caches on the way never mix versions.
        let version = hex::encode(&sha2::Sha256::digest(format!("{}/{variant}", packaged.tag).as_bytes())[..4]);
        let key_ref = keys.as_ref();
        let output = match self.outputs.get_value_or_guard_async(&key_string).await {
            Ok(o) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                o
            }
            Err(guard) => {
                // Others asking for the same output meanwhile wait for this one.
                self.misses.fetch_add(1, Ordering::Relaxed);
                let made = self.make(dir, asset, request, &filter, key_ref, (&packaged.sources, &version)).await?;
                let bytes = Bytes::from(made);
                let digest = sha2::Sha256::digest(key_string.as_bytes());
                let output = Arc::new(Output { bytes, etag: format!("\"jit-{}\"", hex::encode(&digest[..12])) });
                if output.bytes.len() as u64 <= self.max_output {
                    let _ = guard.insert(output.clone());
                }
                output
            }
        };
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(request.content_type()));
        if let Ok(v) = HeaderValue::from_str(&output.etag) {
            headers.insert(header::ETAG, v);
        }
        // No Last-Modified: an answer changes with more than its sources' times
        // (encryption, the packager's version, a rendition removed), so only its
        // ETag validates it.
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let lifetime = if request.is_manifest() { "public, max-age=60" } else { "public, max-age=86400" };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(lifetime));
        let meta = Meta { size: output.bytes.len() as u64, last_modified: i64::MAX, etag: output.etag.clone() };
        Ok(answer_in_memory(headers, &meta, req, head, output.bytes.clone()))
    }

    /// The bytes `request` asks for, media segments encrypted with `keys` when
    /// the account encrypts (HLS AES-128, DASH Common Encryption). `sources`
    /// are the asset's files with their metadata (a rendition's IVs follow its
    /// file's ETag), `version` is what segment URLs carry.
    async fn make(
        &self,
        dir: &ContentPath,
        asset: &Asset,
        request: &Request<'_>,
        filter: &Filter,
        keys: Option<&Keys>,
        (sources, version): (&[(String, Meta)], &str),
    ) -> Result<Vec<u8>, PackError> {
        let rendition = |name: &str| asset.rendition(name).ok_or(PackError::NotFound("no such rendition"));
        let key = keys.map(|k| &k.hls);
        // DASH's protection of rendition `r`: its IVs follow its file's version
        // and its name, so they never repeat across renditions or re-uploads
        // under the one key, and stay the same while only other files change
        // (a cbcs init segment a CDN keeps goes with the segments made later).
        let protection = |r: &headwater_jit::Rendition| {
            let etag = sources.iter().find(|(name, _)| *name == r.file).map_or("", |(_, m)| m.etag.as_str());
            keys.map(|k| Protection::new(k.dash.0, k.dash.1.clone(), format!("{etag}/{}", r.name).as_bytes()))
                .ok_or(PackError::NotFound("the asset is not encrypted: its segments are under cmaf/"))
        };
        if request.is_manifest() {
            let kept = |video: bool| asset.renditions.iter().any(|r| r.track.is_video() == video && filter.keeps(r));
            let has = |video: bool| asset.renditions.iter().any(|r| r.track.is_video() == video);
            if (has(true) && !kept(true)) || (!has(true) && !kept(false)) {
                return Err(PackError::NotFound("no rendition matches the filter"));
            }
            if filter.segments(asset).is_empty() {
                return Err(PackError::NotFound("the time window holds no segment"));
            }
        }
        Ok(match *request {
            Request::HlsMaster => manifest::hls_master(asset, filter),
            Request::HlsMedia(name) => {
                let uri = key.map(|k| format!("../keys/{}.key", k.kid_hex()));
                manifest::hls_media(rendition(name)?, uri.as_deref(), filter.segments(asset), version)
            }
            Request::IframePlaylist(name) => {
                let r = rendition(name)
                    .ok()
                    .filter(|r| r.track.is_video())
                    .ok_or(PackError::NotFound("no such video rendition"))?;
                let uri = key.map(|k| format!("../keys/{}.key", k.kid_hex()));
                manifest::hls_iframes(r, uri.as_deref(), filter.segments(asset), version)
            }
            Request::Iframe(name, n) => {
                let r = rendition(name)?;
                let file = dir.join(&r.file).map_err(|_| PackError::NotFound("no such file"))?;
                let segment = headwater_jit::iframe_segment(&self.store, &file, r, n)
                    .await?
                    .ok_or(PackError::NotFound("no such keyframe"))?;
                match key {
                    Some(k) => encrypt::aes128_segment(k, n as u64 - 1, &segment),
                    None => segment,
                }
            }
            Request::DashManifest => match keys {
                Some(k) => manifest::dash_mpd_protected(asset, filter, version, k.dash.0, k.dash.1.kid),
                None => manifest::dash_mpd(asset, filter, version),
            },
            Request::Init(name) => headwater_jit::cmaf::init_segment(&rendition(name)?.track)?,
            Request::ProtectedInit(name) => {
                let r = rendition(name)?;
                let clear = headwater_jit::cmaf::init_segment(&r.track)?;
                cenc::protect_init(&clear, &r.track, &protection(r)?)?
            }
            Request::ProtectedSegment(name, n) => {
                let r = rendition(name)?;
                let p = protection(r)?;
                let file = dir.join(&r.file).map_err(|_| PackError::NotFound("no such file"))?;
                headwater_jit::protected_segment(&self.store, &file, r, n, &p)
                    .await?
                    .ok_or(PackError::NotFound("no such segment"))?
            }
            Request::Segment(name, n) => {
                let r = rendition(name)?;
                let file = dir.join(&r.file).map_err(|_| PackError::NotFound("no such file"))?;
                let segment = headwater_jit::media_segment(&self.store, &file, r, n)
                    .await?
                    .ok_or(PackError::NotFound("no such segment"))?;
                match key {
                    // The playlist's media sequence starts at 0 with segment 1.
                    Some(k) => encrypt::aes128_segment(k, n as u64 - 1, &segment),
                    None => segment,
                }
            }
            Request::SubtitlePlaylist(name) => {
                let t =
                    asset.subtitles.iter().find(|t| t.name == name).ok_or(PackError::NotFound("no such subtitles"))?;
                manifest::hls_subtitles(asset, t)
            }
            Request::TsMaster => manifest::hls_ts_master(asset, filter),
            Request::TsMedia(name) => {
                let uri = key.map(|k| format!("../keys/{}.key", k.kid_hex()));
                manifest::hls_ts_media(rendition(name)?, uri.as_deref(), filter.segments(asset), version)
            }
            Request::TsSegment(name, n) => {
                let r = rendition(name)?;
                let path =
                    |r: &headwater_jit::Rendition| dir.join(&r.file).map_err(|_| PackError::NotFound("no such file"));
                // The first audio rendition goes with every video rendition.
                let audio = asset.renditions.iter().find(|a| !a.track.is_video()).filter(|_| r.track.is_video());
                let (video_file, audio_file) = (path(r)?, audio.map(path).transpose()?);
                let audio = audio.zip(audio_file.as_ref()).map(|(a, f)| (f, a));
                let segment = headwater_jit::ts_segment(&self.store, (&video_file, r), audio, n)
                    .await?
                    .ok_or(PackError::NotFound("no such segment"))?;
                match key {
                    Some(k) => encrypt::aes128_segment(k, n as u64 - 1, &segment),
                    None => segment,
                }
            }
            Request::Key(_) => return Err(PackError::NotFound("no such key")),
        })
    }

    /// The asset of the folder `dir`: kept, checked against the store's listing
    /// once it is older than [`Packager::revalidate`], packaged anew when its
    /// files changed. Concurrent requests for an asset not kept wait for one
    /// packaging.
    async fn asset(&self, dir: &ContentPath) -> Result<Arc<Packaged>, PackError> {
        let key = dir.as_str();
        let now = Instant::now();
        if let Some(e) = self.assets.get(key) {
            if now.duration_since(e.checked) < self.revalidate {
                return Ok(e.packaged);
            }
            let sources = match self.sources(dir).await {
                Ok(sources) => sources,
                // The store is down: what was packaged is still right as far as
                // anyone knows (the files cannot change while it is down).
                Err(PackError::Store(error)) => {
                    tracing::warn!(%error, asset = %dir, "the content store did not list the asset: serving it as kept");
                    return Ok(e.packaged);
                }
                Err(other) => return Err(other),
            };
            if sources == e.packaged.sources {
                self.assets.insert(key.to_owned(), AssetEntry { packaged: e.packaged.clone(), checked: now });
                return Ok(e.packaged);
            }
            self.assets.remove(key);
        }
        match self.assets.get_value_or_guard_async(key).await {
            Ok(e) => Ok(e.packaged),
            Err(guard) => {
                let sources = self.sources(dir).await?;
                let packaged = Arc::new(self.package(dir, sources).await?);
                let _ = guard.insert(AssetEntry { packaged: packaged.clone(), checked: Instant::now() });
                Ok(packaged)
            }
        }
    }

    /// The asset's files the packager reads (its MP4s, WebVTT files and
    /// `asset.json`); `NotFound` when it has no MP4.
    async fn sources(&self, dir: &ContentPath) -> Result<Vec<(String, Meta)>, PackError> {
        let mut files = self.store.list_files(dir).await?;
        files.retain(|(name, _)| is_mp4(name) || Subtitles::of(name).is_some() || name == asset_manifest::FILE);
        if !files.iter().any(|(name, _)| is_mp4(name)) {
            return Err(PackError::NotFound("the asset has no MP4 file"));
        }
        Ok(files)
    }

    /// Reads every source's index and packages the asset. A file that cannot be
    /// packaged makes the asset unpackable (kept, and logged once); a store
    /// failure is returned and nothing is kept.
    async fn package(&self, dir: &ContentPath, sources: Vec<(String, Meta)>) -> Result<Packaged, PackError> {
        let mut indexes = Vec::with_capacity(sources.len());
        let mut refused = None;
        for (name, meta) in sources.iter().filter(|(name, _)| is_mp4(name)) {
            let path = dir.join(name).map_err(|_| PackError::NotFound("no such file"))?;
            match headwater_jit::read_index(&self.store, &path, meta.size).await {
                Ok(index) => indexes.push((name.clone(), index)),
                Err(IndexError::Unpackable(why)) => {
                    refused = Some(Unpackable(format!("{name}: {why}")));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The asset's manifest, when it has one, sets how it is cut.
        let manifest = match sources.iter().find(|(name, _)| name == asset_manifest::FILE) {
            None => Ok(AssetManifest::default()),
            Some((name, meta)) => {
                let path = dir.join(name).map_err(|_| PackError::NotFound("no such file"))?;
                let bytes = self.store.read_range(&path, 0..meta.size.min(asset_manifest::MAX_BYTES + 1)).await?;
                AssetManifest::parse(&bytes)
            }
        };
        let settings = manifest.as_ref().map_or(self.settings, |m| m.settings(self.settings));
        let refused = refused.or(manifest.as_ref().err().cloned());
        if let Ok(m) = &manifest {
            m.apply(&mut indexes);
        }
        let asset = match refused {
            Some(why) => Err(why),
            None => Asset::build(&indexes, settings).map(|mut a| {
                a.subtitles = sources.iter().filter_map(|(name, _)| Subtitles::of(name)).collect();
                a
            }),
        };
        if let Err(why) = &asset {
            tracing::warn!(asset = %dir, reason = %why, "the asset cannot be packaged");
            if let Some((account, name)) = dir.as_str().split_once('/') {
                let mut kept = self.unpackable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if kept.len() < REPORTED_MAX {
                    kept.push(UnpackableAsset { account: account.into(), asset: name.into(), reason: why.to_string() });
                }
            }
        }
        let mut tag = sha2::Sha256::new();
        tag.update(headwater_jit::PACKAGER_VERSION.to_be_bytes());
        tag.update(settings.segment_secs.to_be_bytes());
        for (name, meta) in &sources {
            tag.update(name.as_bytes());
            tag.update([0]);
            tag.update(meta.etag.as_bytes());
            tag.update([0]);
        }
        let tag: Arc<str> = Arc::from(hex::encode(&tag.finalize()[..16]));
        Ok(Packaged { sources, asset, tag })
    }
}

/// An MP4 the packager reads (any other file of the asset is served as stored).
fn is_mp4(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".mp4")
}

/// An encrypting account's keys for one asset: HLS AES-128's, and DASH's with
/// its Common Encryption scheme.
struct Keys {
    hls: AssetKey,
    dash: (cenc::Scheme, AssetKey),
}

/// The content key `kid` names, if it is one of the asset's: 16 bytes, never cached
/// by anyone on the way.
fn key_reply(keys: Option<&Keys>, kid: &str, req: &HeaderMap, head: bool) -> Result<Reply, PackError> {
    let keys = keys.ok_or(PackError::NotFound("the asset is not encrypted"))?;
    // Key ids are public (every manifest names them): a plain comparison.
    let key =
        [&keys.hls, &keys.dash.1].into_iter().find(|k| k.kid_hex() == kid).ok_or(PackError::NotFound("no such key"))?;
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    let meta = Meta { size: 16, last_modified: i64::MAX, etag: format!("\"key-{kid}\"") };
    Ok(answer_in_memory(headers, &meta, req, head, Bytes::copy_from_slice(&key.key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_problems_players_get() {
        assert_eq!(PackError::NotFound("x").status_kind().0, StatusCode::NOT_FOUND);
        let bad: PackError = IndexError::Unpackable(Unpackable("truncated".into())).into();
        assert_eq!(bad.status_kind(), (StatusCode::INTERNAL_SERVER_ERROR, "unpackable"));
        let gone: PackError = IndexError::Store(ContentError::NotFound).into();
        assert_eq!(gone.status_kind().0, StatusCode::NOT_FOUND);
    }
}
