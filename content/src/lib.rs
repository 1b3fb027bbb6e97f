//! The content store: where packaged assets live, keyed `{account}/{asset}/{file}`.
//! One seam over `object_store`, with a local directory (the embedded default) and
//! an S3-compatible bucket (`s3://bucket/prefix`, configured by the usual `AWS_*`
//! variables) behind it. Admin writes through it (uploads); nodes read through it.

mod path;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

pub use path::{ContentPath, InvalidPath, content_type};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("unsupported content URL '{0}': use a directory, file:///dir or s3://bucket[/prefix]")]
    Url(String),
    #[error("not found")]
    NotFound,
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("content store: {0}")]
    Store(#[source] object_store::Error),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upload body: {0}")]
    Body(String),
    #[error("reading a file: {0}")]
    Io(#[source] std::io::Error),
    /// A file where a folder is needed, or the other way round (a local store).
    #[error("a file and a folder would have the same path")]
    PathTaken,
}

/// Whether a store error is a file standing where a folder is needed (or a
/// folder where a file would go).
fn path_taken(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::AlreadyExists
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A store error of a write, with path collisions told apart.
fn write_error(e: object_store::Error) -> ContentError {
    if path_taken(&e) { ContentError::PathTaken } else { ContentError::from(e) }
}

impl From<object_store::Error> for ContentError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => ContentError::NotFound,
            other => ContentError::Store(other),
        }
    }
}

pub type Result<T, E = ContentError> = std::result::Result<T, E>;

/// What a reader needs to answer conditional and range requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub last_modified: i64,
    /// A strong validator: changes whenever the bytes do.
    pub etag: String,
}

/// One asset of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSummary {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
}

/// The content store. Cheap to clone.
#[derive(Clone)]
pub struct ContentStore {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory: files can then be opened and
    /// sent by the kernel (`sendfile`) instead of read into memory.
    local: Option<Arc<LocalFileSystem>>,
    description: String,
}

