//! The manifests of a packaged asset: HLS master and media playlists (m3u8-rs)
//! and a DASH MPD (dash-mpd), pointing at the shared CMAF segments.

use std::ops::Range;
use std::time::Duration;

use dash_mpd::{
    AdaptationSet, BaseURL, ContentProtection, MPD, Period, Representation, S, SegmentTemplate, SegmentTimeline,
};
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Key, KeyMethod, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};

use crate::cenc::{CLEARKEY_URN, Scheme};
use crate::filter::Filter;
use crate::index::Kind;
use crate::package::{Asset, Rendition, Subtitles};

/// fMP4 segments (EXT-X-MAP) need version 6; 7 for nothing more.
const HLS_VERSION: usize = 7;
const AUDIO_GROUP: &str = "audio";
const SUBTITLE_GROUP: &str = "subs";
/// MPEG-TS segments with float durations need no more than version 3.
const TS_VERSION: usize = 3;

fn frame_rate(r: &Rendition) -> Option<f64> {
    let secs = r.track.duration() as f64 / f64::from(r.track.timescale);
    (secs > 0.0).then(|| (r.track.samples.len() as f64 / secs * 1000.0).round() / 1000.0)
}

/// `hls/master.m3u8`: a variant per video rendition with every audio rendition
/// as an alternative (or, with no video, a variant per audio rendition), the
/// renditions `filter` keeps; child playlists carry its time window.
pub fn hls_master(asset: &Asset, filter: &Filter) -> Vec<u8> {
    let (video, audio): (Vec<&Rendition>, Vec<&Rendition>) =
        asset.renditions.iter().filter(|r| filter.keeps(r)).partition(|r| r.track.is_video());
    let window = filter.window_query();
    let audio_peak = audio.iter().map(|a| a.peak_bps).max().unwrap_or(0);
    let audio_average = audio.iter().map(|a| a.average_bps).max().unwrap_or(0);
    let mut names = std::collections::BTreeSet::new();
    let alternatives = if video.is_empty() {
        Vec::new()
    } else {
        audio
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut name = a.track.language.clone();
                if !names.insert(name.clone()) {
                    name = format!("{} ({})", a.track.language, a.name);
                }
                let channels = match a.track.kind {
                    Kind::Audio { channels, .. } => Some(channels.to_string()),
                    Kind::Video { .. } => None,
                };
                AlternativeMedia {
                    media_type: AlternativeMediaType::Audio,
                    uri: Some(format!("{}.m3u8{window}", a.name)),
                    group_id: AUDIO_GROUP.into(),
                    language: (a.track.language != "und").then(|| a.track.language.clone()),
                    name,
                    default: i == 0,
                    autoselect: true,
                    channels,
                    ..Default::default()
                }
            })
            .collect()
    };
    let variants: Vec<VariantStream> = if video.is_empty() {
        audio
            .iter()
            .map(|a| VariantStream {
                uri: format!("{}.m3u8{window}", a.name),
                bandwidth: a.peak_bps,
                average_bandwidth: Some(a.average_bps),
                codecs: Some(a.track.codec_string.clone()),
                ..Default::default()
            })
            .collect()
    } else {
        let audio_codec = audio.first().map(|a| a.track.codec_string.as_str());
        video
            .iter()
            .map(|v| {
                let (width, height) = match v.track.kind {
                    Kind::Video { width, height } => (u64::from(width), u64::from(height)),
                    Kind::Audio { .. } => (0, 0),
                };
                let codecs = match audio_codec {
                    Some(a) => format!("{},{a}", v.track.codec_string),
                    None => v.track.codec_string.clone(),
                };
                VariantStream {
                    uri: format!("{}.m3u8{window}", v.name),
                    bandwidth: v.peak_bps + audio_peak,
                    average_bandwidth: Some(v.average_bps + audio_average),
                    codecs: Some(codecs),
                    resolution: Some(Resolution { width, height }),
                    frame_rate: frame_rate(v),
                    audio: (!audio.is_empty()).then(|| AUDIO_GROUP.to_owned()),
                    ..Default::default()
                }
            })
            .collect()
    };
    // Trick play: an I-frame playlist per video rendition.
    let iframes = video.iter().map(|v| {
        let (width, height) = match v.track.kind {
            Kind::Video { width, height } => (u64::from(width), u64::from(height)),
            Kind::Audio { .. } => (0, 0),
        };
        VariantStream {
            is_i_frame: true,
            uri: format!("{}-iframes.m3u8{window}", v.name),
            bandwidth: v.keyframe_peak_bps(),
            codecs: Some(v.track.codec_string.clone()),
            resolution: Some(Resolution { width, height }),
            ..Default::default()
        }
    });
    let variants: Vec<VariantStream> = variants.into_iter().chain(iframes).collect();
    // Subtitles: one rendition per WebVTT file, in a group every variant names.
    let alternatives = alternatives.into_iter().chain(subtitle_renditions(asset, "")).collect();
    let variants = variants
        .into_iter()
        .map(|mut v| {
            if !v.is_i_frame && !asset.subtitles.is_empty() {
                v.subtitles = Some(SUBTITLE_GROUP.into());
            }
            v
        })
        .collect();
    let master = MasterPlaylist {
        version: Some(HLS_VERSION),
        variants,
        alternatives,
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    master.write_to(&mut out).expect("a playlist writes into memory");
    out
}

