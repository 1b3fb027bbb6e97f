//! An asset packaged just in time: its MP4 files' tracks, named, cut into
//! segments at the keyframes of its first video track, and the paths players
//! ask for under `{account}/{asset}/`:
//!
//! - `hls/master.m3u8`, `hls/{track}.m3u8` — HLS with fMP4 (CMAF) segments
//! - `hls/{track}-iframes.m3u8` — a video rendition's I-frame playlist (trick play)
//! - `hls-ts/master.m3u8`, `hls-ts/{track}.m3u8` — HLS with MPEG-TS segments
//! - `hls/{subtitles}-subtitles.m3u8` — a WebVTT file of the asset as a
//!   subtitle rendition (the file itself its one segment)
//! - `dash/manifest.mpd` — DASH with the same segments
//! - `cmaf/{track}/init.mp4`, `cmaf/{track}/{n}.m4s` — the segments (n from 1)
//! - `cmaf/{track}/i{n}.m4s` — a video rendition's keyframe `n` alone (from 1)
//! - `ts/{track}/{n}.ts` — a video rendition's segment as MPEG-TS, its first
//!   audio rendition muxed in
//! - `cenc/{track}/init.mp4`, `cenc/{track}/{n}.m4s` — the segments with Common
//!   Encryption, for DASH when the account encrypts
//! - `keys/{kid}.key` — an encrypted asset's content key (to signed URLs only)

use std::ops::Range;

use crate::index::{Kind, Mp4Index, Track, Unpackable};

/// How the packager cuts: the same on every node, so every node's bytes agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The target segment length in seconds; a segment ends at the first
    /// keyframe at or after it.
    pub segment_secs: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self { segment_secs: 6 }
    }
}

/// A track of the asset and where it comes from.
#[derive(Debug, Clone)]
pub struct Rendition {
    /// Its name in URLs: `{file stem}-v{id}` or `{file stem}-a{id}`.
    pub name: String,
    /// The file it is read from (its path inside the asset).
    pub file: String,
    pub track: Track,
    /// Sample index ranges, one per segment.
    pub segments: Vec<Range<usize>>,
    /// Bits per second over the whole track and of its largest segment.
    pub average_bps: u64,
    pub peak_bps: u64,
    /// The sample index of each keyframe (video), in decode order.
    pub keyframes: Vec<usize>,
}

impl Rendition {
    /// Seconds of segment `i` (from 0).
    pub fn segment_secs(&self, i: usize) -> f64 {
        let s = &self.track.samples[self.segments[i].clone()];
        let ticks: u64 = s.iter().map(|s| u64::from(s.duration)).sum();
        ticks as f64 / f64::from(self.track.timescale)
    }

    /// Seconds from keyframe `k` (from 0) to the next one (or the track's end):
    /// its duration in an I-frame playlist.
    pub fn keyframe_secs(&self, k: usize) -> f64 {
        let samples = &self.track.samples;
        let start = samples[self.keyframes[k]].dts;
        let end = match self.keyframes.get(k + 1) {
            Some(&next) => samples[next].dts,
            None => samples.last().map_or(start, |s| s.dts + u64::from(s.duration)),
        };
        end.saturating_sub(start) as f64 / f64::from(self.track.timescale)
    }

    /// Bits per second of the I-frame playlist at its peak (the largest keyframe
    /// over its interval).
    pub fn keyframe_peak_bps(&self) -> u64 {
        (0..self.keyframes.len())
            .map(|k| {
                let bits = u64::from(self.track.samples[self.keyframes[k]].size) * 8;
                let secs = self.keyframe_secs(k);
                if secs > 0.0 { (bits as f64 / secs).ceil() as u64 } else { 0 }
            })
            .max()
            .unwrap_or(0)
    }

    /// The earliest presentation time of segment `i`, in the track's timescale.
    pub fn segment_start(&self, i: usize) -> i64 {
        let samples = &self.track.samples[self.segments[i].clone()];
        samples.iter().map(|s| s.dts as i64 + i64::from(s.cts) - i64::from(self.track.shift)).min().unwrap_or(0)
    }
}

/// A WebVTT file of the asset, served as a subtitle rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtitles {
    /// The file's stem: `en` for `en.vtt`, `movie.fr` for `movie.fr.vtt`.
    pub name: String,
    /// The file (its path inside the asset).
    pub file: String,
    /// From the stem's last part when it is a language code (`en`, `fra`),
    /// else `und`.
    pub language: String,
}

