//! Reading content for a response: a bounded in-memory cache of hot files
//! (playlists and segments) in front of the content store, and the HTTP semantics
//! of a static file — validators, conditional requests, single ranges.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use headwater_content::{ContentError, ContentPath, ContentStore, Meta};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use sha2::Digest;
use tokio::time::Instant;

/// A cached file and when it was last checked against the store.
#[derive(Clone)]
struct Entry {
    found: Arc<Found>,
    checked: Instant,
}

/// A file as found: its metadata, the headers every answer about it carries
/// (made once, not per request), and its bytes when small enough to keep in
/// memory, or (local store) the open file the kernel sends from.
struct Found {
    meta: Meta,
    headers: HeaderMap,
    bytes: Option<Bytes>,
    file: Option<Arc<std::fs::File>>,
}

impl Found {
    fn new(path: &ContentPath, meta: Meta, bytes: Option<Bytes>, file: Option<Arc<std::fs::File>>) -> Self {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(headwater_content::content_type(path.as_str())));
        if let Ok(v) = HeaderValue::from_str(&meta.etag) {
            headers.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&httpdate(meta.last_modified)) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(path.as_str())));
        Self { meta, headers, bytes, file }
    }
}

/// Local files up to this size are kept in memory (playlists, init segments):
/// one write sends headers and body. Larger ones are kept open and sent by the
/// kernel from the page cache (`sendfile`), like nginx does.
const IN_MEMORY_MAX: u64 = 64 * 1024;

/// What an open file counts against the cache's size: bounds the open files
/// (16,384 for the default 256 MiB).
const OPEN_FILE_WEIGHT: u64 = 16 * 1024;

#[derive(Clone)]
struct BySize;

impl Weighter<ContentPath, Entry> for BySize {
    fn weight(&self, _: &ContentPath, e: &Entry) -> u64 {
        let held = if e.found.file.is_some() { OPEN_FILE_WEIGHT } else { 0 };
        e.found.bytes.as_ref().map_or(0, Bytes::len) as u64 + held + 512
    }
}

/// The node's view of the content store.
#[derive(Clone)]
pub struct Files {
    store: ContentStore,
    cache: Arc<Cache<ContentPath, Entry, BySize>>,
    /// Files larger than this are streamed from the store, never cached.
    max_item: u64,
    /// A cached file older than this is checked against the store (a re-upload
    /// replaces it within this time).
    revalidate: Duration,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

/// What to send.
pub enum Body {
    Cached(Bytes),
    /// `len` bytes of an open local file from `offset`.
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
    Stream(BoxStream<'static, Result<Bytes, ContentError>>),
}

impl Body {
    /// The body as a stream of chunks, for connections that cannot take a file
    /// (HTTP/2): a file is read in pieces off the runtime's threads.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, ContentError>> {
        const PIECE: u64 = 256 * 1024;
        match self {
            Body::Cached(b) => stream::iter([Ok(b)]).boxed(),
            Body::Stream(s) => s,
            Body::File { file, offset, len } => stream::try_unfold(offset..offset + len, move |left| {
                let file = file.clone();
                async move {
                    if left.is_empty() {
                        return Ok(None);
                    }
                    let n = (left.end - left.start).min(PIECE);
                    let at = left.start;
                    let piece = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; usize::try_from(n).unwrap_or(0)];
                        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at).map(|()| Bytes::from(buf))
                    })
                    .await
                    .map_err(|e| ContentError::Io(std::io::Error::other(e)))?
                    .map_err(ContentError::Io)?;
                    Ok(Some((piece, at + n..left.end)))
                }
            })
            .boxed(),
        }
    }
}

/// A response decided from the request and the file.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None` for HEAD, 304, 416.
    pub body: Option<Body>,
}

/// Cache statistics for metrics and heartbeats.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

impl Files {
    pub fn new(store: ContentStore, cache_mib: u64) -> Self {
        let capacity = cache_mib * 1024 * 1024;
        let cache = Cache::with_weighter(4096, capacity.max(1), BySize);
        Self {
            store,
            cache: Arc::new(cache),
            max_item: (capacity / 8).max(1),
            revalidate: Duration::from_secs(2),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.cache.weight(),
        }
    }