/// An `EXT-X-MEDIA` `SUBTITLES` rendition per WebVTT file of the asset, its
/// playlist under `prefix` (relative to the master).
fn subtitle_renditions<'a>(asset: &'a Asset, prefix: &'a str) -> impl Iterator<Item = AlternativeMedia> + 'a {
    asset.subtitles.iter().map(move |t| AlternativeMedia {
        media_type: AlternativeMediaType::Subtitles,
        uri: Some(format!("{prefix}{}-subtitles.m3u8", t.name)),
        group_id: SUBTITLE_GROUP.into(),
        language: (t.language != "und").then(|| t.language.clone()),
        name: t.name.clone(),
        autoselect: true,
        ..Default::default()
    })
}

/// `hls/{subtitles}-subtitles.m3u8`: the WebVTT file as the one segment of a
/// playlist as long as the presentation.
pub fn hls_subtitles(asset: &Asset, t: &Subtitles) -> Vec<u8> {
    vod_playlist(&[(0, asset.duration_secs)], None, None, TS_VERSION, false, |_| format!("../{}", t.file))
}

/// `hls-ts/master.m3u8`: HLS with MPEG-TS segments for legacy players, a
/// variant per video rendition (of those `filter` keeps) with the first audio
/// rendition muxed in (or, with no video, the first audio rendition alone).
/// Other audio renditions are alternatives of their own (audio-only TS), the
/// muxed one the default (no URI); subtitles are the fMP4 master's.
pub fn hls_ts_master(asset: &Asset, filter: &Filter) -> Vec<u8> {
    let window = filter.window_query();
    let audio = asset.renditions.iter().find(|r| !r.track.is_video());
    let video: Vec<&Rendition> = asset.renditions.iter().filter(|r| r.track.is_video() && filter.keeps(r)).collect();
    let variants: Vec<VariantStream> = if video.is_empty() {
        audio
            .map(|a| VariantStream {
                uri: format!("{}.m3u8{window}", a.name),
                bandwidth: ts_peak_bps(a),
                average_bandwidth: Some(a.average_bps),
                codecs: Some(a.track.codec_string.clone()),
                ..Default::default()
            })
            .into_iter()
            .collect()
    } else {
        video
            .iter()
            .map(|v| {
                let (width, height) = match v.track.kind {
                    Kind::Video { width, height } => (u64::from(width), u64::from(height)),
                    Kind::Audio { .. } => (0, 0),
                };
                let codecs = match audio {
                    Some(a) => format!("{},{}", v.track.codec_string, a.track.codec_string),
                    None => v.track.codec_string.clone(),
                };
                VariantStream {
                    uri: format!("{}.m3u8{window}", v.name),
                    bandwidth: ts_peak_bps(v) + audio.map_or(0, ts_peak_bps),
                    average_bandwidth: Some(v.average_bps + audio.map_or(0, |a| a.average_bps)),
                    codecs: Some(codecs),
                    resolution: Some(Resolution { width, height }),
                    frame_rate: frame_rate(v),
                    ..Default::default()
                }
            })
            .collect()
    };
    // With video, the first audio rendition is muxed in; the others kept play
    // beside it, from playlists of their own.
    let others: Vec<&Rendition> = match (video.is_empty(), audio) {
        (false, Some(first)) => {
            asset.renditions.iter().filter(|r| !r.track.is_video() && r.name != first.name && filter.keeps(r)).collect()
        }
        _ => Vec::new(),
    };
    let mut alternatives = Vec::new();
    if let (Some(first), false) = (audio, others.is_empty()) {
        let media = |a: &Rendition, uri: Option<String>, default: bool| AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri,
            group_id: AUDIO_GROUP.into(),
            language: (a.track.language != "und").then(|| a.track.language.clone()),
            name: format!("{} ({})", a.track.language, a.name),
            default,
            autoselect: true,
            ..Default::default()
        };
        alternatives.push(media(first, None, true));
        alternatives.extend(others.iter().map(|a| media(a, Some(format!("{}.m3u8{window}", a.name)), false)));
    }
    // Subtitles: the fMP4 master's playlists (the WebVTT file as its segment).
    let subtitles = !video.is_empty() && !asset.subtitles.is_empty();
    if subtitles {
        alternatives.extend(subtitle_renditions(asset, "../hls/"));
    }
    let variants = variants
        .into_iter()
        .map(|mut v| {
            if !others.is_empty() {
                v.audio = Some(AUDIO_GROUP.into());
            }
            if subtitles {
                v.subtitles = Some(SUBTITLE_GROUP.into());
            }
            v
        })
        .collect();
    let master = MasterPlaylist {
        version: Some(TS_VERSION),
        variants,
        alternatives,
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    master.write_to(&mut out).expect("a playlist writes into memory");
    out
}