impl Subtitles {
    /// The subtitles of a `.vtt` file; `None` for other files.
    pub fn of(file: &str) -> Option<Self> {
        let stem = file.strip_suffix(".vtt")?;
        let last = stem.rsplit('.').next().unwrap_or(stem);
        let code = (2..=3).contains(&last.len()) && last.bytes().all(|b| b.is_ascii_lowercase());
        let language = if code { last.to_owned() } else { "und".to_owned() };
        Some(Self { name: stem.to_owned(), file: file.to_owned(), language })
    }
}

/// The packaged view of an asset.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Video renditions first (in file order), then audio.
    pub renditions: Vec<Rendition>,
    /// WebVTT files, by name.
    pub subtitles: Vec<Subtitles>,
    /// Seconds of the presentation (its longest track).
    pub duration_secs: f64,
}

/// What a path under the asset asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    HlsMaster,
    HlsMedia(&'a str),
    DashManifest,
    Init(&'a str),
    /// A rendition's media segment, numbered from 1.
    Segment(&'a str, usize),
    /// A video rendition's I-frame playlist.
    IframePlaylist(&'a str),
    /// A subtitle rendition's playlist.
    SubtitlePlaylist(&'a str),
    /// A video rendition's keyframe alone, numbered from 1.
    Iframe(&'a str, usize),
    /// An encrypted asset's content key, by its key id (hex).
    Key(&'a str),
    /// A rendition's init and media segments with Common Encryption (DASH).
    ProtectedInit(&'a str),
    ProtectedSegment(&'a str, usize),
    /// HLS with MPEG-TS segments: the master and a media playlist.
    TsMaster,
    TsMedia(&'a str),
    /// A rendition's segment as MPEG-TS, numbered from 1.
    TsSegment(&'a str, usize),
}

impl<'a> Request<'a> {
    /// The request for `rest` (the path after `{account}/{asset}/`); `None` when
    /// it is none of the packager's paths.
    pub fn parse(rest: &'a str) -> Option<Self> {
        let (format, file) = rest.split_once('/')?;
        match format {
            "hls" if file == "master.m3u8" => Some(Self::HlsMaster),
            "hls" => {
                let name = file.strip_suffix(".m3u8").filter(|n| !n.contains('/'))?;
                Some(if let Some(video) = name.strip_suffix("-iframes") {
                    Self::IframePlaylist(video)
                } else if let Some(subtitles) = name.strip_suffix("-subtitles") {
                    Self::SubtitlePlaylist(subtitles)
                } else {
                    Self::HlsMedia(name)
                })
            }
            "dash" if file == "manifest.mpd" => Some(Self::DashManifest),
            "hls-ts" if file == "master.m3u8" => Some(Self::TsMaster),
            "hls-ts" => file.strip_suffix(".m3u8").filter(|n| !n.contains('/')).map(Self::TsMedia),
            "ts" => {
                let (name, file) = file.split_once('/')?;
                let n = file.strip_suffix(".ts")?;
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().filter(|&n| n >= 1).map(|n| Self::TsSegment(name, n))
            }
            "keys" => file.strip_suffix(".key").filter(|k| !k.contains('/')).map(Self::Key),
            "cmaf" | "cenc" => {
                let protected = format == "cenc";
                let (name, file) = file.split_once('/')?;
                if file == "init.mp4" {
                    return Some(if protected { Self::ProtectedInit(name) } else { Self::Init(name) });
                }
                let n = file.strip_suffix(".m4s")?;
                let (iframe, n) = match n.strip_prefix('i') {
                    Some(n) if !protected => (true, n),
                    _ => (false, n),
                };
                // Canonical numbers only: one URL per segment (caches, validators).
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n = n.parse().ok().filter(|&n| n >= 1)?;
                Some(if iframe {
                    Self::Iframe(name, n)
                } else if protected {
                    Self::ProtectedSegment(name, n)
                } else {
                    Self::Segment(name, n)
                })
            }
            _ => None,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Self::HlsMaster
            | Self::HlsMedia(_)
            | Self::IframePlaylist(_)
            | Self::SubtitlePlaylist(_)
            | Self::TsMaster
            | Self::TsMedia(_) => "application/vnd.apple.mpegurl",
            Self::TsSegment(..) => "video/mp2t",
            Self::DashManifest => "application/dash+xml",
            Self::Init(_)
            | Self::Segment(..)
            | Self::Iframe(..)
            | Self::ProtectedInit(_)
            | Self::ProtectedSegment(..) => "video/mp4",
            Self::Key(_) => "application/octet-stream",
        }
    }

    /// A manifest (a short cache lifetime) rather than a segment.
    pub fn is_manifest(&self) -> bool {
        matches!(
            self,
            Self::HlsMaster
                | Self::HlsMedia(_)
                | Self::IframePlaylist(_)
                | Self::SubtitlePlaylist(_)
                | Self::DashManifest
                | Self::TsMaster
                | Self::TsMedia(_)
        )
    }
}

/// Two video renditions' keyframes within this fraction of a frame agree.
const KEYFRAME_TOLERANCE: f64 = 0.5;

impl Asset {
    /// The asset of `files` (path inside the asset, index), in path order.
    /// Refused when it has no track, when names collide, or when its video
    /// renditions' keyframes do not line up (bitrate switching would break).
    pub fn build(files: &[(String, Mp4Index)], settings: Settings) -> Result<Self, Unpackable> {
        let mut video = Vec::new();
        let mut audio: Vec<(String, String, Track)> = Vec::new();
        for (file, index) in files {
            let stem = file.rsplit('/').next().unwrap_or(file);
            let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
            for t in &index.tracks {
                match t.kind {
                    Kind::Video { .. } => video.push((format!("{stem}-v{}", t.id), file.clone(), t.clone())),
                    Kind::Audio { channels, .. } => {
                        // Each rendition's file often carries the same audio: one per
                        // language, codec and channel count.
                        let same = |o: &Track| {
                            o.language == t.language
                                && o.codec_string == t.codec_string
                                && matches!(o.kind, Kind::Audio { channels: c, .. } if c == channels)
                        };
                        if !audio.iter().any(|(_, _, o)| same(o)) {
                            audio.push((format!("{stem}-a{}", t.id), file.clone(), t.clone()));
                        }
                    }
                }
            }
        }
        if video.is_empty() && audio.is_empty() {
            return Err(Unpackable("the asset has no MP4 file with a video or audio track".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (name, file, _) in video.iter().chain(&audio) {
            if !names.insert(name.clone()) {
                return Err(Unpackable(format!("two tracks would both be named {name} (in {file}): rename a file")));
            }
        }
        if let Some((first_name, _, first)) = video.first() {
            for (name, _, other) in &video[1..] {
                keyframes_line_up(first_name, first, name, other)?;
            }
        }
        // Cut times from the first video track (or the first audio track).
        let reference =
            video.first().or(audio.first()).map(|(_, _, t)| t).ok_or_else(|| Unpackable("no track".into()))?;
        let cuts = cuts(reference, settings);
        let cut_timescale = reference.timescale;
        let mut renditions = Vec::new();
        let mut duration_secs = 0f64;
        for (name, file, track) in video.into_iter().chain(audio) {
            let segments = segments(&track, &cuts, cut_timescale);
            let secs = track.duration() as f64 / f64::from(track.timescale);
            duration_secs = duration_secs.max(secs);
            let bytes: u64 = track.samples.iter().map(|s| u64::from(s.size)).sum();
            let average_bps = if secs > 0.0 { (bytes as f64 * 8.0 / secs).ceil() as u64 } else { 0 };
            let keyframes = if track.is_video() {
                track.samples.iter().enumerate().filter(|(_, s)| s.sync).map(|(i, _)| i).collect()
            } else {
                Vec::new()
            };
            let mut r = Rendition { name, file, track, segments, average_bps, peak_bps: 0, keyframes };
            r.peak_bps = (0..r.segments.len())
                .map(|i| {
                    let bytes: u64 = r.track.samples[r.segments[i].clone()].iter().map(|s| u64::from(s.size)).sum();
                    let secs = r.segment_secs(i);
                    if secs > 0.0 { (bytes as f64 * 8.0 / secs).ceil() as u64 } else { 0 }
                })
                .max()
                .unwrap_or(0)
                .max(average_bps);
            renditions.push(r);
        }
        Ok(Self { renditions, subtitles: Vec::new(), duration_secs })
    }

    pub fn rendition(&self, name: &str) -> Option<&Rendition> {
        self.renditions.iter().find(|r| r.name == name)
    }
}

/// Both tracks have keyframes at the same times (within half a frame).
fn keyframes_line_up(a_name: &str, a: &Track, b_name: &str, b: &Track) -> Result<(), Unpackable> {
    let times = |t: &Track| -> Vec<f64> {
        t.samples.iter().filter(|s| s.sync).map(|s| s.dts as f64 / f64::from(t.timescale)).collect()
    };
    let frame = |t: &Track| t.samples.first().map_or(0.0, |s| f64::from(s.duration) / f64::from(t.timescale));
    let tolerance = KEYFRAME_TOLERANCE * frame(a).max(frame(b));
    let (ta, tb) = (times(a), times(b));
    for i in 0..ta.len().max(tb.len()) {
        match (ta.get(i), tb.get(i)) {
            (Some(x), Some(y)) if (x - y).abs() <= tolerance => {}
            (x, y) => {
                let at = x.or(y).copied().unwrap_or(0.0);
                return Err(Unpackable(format!(
                    "the keyframes of {b_name} do not line up with those of {a_name} (first difference at {at:.3} s): \
                     encode every rendition with the same keyframe interval, or bitrate switching breaks"
                )));
            }
        }
    }
    Ok(())
}

/// Segment start times in `reference`'s timescale: its first sample, then the
/// first keyframe at least the target length after the previous start.
fn cuts(reference: &Track, settings: Settings) -> Vec<u64> {
    let target = u64::from(settings.segment_secs.max(1)) * u64::from(reference.timescale);
    let mut cuts = vec![0u64];
    let first = reference.samples.first().map_or(0, |s| s.dts);
    cuts[0] = first;
    let video = reference.is_video();
    for s in &reference.samples {
        let last = *cuts.last().unwrap_or(&0);
        if (s.sync || !video) && s.dts >= last + target {
            cuts.push(s.dts);
        }
    }
    cuts
}

/// The sample ranges of `track` between the cuts (in `cut_timescale`): a sample
/// belongs to the segment in which its midpoint falls.
fn segments(track: &Track, cuts: &[u64], cut_timescale: u32) -> Vec<Range<usize>> {
    let ts = u128::from(track.timescale);
    let cts = u128::from(cut_timescale);
    // The first sample whose midpoint is at or after `cut`.
    let first_at = |cut: u64| -> usize {
        track
            .samples
            .partition_point(|s| (2 * u128::from(s.dts) + u128::from(s.duration)) * cts < 2 * u128::from(cut) * ts)
    };
    let mut starts: Vec<usize> = cuts.iter().skip(1).map(|&c| first_at(c)).collect();
    starts.insert(0, 0);
    starts.push(track.samples.len());
    starts.dedup();
    starts.windows(2).map(|w| w[0]..w[1]).filter(|r| !r.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Sample;

    fn track(kind: Kind, timescale: u32, n: usize, duration: u32, gop: usize) -> Track {
        let samples = (0..n)
            .map(|i| Sample {
                offset: 1000 + i as u64 * 100,
                size: 100,
                dts: i as u64 * u64::from(duration),
                duration,
                cts: 0,
                sync: gop == 0 || i % gop == 0,
            })
            .collect();
        let codec = mp4_atom::Codec::Unknown(mp4_atom::FourCC::new(b"test"), vec![]);
        Track { id: 1, kind, codec, codec_string: "x".into(), timescale, language: "und".into(), samples, shift: 0 }
    }

    fn video(gop: usize) -> Track {
        // 25 fps for 20 s, a keyframe every `gop` frames.
        track(Kind::Video { width: 640, height: 360 }, 12800, 500, 512, gop)
    }

    fn audio() -> Track {
        let mut t = track(Kind::Audio { channels: 2, sample_rate: 48000 }, 48000, 938, 1024, 0);
        t.id = 2;
        t
    }

    #[test]
    fn segments_cut_at_keyframes_and_audio_follows() {
        let files = vec![("720p.mp4".to_owned(), Mp4Index { tracks: vec![video(50), audio()] })];
        let asset = Asset::build(&files, Settings::default()).unwrap();
        let v = asset.rendition("720p-v1").unwrap();
        // Keyframes every 2 s; a 6 s target: 6, 6, 6 and 2 s.
        let secs: Vec<f64> = (0..v.segments.len()).map(|i| v.segment_secs(i)).collect();
        assert_eq!(secs, vec![6.0, 6.0, 6.0, 2.0]);
        assert!(v.segments.iter().all(|r| v.track.samples[r.start].sync));
        let a = asset.rendition("720p-a2").unwrap();
        assert_eq!(a.segments.len(), 4);
        // Every audio sample in exactly one segment, in order.
        assert_eq!(a.segments.first().unwrap().start, 0);
        assert_eq!(a.segments.last().unwrap().end, 938);
        assert!(a.segments.windows(2).all(|w| w[0].end == w[1].start));
        for i in 1..4 {
            let start = a.segment_start(i) as f64 / 48000.0;
            assert!((start - 6.0 * i as f64).abs() <= 1024.0 / 48000.0, "audio segment {i} starts at {start}");
        }
        assert_eq!(v.average_bps, 100 * 8 * 25);
    }

    #[test]
    fn misaligned_keyframes_are_refused() {
        let files = vec![
            ("a.mp4".to_owned(), Mp4Index { tracks: vec![video(50)] }),
            ("b.mp4".to_owned(), Mp4Index { tracks: vec![video(48)] }),
        ];
        let e = Asset::build(&files, Settings::default()).unwrap_err();
        assert!(e.0.contains("do not line up"), "{e}");
        let files = vec![
            ("a.mp4".to_owned(), Mp4Index { tracks: vec![video(50)] }),
            ("b.mp4".to_owned(), Mp4Index { tracks: vec![video(50)] }),
        ];
        let asset = Asset::build(&files, Settings::default()).unwrap();
        assert_eq!(asset.renditions.len(), 2);
    }

    #[test]
    fn the_same_audio_in_every_file_is_one_rendition() {
        let files = vec![
            ("1080p.mp4".to_owned(), Mp4Index { tracks: vec![video(50), audio()] }),
            ("720p.mp4".to_owned(), Mp4Index { tracks: vec![video(50), audio()] }),
        ];
        let asset = Asset::build(&files, Settings::default()).unwrap();
        let names: Vec<&str> = asset.renditions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["1080p-v1", "720p-v1", "1080p-a2"]);
    }

    #[test]
    fn paths() {
        assert_eq!(Request::parse("hls/master.m3u8"), Some(Request::HlsMaster));
        assert_eq!(Request::parse("hls/720p-v1.m3u8"), Some(Request::HlsMedia("720p-v1")));
        assert_eq!(Request::parse("dash/manifest.mpd"), Some(Request::DashManifest));
        assert_eq!(Request::parse("cmaf/720p-v1/init.mp4"), Some(Request::Init("720p-v1")));
        assert_eq!(Request::parse("cmaf/720p-v1/12.m4s"), Some(Request::Segment("720p-v1", 12)));
        assert_eq!(Request::parse("keys/00ff.key"), Some(Request::Key("00ff")));
        assert_eq!(Request::parse("hls/720p-v1-iframes.m3u8"), Some(Request::IframePlaylist("720p-v1")));
        assert_eq!(Request::parse("cmaf/720p-v1/i3.m4s"), Some(Request::Iframe("720p-v1", 3)));
        assert_eq!(Request::parse("cmaf/720p-v1/i03.m4s"), None);
        assert_eq!(Request::parse("cmaf/720p-v1/i0.m4s"), None);
        assert_eq!(Request::parse("cenc/720p-v1/init.mp4"), Some(Request::ProtectedInit("720p-v1")));
        assert_eq!(Request::parse("cenc/720p-v1/3.m4s"), Some(Request::ProtectedSegment("720p-v1", 3)));
        assert_eq!(Request::parse("cenc/720p-v1/i3.m4s"), None, "no trick play in DASH");
        assert_eq!(Request::parse("hls/en-subtitles.m3u8"), Some(Request::SubtitlePlaylist("en")));
        assert_eq!(Request::parse("hls-ts/master.m3u8"), Some(Request::TsMaster));
        assert_eq!(Request::parse("hls-ts/720p-v1.m3u8"), Some(Request::TsMedia("720p-v1")));
        assert_eq!(Request::parse("ts/720p-v1/4.ts"), Some(Request::TsSegment("720p-v1", 4)));
        assert_eq!(Request::parse("ts/720p-v1/04.ts"), None);
        for not in
            ["cmaf/x/0.m4s", "cmaf/x/01.m4s", "cmaf/x/+1.m4s", "cmaf/x/a.m4s", "hls/a/b.m3u8", "video.mp4", "x/y"]
        {
            assert_eq!(Request::parse(not), None, "{not}");
        }
    }
}