    /// Looks a file up: from the cache when fresh, else from the store (caching it
    /// when small enough).
    /// Also says whether it was a hit (the cache had it, fresh or still the same).
    async fn lookup(&self, path: &ContentPath) -> Result<(Arc<Found>, bool), ContentError> {
        let now = Instant::now();
        if let Some(e) = self.cache.get(path) {
            if now.duration_since(e.checked) < self.revalidate {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((e.found, true));
            }
            let meta = self.store.head(path).await?;
            if meta.etag == e.found.meta.etag {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.cache.insert(path.clone(), Entry { found: e.found.clone(), checked: now });
                return Ok((e.found, true));
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let found = if let Some(open) = self.store.open_file(path).await? {
            let file = Arc::new(open.file);
            if open.meta.size <= IN_MEMORY_MAX.min(self.max_item) {
                // One piece of the file's stream holds it all (64 KiB < 256 KiB).
                let bytes = Body::File { file, offset: 0, len: open.meta.size }.into_stream().next().await;
                let bytes = bytes.transpose()?.unwrap_or_default();
                Arc::new(Found::new(path, open.meta, Some(bytes), None))
            } else {
                Arc::new(Found::new(path, open.meta, None, Some(file)))
            }
        } else {
            let meta = self.store.head(path).await?;
            if meta.size > self.max_item {
                return Ok((Arc::new(Found::new(path, meta, None, None)), false));
            }
            let bytes = self.store.read_all(path).await?;
            Arc::new(Found::new(path, meta, Some(bytes), None))
        };
        self.cache.insert(path.clone(), Entry { found: found.clone(), checked: now });
        Ok((found, false))
    }

    /// Answers a GET or HEAD for `path` given the request headers; `X-Cache`
    /// says whether the cache had the file.
    pub async fn reply(&self, path: &ContentPath, req: &HeaderMap, head: bool) -> Result<Reply, ContentError> {
        let (found, hit) = self.lookup(path).await?;
        let mut reply = self.answer(path, &found, req, head).await?;
        reply
            .headers
            .insert(headwater_protocol::CACHE_HEADER, HeaderValue::from_static(if hit { "HIT" } else { "MISS" }));
        Ok(reply)
    }

    /// The answer for `found` (looked up already) given the request headers.
    async fn answer(
        &self,
        path: &ContentPath,
        found: &Found,
        req: &HeaderMap,
        head: bool,
    ) -> Result<Reply, ContentError> {
        let meta = &found.meta;
        let mut headers = found.headers.clone();
        if not_modified(req, meta) {
            return Ok(Reply { status: StatusCode::NOT_MODIFIED, headers, body: None });
        }
        let range = match requested_range(req, meta) {
            Ok(r) => r,
            Err(()) => {
                let v = HeaderValue::from_str(&format!("bytes */{}", meta.size))
                    .unwrap_or(HeaderValue::from_static("bytes */0"));
                headers.insert(header::CONTENT_RANGE, v);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return Ok(Reply { status: StatusCode::RANGE_NOT_SATISFIABLE, headers, body: None });
            }
        };
        let (status, span) = match range {
            Some(r) => {
                let v = format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size);
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("bytes */0")),
                );
                (StatusCode::PARTIAL_CONTENT, r)
            }
            None => (StatusCode::OK, 0..meta.size),
        };
        let length = span.end - span.start;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if head {
            return Ok(Reply { status, headers, body: None });
        }
        let body = match (&found.bytes, &found.file) {
            (Some(b), _) => {
                Body::Cached(b.slice(usize::try_from(span.start).unwrap_or(0)..usize::try_from(span.end).unwrap_or(0)))
            }
            (None, _) if length == 0 => Body::Cached(Bytes::new()),
            (None, Some(file)) => Body::File { file: file.clone(), offset: span.start, len: length },
            (None, None) => Body::Stream(self.store.read(path, Some(span)).await?),
        };
        Ok(Reply { status, headers, body: Some(body) })
    }
}

/// Largest manifest whose URIs are rewritten (a bigger one is served as stored).
const MANIFEST_MAX: u64 = 4 << 20;