/// A file of the local store, open: its bytes stay those of `meta` even when a
/// re-upload replaces the file meanwhile (the upload renames a new file into place).
#[derive(Debug)]
pub struct OpenFile {
    pub file: std::fs::File,
    pub meta: Meta,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl ContentStore {
    /// Opens `url`: a directory path (created if missing), `file:///dir`, or
    /// `s3://bucket[/prefix]` (endpoint, region and credentials from `AWS_*`).
    pub fn open(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ContentError::Url(url.to_owned()));
            }
            let s3 = AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
            let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                p => Arc::new(PrefixStore::new(s3, p)),
            };
            return Ok(Self { store, local: None, description: url.to_owned() });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.is_empty() || dir.contains("://") {
            return Err(ContentError::Url(url.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| ContentError::Dir { path: dir.to_owned(), source })?;
        let local = Arc::new(LocalFileSystem::new_with_prefix(dir)?);
        Ok(Self { store: local.clone(), local: Some(local), description: format!("file://{dir}") })
    }

    fn key(path: &ContentPath) -> object_store::path::Path {
        object_store::path::Path::from(path.as_str())
    }

    /// Size, modification time and ETag; `NotFound` when absent.
    pub async fn head(&self, path: &ContentPath) -> Result<Meta> {
        Ok(object_meta(&self.store.head(&Self::key(path)).await?))
    }

    /// Opens `path` when the store is a local directory (`None` for object stores),
    /// with the same metadata (and ETag) [`ContentStore::head`] gives.
    pub async fn open_file(&self, path: &ContentPath) -> Result<Option<OpenFile>> {
        let Some(local) = &self.local else { return Ok(None) };
        let fs_path = local.path_to_filesystem(&Self::key(path))?;
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&fs_path)?;
            let md = file.metadata()?;
            if !md.is_file() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            Ok((file, md))
        })
        .await
        .map_err(|e| ContentError::Io(std::io::Error::other(e)))?;
        match opened {
            Ok((file, md)) => Ok(Some(OpenFile { file, meta: local_meta(&md) })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ContentError::NotFound),
            Err(e) => Err(ContentError::Io(e)),
        }
    }

    /// The bytes of `range` (or all), as a stream of chunks.
    pub async fn read(
        &self,
        path: &ContentPath,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        let got = self.store.get_opts(&Self::key(path), opts).await?;
        Ok(got.into_stream().map_err(ContentError::from).boxed())
    }

    /// The bytes of `range`, in memory (the pieces a packager reads: an index, a
    /// segment's samples), never the whole object.
    pub async fn read_range(&self, path: &ContentPath, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
        Ok(self.store.get_opts(&Self::key(path), opts).await?.bytes().await?)
    }

    /// The whole object in memory (for small, hot files).
    pub async fn read_all(&self, path: &ContentPath) -> Result<Bytes> {
        Ok(self.store.get_opts(&Self::key(path), GetOptions::default()).await?.bytes().await?)
    }

    /// Writes `body` to `path` as it arrives, never holding more than a part in
    /// memory; refuses (and leaves nothing behind) past `limit` bytes.
    pub async fn write_stream<S, E>(&self, path: &ContentPath, mut body: S, limit: u64) -> Result<u64>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.store.put_multipart(&Self::key(path)).await.map_err(write_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(ContentError::Body(e.to_string()));
                }
            };
            written += chunk.len() as u64;
            if written > limit {
                let _ = writer.abort().await;
                return Err(ContentError::TooLarge { limit });
            }
            writer.wait_for_capacity(4).await.map_err(write_error)?;
            writer.put(chunk);
        }
        writer.finish().await.map_err(write_error)?;
        Ok(written)
    }

    /// Writes a small object in one go.
    pub async fn write(&self, path: &ContentPath, bytes: Bytes) -> Result<()> {
        self.store.put(&Self::key(path), bytes.into()).await?;
        Ok(())
    }

    /// The assets of an account with their file counts and sizes.
    pub async fn assets(&self, account: &str) -> Result<Vec<AssetSummary>> {
        let prefix = object_store::path::Path::from(account);
        let mut list = self.store.list(Some(&prefix));
        let mut assets: std::collections::BTreeMap<String, AssetSummary> = Default::default();
        while let Some(meta) = list.next().await {
            let meta = meta?;
            let mut parts = meta.location.parts();
            let (Some(_), Some(asset)) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = asset.as_ref().to_owned();
            let a = assets.entry(name.clone()).or_insert(AssetSummary { name, files: 0, bytes: 0 });
            a.files += 1;
            a.bytes += meta.size;
        }
        Ok(assets.into_values().collect())
    }

    /// The files directly under `dir` (not in its subdirectories): name and
    /// metadata, by name.
    pub async fn list_files(&self, dir: &ContentPath) -> Result<Vec<(String, Meta)>> {
        let listed = self.store.list_with_delimiter(Some(&Self::key(dir))).await?;
        let mut files: Vec<(String, Meta)> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(|name| (name.to_owned(), object_meta(m))))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// Moves `from` to `to`, replacing it (on a local store, atomically).
    pub async fn rename(&self, from: &ContentPath, to: &ContentPath) -> Result<()> {
        self.store.rename(&Self::key(from), &Self::key(to)).await.map_err(write_error)
    }

    /// Deletes one file.
    pub async fn delete(&self, path: &ContentPath) -> Result<()> {
        Ok(self.store.delete(&Self::key(path)).await?)
    }

    /// Deletes every file under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &ContentPath) -> Result<u64> {
        let prefix = Self::key(prefix);
        let locations: Vec<_> = self.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await?;
        let mut n = 0;
        for location in locations {
            self.store.delete(&location).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Answers when the store is reachable.
    pub async fn ping(&self) -> Result<()> {
        let probe = object_store::path::Path::from(headwater_probe_prefix());
        let mut list = self.store.list(Some(&probe));
        match list.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }
}

/// Size, modification time and ETag of a listed or looked-up object.
fn object_meta(m: &object_store::ObjectMeta) -> Meta {
    let etag = match &m.e_tag {
        Some(e) => format!("\"{}\"", e.trim_matches('"')),
        None => format!("\"{:x}-{:x}\"", m.last_modified.timestamp_nanos_opt().unwrap_or_default(), m.size),
    };
    Meta { size: m.size, last_modified: m.last_modified.timestamp(), etag }
}

