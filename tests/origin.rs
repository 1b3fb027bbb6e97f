//! Origin nodes as real processes over loopback: HTTP semantics, playable media,
//! access rules, test content, usage, heartbeats, drain, and bandwidth caps.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use serde_json::json;
use support::{Admin, Backend, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

/// An admin, a customer with one account of `offer` holding the demo asset, and a
/// ready node of the account's pool.
async fn serving(offer: serde_json::Value, capacity: u32, extra_account: serde_json::Value) -> (Admin, String, Origin) {
    serving_with(offer, capacity, extra_account, &[]).await
}

/// Like `serving`, with flags for the node.
async fn serving_with(
    offer: serde_json::Value,
    capacity: u32,
    extra_account: serde_json::Value,
    node_flags: &[&str],
) -> (Admin, String, Origin) {
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    // The origin type's node capacity is what nodes apply once configured.
    let patch = json!({"node_capacity_mbps": capacity});
    admin.call(Method::PATCH, "/v1/origin-types/hls", Some(&admin.operator_token), Some(patch), StatusCode::OK).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let mut body = json!({"name": "ana-vod", "origin_type": "hls", "offer": offer});
    if let Some(o) = extra_account.as_object() {
        for (k, v) in o {
            body[k] = v.clone();
        }
    }
    let pool = admin.account(&key, body).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (id, token) = admin.register_node(&pool).await;
    let origin = Origin::start(&admin, &id, &token, capacity, node_flags).await;
    origin.wait_state(&admin, "ready").await;
    (admin, key, origin)
}

async fn raw_get(origin: &Origin, target: &str) -> String {
    let addr = origin.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_vod_with_http_semantics() {
    let (admin, key, origin) = serving(json!({"kind": "payg"}), 1000, json!({})).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}/ana-vod/demo/{p}", origin.url);

    // 200 with the right headers, byte-identical to the packaged files.
    let res = http.get(url("hls/master.m3u8")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
    assert_eq!(h[header::CACHE_CONTROL], "public, max-age=60");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
    let last_modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap());
    for (file, ctype) in [
        ("hls/360p/seg_000.ts", "video/mp2t"),
        ("dash/manifest.mpd", "application/dash+xml"),
        ("dash/seg-0-001.m4s", "video/iso.segment"),
    ] {
        let res = http.get(url(file)).send().await.unwrap();
        assert_eq!(res.headers()[header::CONTENT_TYPE], ctype, "{file}");
        let want = std::fs::read(format!("{DEMO}/{file}")).unwrap();
        assert_eq!(res.headers()[header::CONTENT_LENGTH], want.len().to_string().as_str());
        assert_eq!(res.bytes().await.unwrap(), want, "{file}");
    }

    // 304 by ETag and by date; HEAD has the headers and no body.
    let res = http.get(url("hls/master.m3u8")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = http.get(url("hls/master.m3u8")).header(header::IF_MODIFIED_SINCE, &last_modified).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = http.head(url("hls/360p/seg_001.ts")).send().await.unwrap();
    let size = std::fs::metadata(format!("{DEMO}/hls/360p/seg_001.ts")).unwrap().len();
    assert_eq!(res.headers()[header::CONTENT_LENGTH], size.to_string().as_str());
    assert!(res.bytes().await.unwrap().is_empty());

    // 206 and 416.
    let seg = std::fs::read(format!("{DEMO}/hls/720p/seg_002.ts")).unwrap();
    let res = http.get(url("hls/720p/seg_002.ts")).header(header::RANGE, "bytes=1000-1999").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()[header::CONTENT_RANGE], format!("bytes 1000-1999/{}", seg.len()).as_str());
    assert_eq!(res.bytes().await.unwrap(), &seg[1000..2000]);
    let res = http
        .get(url("hls/720p/seg_002.ts"))
        .header(header::RANGE, format!("bytes={}-", seg.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(res.headers()[header::CONTENT_RANGE], format!("bytes */{}", seg.len()).as_str());

    // 404: another account, a missing file.
    let res = http.get(format!("{}/bo-vod/demo/hls/master.m3u8", origin.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(http.get(url("hls/nope.ts")).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // Traversal attempts are refused before anything is read.
    for target in [
        "/ana-vod/../../etc/passwd",
        "/ana-vod/demo/%2e%2e/%2e%2e/etc/passwd",
        "/ana-vod/demo/hls%2F..%2F..%2Fx",
        "/_probe/../ana-vod/demo/hls/master.m3u8",
    ] {
        let raw = raw_get(&origin, target).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{target}: {raw}");
    }

    // h2c (prior knowledge) serves the same bytes.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = h2.get(url("hls/360p/index.m3u8")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/360p/index.m3u8")).unwrap());
    // A segment over HTTP/2 is read from the open file in pieces (no sendfile there).
    let res = h2.get(url("hls/720p/seg_001.ts")).header(header::RANGE, "bytes=1-").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.bytes().await.unwrap() == std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap()[1..]);

    // A deactivated account answers 410 once the node has its new configuration.
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = http.get(url("hls/master.m3u8")).send().await.unwrap().status();
        if s == StatusCode::GONE {
            break;
        }
        assert!(Instant::now() < deadline, "still {s} after deactivation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the server closes, then splits what came into responses:
/// (status, headers, body), bodies delimited by Content-Length (none for HEAD).
async fn exchange(origin: &Origin, requests: &str, heads: &[bool]) -> Vec<(u16, Vec<(String, String)>, Vec<u8>)> {
    let addr = origin.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await.expect("the node closes").unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = res.parse(&raw[at..]).unwrap() else { panic!("partial response") };
        let headers: Vec<(String, String)> = res
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8(h.value.to_vec()).unwrap()))
            .collect();
        let length: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let length = if heads.get(out.len()).copied().unwrap_or(false) { 0 } else { length };
        out.push((res.code.unwrap(), headers, raw[at + n..at + n + length].to_vec()));
        at += n + length;
    }
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_on_the_wire() {
    let (_admin, _key, origin) = serving(json!({"kind": "payg"}), 1000, json!({})).await;
    let seg = std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap();
    let playlist = std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap();

    // Pipelined in one write: a segment (sent from the file), a HEAD, a range, a
    // GET carrying a small body (read and dropped), a playlist asking to close.
    let p = "/ana-vod/demo/hls";
    let requests = format!(
        "GET {p}/720p/seg_001.ts HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD {p}/720p/seg_001.ts HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {p}/720p/seg_001.ts?session=1 HTTP/1.1\r\nHost: x\r\nRange: bytes=100000-100099\r\n\r\n\
         GET {p}/master.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         GET {p}/master.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let got = exchange(&origin, &requests, &[false, true]).await;
    assert_eq!(got.len(), 5, "{:?}", got.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!((got[0].0, got[0].2.len()), (200, seg.len()));
    assert!(got[0].2 == seg, "the segment's bytes differ");
    assert_eq!(header(&got[0].1, "content-type"), Some("video/mp2t"));
    assert!(header(&got[0].1, "date").is_some() && header(&got[0].1, "etag").is_some());
    assert_eq!(header(&got[0].1, "connection"), None, "HTTP/1.1 keeps the connection");
    assert_eq!(got[1].0, 200);
    assert_eq!(header(&got[1].1, "content-length"), Some(seg.len().to_string().as_str()));
    assert!(got[1].2.is_empty());
    assert_eq!(got[2].0, 206);
    assert_eq!(header(&got[2].1, "content-range"), Some(format!("bytes 100000-100099/{}", seg.len()).as_str()));
    assert!(got[2].2 == seg[100_000..100_100]);
    assert_eq!((got[3].0, &got[3].2), (200, &playlist));
    assert_eq!((got[4].0, &got[4].2), (200, &playlist));
    assert_eq!(header(&got[4].1, "connection"), Some("close"));

    // HTTP/1.0 closes after one answer unless asked to keep the connection.
    let got =
        exchange(&origin, &format!("GET {p}/master.m3u8 HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n"), &[]).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, &got[0].2), (200, &playlist));
    let got = exchange(
        &origin,
        &format!("GET {p}/master.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n"),
        &[],
    )
    .await;
    assert_eq!(got.len(), 2);
    assert_eq!(header(&got[0].1, "connection"), Some("keep-alive"));
    assert_eq!((got[1].0, got[1].2.as_slice()), (200, &b"ok\n"[..]));

    // Malformed, chunked and oversized requests: a problem, then the connection closes.
    let long = "x".repeat(20_000);
    for (request, status, kind) in [
        ("GET /a b c\r\n\r\n".to_owned(), 400, "bad-request"),
        (format!("GET {p}/master.m3u8 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, "bad-request"),
        (format!("GET {p}/master.m3u8 HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n"), 413, "payload-too-large"),
        (
            format!("GET {p}/master.m3u8 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            400,
            "bad-request",
        ),
        (format!("GET {p}/master.m3u8 HTTP/1.1\r\nX-Long: {long}\r\n\r\n"), 431, "header-too-large"),
        // Digits only: another parser on the way could read `+33` otherwise.
        (format!("GET {p}/master.m3u8 HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc"), 400, "bad-request"),
    ] {
        let got = exchange(&origin, &request, &[]).await;
        assert_eq!(got.len(), 1, "{status}");
        assert_eq!(got[0].0, status);
        assert_eq!(header(&got[0].1, "content-type"), Some("application/problem+json"));
        let problem: serde_json::Value = serde_json::from_slice(&got[0].2).unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["type"], format!("/problems/{kind}"));
        assert_eq!(header(&got[0].1, "connection"), Some("close"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off() {
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("slow@example.com").await;
    let pool = admin.account(&key, json!({"name": "slow-vod", "origin_type": "hls", "offer": {"kind": "trial"}})).await;
    let (id, token) = admin.register_node(&pool).await;
    let origin = Origin::start(&admin, &id, &token, 100, &["--header-read-timeout-ms", "300"]).await;
    let addr = origin.url.trim_start_matches("http://");
    // Half a request head and then nothing, or nothing at all: the node closes
    // the connection without an answer.
    for opening in ["GET /healthz HTTP/1.1\r\nHost: x\r\n", ""] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(opening.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        let n = read.unwrap_or_else(|_| panic!("{opening:?}: the node kept a slow connection open")).unwrap();
        assert_eq!(n, 0, "{opening:?}: {}", String::from_utf8_lossy(&rest));
    }
    // A request sent in time is answered.
    let raw = raw_get(&origin, "/healthz").await;
    assert!(raw.starts_with("HTTP/1.1 200") && raw.ends_with("ok\n"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_allow_list_is_enforced() {
    let (_admin, _key, origin) = serving(json!({"kind": "payg"}), 1000, json!({"ip_allow": ["192.0.2.0/24"]})).await;
    let res = reqwest::get(format!("{}/ana-vod/demo/hls/master.m3u8", origin.url)).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The test content is for probes from anywhere.
    let res = reqwest::get(format!("{}/_probe/hls/master.m3u8", origin.url)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_played_asset_is_valid_media() {
    let Some(ffprobe) = support::which("ffprobe") else {
        assert!(std::env::var("CI").is_err(), "ffprobe is required in CI (scripts/test installs ffmpeg)");
        eprintln!("ffprobe not installed: skipping the media check");
        return;
    };
    let (_admin, _key, origin) = serving(json!({"kind": "trial"}), 1000, json!({})).await;
    for manifest in ["hls/master.m3u8", "dash/manifest.mpd"] {
        let url = format!("{}/ana-vod/demo/{manifest}", origin.url);
        let out = tokio::process::Command::new(&ffprobe)
            .args(["-v", "error", "-show_entries", "format=duration:stream=codec_type", "-of", "json", &url])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{manifest}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let duration: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
        assert!((5.5..=6.5).contains(&duration), "{manifest}: {duration} s");
        let kinds: Vec<_> =
            v["streams"].as_array().unwrap().iter().map(|s| s["codec_type"].as_str().unwrap().to_owned()).collect();
        assert!(kinds.contains(&"video".to_owned()) && kinds.contains(&"audio".to_owned()), "{manifest}: {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_account_bytes_but_never_test_content() {
    let (admin, key, origin) = serving(json!({"kind": "payg"}), 1000, json!({})).await;
    let http = reqwest::Client::new();
    let mut expected = 0u64;
    for file in ["hls/master.m3u8", "hls/360p/index.m3u8", "hls/360p/seg_000.ts", "hls/360p/seg_001.ts"] {
        expected +=
            http.get(format!("{}/ana-vod/demo/{file}", origin.url)).send().await.unwrap().bytes().await.unwrap().len()
                as u64;
    }
    // A ranged request counts what was sent.
    expected += http
        .get(format!("{}/ana-vod/demo/hls/360p/seg_002.ts", origin.url))
        .header(header::RANGE, "bytes=0-499")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len() as u64;
    for _ in 0..20 {
        http.get(format!("{}/_probe/hls/720p/seg_000.ts", origin.url)).send().await.unwrap().bytes().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let u = admin.call(Method::GET, "/v1/accounts/ana-vod/usage", Some(&key), None, StatusCode::OK).await;
        let total = u["total_bytes"].as_u64().unwrap();
        if total >= expected {
            assert_eq!(total, expected, "exactly the account's bytes: {u}");
            assert_eq!(u["total_requests"].as_u64(), Some(5), "{u}");
            // The hourly rollup adds up to what the player counted too.
            let hourly = "/v1/accounts/ana-vod/usage?granularity=hour";
            let r = admin.call(Method::GET, hourly, Some(&key), None, StatusCode::OK).await;
            let windows = r["windows"].as_array().unwrap();
            assert_eq!(windows.len(), 24, "a day of hours: {r}");
            assert_eq!(windows.iter().map(|w| w["bytes"].as_u64().unwrap()).sum::<u64>(), expected, "{r}");
            assert!(r["peak_mbps"].as_f64().unwrap() > 0.0, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "usage stuck at {total} of {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Heartbeats reached the store, with passing self-probes.
    assert!(
        admin
            .count(
                "SELECT COUNT(*) FROM probes WHERE ok AND source = 'self' AND node_id = (SELECT id FROM nodes LIMIT 1)"
            )
            .await
            >= 1
    );
    let nodes = admin.call(Method::GET, "/v1/nodes", Some(&admin.operator_token), None, StatusCode::OK).await;
    let n = &nodes["items"][0];
    assert_eq!(n["state"], "ready");
    assert_eq!(n["address"].as_str(), Some(origin.url.trim_start_matches("http://")));
    let metrics = support::metrics(&origin.url).await;
    // Without the token the node's metrics are not shown.
    let res = reqwest::get(format!("{}/metrics", origin.url)).await.unwrap();
    support::expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    assert!(metrics.contains("headwater_origin_bytes_total{account=\"_probe\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_the_download_in_flight_then_exits() {
    // 2 Mbit/s: the 720p segment (~310 kB) takes more than a second.
    let (admin, _key, mut origin) = serving(json!({"kind": "sla", "mbps": 100}), 2, json!({})).await;
    let url = format!("{}/ana-vod/demo/hls/720p/seg_001.ts", origin.url);
    let download = tokio::spawn(async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() });
    // Wait until the response is on its way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = support::metrics(&origin.url).await;
        let in_flight = m
            .lines()
            .find_map(|l| l.strip_prefix("headwater_origin_responses_in_flight "))
            .and_then(|v| v.parse::<u64>().ok());
        if in_flight.is_some_and(|n| n >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin
        .call(
            Method::POST,
            &format!("/v1/nodes/{}/drain", origin.id),
            Some(&admin.operator_token),
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    let status = origin.wait_exit().await;
    assert!(status.success(), "{status}");
    let got = download.await.unwrap();
    assert_eq!(
        got,
        std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap(),
        "the in-flight download finished whole"
    );
    let nodes = admin.call(Method::GET, "/v1/nodes", Some(&admin.operator_token), None, StatusCode::OK).await;
    assert_eq!(nodes["items"][0]["state"], "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_too() {
    // 2 Mbit/s: the 720p segment (~310 kB) takes more than a second.
    let (_admin, _key, mut origin) = serving(json!({"kind": "sla", "mbps": 100}), 2, json!({})).await;
    let url = format!("{}/ana-vod/demo/hls/720p/seg_001.ts", origin.url);
    let mut res = reqwest::get(url).await.unwrap();
    // The first bytes are here: the response is in flight when SIGTERM comes.
    let mut got = res.chunk().await.unwrap().expect("a first chunk").to_vec();
    origin.terminate().await;
    while let Some(chunk) = res.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(origin.wait_exit().await.success());
    assert_eq!(
        got,
        std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap(),
        "the in-flight response finished whole"
    );
}

async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut rest)).await.is_ok()
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_the_idle_timeout() {
    let (_admin, _key, origin) =
        serving_with(json!({"kind": "payg"}), 1000, json!({}), &["--idle-timeout-secs", "1"]).await;
    let addr = origin.url.trim_start_matches("http://").to_owned();
    // HTTP/1.1 keep-alive: answered, then closed once idle for a second (it was
    // still open after 90 s before).
    let mut h1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    h1.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let idle = Instant::now();
    assert!(closed_within(&mut h1, Duration::from_secs(10)).await, "an idle HTTP/1.1 connection stayed open");
    assert!(idle.elapsed() >= Duration::from_millis(900), "closed before its idle time");
    // HTTP/2: after a request, no stream for a second: GOAWAY and closed.
    let mut h2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_within(&mut h2, Duration::from_secs(10)).await, "an idle HTTP/2 connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_cap_never_keep_a_player_out() {
    let flags = ["--max-connections", "100", "--header-read-timeout-ms", "120000"];
    let (_admin, _key, origin) = serving_with(json!({"kind": "payg"}), 1000, json!({}), &flags).await;
    let addr = origin.url.trim_start_matches("http://").to_owned();
    // 150 connections held open and idle (they say nothing).
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let metrics = || support::metrics(&origin.url);
    support::eventually(Duration::from_secs(10), "the node to close 50 idle connections for newer ones", || async {
        gauge(&metrics().await, "headwater_origin_connections_evicted_total") >= 50.0
    })
    .await;
    // A player is served: the node closes an idle connection to make room.
    let url = format!("{}/ana-vod/demo/hls/master.m3u8", origin.url);
    let res = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap());
    let m = metrics().await;
    assert!(gauge(&m, "headwater_origin_connections_open") <= 100.0, "{m}");
    assert_eq!(gauge(&m, "headwater_origin_connections_refused_total"), 0.0);
    drop(held);
}

/// Downloads segments of `account` with `clients` connections for `secs`; Mbit/s.
async fn measure(base: &str, account: &str, clients: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = format!("{base}/{account}/demo/hls/720p/seg_00{}.ts", i % 3);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut bytes = 0u64;
            while Instant::now() < deadline {
                let mut res = http.get(&url).send().await.unwrap();
                while let Some(chunk) = res.chunk().await.unwrap() {
                    bytes += chunk.len() as u64;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
            bytes
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 * 8.0 / 1e6 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_caps_hold_over_real_sockets() {
    // One shared-pool node of 24 Mbit/s; payg accounts capped at 8 Mbit/s each.
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    admin
        .call(
            Method::PATCH,
            "/v1/origin-types/hls",
            Some(&admin.operator_token),
            Some(json!({"payg_cap_mbps": 8, "node_capacity_mbps": 24})),
            StatusCode::OK,
        )
        .await;
    let mut pool = String::new();
    for name in ["ana-vod", "bo-vod", "cy-vod"] {
        let (_, key) = admin.sign_up(&format!("{name}@example.com")).await;
        pool = admin.account(&key, json!({"name": name, "origin_type": "hls", "offer": {"kind": "payg"}})).await;
        admin.upload_demo(&key, name, "demo").await;
    }
    let (id, token) = admin.register_node(&pool).await;
    let origin = Origin::start(&admin, &id, &token, 24, &[]).await;
    origin.wait_state(&admin, "ready").await;

    // One account alone with 4 connections: held to its 8 Mbit/s cap.
    let alone = measure(&origin.url, "ana-vod", 4, 3.0).await;
    assert!((6.0..=10.0).contains(&alone), "one payg account: {alone:.2} Mbit/s, cap 8");

    // Three accounts, one greedy (6 connections): each still gets its share.
    let (a, b, c) = tokio::join!(
        measure(&origin.url, "ana-vod", 6, 3.0),
        measure(&origin.url, "bo-vod", 1, 3.0),
        measure(&origin.url, "cy-vod", 1, 3.0)
    );
    for (n, r) in [("ana", a), ("bo", b), ("cy", c)] {
        assert!((5.5..=10.0).contains(&r), "{n}: {r:.2} Mbit/s with three accounts on a 24 Mbit/s node");
    }
    assert!(a + b + c <= 24.0 * 1.15, "node total {:.2} over its 24 Mbit/s", a + b + c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_limited_and_isolated() {
    let admin = Admin::start(Backend::Sqlite, &["--max-upload-bytes", "200000"]).await;
    let (_, ana) = admin.sign_up("ana@example.com").await;
    let (_, bo) = admin.sign_up("bo@example.com").await;
    admin.account(&ana, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let put = |path: &str, key: &str, body: Vec<u8>| {
        admin
            .http
            .put(format!("{}/v1/accounts/ana-vod/assets/{path}", admin.url))
            .bearer_auth(key.to_owned())
            .body(body)
            .send()
    };
    let small = std::fs::read(format!("{DEMO}/hls/360p/index.m3u8")).unwrap();
    let res = put("demo/hls/360p/index.m3u8", &ana, small.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let up: serde_json::Value = res.json().await.unwrap();
    assert_eq!(up["bytes"].as_u64(), Some(small.len() as u64));
    assert!(up["url"].as_str().unwrap().ends_with("/ana-vod/demo/hls/360p/index.m3u8"), "{up}");
    // Another customer cannot write to the account (404, not 403).
    assert_eq!(put("demo/x.m3u8", &bo, small.clone()).await.unwrap().status(), StatusCode::NOT_FOUND);
    // Past the upload limit: 413, and nothing is left behind.
    let big = std::fs::read(format!("{DEMO}/hls/720p/seg_000.ts")).unwrap();
    assert!(big.len() > 200_000);
    let res = put("demo/hls/720p/seg_000.ts", &ana, big).await.unwrap();
    support::expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE, "too-large", None).await;
    assert!(!admin.content_dir().join("ana-vod/demo/hls/720p/seg_000.ts").exists());
    // Traversal in the path (sent raw: clients would normalise it) is refused.
    let addr = admin.url.trim_start_matches("http://").to_owned();
    for target in [
        "/v1/accounts/ana-vod/assets/demo/..%2F..%2F..%2Fescape.txt",
        "/v1/accounts/ana-vod/assets/demo/a/%2e%2e/%2e%2e/%2e%2e/escape.txt",
        "/v1/accounts/ana-vod/assets/..%2Fbo/x.ts",
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ana}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 422") || out.starts_with("HTTP/1.1 400"), "{target}: {out}");
        assert!(out.contains("application/problem+json"), "{out}");
    }
    assert!(!admin.data_dir.path().join("escape.txt").exists() && !admin.content_dir().join("escape.txt").exists());
    // List and delete.
    let list = admin.call(Method::GET, "/v1/accounts/ana-vod/assets", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(list["items"], json!([{"name": "demo", "files": 1, "bytes": small.len()}]));
    admin.call(Method::DELETE, "/v1/accounts/ana-vod/assets/demo", Some(&ana), None, StatusCode::NO_CONTENT).await;
    let list = admin.call(Method::GET, "/v1/accounts/ana-vod/assets", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(list["items"], json!([]));
}
