//! A player: an HLS or DASH client on an account's locator. It reads the master
//! playlist (m3u8-rs) or the MPD (dash-mpd), picks a rendition, and fetches the
//! segments in order (with the audio segment beside each video segment for DASH),
//! either as fast as it can (saturation) or in real time with a buffer and a
//! simple ABR (rebuffers counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use m3u8_rs::Playlist;
use tokio_util::sync::CancellationToken;

use crate::scenario::Mode;
use crate::stats::AccountStats;

/// Seconds of media a real-time player keeps ahead of the play head.
const TARGET_BUFFER_SECS: f64 = 10.0;
/// Seconds buffered before playback starts (and resumes after a stall).
const START_BUFFER_SECS: f64 = 4.0;

struct Rendition {
    bandwidth: u64,
    /// Initialisation segments, fetched once when the player switches to it.
    init: Vec<String>,
    /// The URLs of each segment (DASH: video and audio) and its duration in seconds.
    segments: Vec<(Vec<String>, f64)>,
}

fn join(base: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        uri.to_owned()
    } else {
        format!("{}/{uri}", base.rsplit_once('/').map_or(base, |(b, _)| b))
    }
}

/// GET `url`, counting the body's bytes as they arrive; the body length, or why it failed.
async fn fetch(http: &reqwest::Client, url: &str, stats: &AccountStats, keep: bool) -> Result<(u64, Vec<u8>), String> {
    stats.request();
    let mut res = http.get(url).send().await.map_err(|e| format!("transport: {}", short(&e)))?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status().as_u16()));
    }
    let (mut n, mut body) = (0u64, Vec::new());
    loop {
        match res.chunk().await {
            Ok(Some(c)) => {
                n += c.len() as u64;
                stats.bytes(c.len() as u64);
                if keep {
                    body.extend_from_slice(&c);
                }
            }
            Ok(None) => return Ok((n, body)),
            Err(e) => return Err(format!("body: {}", short(&e))),
        }
    }
}

fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s = inner.to_string();
        source = inner.source();
    }
    s
}

