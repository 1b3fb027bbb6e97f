//! The packager against real media: ffmpeg makes MP4 sources (H.264 with
//! B-frames and AAC; H.265), the packager writes each rendition's init segment
//! and media segments, and ffprobe decodes them: every frame there, at the
//! source's times.

use std::path::{Path, PathBuf};
use std::process::Command;

use headwater_content::{ContentPath, ContentStore};
use headwater_jit::cenc::{Protection, Scheme};
use headwater_jit::encrypt::AssetKey;
use headwater_jit::{Asset, Filter, Settings, manifest};

#[path = "../../tests/support/media.rs"]
mod shared;
use shared::ffmpeg;

fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").is_err(), "{name} is required in CI (scripts/test installs ffmpeg)");
        eprintln!("{name} not installed: skipping");
    }
    found
}

/// `(pts, keyframe, samples)` of every decoded frame of stream `stream`, in
/// presentation order, with errors failing the test.
fn frames(file: &Path, stream: &str, raw_source: bool) -> Vec<(i64, bool, u64)> {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if raw_source {
        // The source's own sample times, edit lists not applied (the packager
        // carries times, not edits).
        cmd.args(["-ignore_editlist", "1"]);
    }
    let out = cmd
        .args(["-select_streams", stream, "-show_entries", "frame=pts,key_frame,nb_samples", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "ffprobe {}: {stderr}", file.display());
    let mut frames: Vec<(i64, bool, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim_end_matches(',').split(',').collect();
            let key = f[0] == "1";
            let pts = f[1].parse().unwrap_or_else(|_| panic!("pts in {l}"));
            let samples = f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            (pts, key, samples)
        })
        .collect();
    frames.sort_by_key(|f| f.0);
    frames
}

fn rebased(frames: &[(i64, bool, u64)]) -> Vec<i64> {
    let first = frames.first().map_or(0, |f| f.0);
    frames.iter().map(|f| f.0 - first).collect()
}

/// Writes `init.mp4` followed by every media segment of each rendition into
/// `{dir}/{rendition}.mp4` (a fragmented MP4 ffprobe reads whole).
async fn package(store: &ContentStore, dir: &Path, files: &[&str]) -> Asset {
    let mut indexes = Vec::new();
    for f in files {
        let path = ContentPath::parse(&format!("acct/vod/{f}")).unwrap();
        let meta = store.head(&path).await.unwrap();
        indexes.push((f.to_string(), headwater_jit::read_index(store, &path, meta.size).await.unwrap()));
    }
    let asset = Asset::build(&indexes, Settings { segment_secs: 4 }).unwrap();
    for r in &asset.renditions {
        let file = ContentPath::parse(&format!("acct/vod/{}", r.file)).unwrap();
        let mut out = headwater_jit::cmaf::init_segment(&r.track).unwrap();
        for n in 1..=r.segments.len() {
            let seg = headwater_jit::media_segment(store, &file, r, n).await.unwrap().unwrap();
            // Deterministic: the same request gives the same bytes.
            assert_eq!(seg, headwater_jit::media_segment(store, &file, r, n).await.unwrap().unwrap());
            out.extend_from_slice(&seg);
        }
        assert!(headwater_jit::media_segment(store, &file, r, r.segments.len() + 1).await.unwrap().is_none());
        std::fs::write(dir.join(format!("{}.mp4", r.name)), out).unwrap();
    }
    asset
}

