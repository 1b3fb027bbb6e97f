//! Just-in-time packaging through the real binaries: a customer uploads MP4s to
//! an account of the `jit` type, a node packages HLS (fMP4) and DASH on request,
//! and ffprobe decodes what the node serves frame for frame against the sources.

mod support;

use std::path::{Path, PathBuf};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use support::browser::Player;
use support::media::{ffmpeg, renditions};
use support::{Admin, Backend, Origin};

fn tools() -> bool {
    let found = support::which("ffmpeg").is_some() && support::which("ffprobe").is_some();
    if !found {
        assert!(std::env::var("CI").is_err(), "ffmpeg is required in CI (scripts/test installs it)");
        eprintln!("ffmpeg not installed: skipping");
    }
    found
}

/// One decoded frame: presentation time (s), keyframe, audio samples.
#[derive(Debug, Clone, Copy)]
struct Frame {
    pts: f64,
    key: bool,
    samples: u64,
}

/// Every frame ffprobe decodes from stream `stream` of `input` (a file or URL),
/// in presentation order, and the stream's tick (s); any decoding error fails.
async fn frames(input: &str, stream: &str, raw_source: bool) -> (Vec<Frame>, f64) {
    let mut cmd = tokio::process::Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if raw_source {
        // The source's own sample times, edit lists not applied (the packager
        // carries times, not edits).
        cmd.args(["-ignore_editlist", "1"]);
    }
    let out = cmd
        .args(["-select_streams", stream])
        .args(["-show_entries", "frame=pts_time,key_frame,nb_samples:stream=time_base", "-of", "json", input])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "ffprobe {input}: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut frames: Vec<Frame> = v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Frame {
            pts: f["pts_time"].as_str().unwrap().parse().unwrap(),
            key: f["key_frame"] == 1,
            samples: f["nb_samples"].as_u64().unwrap_or(0),
        })
        .collect();
    frames.sort_by(|a, b| a.pts.total_cmp(&b.pts));
    let base = v["streams"][0]["time_base"].as_str().unwrap();
    let (num, den) = base.split_once('/').unwrap();
    (frames, num.parse::<f64>().unwrap() / den.parse::<f64>().unwrap())
}

/// The packaged stream decodes to the source's frames: as many, the same
/// keyframes and audio samples, and every presentation time within one tick of
/// the source's once both start at 0.
async fn same_frames(what: &str, packaged: &str, source: &Path, stream: &str) {
    same_stream(what, (packaged, "0"), source, stream).await
}

/// Like [`same_frames`] for stream `ours.1` of `ours.0` (one of several muxed).
async fn same_stream(what: &str, ours: (&str, &str), source: &Path, stream: &str) {
    let (ours, _) = frames(ours.0, ours.1, false).await;
    let (theirs, tick) = frames(source.to_str().unwrap(), stream, true).await;
    assert_eq!(ours.len(), theirs.len(), "{what}: frames decoded");
    let keys = |f: &[Frame]| f.iter().filter(|f| f.key).count();
    assert_eq!(keys(&ours), keys(&theirs), "{what}: keyframes");
    let samples = |f: &[Frame]| f.iter().map(|f| f.samples).sum::<u64>();
    assert_eq!(samples(&ours), samples(&theirs), "{what}: audio samples");
    let (o0, t0) = (ours[0].pts, theirs[0].pts);
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        // ffprobe prints times to the microsecond.
        let off = ((o.pts - o0) - (t.pts - t0)).abs();
        assert!(off <= tick + 2e-6, "{what}: frame {i} at {} s, the source's at {} s", o.pts - o0, t.pts - t0);
    }
}