/// Fills a DASH SegmentTemplate (`$RepresentationID$`, `$Bandwidth$`, `$Number$`,
/// `$Time$`, each with an optional `%0Nd` width, and `$$`).
fn fill(template: &str, id: &str, bandwidth: u64, number: u64, time: u64) -> Result<String, String> {
    let mut out = String::new();
    let mut parts = template.split('$');
    out.push_str(parts.next().unwrap_or_default());
    let mut inside = true;
    for part in parts {
        if inside {
            let (name, width) = match part.split_once('%') {
                Some((n, f)) => {
                    let w = f.strip_prefix('0').unwrap_or(f).trim_end_matches('d');
                    (n, w.parse::<usize>().map_err(|_| format!("bad width in {template}"))?)
                }
                None => (part, 0),
            };
            let value = match name {
                "" => "$".to_owned(),
                "RepresentationID" => id.to_owned(),
                "Bandwidth" => format!("{bandwidth:0width$}"),
                "Number" => format!("{number:0width$}"),
                "Time" => format!("{time:0width$}"),
                other => return Err(format!("unknown template identifier ${other}$")),
            };
            out.push_str(&value);
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    Ok(out)
}

type Addressed = (Option<String>, Vec<(String, f64)>);

/// The initialisation segment and the media segments (URL, seconds) of one
/// Representation, from its SegmentTemplate (its own or its AdaptationSet's).
fn addresses(
    base: &str,
    a: &dash_mpd::AdaptationSet,
    r: &dash_mpd::Representation,
    total: Option<f64>,
) -> Result<Addressed, String> {
    let t = r.SegmentTemplate.as_ref().or(a.SegmentTemplate.as_ref()).ok_or("no SegmentTemplate")?;
    let (id, bandwidth) = (r.id.clone().unwrap_or_default(), r.bandwidth.unwrap_or(0));
    let timescale = t.timescale.unwrap_or(1).max(1) as f64;
    let start = t.startNumber.unwrap_or(1);
    let media = t.media.as_deref().ok_or("no media template")?;
    let mut segments = Vec::new();
    if let Some(timeline) = &t.SegmentTimeline {
        let (mut time, mut number) = (0u64, start);
        for s in &timeline.segments {
            time = s.t.unwrap_or(time);
            for _ in 0..=s.r.unwrap_or(0).max(0) {
                segments.push((join(base, &fill(media, &id, bandwidth, number, time)?), s.d as f64 / timescale));
                time += s.d;
                number += 1;
            }
        }
    } else if let (Some(d), Some(total)) = (t.duration, total) {
        let d = d / timescale;
        for k in 0..(total / d).ceil() as u64 {
            segments.push((join(base, &fill(media, &id, bandwidth, start + k, 0)?), d));
        }
    } else {
        return Err("a SegmentTemplate without a timeline or a duration".into());
    }
    let init =
        t.initialization.as_deref().map(|i| fill(i, &id, bandwidth, start, 0).map(|u| join(base, &u))).transpose()?;
    Ok((init, segments))
}

async fn load_dash(http: &reqwest::Client, mpd_url: &str, stats: &AccountStats) -> Result<Vec<Rendition>, String> {
    let (_, body) = fetch(http, mpd_url, stats, true).await?;
    let text = String::from_utf8(body).map_err(|_| "the MPD is not UTF-8".to_owned())?;
    let mpd = dash_mpd::parse(&text).map_err(|e| format!("MPD: {e}"))?;
    let total = mpd.mediaPresentationDuration.map(|d| d.as_secs_f64());
    let period = mpd.periods.first().ok_or("no Period")?;
    let video = period.adaptations.iter().find(dash_mpd::is_video_adaptation).ok_or("no video AdaptationSet")?;
    let audio = match period.adaptations.iter().find(dash_mpd::is_audio_adaptation) {
        Some(a) => a.representations.first().map(|r| addresses(mpd_url, a, r, total)).transpose()?,
        None => None,
    };
    let mut renditions = Vec::new();
    for r in &video.representations {
        let (init, media) = addresses(mpd_url, video, r, total)?;
        let mut inits: Vec<String> = init.into_iter().collect();
        inits.extend(audio.as_ref().and_then(|a| a.0.clone()));
        let segments = media
            .into_iter()
            .enumerate()
            .map(|(i, (url, d))| {
                let mut urls = vec![url];
                urls.extend(audio.as_ref().and_then(|a| a.1.get(i)).map(|s| s.0.clone()));
                (urls, d)
            })
            .collect();
        renditions.push(Rendition { bandwidth: r.bandwidth.unwrap_or(0), init: inits, segments });
    }
    Ok(renditions)
}

async fn load(http: &reqwest::Client, master: &str, stats: &AccountStats) -> Result<Vec<Rendition>, String> {
    let mut renditions = if master.ends_with(".mpd") {
        load_dash(http, master, stats).await?
    } else {
        load_hls(http, master, stats).await?
    };
    renditions.sort_by_key(|r| r.bandwidth);
    if renditions.is_empty() || renditions.iter().any(|r| r.segments.is_empty()) {
        return Err("no playable rendition".into());
    }
    Ok(renditions)
}

async fn load_hls(http: &reqwest::Client, master: &str, stats: &AccountStats) -> Result<Vec<Rendition>, String> {
    let (_, body) = fetch(http, master, stats, true).await?;
    let variants = match m3u8_rs::parse_playlist_res(&body) {
        Ok(Playlist::MasterPlaylist(m)) => m.variants,
        Ok(Playlist::MediaPlaylist(_)) => return Err("the locator names a media playlist, not a master".into()),
        Err(e) => return Err(format!("master playlist: {e:?}")),
    };
    let mut renditions = Vec::new();
    for v in variants {
        let url = join(master, &v.uri);
        let (_, body) = fetch(http, &url, stats, true).await?;
        let media = match m3u8_rs::parse_playlist_res(&body) {
            Ok(Playlist::MediaPlaylist(m)) => m,
            _ => return Err(format!("{url}: not a media playlist")),
        };
        let segments = media.segments.iter().map(|s| (vec![join(&url, &s.uri)], f64::from(s.duration))).collect();
        renditions.push(Rendition { bandwidth: v.bandwidth, init: Vec::new(), segments });
    }
    Ok(renditions)
}

/// Plays `master` until `stop`. `signed_up` is when the account was made, for the
/// sign-up → first segment figure.
pub async fn play(
    http: reqwest::Client,
    master: String,
    mode: Mode,
    stats: Arc<AccountStats>,
    signed_up: Option<Instant>,
    stop: CancellationToken,
) {
    // Until the playlists load (a new account may not serve yet), try again.
    let renditions = loop {
        if stop.is_cancelled() {
            return;
        }
        match load(&http, &master, &stats).await {
            Ok(r) => break r,
            Err(e) if signed_up.is_some() => {
                tracing::debug!(error = %e, "account not serving yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                stats.error(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut first = signed_up;
    let mut level = if mode == Mode::Saturate { renditions.len() - 1 } else { 0 };
    let (mut buffer, mut playing, mut last) = (0.0f64, false, Instant::now());
    let mut stalled_since: Option<Instant> = None;
    let mut index = 0usize;
    let mut initialised = None;
    while !stop.is_cancelled() {
        if mode == Mode::Realtime {
            let now = Instant::now();
            if playing {
                buffer -= now.duration_since(last).as_secs_f64();
                if buffer <= 0.0 {
                    buffer = 0.0;
                    playing = false;
                    stalled_since = Some(now);
                    stats.rebuffer();
                }
            }
            last = now;
            if buffer >= TARGET_BUFFER_SECS {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        }
        let r = &renditions[level];
        let (urls, duration) = &r.segments[index % r.segments.len()];
        let started = Instant::now();
        let mut got = Ok(0u64);
        if initialised != Some(level) {
            for url in &r.init {
                if let Err(e) = fetch(&http, url, &stats, false).await {
                    got = Err(e);
                }
            }
            if got.is_ok() {
                initialised = Some(level);
            }
        }
        for url in urls {
            if let Ok(n) = got {
                got = fetch(&http, url, &stats, false).await.map(|(b, _)| n + b);
            }
        }
        match got {
            Ok(bytes) => {
                let took = started.elapsed().as_secs_f64();
                stats.latency(took);
                if let Some(at) = first.take() {
                    stats
                        .first_segment
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(at.elapsed().as_secs_f64());
                }
                index += 1;
                if mode == Mode::Realtime {
                    buffer += duration;
                    if !playing && buffer >= START_BUFFER_SECS.min(*duration * 2.0) {
                        playing = true;
                        if let Some(s) = stalled_since.take() {
                            stats
                                .stalled_ms
                                .fetch_add(s.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    // Simple ABR: up one step when the segment came at 1.5× the next
                    // rendition's bit rate, down when it came slower than this one's.
                    let throughput = bytes as f64 * 8.0 / took.max(1e-3);
                    if level + 1 < renditions.len() && throughput > renditions[level + 1].bandwidth as f64 * 1.5 {
                        level += 1;
                    } else if level > 0 && throughput < renditions[level].bandwidth as f64 {
                        level -= 1;
                    }
                }
            }
            Err(e) => {
                if !stop.is_cancelled() {
                    stats.error(e);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_templates_are_filled() {
        assert_eq!(fill("seg-$RepresentationID$-$Number%03d$.m4s", "1", 0, 7, 0).unwrap(), "seg-1-007.m4s");
        assert_eq!(fill("init-$RepresentationID$.m4s", "v", 0, 1, 0).unwrap(), "init-v.m4s");
        assert_eq!(fill("$Bandwidth$/$Time$.m4s", "", 800, 1, 30720).unwrap(), "800/30720.m4s");
        assert_eq!(fill("a$$b", "", 0, 1, 0).unwrap(), "a$b");
        assert!(fill("$Nope$", "", 0, 1, 0).is_err());
    }

    #[test]
    fn the_demo_mpd_addresses_every_segment() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/demo/dash/manifest.mpd")).unwrap();
        let mpd = dash_mpd::parse(&text).unwrap();
        let period = &mpd.periods[0];
        let video = period.adaptations.iter().find(dash_mpd::is_video_adaptation).unwrap();
        let (init, segments) =
            addresses("http://r/a/demo/dash/manifest.mpd", video, &video.representations[0], None).unwrap();
        assert_eq!(init.as_deref(), Some("http://r/a/demo/dash/init-0.m4s"));
        let urls: Vec<&str> = segments.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://r/a/demo/dash/seg-0-001.m4s",
                "http://r/a/demo/dash/seg-0-002.m4s",
                "http://r/a/demo/dash/seg-0-003.m4s"
            ]
        );
        assert!(segments.iter().all(|s| (s.1 - 2.0).abs() < 1e-9));
    }

    #[test]
    fn relative_uris_resolve_against_the_playlist() {
        assert_eq!(join("http://r/a/demo/hls/master.m3u8", "720p/index.m3u8"), "http://r/a/demo/hls/720p/index.m3u8");
        assert_eq!(join("http://r/a/demo/hls/720p/index.m3u8", "seg_000.ts"), "http://r/a/demo/hls/720p/seg_000.ts");
        assert_eq!(join("http://r/x", "http://n/y.ts"), "http://n/y.ts");
    }
}
