//! A player: an HLS client on an account's locator. It reads the master playlist,
//! picks a rendition, and fetches the segments in order, either as fast as it can
//! (saturation) or in real time with a buffer and a simple ABR (rebuffers counted).

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
    /// (URL, duration in seconds) of each segment.
    segments: Vec<(String, f64)>,
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

async fn load(http: &reqwest::Client, master: &str, stats: &AccountStats) -> Result<Vec<Rendition>, String> {
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
        let segments = media.segments.iter().map(|s| (join(&url, &s.uri), f64::from(s.duration))).collect();
        renditions.push(Rendition { bandwidth: v.bandwidth, segments });
    }
    renditions.sort_by_key(|r| r.bandwidth);
    if renditions.is_empty() || renditions.iter().any(|r| r.segments.is_empty()) {
        return Err("no playable rendition".into());
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
        let (url, duration) = &r.segments[index % r.segments.len()];
        let started = Instant::now();
        match fetch(&http, url, &stats, false).await {
            Ok((bytes, _)) => {
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
    fn relative_uris_resolve_against_the_playlist() {
        assert_eq!(join("http://r/a/demo/hls/master.m3u8", "720p/index.m3u8"), "http://r/a/demo/hls/720p/index.m3u8");
        assert_eq!(join("http://r/a/demo/hls/720p/index.m3u8", "seg_000.ts"), "http://r/a/demo/hls/720p/seg_000.ts");
        assert_eq!(join("http://r/x", "http://n/y.ts"), "http://n/y.ts");
    }
}