async fn upload(admin: &Admin, key: &str, path: &str, bytes: Vec<u8>) -> reqwest::Response {
    admin
        .http
        .put(format!("{}/v1/accounts/ana-jit/assets/{path}", admin.url))
        .bearer_auth(key)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// The customer's call to admin's API: the status and the body.
async fn api(
    admin: &Admin,
    key: &str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    support::call_json(&admin.http, &admin.url, key, method, &path, body).await
}

async fn get(http: &reqwest::Client, url: &str, headers: &[(header::HeaderName, &str)]) -> reqwest::Response {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    req.send().await.unwrap()
}

/// English subtitles for the asset.
const SUBTITLES: &str =
    "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\nHello from Headwater\n\n00:00:05.000 --> 00:00:08.000\nStill here\n";

/// An admin with a `jit` account `ana-jit` whose asset `movie` holds
/// [`renditions`] and English subtitles, and a ready node of its pool.
struct Packaging {
    admin: Admin,
    /// The customer's API key.
    key: String,
    pool: String,
    node: Origin,
    files: Vec<(String, PathBuf)>,
    _media: tempfile::TempDir,
}

async fn packaging() -> Packaging {
    let media = tempfile::tempdir().unwrap();
    let files = renditions(media.path());
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let body = json!({"name": "ana-jit", "origin_type": "jit", "offer": {"kind": "payg"}});
    let pool = admin.account(&key, body).await;
    for (name, path) in &files {
        let res = upload(&admin, &key, &format!("movie/{name}"), std::fs::read(path).unwrap()).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{name}: {}", res.text().await.unwrap());
    }
    let res = upload(&admin, &key, "movie/en.vtt", SUBTITLES.as_bytes().to_vec()).await;
    assert_eq!(res.status(), StatusCode::CREATED, "en.vtt: {}", res.text().await.unwrap());
    let (id, token) = admin.register_node(&pool).await;
    let node = Origin::start(&admin, &id, &token, 1000, &[]).await;
    node.wait_state(&admin, "ready").await;
    Packaging { admin, key, pool, node, files, _media: media }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_node_packages_uploaded_mp4s_into_hls_and_dash() {
    if !tools() {
        return;
    }
    let Packaging { admin, key, pool, node, files, _media } = packaging().await;
    let http = reqwest::Client::new();
    let base = format!("{}/ana-jit/movie", node.url);
    let text = |url: String| {
        let http = http.clone();
        async move { get(&http, &url, &[]).await.bytes().await.unwrap() }
    };

    // The master playlist names both video renditions and the one audio track.
    let res = get(&http, &format!("{base}/hls/master.m3u8"), &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
    assert!(res.headers()[header::ETAG].to_str().unwrap().starts_with("\"jit-"));
    assert_eq!(res.headers()[header::CACHE_CONTROL], "public, max-age=60");
    let master = res.bytes().await.unwrap();
    let m3u8_rs::Playlist::MasterPlaylist(m) = m3u8_rs::parse_playlist_res(&master).unwrap() else {
        panic!("a master playlist: {}", String::from_utf8_lossy(&master))
    };
    let variants: Vec<&str> = m.variants.iter().filter(|v| !v.is_i_frame).map(|v| v.uri.as_str()).collect();
    assert_eq!(variants, ["180p-v1.m3u8", "360p-v1.m3u8"]);
    let iframes: Vec<&str> = m.variants.iter().filter(|v| v.is_i_frame).map(|v| v.uri.as_str()).collect();
    assert_eq!(iframes, ["180p-v1-iframes.m3u8", "360p-v1-iframes.m3u8"], "trick play per video rendition");
    let alternatives: Vec<(String, &str)> =
        m.alternatives.iter().map(|a| (a.media_type.to_string(), a.uri.as_deref().unwrap())).collect();
    let expected = [("AUDIO".to_owned(), "180p-a2.m3u8"), ("SUBTITLES".to_owned(), "en-subtitles.m3u8")];
    assert_eq!(alternatives, expected);
    assert!(m.variants.iter().filter(|v| !v.is_i_frame).all(|v| v.subtitles.as_deref() == Some("subs")));
    // The subtitles playlist's one segment is the WebVTT file, served as stored.
    let subs = get(&http, &format!("{base}/hls/en-subtitles.m3u8"), &[]).await.text().await.unwrap();
    assert!(subs.contains("\n../en.vtt\n"), "{subs}");
    let vtt = get(&http, &format!("{base}/en.vtt"), &[]).await;
    assert_eq!(vtt.headers()[header::CONTENT_TYPE], "text/vtt");
    assert_eq!(vtt.text().await.unwrap(), SUBTITLES);

    // Every rendition, fetched from the node by ffprobe's HLS reader, decodes
    // to its source's frames.
    let source = |name: &str| files.iter().find(|(n, _)| n == name).unwrap().1.clone();
    for (rendition, file, stream) in
        [("180p-v1", "180p.mp4", "v:0"), ("360p-v1", "360p.mp4", "v:0"), ("180p-a2", "180p.mp4", "a:0")]
    {
        let url = format!("{base}/hls/{rendition}.m3u8");
        same_frames(&format!("HLS {rendition}"), &url, &source(file), stream).await;
    }

    // HLS with MPEG-TS segments: each video rendition muxed with the first audio
    // rendition, both decoded frame for frame.
    let res = get(&http, &format!("{base}/hls-ts/master.m3u8"), &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let ts_master = res.bytes().await.unwrap();
    let m3u8_rs::Playlist::MasterPlaylist(t) = m3u8_rs::parse_playlist_res(&ts_master).unwrap() else { panic!() };
    let uris: Vec<&str> = t.variants.iter().map(|v| v.uri.as_str()).collect();
    assert_eq!(uris, ["180p-v1.m3u8", "360p-v1.m3u8"]);
    assert!(t.variants.iter().all(|v| v.codecs.as_deref().unwrap().contains(",mp4a.40.2")), "{t:?}");
    // BANDWIDTH bounds the TS segments' real peak (packets and headers included).
    for v in &t.variants {
        let playlist = text(format!("{base}/hls-ts/{}", v.uri)).await;
        let m3u8_rs::Playlist::MediaPlaylist(p) = m3u8_rs::parse_playlist_res(&playlist).unwrap() else { panic!() };
        for s in &p.segments {
            let bytes = text(format!("{base}/ts/{}", s.uri.trim_start_matches("../ts/"))).await.len();
            let bps = bytes as f64 * 8.0 / f64::from(s.duration);
            assert!(bps <= v.bandwidth as f64, "{}: {bps} bit/s past BANDWIDTH {}", s.uri, v.bandwidth);
        }
    }
    for (rendition, file) in [("180p-v1", "180p.mp4"), ("360p-v1", "360p.mp4")] {
        let url = format!("{base}/hls-ts/{rendition}.m3u8");
        same_stream(&format!("TS {rendition} video"), (&url, "v:0"), &source(file), "v:0").await;
        same_stream(&format!("TS {rendition} audio"), (&url, "a:0"), &source("180p.mp4"), "a:0").await;
    }
    let res = get(&http, &format!("{base}/ts/360p-v1/1.ts"), &[]).await;
    assert_eq!(res.headers()[header::CONTENT_TYPE], "video/mp2t");
    let ts = res.bytes().await.unwrap();
    assert!(ts.len() % 188 == 0 && ts.chunks(188).all(|p| p[0] == 0x47), "188-byte packets, each with its sync byte");

    // Trick play: the I-frame playlist decodes to the source's keyframes alone,
    // each at the source's time.
    let (ours, _) = frames(&format!("{base}/hls/360p-v1-iframes.m3u8"), "0", false).await;
    let (theirs, tick) = frames(source("360p.mp4").to_str().unwrap(), "v:0", true).await;
    let keyframes: Vec<f64> = theirs.iter().filter(|f| f.key).map(|f| f.pts - theirs[0].pts).collect();
    assert_eq!(ours.len(), keyframes.len(), "one frame per keyframe: {ours:?}");
    assert!(ours.iter().all(|f| f.key), "only keyframes: {ours:?}");
    for (o, k) in ours.iter().zip(&keyframes) {
        assert!(((o.pts - ours[0].pts) - k).abs() <= tick + 2e-6, "a keyframe at {} s, the source's at {k} s", o.pts);
    }
    let iframe_playlist = get(&http, &format!("{base}/hls/360p-v1-iframes.m3u8"), &[]).await.bytes().await.unwrap();
    let m3u8_rs::Playlist::MediaPlaylist(p) = m3u8_rs::parse_playlist_res(&iframe_playlist).unwrap() else {
        panic!("a media playlist")
    };
    assert!(p.i_frames_only);
    let total: f32 = p.segments.iter().map(|s| s.duration).sum();
    assert!((total - 9.0).abs() < 0.05, "the keyframes' intervals cover the rendition: {total}");
    let res = get(&http, &format!("{base}/hls/180p-a2-iframes.m3u8"), &[]).await;
    support::expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;

    // DASH: the same segments under one MPD; ffprobe reads it whole.
    let res = get(&http, &format!("{base}/dash/manifest.mpd"), &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/dash+xml");
    let mpd = dash_mpd::parse(&res.text().await.unwrap()).unwrap();
    let sets = &mpd.periods[0].adaptations;
    assert_eq!(sets.len(), 3, "video, audio and subtitles");
    assert_eq!(sets[2].mimeType.as_deref(), Some("text/vtt"));
    assert_eq!(sets[2].representations[0].BaseURL[0].base, "../en.vtt");
    assert_eq!(sets[0].representations.len(), 2);
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration:stream=codec_type", "-of", "json"])
        .arg(format!("{base}/dash/manifest.mpd"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "DASH: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let duration: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((8.9..=9.1).contains(&duration), "DASH duration {duration} s");
    let kinds: Vec<&str> = v["streams"].as_array().unwrap().iter().map(|s| s["codec_type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "video").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "audio").count(), 1, "{kinds:?}");

    // Filters by query: bitrate and codecs keep renditions, a time window clips
    // the presentation to its segments (their numbers kept).
    let low = m.variants.iter().find(|v| v.uri == "180p-v1.m3u8").unwrap().bandwidth;
    let playlist = text(format!("{base}/hls/master.m3u8?max_bitrate={low}")).await;
    let m3u8_rs::Playlist::MasterPlaylist(f) = m3u8_rs::parse_playlist_res(&playlist).unwrap() else { panic!() };
    let kept: Vec<&str> = f.variants.iter().map(|v| v.uri.as_str()).collect();
    assert_eq!(kept, ["180p-v1.m3u8", "180p-v1-iframes.m3u8"], "{}", String::from_utf8_lossy(&playlist));
    let res = get(&http, &format!("{base}/hls/master.m3u8?codecs=hvc1"), &[]).await;
    support::expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    let res = get(&http, &format!("{base}/dash/manifest.mpd?start=soon"), &[]).await;
    let p = support::expect_problem(res, StatusCode::BAD_REQUEST, "invalid-filter", None).await;
    assert!(p["detail"].as_str().unwrap().starts_with("start: "), "{p}");
    let playlist = text(format!("{base}/hls/master.m3u8?start=6")).await;
    assert!(String::from_utf8_lossy(&playlist).contains("360p-v1.m3u8?start=6"), "the window reaches the children");
    let playlist = text(format!("{base}/hls/360p-v1.m3u8?start=6")).await;
    let m3u8_rs::Playlist::MediaPlaylist(p) = m3u8_rs::parse_playlist_res(&playlist).unwrap() else { panic!() };
    let uris: Vec<&str> = p.segments.iter().map(|s| s.uri.split('?').next().unwrap()).collect();
    assert_eq!((p.media_sequence, uris), (1, vec!["../cmaf/360p-v1/2.m4s"]));
    let version = |uri: &str| uri.split_once("?v=").map(|(_, v)| v.to_owned()).unwrap();
    assert_eq!(version(&p.segments[0].uri).len(), 8, "segment URLs carry their version: {}", p.segments[0].uri);
    for manifest in ["hls/master.m3u8?start=6", "dash/manifest.mpd?start=6", "hls/master.m3u8?end=5"] {
        let out = tokio::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
            .arg(format!("{base}/{manifest}"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{manifest}: {stderr}");
        let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let expected = if manifest.contains("end=5") { 6.0 } else { 3.0 };
        assert!((secs - expected).abs() < 0.1, "{manifest}: {secs} s, not {expected}");
    }

    // A segment has the validators and ranges of a file, and the same bytes and
    // ETag every time, on every node: a second node (a fresh process) agrees.
    let segment = format!("{base}/cmaf/360p-v1/2.m4s");
    let first = get(&http, &segment, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(first.headers()[header::CACHE_CONTROL], "public, max-age=86400");
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    let bytes = first.bytes().await.unwrap();
    assert!(bytes.len() > 1000 && &bytes[4..8] == b"styp", "a CMAF media segment");
    let ranged = get(&http, &segment, &[(header::RANGE, "bytes=100-199"), (header::IF_RANGE, &etag)]).await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()[header::CONTENT_RANGE], format!("bytes 100-199/{}", bytes.len()).as_str());
    assert_eq!(ranged.bytes().await.unwrap(), bytes.slice(100..200));
    let stale = get(&http, &segment, &[(header::RANGE, "bytes=100-199"), (header::IF_RANGE, "\"other\"")]).await;
    assert_eq!(stale.status(), StatusCode::OK, "a stale If-Range gets the whole segment");
    let cached = get(&http, &segment, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let (id2, token2) = admin.register_node(&pool).await;
    let other = Origin::start(&admin, &id2, &token2, 1000, &[]).await;
    other.wait_state(&admin, "ready").await;
    let again = get(&http, &format!("{}/ana-jit/movie/cmaf/360p-v1/2.m4s", other.url), &[]).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
    assert_eq!(again.bytes().await.unwrap(), bytes, "byte-identical on another node");
    let master_again = get(&http, &format!("{}/ana-jit/movie/hls/master.m3u8", other.url), &[]).await;
    assert_eq!(master_again.bytes().await.unwrap(), master);

    // Players reach it through the router like any account: the same bytes.
    let (_router, router) = support::router_of(&admin, &[]).await;
    let via_router = format!("{router}/ana-jit/movie/hls/master.m3u8");
    support::wait_status(&http, &via_router, StatusCode::OK, "the jit account through the router").await;
    assert_eq!(get(&http, &via_router, &[]).await.bytes().await.unwrap(), master);
    let segment_via_router = get(&http, &format!("{router}/ana-jit/movie/cmaf/360p-v1/2.m4s"), &[]).await;
    assert_eq!(segment_via_router.headers()[header::ETAG].to_str().unwrap(), etag);
    assert_eq!(segment_via_router.bytes().await.unwrap(), bytes);

    // The MP4s themselves still download as files.
    let mp4 = get(&http, &format!("{base}/360p.mp4"), &[]).await;
    assert_eq!(mp4.status(), StatusCode::OK);
    assert_eq!(mp4.bytes().await.unwrap(), std::fs::read(source("360p.mp4")).unwrap());

    // What is not there is a 404 problem.
    for path in
        ["cmaf/720p-v1/1.m4s", "cmaf/360p-v1/3.m4s", "cmaf/360p-v1/i6.m4s", "hls/720p-v1.m3u8", "none/hls/master.m3u8"]
    {
        let url =
            if path.starts_with("none/") { format!("{}/ana-jit/{path}", node.url) } else { format!("{base}/{path}") };
        let res = get(&http, &url, &[]).await;
        support::expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    }

    // A corrupt file put in the store behind admin's back fails its asset with a
    // reason, and nothing else: the node keeps serving the good one.
    let broken = admin.content_dir().join("ana-jit/broken");
    std::fs::create_dir_all(&broken).unwrap();
    let mut cut = std::fs::read(source("180p.mp4")).unwrap();
    cut.truncate(cut.len() / 2);
    std::fs::write(broken.join("cut.mp4"), cut).unwrap();
    let res = get(&http, &format!("{}/ana-jit/broken/hls/master.m3u8", node.url), &[]).await;
    let problem = support::expect_problem(res, StatusCode::INTERNAL_SERVER_ERROR, "unpackable", None).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.starts_with("cut.mp4: ") && detail.contains("truncated"), "{detail}");
    let still = get(&http, &format!("{base}/hls/master.m3u8"), &[]).await;
    assert_eq!(still.status(), StatusCode::OK);
    // The operator sees it in the events, from the node's next heartbeat.
    support::eventually(std::time::Duration::from_secs(30), "an asset.unpackable event", || async {
        let events = admin
            .call(reqwest::Method::GET, "/v1/events?limit=100", Some(&admin.operator_token), None, StatusCode::OK)
            .await;
        events["items"].as_array().unwrap().iter().any(|e| {
            e["action"] == "asset.unpackable"
                && e["actor"] == format!("node:{}", node.id)
                && e["reason"].as_str().is_some_and(|d| d.starts_with("broken: cut.mp4: truncated"))
        })
    })
    .await;

    // The node's metrics count what it packaged and what it served from memory.
    let metrics = support::metrics(&node.url).await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("headwater_origin_jit_misses_total ") >= 10.0);
    assert!(value("headwater_origin_jit_hits_total ") >= 3.0);
    assert!(value("headwater_origin_jit_cache_bytes ") > 100_000.0);

    // An asset manifest sets the segment length and the audio's language: the
    // node cuts the 9 s asset (a keyframe every 2 s) into 2 s segments anew.
    let res =
        upload(&admin, &key, "movie/asset.json", br#"{"segment_secs": 2, "languages": {"180p.mp4": "fra"}}"#.to_vec())
            .await;
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
    support::eventually(std::time::Duration::from_secs(30), "2 s segments", || {
        let (http, url) = (http.clone(), format!("{base}/hls/360p-v1.m3u8"));
        async move { get(&http, &url, &[]).await.text().await.unwrap().matches("#EXTINF:").count() == 5 }
    })
    .await;
    let playlist = get(&http, &format!("{base}/hls/360p-v1.m3u8"), &[]).await.text().await.unwrap();
    assert!(playlist.contains("#EXT-X-TARGETDURATION:2"), "{playlist}");
    let master = get(&http, &format!("{base}/hls/master.m3u8"), &[]).await.text().await.unwrap();
    assert!(master.contains("LANGUAGE=\"fra\""), "{master}");
    let mpd = get(&http, &format!("{base}/dash/manifest.mpd"), &[]).await.text().await.unwrap();
    assert!(mpd.contains("lang=\"fra\""), "{mpd}");
    same_frames("2 s segments 360p-v1", &format!("{base}/hls/360p-v1.m3u8"), &source("360p.mp4"), "v:0").await;

    // Two audio languages now (180p.mp4's is French): HLS-TS muxes the first
    // into the video and offers the other as audio-only TS beside it, and names
    // the subtitles.
    let ts_master = get(&http, &format!("{base}/hls-ts/master.m3u8"), &[]).await.text().await.unwrap();
    let ts = m3u8_rs::parse_master_playlist_res(ts_master.as_bytes()).unwrap();
    let media: Vec<(String, Option<String>, bool)> =
        ts.alternatives.iter().map(|m| (m.media_type.to_string(), m.uri.clone(), m.default)).collect();
    assert_eq!(
        media,
        [
            ("AUDIO".to_owned(), None, true),
            ("AUDIO".to_owned(), Some("360p-a2.m3u8".to_owned()), false),
            ("SUBTITLES".to_owned(), Some("../hls/en-subtitles.m3u8".to_owned()), false),
        ],
        "{ts_master}"
    );
    assert_eq!(ts.alternatives[0].language.as_deref(), Some("fra"), "{ts_master}");
    assert!(ts.variants.iter().all(|v| v.audio.is_some() && v.subtitles.is_some()), "{ts_master}");
    let other_audio = format!("{base}/hls-ts/360p-a2.m3u8");
    same_stream("TS audio-only 360p-a2", (&other_audio, "a:0"), &source("360p.mp4"), "a:0").await;
    let subtitles = get(&http, &format!("{base}/hls/en-subtitles.m3u8"), &[]).await;
    assert_eq!(subtitles.status(), StatusCode::OK);
}

/// A 4 s H.264 clip at 160x90 with a keyframe every `gop` frames (25 fps).
fn clip(dir: &Path, name: &str, gop: u32, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let gop = gop.to_string();
    let mut args = vec!["-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25", "-t", "4", "-c:v", "libx264"];
    args.extend(["-preset", "ultrafast", "-g", &gop, "-keyint_min", &gop, "-sc_threshold", "0"]);
    args.extend(extra);
    args.push(out.to_str().unwrap());
    ffmpeg(&args);
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_a_jit_account_are_checked_by_the_packager() {
    if !tools() {
        return;
    }
    let media = tempfile::tempdir().unwrap();
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-jit", "origin_type": "jit", "offer": {"kind": "trial"}})).await;
    let stored = |path: &str| admin.content_dir().join("ana-jit").join(path).exists();
    let staged = || std::fs::read_dir(admin.content_dir().join("_uploads/ana-jit")).map_or(0, |d| d.count());

    // Refused with the reason, and nothing is left behind.
    let good = clip(media.path(), "good.mp4", 50, &[]);
    let refusals: [(&str, Vec<u8>, &str); 6] = [
        ("text.mp4", b"hello, this is not a video at all".to_vec(), "ftyp"),
        ("cut.mp4", good[..good.len() / 2].to_vec(), "truncated"),
        ("asset.json", br#"{"segment_secs": 0}"#.to_vec(), "segment_secs is 0: it must be 1 to 30"),
        ("asset.json", br#"{"languages": {"360p.mp4": "fr"}}"#.to_vec(), "ISO 639-2"),
        ("subs.vtt", b"1\n00:00:01.000 --> 00:00:02.000\nno header\n".to_vec(), "not a WebVTT file"),
        (
            "mp3.mp4",
            {
                let p = media.path().join("mp3.mp4");
                ffmpeg(&["-f", "lavfi", "-i", "sine", "-t", "1", "-c:a", "libmp3lame", p.to_str().unwrap()]);
                std::fs::read(p).unwrap()
            },
            "no H.264, H.265 or AAC track",
        ),
    ];
    for (name, bytes, reason) in refusals {
        let res = upload(&admin, &key, &format!("movie/{name}"), bytes).await;
        let p = support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "unpackable", Some("path")).await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.starts_with(&format!("{name}: ")) && detail.contains(reason), "{name}: {detail}");
        assert!(!stored(&format!("movie/{name}")), "{name} is not stored");
    }
    assert_eq!(staged(), 0, "refused uploads leave nothing aside");

    // A packageable MP4 goes in place; another rendition must have the same
    // keyframes (every 2 s here), or bitrate switching would break.
    let res = upload(&admin, &key, "movie/360p.mp4", good.clone()).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
    assert_eq!(std::fs::read(admin.content_dir().join("ana-jit/movie/360p.mp4")).unwrap(), good);
    // A fragmented MP4 is a rendition too.
    let fragmented = clip(media.path(), "frag.mp4", 50, &["-movflags", "frag_keyframe+empty_moov"]);
    let res = upload(&admin, &key, "movie/frag.mp4", fragmented).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
    let res = upload(&admin, &key, "movie/180p.mp4", clip(media.path(), "odd.mp4", 30, &[])).await;
    let p = support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "unpackable", Some("path")).await;
    assert!(
        p["detail"].as_str().unwrap().contains("the keyframes of 360p-v1 do not line up with those of 180p-v1"),
        "{p}"
    );
    assert!(!stored("movie/180p.mp4"));
    // The CLI uploads one file, and prints the reason of a refusal.
    let cli = |file: PathBuf| {
        let (url, key) = (admin.url.clone(), key.clone());
        async move {
            tokio::process::Command::new(support::BIN)
                .args(["assets", "upload", "ana-jit", "movie"])
                .arg(file)
                .env("HEADWATER_ADMIN_URL", url)
                .env("HEADWATER_API_KEY", key)
                .env_remove("HEADWATER_OPERATOR_TOKEN")
                .output()
                .await
                .unwrap()
        }
    };
    std::fs::write(media.path().join("180p.mp4"), clip(media.path(), "odd3.mp4", 30, &[])).unwrap();
    let out = cli(media.path().join("180p.mp4")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do not line up"), "{stderr}");
    std::fs::write(media.path().join("180p.mp4"), clip(media.path(), "same.mp4", 50, &[])).unwrap();
    let out = cli(media.path().join("180p.mp4")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stored("movie/180p.mp4"));
    // Re-uploading a rendition replaces it, checked against the others.
    let res = upload(&admin, &key, "movie/360p.mp4", clip(media.path(), "odd2.mp4", 30, &[])).await;
    support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "unpackable", Some("path")).await;
    assert_eq!(std::fs::read(admin.content_dir().join("ana-jit/movie/360p.mp4")).unwrap(), good, "kept");
    assert_eq!(staged(), 0);

    // Other files of a jit asset (a poster, files in a folder) are stored as they are.
    for path in ["movie/poster.jpg", "movie/extra/notes.mp4"] {
        let res = upload(&admin, &key, path, b"not checked".to_vec()).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_and_dash_js_play_packaged_streams_in_chromium() {
    if !tools() {
        return;
    }
    let chromium = support::browser::chromium();
    // Held to the end: dropping admin stops its nodes.
    let Packaging { admin, key, node, _media, .. } = packaging().await;
    let base = format!("{}/ana-jit/movie", node.url);
    let hls = support::browser::play(&chromium, Player::HlsJs, &format!("{base}/hls/master.m3u8")).await;
    assert_eq!(hls["levels"], 2, "both video renditions: {hls}");
    let ts = support::browser::play(&chromium, Player::HlsJs, &format!("{base}/hls-ts/master.m3u8")).await;
    assert_eq!(ts["levels"], 2, "both video renditions, as MPEG-TS: {ts}");
    let dash = support::browser::play(&chromium, Player::DashJs, &format!("{base}/dash/manifest.mpd")).await;
    assert_eq!(dash["levels"], 2, "both video renditions: {dash}");

    // Two audio languages: hls.js plays HLS-TS with the muxed audio as the
    // default and the other one offered beside it.
    let res = upload(&admin, &key, "movie/asset.json", br#"{"languages": {"180p.mp4": "fra"}}"#.to_vec()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let http = reqwest::Client::new();
    support::eventually(std::time::Duration::from_secs(30), "a second audio rendition", || {
        let (http, url) = (http.clone(), format!("{base}/hls-ts/master.m3u8"));
        async move { get(&http, &url, &[]).await.text().await.unwrap().contains("360p-a2.m3u8") }
    })
    .await;
    let ts = support::browser::play(&chromium, Player::HlsJs, &format!("{base}/hls-ts/master.m3u8")).await;
    assert_eq!(ts["levels"], 2, "both video renditions, as MPEG-TS with two audio languages: {ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_asset_is_read_by_range_never_whole() {
    if !tools() {
        return;
    }
    let Some(s3) = support::moto().await else { return };
    s3.bucket("headwater-jit").await;
    // Admin and the node reach S3 through a link that counts what S3 sends.
    let link = support::Link::to(s3.url.trim_start_matches("http://").parse().unwrap()).await;
    let env = support::s3_env(&format!("http://{}", link.addr));
    let admin = Admin::start_with(Backend::Sqlite, &[], Some("s3://headwater-jit/t".into()), env).await;
    let media = tempfile::tempdir().unwrap();
    let files = renditions(media.path());
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-jit", "origin_type": "jit", "offer": {"kind": "payg"}})).await;
    for (name, path) in &files {
        let res = upload(&admin, &key, &format!("movie/{name}"), std::fs::read(path).unwrap()).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{name}: {}", res.text().await.unwrap());
    }
    let (id, token) = admin.register_node(&pool).await;
    let node = Origin::start(&admin, &id, &token, 1000, &[]).await;
    node.wait_state(&admin, "ready").await;

    // The first request reads both files' indexes and one segment's samples.
    let before = link.downstream_bytes();
    let res = get(&reqwest::Client::new(), &format!("{}/ana-jit/movie/cmaf/360p-v1/2.m4s", node.url), &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let segment = res.bytes().await.unwrap();
    let fetched = link.downstream_bytes() - before;
    let size = |name: &str| std::fs::metadata(media.path().join(name)).unwrap().len();
    let (big, small) = (size("360p.mp4"), size("180p.mp4"));
    println!("fetched {fetched} bytes from S3 for a {} byte segment; the files are {big} and {small}", segment.len());
    assert!(fetched >= segment.len() as u64 / 2, "{fetched} bytes fetched for a {} byte segment", segment.len());
    assert!(
        fetched < big / 2,
        "{fetched} bytes fetched from S3 for one 3 s segment of a 9 s file of {big} bytes (and {small} more)"
    );
    assert!(segment.windows(4).any(|w| w == b"mdat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_128_encrypts_hls_and_hands_keys_to_signed_urls_only() {
    if !tools() {
        return;
    }
    let Packaging { admin, key, node, files, _media, .. } = packaging().await;
    let http = reqwest::Client::new();
    let call = |method, path: &str, body| api(&admin, &key, method, path.to_owned(), body);
    // Segment URLs carry a version, which changes with encryption (so caches
    // never hand a clear segment to a player that expects an encrypted one).
    let clear_playlist =
        get(&http, &format!("{}/ana-jit/movie/hls/360p-v1.m3u8", node.url), &[]).await.text().await.unwrap();
    let clear_version = clear_playlist.split("?v=").nth(1).unwrap()[..8].to_owned();
    let aes = json!({"scheme": "aes128"});
    let (status, p) = call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(aes.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("create a playback key first"), "{p}");
    let (status, _) = call(reqwest::Method::POST, "/v1/accounts/ana-jit/playback-keys", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, set) = call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(aes)).await;
    assert_eq!((status, set), (StatusCode::OK, json!({"scheme": "aes128", "dash": "cenc"})));
    let (_, got) = call(reqwest::Method::GET, "/v1/accounts/ana-jit/encryption", None).await;
    assert_eq!(got, json!({"scheme": "aes128", "dash": "cenc"}));
    let secret = admin.text("SELECT content_secret FROM accounts WHERE name = 'ana-jit'").await.unwrap();
    assert!(!secret.is_empty(), "a content secret, sealed");

    // A signed URL for the asset, at the node.
    let body = json!({"path": "movie/hls/master.m3u8", "expires_in_secs": 600});
    let (status, signed) = call(reqwest::Method::POST, "/v1/accounts/ana-jit/playback-tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    let signed = signed["url"].as_str().unwrap();
    let locator = signed.split("/ana-jit/").next().unwrap();
    let master = signed.replacen(locator, &node.url, 1);
    let media = master.replace("master.m3u8", "360p-v1.m3u8");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let playlist = loop {
        let text = get(&http, &media, &[]).await.text().await.unwrap();
        if text.contains("#EXT-X-KEY:METHOD=AES-128") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "the node never encrypted: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let kid = playlist.split("../keys/").nth(1).and_then(|r| r.split(".key").next()).unwrap().to_owned();
    let encrypted_version = playlist.split("?v=").nth(1).unwrap()[..8].to_owned();
    assert_ne!(encrypted_version, clear_version, "{playlist}");
    assert_eq!(kid.len(), 32, "{playlist}");
    assert!(
        playlist.find("#EXT-X-MAP").unwrap() < playlist.find("#EXT-X-KEY").unwrap(),
        "the init segment stays clear: {playlist}"
    );

    // Segments leave encrypted; the init segment is clear.
    let base = format!("{}/ana-jit/movie", node.url);
    let segment = get(&http, &format!("{base}/cmaf/360p-v1/1.m4s"), &[]).await.bytes().await.unwrap();
    assert!(&segment[4..8] != b"styp" && segment.len() % 16 == 0, "an AES-128-CBC body");
    let init = get(&http, &format!("{base}/cmaf/360p-v1/init.mp4"), &[]).await.bytes().await.unwrap();
    assert_eq!(&init[4..8], b"ftyp");
    // The key: to the signed URL only, and only the asset's.
    let res = get(&http, &format!("{base}/keys/{kid}.key"), &[]).await;
    support::expect_problem(res, StatusCode::FORBIDDEN, "playback-token", None).await;
    let signed_key = master.replace("hls/master.m3u8", &format!("keys/{kid}.key"));
    let res = get(&http, &signed_key, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "private, no-store");
    assert_eq!(res.bytes().await.unwrap().len(), 16);
    let other = master.replace("hls/master.m3u8", &format!("keys/{}.key", "0".repeat(32)));
    support::expect_problem(get(&http, &other, &[]).await, StatusCode::NOT_FOUND, "not-found", None).await;
    // The source MP4s are the clear media: not served while the account encrypts.
    let res = get(&http, &format!("{base}/360p.mp4"), &[]).await;
    support::expect_problem(res, StatusCode::FORBIDDEN, "encrypted", None).await;

    // ffprobe follows the signed URL to the key and decodes every frame; hls.js
    // plays it in Chromium.
    let source = files.iter().find(|(n, _)| n == "360p.mp4").unwrap().1.clone();
    same_frames("HLS AES-128 360p-v1", &media, &source, "v:0").await;
    let ts_media = master.replace("hls/master.m3u8", "hls-ts/360p-v1.m3u8");
    same_stream("HLS-TS AES-128 360p-v1", (&ts_media, "v:0"), &source, "v:0").await;
    let chromium = support::browser::chromium();
    let played = support::browser::play(&chromium, Player::HlsJs, &master).await;
    assert_eq!(played["levels"], 2, "{played}");

    // Off again: segments leave clear.
    let (status, _) =
        call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(json!({"scheme": "none"}))).await;
    assert_eq!(status, StatusCode::OK);
    support::eventually(std::time::Duration::from_secs(30), "clear segments again", || {
        let (http, url) = (http.clone(), format!("{base}/cmaf/360p-v1/1.m4s"));
        async move { &get(&http, &url, &[]).await.bytes().await.unwrap()[4..8] == b"styp" }
    })
    .await;
}

/// The MD5 of every frame ffmpeg decodes from stream `stream` of `input`,
/// decrypted with `key` (hex) when given; `Err` with ffmpeg's complaint when it
/// cannot decode.
async fn decoded(input: &Path, stream: &str, key: Option<&str>, raw_source: bool) -> Result<Vec<String>, String> {
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-v", "error"]);
    if let Some(key) = key {
        cmd.args(["-decryption_key", key]);
    }
    if raw_source {
        cmd.args(["-ignore_editlist", "1"]);
    }
    if key.is_some() {
        // Read as a stream: ffmpeg 5.1 decrypts a seekable fragmented file's
        // samples with the last fragment's encryption info (it reads every moof
        // first); a pipe has it read each moof before its samples.
        cmd.args(["-i", "pipe:0"]).stdin(std::fs::File::open(input).unwrap());
    } else {
        cmd.arg("-i").arg(input);
    }
    let out = cmd.args(["-map", &format!("0:{stream}"), "-f", "framemd5", "-"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() || !stderr.is_empty() {
        return Err(stderr);
    }
    // framemd5 rows: stream, dts, pts, duration, size, hash.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect())
}

/// A rendition's init segment and every media segment under `base` (`…/cenc/{r}`),
/// one after the other in a file.
async fn whole_rendition(http: &reqwest::Client, base: &str, dir: &Path, name: &str) -> PathBuf {
    let mut bytes = get(http, &format!("{base}/init.mp4"), &[]).await.bytes().await.unwrap().to_vec();
    for n in 1.. {
        let res = get(http, &format!("{base}/{n}.m4s"), &[]).await;
        if res.status() == StatusCode::NOT_FOUND {
            assert!(n > 1, "{base}: no segment");
            break;
        }
        assert_eq!(res.status(), StatusCode::OK, "{base}/{n}.m4s");
        bytes.extend_from_slice(&res.bytes().await.unwrap());
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_is_encrypted_with_cenc_or_cbcs_and_plays_with_clearkey() {
    if !tools() {
        return;
    }
    let Packaging { admin, key, node, files, _media, .. } = packaging().await;
    let http = reqwest::Client::new();
    let call = |method, path: &str, body| api(&admin, &key, method, path.to_owned(), body);
    let (status, _) = call(reqwest::Method::POST, "/v1/accounts/ana-jit/playback-keys", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let bad = json!({"scheme": "aes128", "dash": "cens"});
    let (status, p) = call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (_, got) = call(reqwest::Method::GET, "/v1/accounts/ana-jit/encryption", None).await;
    assert_eq!(got, json!({"scheme": "none", "dash": "cenc"}), "a refused change changes nothing");
    let body = json!({"path": "movie/dash/manifest.mpd", "expires_in_secs": 600});
    let (status, signed) = call(reqwest::Method::POST, "/v1/accounts/ana-jit/playback-tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    let signed = signed["url"].as_str().unwrap();
    let locator = signed.split("/ana-jit/").next().unwrap();
    let mpd_url = signed.replacen(locator, &node.url, 1);
    let signed_base = mpd_url.replace("/dash/manifest.mpd", "");
    let chromium = support::browser::chromium();
    let work = tempfile::tempdir().unwrap();
    let source = |name: &str| files.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let mut kids = Vec::new();

    for scheme in ["cenc", "cbcs"] {
        let set = json!({"scheme": "aes128", "dash": scheme});
        let (status, got) = call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(set.clone())).await;
        assert_eq!((status, got), (StatusCode::OK, set), "{scheme}");
        // The MPD says how its segments are protected once the node has it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mpd = loop {
            let text = get(&http, &mpd_url, &[]).await.text().await.unwrap();
            if text.contains(&format!("value=\"{scheme}\"")) {
                break dash_mpd::parse(&text).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "the node never encrypted DASH with {scheme}: {text}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let sets = &mpd.periods[0].adaptations;
        for set in sets.iter().filter(|s| s.contentType.as_deref() != Some("text")) {
            let schemes: Vec<&str> = set.ContentProtection.iter().map(|c| c.schemeIdUri.as_str()).collect();
            assert_eq!(
                schemes,
                ["urn:mpeg:dash:mp4protection:2011", "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e"],
                "{set:?}"
            );
            let template = set.representations[0].SegmentTemplate.as_ref().unwrap();
            assert!(template.media.as_deref().unwrap().starts_with("../cenc/"), "{template:?}");
        }
        let kid = sets[0].ContentProtection[0].default_KID.clone().unwrap().replace('-', "");
        assert_eq!(kid.len(), 32);
        kids.push(kid.clone());

        // The protected init segment: encv with sinf naming the scheme, a pssh.
        let init = get(&http, &format!("{signed_base}/cenc/360p-v1/init.mp4"), &[]).await.bytes().await.unwrap();
        for b in [&b"encv"[..], b"sinf", b"frma", b"tenc", b"pssh", scheme.as_bytes(), &hex::decode(&kid).unwrap()] {
            assert!(init.windows(b.len()).any(|w| w == b), "{scheme}: init has {:?}", String::from_utf8_lossy(b));
        }
        let audio_init = get(&http, &format!("{signed_base}/cenc/180p-a2/init.mp4"), &[]).await.bytes().await.unwrap();
        assert!(audio_init.windows(4).any(|w| w == b"enca"), "{scheme}: audio sample entry protected");

        // ffmpeg decrypts every frame to the source's decoded frames, video and
        // audio; without the key the video does not decode to them.
        let key_url = format!("{signed_base}/keys/{kid}.key");
        let res = get(&http, &key_url, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{key_url}");
        let content_key = hex::encode(res.bytes().await.unwrap());
        for (rendition, file, stream) in [("360p-v1", "360p.mp4", "v:0"), ("180p-a2", "180p.mp4", "a:0")] {
            let whole = whole_rendition(
                &http,
                &format!("{signed_base}/cenc/{rendition}"),
                work.path(),
                &format!("{scheme}-{rendition}.mp4"),
            )
            .await;
            let ours = decoded(&whole, "0", Some(&content_key), false).await.unwrap();
            let theirs = decoded(&source(file), stream, None, true).await.unwrap();
            assert_eq!(ours.len(), theirs.len(), "{scheme} {rendition}: frames");
            assert!(ours == theirs, "{scheme} {rendition}: the decrypted frames are the source's");
            if stream == "v:0" {
                let wrong = decoded(&whole, "0", Some(&"00".repeat(16)), false).await;
                assert!(wrong.is_err() || wrong.as_ref().unwrap() != &theirs, "{scheme}: a wrong key opened it");
            }
        }

        // dash.js plays it in Chromium, with the key from the signed key URL.
        let played = support::browser::play_clearkey(&chromium, &mpd_url, &kid, &key_url).await;
        assert_eq!(played["levels"], 2, "{scheme}: {played}");
    }
    assert_ne!(kids[0], kids[1], "a key per scheme: none serves both CTR and CBC");

    // HLS keeps its own key; a key goes to a signed URL only.
    let hls = get(&http, &format!("{signed_base}/hls/360p-v1.m3u8"), &[]).await.text().await.unwrap();
    let hls_kid = hls.split("../keys/").nth(1).and_then(|r| r.split(".key").next()).unwrap();
    assert_ne!(hls_kid, kids[0], "HLS AES-128 and DASH CENC have keys of their own");
    let res = get(&http, &format!("{}/ana-jit/movie/keys/{}.key", node.url, kids[1]), &[]).await;
    support::expect_problem(res, StatusCode::FORBIDDEN, "playback-token", None).await;
    // Clear again: the MPD points at clear CMAF and cenc/ is gone.
    let (status, _) =
        call(reqwest::Method::PUT, "/v1/accounts/ana-jit/encryption", Some(json!({"scheme": "none"}))).await;
    assert_eq!(status, StatusCode::OK);
    let clear = format!("{}/ana-jit/movie", node.url);
    support::eventually(std::time::Duration::from_secs(30), "clear DASH again", || {
        let (http, url) = (http.clone(), format!("{clear}/dash/manifest.mpd"));
        async move {
            let res = get(&http, &url, &[]).await;
            res.status() == StatusCode::OK && !res.text().await.unwrap().contains("ContentProtection")
        }
    })
    .await;
    let res = get(&http, &format!("{clear}/cenc/360p-v1/init.mp4"), &[]).await;
    support::expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
}
