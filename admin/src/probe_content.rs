//! The test content: the demo asset, built into the binary and written to the
//! content store under the reserved `_probe/` prefix at start, so every node can
//! serve it and probes can fetch it. It never counts towards usage.

use include_dir::{Dir, DirEntry, include_dir};

use headwater_content::{ContentError, ContentPath, ContentStore};
use headwater_protocol::PROBE_PREFIX;

/// `assets/demo` of the repository (HLS and DASH of a 6 s test pattern).
pub static DEMO_ASSET: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../assets/demo");

/// Every media file of the demo asset, with its path inside the asset.
pub fn demo_files() -> Vec<(&'static str, &'static [u8])> {
    fn walk(dir: &'static Dir<'static>, out: &mut Vec<(&'static str, &'static [u8])>) {
        for entry in dir.entries() {
            match entry {
                DirEntry::Dir(d) => walk(d, out),
                DirEntry::File(f) => {
                    let path = f.path().to_str().unwrap_or_default();
                    if !path.ends_with(".md") {
                        out.push((path, f.contents()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&DEMO_ASSET, &mut out);
    out.sort_by_key(|(p, _)| *p);
    out
}

/// Writes the test content where it is missing or differs in size.
pub async fn seed(content: &ContentStore) -> Result<usize, ContentError> {
    let mut written = 0;
    for (path, bytes) in demo_files() {
        let target =
            ContentPath::parse(&format!("{PROBE_PREFIX}/{path}")).map_err(|e| ContentError::Body(e.to_string()))?;
        let present = match content.head(&target).await {
            Ok(m) => m.size == bytes.len() as u64,
            Err(ContentError::NotFound) => false,
            Err(e) => return Err(e),
        };
        if !present {
            content.write(&target, bytes::Bytes::from_static(bytes)).await?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_asset_is_built_in_with_both_packagings() {
        let files = demo_files();
        let paths: Vec<_> = files.iter().map(|(p, _)| *p).collect();
        for p in
            ["hls/master.m3u8", "hls/360p/index.m3u8", "hls/360p/seg_000.ts", "dash/manifest.mpd", "dash/init-0.m4s"]
        {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let total: usize = files.iter().map(|(_, b)| b.len()).sum();
        assert!(total < 3_000_000, "{total} bytes");
        let master = files.iter().find(|(p, _)| *p == "hls/master.m3u8").unwrap().1;
        assert!(master.starts_with(b"#EXTM3U"));
    }
}