#[tokio::test]
async fn h264_and_aac_decode_frame_for_frame() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("store/acct/vod");
    std::fs::create_dir_all(&src).unwrap();
    // Two renditions with the same keyframes (every 2 s), B-frames, and AAC.
    shared::renditions(&src);
    let store = ContentStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let asset = package(&store, dir.path(), &["180p.mp4", "360p.mp4"]).await;
    let names: Vec<&str> = asset.renditions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["180p-v1", "360p-v1", "180p-a2"], "one audio rendition for the same audio in both");

    for (rendition, source, stream) in
        [("180p-v1", "180p.mp4", "v:0"), ("360p-v1", "360p.mp4", "v:0"), ("180p-a2", "180p.mp4", "a:0")]
    {
        let ours = frames(&dir.path().join(format!("{rendition}.mp4")), "0", false);
        let theirs = frames(&src.join(source), stream, true);
        assert_eq!(ours.len(), theirs.len(), "{rendition}: frames decoded");
        assert_eq!(rebased(&ours), rebased(&theirs), "{rendition}: presentation times");
        let samples = |f: &[(i64, bool, u64)]| f.iter().map(|f| f.2).sum::<u64>();
        assert_eq!(samples(&ours), samples(&theirs), "{rendition}: audio samples");
        if stream.starts_with('v') {
            let keys = |f: &[(i64, bool, u64)]| f.iter().filter(|f| f.1).count();
            assert_eq!(keys(&ours), keys(&theirs), "{rendition}: keyframes");
        }
    }

    // Every segment starts with a keyframe and the cuts are the same in both renditions.
    let v = asset.rendition("360p-v1").unwrap();
    assert_eq!(v.segments.len(), 3, "9 s at a 4 s target with keyframes every 2 s: 4 + 4 + 1");
    assert!(v.segments.iter().all(|r| v.track.samples[r.start].sync));
    let low = asset.rendition("180p-v1").unwrap();
    assert_eq!(v.segments, low.segments);

    // The manifests parse with the crates players' parsers are modelled on.
    let master = manifest::hls_master(&asset, &Filter::default());
    let m3u8_rs::Playlist::MasterPlaylist(m) = m3u8_rs::parse_playlist_res(&master).unwrap() else {
        panic!("a master playlist")
    };
    let (iframes, variants): (Vec<_>, Vec<_>) = m.variants.iter().partition(|v| v.is_i_frame);
    assert_eq!(variants.len(), 2);
    assert!(variants.iter().all(|v| v.audio.as_deref() == Some("audio")));
    assert!(variants[0].codecs.as_deref().unwrap().starts_with("avc1.64"), "{:?}", variants[0].codecs);
    // An I-frame playlist per video rendition, its bandwidth that of keyframes alone.
    assert_eq!(iframes.len(), 2);
    assert!(iframes.iter().zip(&variants).all(|(i, v)| i.bandwidth > 0 && i.bandwidth < v.bandwidth));
    assert_eq!(m.alternatives.len(), 1);
    let media = manifest::hls_media(v, None, 0..v.segments.len(), "");
    let m3u8_rs::Playlist::MediaPlaylist(p) = m3u8_rs::parse_playlist_res(&media).unwrap() else {
        panic!("a media playlist")
    };
    assert_eq!(p.segments.len(), 3);
    assert_eq!(p.segments[0].map.as_ref().unwrap().uri, "../cmaf/360p-v1/init.mp4");
    assert!(p.end_list);
    let total: f32 = p.segments.iter().map(|s| s.duration).sum();
    assert!((total - 9.0).abs() < 0.05, "{total}");
    let mpd =
        dash_mpd::parse(std::str::from_utf8(&manifest::dash_mpd(&asset, &Filter::default(), "")).unwrap()).unwrap();
    let sets = &mpd.periods[0].adaptations;
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[0].representations.len(), 2);
    let timeline = sets[0].representations[1].SegmentTemplate.as_ref().unwrap().SegmentTimeline.as_ref().unwrap();
    let count: i64 = timeline.segments.iter().map(|s| 1 + s.r.unwrap_or(0)).sum();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn h265_decodes_and_names_its_codec() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("store/acct/vod");
    std::fs::create_dir_all(&src).unwrap();
    let out = src.join("hevc.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25",
        "-t",
        "5",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "keyint=25:min-keyint=25:log-level=error",
        "-tag:v",
        "hvc1",
        out.to_str().unwrap(),
    ]);
    let store = ContentStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let asset = package(&store, dir.path(), &["hevc.mp4"]).await;
    let r = &asset.renditions[0];
    assert!(r.track.codec_string.starts_with("hvc1.1."), "{}", r.track.codec_string);
    let ours = frames(&dir.path().join(format!("{}.mp4", r.name)), "0", false);
    let theirs = frames(&out, "v:0", true);
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(rebased(&ours), rebased(&theirs));

    // As MPEG-TS (stream type 0x24, VPS/SPS/PPS at each keyframe): the same
    // frames, at 90 kHz (the source's 1/12800 s ticks rounded down).
    let file = ContentPath::parse(&format!("acct/vod/{}", r.file)).unwrap();
    let mut ts = Vec::new();
    for n in 1..=r.segments.len() {
        ts.extend(headwater_jit::ts_segment(&store, (&file, r), None, n).await.unwrap().unwrap());
    }
    let ts_file = dir.path().join("hevc.ts");
    std::fs::write(&ts_file, ts).unwrap();
    let ours = frames(&ts_file, "v:0", false);
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.iter().filter(|f| f.1).count(), theirs.iter().filter(|f| f.1).count(), "keyframes");
    let (a, b) = (rebased(&ours), rebased(&theirs));
    // ffprobe reports TS times in 90 kHz ticks, the source's in 12800 Hz ones.
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (*x as f64 / 90_000.0, *y as f64 / 12_800.0);
        assert!((x - y).abs() <= 1.0 / 12_800.0, "{x} s against {y} s");
    }

    // With Common Encryption, both schemes: ffmpeg decrypts every frame to the
    // clear rendition's decoded frames (H.265 slices, two-byte NAL headers).
    let clear = framemd5(&dir.path().join(format!("{}.mp4", r.name)), None);
    for scheme in [Scheme::Cenc, Scheme::Cbcs] {
        let key = AssetKey::derive_cenc(b"an account's secret", "vod", scheme);
        let p = Protection::new(scheme, key.clone(), b"v1/hevc");
        let init = headwater_jit::cmaf::init_segment(&r.track).unwrap();
        let mut bytes = headwater_jit::cenc::protect_init(&init, &r.track, &p).unwrap();
        for n in 1..=r.segments.len() {
            bytes.extend(headwater_jit::protected_segment(&store, &file, r, n, &p).await.unwrap().unwrap());
        }
        let path = dir.path().join(format!("hevc-{}.mp4", scheme.as_str()));
        std::fs::write(&path, &bytes).unwrap();
        let decrypted = framemd5(&path, Some(&hex::encode(key.key)));
        assert_eq!(decrypted.len(), clear.len(), "{scheme:?}: frames");
        assert!(decrypted == clear, "{scheme:?}: the decrypted frames are the clear ones");
        let segment = headwater_jit::protected_segment(&store, &file, r, 1, &p).await.unwrap().unwrap();
        let plain = headwater_jit::media_segment(&store, &file, r, 1).await.unwrap().unwrap();
        assert_ne!(segment[segment.len() - 64..], plain[plain.len() - 64..], "{scheme:?}: the slices are encrypted");
    }
}

