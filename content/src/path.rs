//! Validated content paths. A path from a request is percent-decoded exactly once,
//! then every segment is checked: no empty, `.` or `..` segment, no control
//! characters or backslashes, bounded lengths. A traversal attempt is refused
//! before anything is read.

use std::fmt;

/// A relative path inside the content store, `segment/segment/…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path: {0}")]
pub struct InvalidPath(pub &'static str);

const MAX_SEGMENT: usize = 255;
const MAX_PATH: usize = 1024;

impl ContentPath {
    /// Checks an already-decoded path.
    pub fn parse(path: &str) -> Result<Self, InvalidPath> {
        if path.is_empty() {
            return Err(InvalidPath("empty"));
        }
        if path.len() > MAX_PATH {
            return Err(InvalidPath("too long"));
        }
        if path.starts_with('/') {
            return Err(InvalidPath("absolute paths are not allowed"));
        }
        for seg in path.split('/') {
            match seg {
                "" => return Err(InvalidPath("empty segment")),
                "." | ".." => return Err(InvalidPath("'.' and '..' are not allowed")),
                s if s.len() > MAX_SEGMENT => return Err(InvalidPath("segment too long")),
                s if s.chars().any(|c| c.is_control() || c == '\\') => {
                    return Err(InvalidPath("control characters and backslashes are not allowed"));
                }
                _ => {}
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// Decodes a raw URL path (without its leading `/`) once, then checks it.
    pub fn from_url(raw: &str) -> Result<Self, InvalidPath> {
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().map_err(|_| InvalidPath("not UTF-8"))?;
        Self::parse(&decoded)
    }

    /// `self/child`, checking `child`.
    pub fn join(&self, child: &str) -> Result<Self, InvalidPath> {
        Self::parse(&format!("{}/{child}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment (the account, or `_probe`).
    pub fn first(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// Everything after the first segment.
    pub fn rest(&self) -> &str {
        self.0.split_once('/').map(|(_, r)| r).unwrap_or_default()
    }
}

impl fmt::Display for ContentPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The media type of a packaged VOD file, by extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "vtt" => "text/vtt",
        "json" => "application/json",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_oddities_are_refused() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a/./b", "a//b", "a/b/", "a\\b", "a/\u{0}b", "a/b\nc"] {
            assert!(ContentPath::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["a/%2e%2e/b", "%2e%2e/etc", "a%2F..%2Fb", "a/%00", "%2Fetc", "a/%ff"] {
            assert!(ContentPath::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_happens_once() {
        // "%252e%252e" decodes once to "%2e%2e": a literal name, not "..".
        let p = ContentPath::from_url("acct/vod/%252e%252e").unwrap();
        assert_eq!(p.as_str(), "acct/vod/%2e%2e");
        let p = ContentPath::from_url("acct/my%20video/index.m3u8").unwrap();
        assert_eq!((p.first(), p.rest()), ("acct", "my video/index.m3u8"));
    }

    #[test]
    fn media_types() {
        assert_eq!(content_type("a/b/master.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("a/b/manifest.MPD"), "application/dash+xml");
        assert_eq!(content_type("a/b/seg_001.ts"), "video/mp2t");
        assert_eq!(content_type("a/b/chunk-0-1.m4s"), "video/iso.segment");
        assert_eq!(content_type("a/b/init.mp4"), "video/mp4");
        assert_eq!(content_type("a/b/subs.vtt"), "text/vtt");
        assert_eq!(content_type("a/b/noext"), "application/octet-stream");
    }
}
