//! An asset's manifest: `asset.json` beside its MP4s, saying what the files
//! alone do not: the segment length, and audio languages the files get wrong
//! (`und`, most often). Every node reads the same file, so every node cuts the
//! same segments. Without one, everything is detected from the files.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::index::{Kind, Mp4Index, Unpackable};
use crate::package::Settings;

/// Its name in the asset.
pub const FILE: &str = "asset.json";

/// The most a manifest may weigh.
pub const MAX_BYTES: u64 = 64 * 1024;

/// Segment lengths a manifest may ask for (s).
const SEGMENT_SECS: std::ops::RangeInclusive<u32> = 1..=30;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetManifest {
    /// The target segment length in seconds (1 to 30): a segment ends at the
    /// first keyframe at or after it. Absent: the packager's (6 s).
    #[serde(default)]
    pub segment_secs: Option<u32>,
    /// The language (ISO 639-2, three lowercase letters) of the audio tracks
    /// of each MP4 of the asset, by file name.
    #[serde(default)]
    pub languages: BTreeMap<String, String>,
}

impl AssetManifest {
    /// The manifest in `bytes`, or why it is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, Unpackable> {
        let refuse = |why: String| Unpackable(format!("{FILE}: {why}"));
        if bytes.len() as u64 > MAX_BYTES {
            return Err(refuse(format!("larger than {MAX_BYTES} bytes")));
        }
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| refuse(e.to_string()))?;
        if let Some(secs) = manifest.segment_secs.filter(|s| !SEGMENT_SECS.contains(s)) {
            return Err(refuse(format!(
                "segment_secs is {secs}: it must be {} to {}",
                SEGMENT_SECS.start(),
                SEGMENT_SECS.end()
            )));
        }
        for (file, language) in &manifest.languages {
            if file.contains('/') || !file.to_ascii_lowercase().ends_with(".mp4") {
                return Err(refuse(format!("languages names {file:?}: an MP4 of the asset, by its file name")));
            }
            if language.len() != 3 || !language.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(refuse(format!(
                    "the language of {file} is {language:?}: an ISO 639-2 code, three lowercase letters (\"fra\")"
                )));
            }
        }
        Ok(manifest)
    }

    /// The packager's settings for the asset, from the node's `default`.
    pub fn settings(&self, default: Settings) -> Settings {
        Settings { segment_secs: self.segment_secs.unwrap_or(default.segment_secs) }
    }

    /// Gives the audio tracks of the files it names their language.
    pub fn apply(&self, files: &mut [(String, Mp4Index)]) {
        for (file, index) in files {
            if let Some(language) = self.languages.get(file.as_str()) {
                for t in index.tracks.iter_mut().filter(|t| matches!(t.kind, Kind::Audio { .. })) {
                    t.language = language.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_read_strictly_and_says_why_it_is_refused() {
        let m = AssetManifest::parse(br#"{"segment_secs": 4, "languages": {"en.mp4": "eng"}}"#).unwrap();
        assert_eq!(m.settings(Settings::default()), Settings { segment_secs: 4 });
        assert_eq!(AssetManifest::parse(b"{}").unwrap().settings(Settings::default()), Settings::default());
        for (bad, why) in [
            (&br#"{"segment_secs": 0}"#[..], "segment_secs is 0"),
            (br#"{"segment_secs": 31}"#, "it must be 1 to 30"),
            (br#"{"segment": 4}"#, "unknown field `segment`"),
            (br#"{"languages": {"en.mp4": "english"}}"#, "ISO 639-2"),
            (br#"{"languages": {"sub/en.mp4": "eng"}}"#, "by its file name"),
            (b"not json", "expected"),
        ] {
            let e = AssetManifest::parse(bad).unwrap_err().0;
            assert!(e.starts_with("asset.json: ") && e.contains(why), "{e}");
        }
        let big = format!("{{\"languages\": {{\"a.mp4\": \"eng\"}}{}}}", " ".repeat(MAX_BYTES as usize));
        assert!(AssetManifest::parse(big.as_bytes()).unwrap_err().0.contains("larger than"));
    }
}