/// The MD5 of every frame ffmpeg decodes from `file`, decrypted with `key`
/// (hex) when given. Read from a pipe: ffmpeg 5.1 decrypts a seekable
/// fragmented file's samples with the last fragment's encryption info.
fn framemd5(file: &Path, key: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error"]);
    if let Some(key) = key {
        cmd.args(["-decryption_key", key]);
    }
    let out = cmd
        .args(["-i", "pipe:0", "-map", "0:v:0", "-f", "framemd5", "-"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "ffmpeg {}: {stderr}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn fragmented_mp4s_package_like_progressive_ones() {
    if tool("ffmpeg").is_none() || tool("ffprobe").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("store/acct/vod");
    std::fs::create_dir_all(&src).unwrap();
    let progressive = src.join("progressive.mp4");
    shared::h264_aac(&progressive, "320x180", 6, 25);
    // The same samples, fragmented three ways: a base offset in every tfhd, the
    // base at each moof, and an initial moov describing the first fragment.
    let store = ContentStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let clear = package(&store, dir.path(), &["progressive.mp4"]).await;
    for (name, flags) in [
        ("frag-offsets.mp4", "frag_keyframe+empty_moov"),
        ("frag-moof.mp4", "frag_keyframe+empty_moov+default_base_moof"),
        ("frag-initial.mp4", "frag_keyframe"),
    ] {
        let out = src.join(name);
        ffmpeg(&["-i", progressive.to_str().unwrap(), "-c", "copy", "-movflags", flags, out.to_str().unwrap()]);
        let asset = package(&store, dir.path(), &[name]).await;
        assert_eq!(asset.renditions.len(), 2, "{name}: a video and an audio rendition");
        for (r, (stream, c)) in
            asset.renditions.iter().zip([("v:0", &clear.renditions[0]), ("a:0", &clear.renditions[1])])
        {
            assert_eq!(r.track.samples.len(), c.track.samples.len(), "{name} {}: samples", r.name);
            if stream == "v:0" {
                // ffmpeg's fragmenting keeps video times (it stretches the first
                // audio sample over the audio's priming instead).
                assert_eq!(r.segments, c.segments, "{name} {}: cut alike", r.name);
            }
            let ours = frames(&dir.path().join(format!("{}.mp4", r.name)), "0", false);
            let theirs = frames(&out, stream, true);
            assert_eq!(ours.len(), theirs.len(), "{name} {}: frames", r.name);
            assert_eq!(rebased(&ours), rebased(&theirs), "{name} {}: times", r.name);
            assert_eq!(ours.iter().filter(|f| f.1).count(), theirs.iter().filter(|f| f.1).count(), "{name}: keyframes");
        }
    }
}

#[tokio::test]
async fn malformed_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().to_str().unwrap()).unwrap();
    let put = |name: &str, bytes: Vec<u8>| {
        let store = store.clone();
        let path = ContentPath::parse(&format!("acct/vod/{name}")).unwrap();
        async move {
            store.write(&path, bytes.into()).await.unwrap();
            let size = store.head(&path).await.unwrap().size;
            headwater_jit::read_index(&store, &path, size).await.unwrap_err().to_string()
        }
    };
    assert!(put("text.mp4", b"hello, this is not a video at all".to_vec()).await.contains("ftyp"));
    if tool("ffmpeg").is_none() {
        return;
    }
    let good = dir.path().join("good.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x90:rate=25",
        "-t",
        "2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-movflags",
        "+faststart",
        good.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&good).unwrap();
    // Cut in the middle of its media: the index points past the end.
    let e = put("cut.mp4", bytes[..bytes.len() / 2].to_vec()).await;
    assert!(e.contains("truncated"), "{e}");
    // Only the index's first bytes.
    let e = put("head.mp4", bytes[..200].to_vec()).await;
    assert!(e.contains("truncated") || e.contains("moov"), "{e}");
    // Fragmented, with a fragment whose decode time goes backwards.
    let fragmented = dir.path().join("frag.mp4");
    let flags = "empty_moov+default_base_moof";
    let source = good.to_str().unwrap();
    ffmpeg(&["-i", source, "-c", "copy", "-movflags", flags, "-frag_duration", "500000", fragmented.to_str().unwrap()]);
    let mut bytes = std::fs::read(&fragmented).unwrap();
    let tfdts: Vec<usize> = bytes.windows(4).enumerate().filter(|(_, w)| w == b"tfdt").map(|(i, _)| i).collect();
    assert!(tfdts.len() >= 2, "{} fragments", tfdts.len());
    // After the kind: version, flags, then the time (32 or 64 bits): zeroed.
    let at = tfdts[1] + 4;
    let width = if bytes[at] == 1 { 8 } else { 4 };
    bytes[at + 4..at + 4 + width].fill(0);
    let e = put("backwards.mp4", bytes).await;
    assert!(e.contains("fragment 2: its decode time goes backwards"), "{e}");
    // Not a codec the packager serves.
    let mp3 = dir.path().join("audio.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", "1", "-c:a", "libmp3lame", mp3.to_str().unwrap()]);
    let e = put("mp3.mp4", std::fs::read(&mp3).unwrap()).await;
    assert!(e.contains("no H.264, H.265 or AAC track"), "{e}");
}