/// A rendition's peak bits per second as MPEG-TS: each sample in whole
/// 188-byte packets with room for its PES header, delimiter or ADTS header and,
/// at a keyframe, parameter sets (an upper bound, as `BANDWIDTH` must be).
fn ts_peak_bps(r: &Rendition) -> u64 {
    const HEADERS: u64 = 128;
    (0..r.segments.len())
        .map(|i| {
            let bytes: u64 = r.track.samples[r.segments[i].clone()]
                .iter()
                .map(|s| (u64::from(s.size) + HEADERS).div_ceil(184) * 188)
                .sum();
            let secs = r.segment_secs(i);
            if secs > 0.0 { (bytes as f64 * 8.0 / secs).ceil() as u64 } else { 0 }
        })
        .max()
        .unwrap_or(0)
}

/// `hls-ts/{rendition}.m3u8`: like [`hls_media`], with MPEG-TS segments.
pub fn hls_ts_media(r: &Rendition, key: Option<&str>, kept: Range<usize>, v: &str) -> Vec<u8> {
    media_playlist(r, key, kept, None, TS_VERSION, |i| versioned(format!("../ts/{}/{}.ts", r.name, i + 1), v))
}

/// `uri` with the version `v` of what it names as its query (none for ""): a
/// segment's URL changes whenever its bytes may (a re-upload, encryption
/// turned on or off, a new packager), so caches never mix old and new.
fn versioned(uri: String, v: &str) -> String {
    if v.is_empty() { uri } else { format!("{uri}?v={v}") }
}

/// `hls/{rendition}.m3u8`: the rendition's segments `kept` (all, or those of a
/// time window, with their own numbers and media sequence), VOD; with `key`
/// (the URI of an AES-128 key), every media segment encrypted with it (the init
/// segment stays clear: its `EXT-X-MAP` comes before the `EXT-X-KEY`).
pub fn hls_media(r: &Rendition, key: Option<&str>, kept: Range<usize>, v: &str) -> Vec<u8> {
    let init = versioned(format!("../cmaf/{}/init.mp4", r.name), v);
    let segment = |i: usize| versioned(format!("../cmaf/{}/{}.m4s", r.name, i + 1), v);
    media_playlist(r, key, kept, Some(init), HLS_VERSION, segment)
}

/// A VOD media playlist of `r`'s segments `kept`, each at `uri(index)`.
fn media_playlist(
    r: &Rendition,
    key: Option<&str>,
    kept: Range<usize>,
    init: Option<String>,
    version: usize,
    uri: impl Fn(usize) -> String,
) -> Vec<u8> {
    let n = r.segments.len();
    let entries: Vec<(usize, f64)> = (kept.start.min(n)..kept.end.min(n)).map(|i| (i, r.segment_secs(i))).collect();
    vod_playlist(&entries, key, init, version, false, uri)
}

