//! Just-in-time packaging: an asset's MP4 files in, HLS and DASH out. The node
//! reads each file's index (by range), cuts segments at keyframes and writes
//! CMAF with `mp4-atom`, and the manifests with `m3u8-rs` and `dash-mpd`. Every
//! byte is a function of the source files and [`Settings`]: the same on every
//! node and after a restart.

pub mod asset_manifest;
pub mod cenc;
pub mod cmaf;
pub mod encrypt;
pub mod filter;
pub mod index;
pub mod manifest;
pub mod package;
pub mod ts;

use std::ops::Range;

use headwater_content::{ContentPath, ContentStore};

pub use asset_manifest::AssetManifest;
pub use filter::{BadFilter, Filter};
pub use index::{IndexError, Mp4Index, Unpackable, read_index};
pub use package::{Asset, Rendition, Request, Settings};

use crate::index::Sample;

/// Bumped whenever the packager's output changes for the same input, so
/// validators change with it.
pub const PACKAGER_VERSION: u32 = 1;

/// Reads of a segment's samples closer than this are merged into one (the bytes
/// of the other tracks interleaved between them are read and dropped).
const MERGE_GAP: u64 = 64 * 1024;

/// Byte ranges covering `samples`, merged where they are close.
fn runs(samples: &[Sample]) -> Vec<Range<u64>> {
    let mut spans: Vec<Range<u64>> =
        samples.iter().filter(|s| s.size > 0).map(|s| s.offset..s.offset.saturating_add(u64::from(s.size))).collect();
    spans.sort_by_key(|r| r.start);
    let mut runs: Vec<Range<u64>> = Vec::new();
    for s in spans {
        match runs.last_mut() {
            Some(last) if s.start <= last.end + MERGE_GAP => last.end = last.end.max(s.end),
            _ => runs.push(s),
        }
    }
    runs
}

/// Media segment `n` (from 1) of `r`, whose file is `file` in the store: its
/// samples read by range, nothing more. `None` past the last segment.
pub async fn media_segment(
    store: &ContentStore,
    file: &ContentPath,
    r: &Rendition,
    n: usize,
) -> Result<Option<Vec<u8>>, IndexError> {
    let Some(range) = n.checked_sub(1).and_then(|i| r.segments.get(i)) else { return Ok(None) };
    segment_of(store, file, r, n, &r.track.samples[range.clone()]).await.map(Some)
}

/// Media segment `n` (from 1) of `r` encrypted with Common Encryption as `p`
/// says. `None` past the last segment.
pub async fn protected_segment(
    store: &ContentStore,
    file: &ContentPath,
    r: &Rendition,
    n: usize,
    p: &cenc::Protection,
) -> Result<Option<Vec<u8>>, IndexError> {
    let Some(range) = n.checked_sub(1).and_then(|i| r.segments.get(i)) else { return Ok(None) };
    let samples = &r.track.samples[range.clone()];
    let read = read_samples(store, file, samples).await?;
    let mut owned: Vec<Vec<u8>> = slices(&read, samples)?.into_iter().map(<[u8]>::to_vec).collect();
    let info = cenc::encrypt_samples(p, &r.track, range.start, &mut owned)?;
    let data: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let sequence = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Some(cmaf::protected_segment(&r.track, sequence, samples, &data, &info)?))
}

/// Keyframe `n` (from 1) of video rendition `r` alone, as a media segment (for
/// its I-frame playlist). `None` past the last keyframe.
pub async fn iframe_segment(
    store: &ContentStore,
    file: &ContentPath,
    r: &Rendition,
    n: usize,
) -> Result<Option<Vec<u8>>, IndexError> {
    let Some(&i) = n.checked_sub(1).and_then(|k| r.keyframes.get(k)) else { return Ok(None) };
    segment_of(store, file, r, n, &r.track.samples[i..=i]).await.map(Some)
}

/// A media segment numbered `n` of `samples` (of `r`), read by range.
async fn segment_of(
    store: &ContentStore,
    file: &ContentPath,
    r: &Rendition,
    n: usize,
    samples: &[Sample],
) -> Result<Vec<u8>, IndexError> {
    let read = read_samples(store, file, samples).await?;
    let data = slices(&read, samples)?;
    let sequence = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(cmaf::media_segment(&r.track, sequence, samples, &data)?)
}