/// Metadata of a local file as `object_store`'s local backend reports it (ETag
/// `"{inode}-{mtime µs}-{size}"` in hex), so opened and listed files agree.
fn local_meta(md: &std::fs::Metadata) -> Meta {
    use std::os::unix::fs::MetadataExt;
    let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    Meta {
        size: md.len(),
        last_modified: i64::try_from(mtime.as_secs()).unwrap_or(i64::MAX),
        etag: format!("\"{:x}-{:x}-{:x}\"", md.ino(), mtime.as_micros(), md.len()),
    }
}

fn headwater_probe_prefix() -> &'static str {
    "_probe"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_opened_file_has_the_metadata_the_store_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().to_str().unwrap()).unwrap();
        let path = ContentPath::parse("acct/my video/seg 1.ts").unwrap();
        store.write(&path, Bytes::from_static(b"0123456789")).await.unwrap();
        let opened = store.open_file(&path).await.unwrap().expect("a local store opens files");
        assert_eq!(opened.meta, store.head(&path).await.unwrap());
        assert_eq!(opened.meta.size, 10);
        let mut read = String::new();
        std::io::Read::read_to_string(&mut &opened.file, &mut read).unwrap();
        assert_eq!(read, "0123456789");

        // A re-upload is a new file: the open one keeps its bytes, the ETag changes.
        store.write(&path, Bytes::from_static(b"new")).await.unwrap();
        let again = store.open_file(&path).await.unwrap().unwrap();
        assert_ne!(again.meta.etag, opened.meta.etag);
        assert_eq!(again.meta, store.head(&path).await.unwrap());
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut &opened.file, &mut old).unwrap();
        assert!(old.is_empty(), "read to its end already");
        assert_eq!(std::os::unix::fs::FileExt::read_at(&opened.file, &mut [0u8; 10], 0).unwrap(), 10);

        let missing = ContentPath::parse("acct/vod/nope.ts").unwrap();
        assert!(matches!(store.open_file(&missing).await, Err(ContentError::NotFound)));
        let dir_path = ContentPath::parse("acct/my video").unwrap();
        assert!(matches!(store.open_file(&dir_path).await, Err(ContentError::NotFound)));
    }

    #[tokio::test]
    async fn a_folder_lists_its_own_files_with_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().to_str().unwrap()).unwrap();
        for (p, b) in [("acct/movie/b.mp4", "bb"), ("acct/movie/a.mp4", "a"), ("acct/movie/hls/x.ts", "x")] {
            store.write(&ContentPath::parse(p).unwrap(), Bytes::from(b)).await.unwrap();
        }
        let folder = ContentPath::parse("acct/movie").unwrap();
        let listed = store.list_files(&folder).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.mp4", "b.mp4"], "its own files, by name, not the subfolder's");
        assert_eq!(listed[1].1, store.head(&folder.join("b.mp4").unwrap()).await.unwrap());
        let empty = ContentPath::parse("acct/none").unwrap();
        assert!(store.list_files(&empty).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_where_a_folder_goes_is_a_path_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().to_str().unwrap()).unwrap();
        let file = ContentPath::parse("acct/vod/master.m3u8").unwrap();
        store.write(&file, Bytes::from_static(b"#EXTM3U")).await.unwrap();
        let body = || futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ts"))]);
        let under = ContentPath::parse("acct/vod/master.m3u8/child.ts").unwrap();
        assert!(matches!(store.write_stream(&under, body(), 100).await, Err(ContentError::PathTaken)));
        let deeper = ContentPath::parse("acct/vod/master.m3u8/a/child.ts").unwrap();
        assert!(matches!(store.write_stream(&deeper, body(), 100).await, Err(ContentError::PathTaken)));
        // A file over a folder fails too (admin refuses it before writing, from
        // what the account stores).
        let folder = ContentPath::parse("acct/vod").unwrap();
        assert!(store.write_stream(&folder, body(), 100).await.is_err());
        // The file is untouched.
        assert_eq!(store.read_all(&file).await.unwrap(), Bytes::from_static(b"#EXTM3U"));
    }
}