/// A VOD playlist of `entries` (index, seconds), the first one's index its
/// media sequence (segment n has sequence n - 1: an AES-128 segment's IV), each
/// at `uri(index)`; `init` and `key` apply from the first.
fn vod_playlist(
    entries: &[(usize, f64)],
    key: Option<&str>,
    init: Option<String>,
    version: usize,
    i_frames_only: bool,
    uri: impl Fn(usize) -> String,
) -> Vec<u8> {
    let first = entries.first().map_or(0, |e| e.0);
    let segments = entries
        .iter()
        .map(|&(i, d)| MediaSegment {
            uri: uri(i),
            duration: d as f32,
            map: init.as_ref().filter(|_| i == first).map(|u| Map { uri: u.clone(), ..Default::default() }),
            key: key.filter(|_| i == first).map(|uri| Key {
                method: KeyMethod::AES128,
                uri: Some(uri.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let playlist = MediaPlaylist {
        version: Some(version),
        // EXTINF rounded to the nearest second never exceeds it (RFC 8216 §4.3.3.1).
        target_duration: entries.iter().map(|d| d.1.round() as u64).max().unwrap_or(1).max(1),
        media_sequence: first as u64,
        segments,
        end_list: true,
        playlist_type: Some(MediaPlaylistType::Vod),
        i_frames_only,
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    playlist.write_to(&mut out).expect("a playlist writes into memory");
    out
}

/// `hls/{rendition}-iframes.m3u8`: a video rendition's keyframes in its
/// segments `kept`, each alone in a segment, for trick play (fast forward,
/// thumbnails); with `key`, encrypted as the media segments are.
pub fn hls_iframes(r: &Rendition, key: Option<&str>, kept: Range<usize>, v: &str) -> Vec<u8> {
    let samples = match (r.segments.get(kept.start), kept.end.checked_sub(1).and_then(|i| r.segments.get(i))) {
        (Some(a), Some(b)) => a.start..b.end,
        _ => 0..0,
    };
    let entries: Vec<(usize, f64)> = (0..r.keyframes.len())
        .filter(|&k| samples.contains(&r.keyframes[k]))
        .map(|k| (k, r.keyframe_secs(k)))
        .collect();
    let init = versioned(format!("../cmaf/{}/init.mp4", r.name), v);
    vod_playlist(&entries, key, Some(init), HLS_VERSION, true, |k| {
        versioned(format!("../cmaf/{}/i{}.m4s", r.name, k + 1), v)
    })
}

/// `dash/manifest.mpd`: a static MPD, one adaptation set for the video and one
/// per audio language, each representation (of those `filter` keeps) with its
/// own segment timeline over the segments of its time window.
pub fn dash_mpd(asset: &Asset, filter: &Filter, v: &str) -> Vec<u8> {
    dash(asset, filter, v, None)
}

/// The DASH MPD of an asset encrypted with Common Encryption (`scheme`, key
/// `kid`): its segments under `cenc/`, each audio and video adaptation set
/// saying how they are protected and that a ClearKey license opens them.
pub fn dash_mpd_protected(asset: &Asset, filter: &Filter, v: &str, scheme: Scheme, kid: [u8; 16]) -> Vec<u8> {
    dash(asset, filter, v, Some((scheme, kid)))
}

/// A key id as DASH writes it (`cenc:default_KID`): a UUID.
pub fn kid_uuid(kid: [u8; 16]) -> String {
    let h = hex::encode(kid);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn dash(asset: &Asset, filter: &Filter, v: &str, protection: Option<(Scheme, [u8; 16])>) -> Vec<u8> {
    let segments = if protection.is_some() { "cenc" } else { "cmaf" };
    let content_protection: Vec<ContentProtection> = match protection {
        None => Vec::new(),
        Some((scheme, kid)) => vec![
            ContentProtection {
                schemeIdUri: "urn:mpeg:dash:mp4protection:2011".into(),
                value: Some(scheme.as_str().into()),
                default_KID: Some(kid_uuid(kid)),
                ..Default::default()
            },
            ContentProtection {
                schemeIdUri: CLEARKEY_URN.into(),
                value: Some("ClearKey1.0".into()),
                ..Default::default()
            },
        ],
    };
    let kept = filter.segments(asset);
    let mut duration_secs = 0f64;
    let mut representation = |r: &Rendition| {
        let timescale = r.track.timescale;
        let starts: Vec<i64> = (0..r.segments.len()).map(|i| r.segment_start(i)).collect();
        let end = r.track.duration() as i64 + starts.first().copied().unwrap_or(0);
        let mut timeline: Vec<S> = Vec::new();
        let mut ticks = 0u64;
        let n = starts.len();
        for i in kept.start.min(n)..kept.end.min(n) {
            let t = starts[i];
            let next = starts.get(i + 1).copied().unwrap_or(end);
            let d = u64::try_from(next - t).unwrap_or(0);
            ticks += d;
            match timeline.last_mut() {
                Some(last) if last.d == d => last.r = Some(last.r.unwrap_or(0) + 1),
                _ => timeline.push(S {
                    t: (i == kept.start).then(|| u64::try_from(t).unwrap_or(0)),
                    d,
                    ..Default::default()
                }),
            }
        }
        duration_secs = duration_secs.max(ticks as f64 / f64::from(timescale));
        let template = SegmentTemplate {
            timescale: Some(u64::from(timescale)),
            initialization: Some(versioned(format!("../{segments}/$RepresentationID$/init.mp4"), v)),
            media: Some(versioned(format!("../{segments}/$RepresentationID$/$Number$.m4s"), v)),
            startNumber: Some(kept.start as u64 + 1),
            // The window's first segment starts the period.
            presentationTimeOffset: starts.get(kept.start).and_then(|&t| u64::try_from(t).ok()),
            SegmentTimeline: Some(SegmentTimeline { segments: timeline }),
            ..Default::default()
        };
        let mut rep = Representation {
            id: Some(r.name.clone()),
            bandwidth: Some(r.peak_bps),
            codecs: Some(r.track.codec_string.clone()),
            SegmentTemplate: Some(template),
            ..Default::default()
        };
        match r.track.kind {
            Kind::Video { width, height } => {
                rep.width = Some(u64::from(width));
                rep.height = Some(u64::from(height));
                rep.frameRate = frame_rate(r).map(|f| f.to_string());
            }
            Kind::Audio { sample_rate, .. } => rep.audioSamplingRate = Some(sample_rate.to_string()),
        }
        rep
    };
    let mut adaptations = Vec::new();
    let video: Vec<Representation> =
        asset.renditions.iter().filter(|r| r.track.is_video() && filter.keeps(r)).map(&mut representation).collect();
    if !video.is_empty() {
        adaptations.push(AdaptationSet {
            id: Some("0".into()),
            contentType: Some("video".into()),
            mimeType: Some("video/mp4".into()),
            segmentAlignment: Some(true),
            startWithSAP: Some(1),
            ContentProtection: content_protection.clone(),
            representations: video,
            ..Default::default()
        });
    }
    let mut languages: Vec<&str> = Vec::new();
    for r in asset.renditions.iter().filter(|r| !r.track.is_video() && filter.keeps(r)) {
        if !languages.contains(&r.track.language.as_str()) {
            languages.push(&r.track.language);
        }
    }
    for lang in languages {
        let reps = asset
            .renditions
            .iter()
            .filter(|r| !r.track.is_video() && r.track.language == lang && filter.keeps(r))
            .map(&mut representation)
            .collect();
        adaptations.push(AdaptationSet {
            id: Some(adaptations.len().to_string()),
            contentType: Some("audio".into()),
            mimeType: Some("audio/mp4".into()),
            lang: Some(lang.to_owned()),
            segmentAlignment: Some(true),
            startWithSAP: Some(1),
            ContentProtection: content_protection.clone(),
            representations: reps,
            ..Default::default()
        });
    }
    // Subtitles: the WebVTT file itself, one adaptation set each.
    for t in &asset.subtitles {
        adaptations.push(AdaptationSet {
            id: Some(adaptations.len().to_string()),
            contentType: Some("text".into()),
            mimeType: Some("text/vtt".into()),
            lang: Some(t.language.clone()),
            representations: vec![Representation {
                id: Some(format!("{}-subtitles", t.name)),
                bandwidth: Some(256),
                BaseURL: vec![BaseURL { base: format!("../{}", t.file), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let duration = Duration::from_millis((duration_secs * 1000.0).round() as u64);
    let mpd = MPD {
        xmlns: Some("urn:mpeg:dash:schema:mpd:2011".into()),
        mpdtype: Some("static".into()),
        profiles: Some("urn:mpeg:dash:profile:isoff-live:2011".into()),
        minBufferTime: Some(Duration::from_secs(2)),
        mediaPresentationDuration: Some(duration),
        periods: vec![Period { id: Some("0".into()), start: Some(Duration::ZERO), adaptations, ..Default::default() }],
        ..Default::default()
    };
    mpd.to_string().into_bytes()
}