impl Files {
    /// Like [`Files::reply`], for a manifest that `rewrite` may change (a playback
    /// token carried into its absolute URIs; `None`: unchanged, served as
    /// stored). A rewritten manifest has its own strong validator, the stored
    /// one's with `variant` (the token) folded in, the same on every node and
    /// after a restart, and conditional requests and ranges apply to its bytes.
    pub async fn reply_rewritten(
        &self,
        path: &ContentPath,
        req: &HeaderMap,
        head: bool,
        variant: &str,
        rewrite: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Reply, ContentError> {
        let (found, _) = self.lookup(path).await?;
        if found.meta.size > MANIFEST_MAX {
            return self.answer(path, &found, req, head).await;
        }
        let stored = match &found.bytes {
            Some(b) => b.clone(),
            None => self.store.read_all(path).await?,
        };
        // Read after its metadata: a re-upload in between is served as stored
        // (next time the cache sees the new file).
        if stored.len() as u64 != found.meta.size {
            return self.reply(path, req, head).await;
        }
        let Some(bytes) = rewrite(&stored) else { return self.answer(path, &found, req, head).await };
        let digest = sha2::Sha256::digest(variant.as_bytes());
        let meta = Meta {
            size: bytes.len() as u64,
            last_modified: found.meta.last_modified,
            etag: format!("\"{}.{}\"", found.meta.etag.trim_matches('"'), hex::encode(&digest[..6])),
        };
        let mut headers = found.headers.clone();
        if let Ok(v) = HeaderValue::from_str(&meta.etag) {
            headers.insert(header::ETAG, v);
        }
        Ok(answer_in_memory(headers, &meta, req, head, Bytes::from(bytes)))
    }
}

/// The answer for a body held in memory: validators, conditional requests, a range.
pub(crate) fn answer_in_memory(
    mut headers: HeaderMap,
    meta: &Meta,
    req: &HeaderMap,
    head: bool,
    bytes: Bytes,
) -> Reply {
    if not_modified(req, meta) {
        return Reply { status: StatusCode::NOT_MODIFIED, headers, body: None };
    }
    let (status, span) = match requested_range(req, meta) {
        Ok(Some(r)) => {
            let v = format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        Ok(None) => (StatusCode::OK, 0..meta.size),
        Err(()) => {
            let v = HeaderValue::from_str(&format!("bytes */{}", meta.size))
                .unwrap_or(HeaderValue::from_static("bytes */0"));
            headers.insert(header::CONTENT_RANGE, v);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Reply { status: StatusCode::RANGE_NOT_SATISFIABLE, headers, body: None };
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(span.end - span.start));
    if head {
        return Reply { status, headers, body: None };
    }
    let body =
        Body::Cached(bytes.slice(usize::try_from(span.start).unwrap_or(0)..usize::try_from(span.end).unwrap_or(0)));
    Reply { status, headers, body: Some(body) }
}

/// VOD playlists may be replaced by a re-upload: a short lifetime. Segments are
/// immutable in practice: a long one (validators still guard changes).
fn cache_control(path: &str) -> &'static str {
    if path.ends_with(".m3u8") || path.ends_with(".mpd") { "public, max-age=60" } else { "public, max-age=86400" }
}

/// `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2).
fn not_modified(req: &HeaderMap, meta: &Meta) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == meta.etag);
    }
    let since = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    since.is_some_and(|d| meta.last_modified <= d.as_secs() as i64)
}

/// A single satisfiable range; `Ok(None)` serves the whole file (no Range, a
/// stale If-Range, or several ranges, which a VOD origin answers in full);
/// `Err` is 416.
fn requested_range(req: &HeaderMap, meta: &Meta) -> Result<Option<Range<u64>>, ()> {
    let Some(value) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let if_range = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
    if if_range.is_some_and(|v| v != meta.etag) {
        return Ok(None);
    }
    let parsed = http_range_header::parse_range_header(value).map_err(|_| ())?;
    let ranges = parsed.validate(meta.size).map_err(|_| ())?;
    match ranges.as_slice() {
        [r] => Ok(Some(*r.start()..r.end() + 1)),
        [] => Err(()),
        _ => Ok(None),
    }
}

fn httpdate(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta { size: 1000, last_modified: 1_700_000_000, etag: "\"abc\"".into() }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn ranges() {
        let m = meta();
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=0-99")]), &m), Ok(Some(0..100)));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=900-")]), &m), Ok(Some(900..1000)));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=-10")]), &m), Ok(Some(990..1000)));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=990-5000")]), &m), Ok(Some(990..1000)));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=1000-")]), &m), Err(()));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "chars=0-1")]), &m), Err(()));
        assert_eq!(requested_range(&headers(&[(header::RANGE, "bytes=0-1, 5-6")]), &m), Ok(None));
        assert_eq!(
            requested_range(&headers(&[(header::RANGE, "bytes=0-1"), (header::IF_RANGE, "\"old\"")]), &m),
            Ok(None)
        );
        assert_eq!(requested_range(&headers(&[]), &m), Ok(None));
    }

    #[test]
    fn conditionals() {
        let m = meta();
        assert!(not_modified(&headers(&[(header::IF_NONE_MATCH, "\"abc\"")]), &m));
        assert!(not_modified(&headers(&[(header::IF_NONE_MATCH, "\"x\", W/\"abc\"")]), &m));
        assert!(!not_modified(&headers(&[(header::IF_NONE_MATCH, "\"x\"")]), &m));
        let later = httpdate(1_700_000_100);
        let earlier = httpdate(1_699_999_000);
        assert!(not_modified(&headers(&[(header::IF_MODIFIED_SINCE, &later)]), &m));
        assert!(!not_modified(&headers(&[(header::IF_MODIFIED_SINCE, &earlier)]), &m));
        // If-None-Match decides even when If-Modified-Since would say 304.
        assert!(!not_modified(&headers(&[(header::IF_NONE_MATCH, "\"x\""), (header::IF_MODIFIED_SINCE, &later)]), &m));
    }
}