/// Segment `n` (from 1) of video rendition `video` (in `video_file`) as MPEG-TS,
/// with the same segment of `audio` (in `audio_file`) muxed in; an audio-only
/// asset's rendition may come as `video` too. `None` past the last segment.
pub async fn ts_segment(
    store: &ContentStore,
    (video_file, video): (&ContentPath, &Rendition),
    audio: Option<(&ContentPath, &Rendition)>,
    n: usize,
) -> Result<Option<Vec<u8>>, IndexError> {
    let Some(range) = n.checked_sub(1).and_then(|i| video.segments.get(i)) else { return Ok(None) };
    let video_samples = &video.track.samples[range.clone()];
    let video_read = read_samples(store, video_file, video_samples).await?;
    let audio_samples = audio.and_then(|(_, a)| n.checked_sub(1).and_then(|i| a.segments.get(i))).map(|r| {
        let a = audio.map(|(_, a)| a).unwrap_or(video);
        (a, &a.track.samples[r.clone()])
    });
    let audio_read = match (audio, audio_samples) {
        (Some((file, _)), Some((_, samples))) => Some(read_samples(store, file, samples).await?),
        _ => None,
    };
    let first = ts::Part { track: &video.track, samples: video_samples, data: slices(&video_read, video_samples)? };
    let second = match (audio_samples, &audio_read) {
        (Some((a, samples)), Some(read)) => Some(ts::Part { track: &a.track, samples, data: slices(read, samples)? }),
        _ => None,
    };
    let (v, a) = if video.track.is_video() { (Some(&first), second.as_ref()) } else { (None, Some(&first)) };
    Ok(Some(ts::segment(v, a)?))
}

/// The bytes of `samples` of `file`, read by range (close runs merged).
async fn read_samples(
    store: &ContentStore,
    file: &ContentPath,
    samples: &[Sample],
) -> Result<Vec<(Range<u64>, bytes::Bytes)>, IndexError> {
    let mut read = Vec::new();
    for run in runs(samples) {
        let bytes = store.read_range(file, run.clone()).await?;
        if bytes.len() as u64 != run.end - run.start {
            return Err(Unpackable("the file is shorter than its index says".into()).into());
        }
        read.push((run, bytes));
    }
    Ok(read)
}

/// Each sample's bytes in what [`read_samples`] read (an empty sample has none).
fn slices<'a>(read: &'a [(Range<u64>, bytes::Bytes)], samples: &[Sample]) -> Result<Vec<&'a [u8]>, Unpackable> {
    samples
        .iter()
        .map(|s| {
            if s.size == 0 {
                return Ok(&[][..]);
            }
            let i = read.partition_point(|(run, _)| run.end <= s.offset);
            let (run, bytes) = read.get(i).ok_or_else(|| Unpackable("a sample lies outside what was read".into()))?;
            let at = usize::try_from(s.offset.saturating_sub(run.start)).unwrap_or(usize::MAX);
            bytes
                .get(at..at.saturating_add(s.size as usize))
                .ok_or_else(|| Unpackable("a sample lies outside what was read".into()))
        })
        .collect()
}

/// Bytes a segment's reads fetch from the store (for the benchmark and tests).
pub fn bytes_read_for(r: &Rendition, n: usize) -> u64 {
    n.checked_sub(1)
        .and_then(|i| r.segments.get(i))
        .map_or(0, |range| runs(&r.track.samples[range.clone()]).iter().map(|r| r.end - r.start).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(offset: u64, size: u32) -> Sample {
        Sample { offset, size, dts: 0, duration: 1, cts: 0, sync: true }
    }

    #[test]
    fn empty_samples_have_no_bytes_and_stray_ones_are_refused() {
        // A zero-size sample at the end of a run (its span is empty).
        let samples = [s(100, 10), s(110, 0), s(2_000_000, 0)];
        let read = vec![(100..110, bytes::Bytes::from_static(&[7; 10]))];
        let got = slices(&read, &samples).unwrap();
        assert_eq!(got, [&[7u8; 10][..], &[][..], &[][..]]);
        assert!(slices(&read, &[s(5_000, 3)]).is_err(), "outside the reads: refused, no panic");
        assert!(slices(&read, &[s(105, 10)]).is_err(), "past the run's end");
    }

    #[test]
    fn close_reads_merge_and_far_ones_do_not() {
        let samples = [s(100, 10), s(110, 10), s(200, 5), s(1_000_000, 7)];
        assert_eq!(runs(&samples), vec![100..205, 1_000_000..1_000_007]);
        assert!(runs(&[]).is_empty());
    }
}
