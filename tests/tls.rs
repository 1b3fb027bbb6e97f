//! TLS through the real binary: `up` serves the admin API and the locators over
//! HTTPS with a local CA (curl-, ffmpeg- and CLI-usable as it prints; its nodes
//! and router reach admin over HTTPS trusting that CA alone), and an
//! origin node serves HTTPS from PEM files (h2 and HTTP/1.1 by ALPN, byte ranges,
//! a reloaded certificate, slow handshakes cut off, one connection cap for both
//! listeners).

mod support;

use std::time::{Duration, Instant};

use headwater_serve::tls::local_ca::LocalCa;
use reqwest::{StatusCode, header};
use serde_json::json;
use support::{Admin, Backend, NodeCleanup, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

fn trusting(ca_pem: &[u8]) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem).unwrap())
}

fn https_of<'a>(lines: &'a [String], what: &str) -> &'a str {
    let prefix = format!("headwater {what} listening on https://");
    let line = lines.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}: {lines:?}"));
    line.trim_start_matches(&format!("headwater {what} listening on "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_https_with_a_local_ca_that_curl_ffmpeg_and_the_cli_trust() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let router = https_of(&lines, "router").to_owned();
    let admin = https_of(&lines, "admin").to_owned();
    let ca_path = data.path().join("tls/ca.pem");
    assert!(lines.iter().any(|l| l.contains(&ca_path.display().to_string())), "{lines:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("tls/ca-key.sealed")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the CA key is {mode:o}");
        // Sealed under the master key, never in clear on disk.
        let sealed = std::fs::read_to_string(data.path().join("tls/ca-key.sealed")).unwrap();
        assert!(sealed.starts_with("v1.") && !sealed.contains("PRIVATE KEY"), "{sealed}");
        assert!(!data.path().join("tls/ca-key.pem").exists());
    }
    let ca = std::fs::read(&ca_path).unwrap();

    // The locator over TLS, h2 by ALPN, and HTTP/1.1: the same bytes as the files.
    let playlist = "demo-sla/demo/hls/360p/index.m3u8";
    let want = std::fs::read(format!("{DEMO}/hls/360p/index.m3u8")).unwrap();
    let h2 = trusting(&ca).build().unwrap();
    let res = h2.get(format!("{router}/{playlist}")).send().await.unwrap();
    assert_eq!((res.status(), res.version()), (StatusCode::OK, reqwest::Version::HTTP_2));
    assert_eq!(res.bytes().await.unwrap(), want);
    let h1 = trusting(&ca).http1_only().build().unwrap();
    let res = h1.get(format!("{router}/demo-trial/demo/hls/720p/seg_001.ts")).send().await.unwrap();
    assert_eq!((res.status(), res.version()), (StatusCode::OK, reqwest::Version::HTTP_11));
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap());
    // Nothing else vouches for that certificate.
    let other = LocalCa::new("another CA").unwrap();
    let err = trusting(other.cert_pem.as_bytes()).build().unwrap().get(format!("{router}/{playlist}")).send().await;
    assert!(err.is_err(), "a certificate of the local CA passed another CA's check");

    // The curl line `up` printed works as printed.
    let curl_line = lines.iter().find_map(|l| l.strip_prefix("over TLS: curl ")).expect("a curl line").to_owned();
    if support::which("curl").is_some() {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--fail"])
            .args(curl_line.split_whitespace())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "curl {curl_line}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, want);
    }

    // ffmpeg verifies the certificate against the CA and decodes the locator.
    match support::which("ffmpeg") {
        Some(ffmpeg) => {
            let url = format!("{router}/demo-trial/demo/hls/master.m3u8");
            let decode = |ca: std::path::PathBuf| {
                let (ffmpeg, url) = (ffmpeg.clone(), url.clone());
                async move {
                    tokio::process::Command::new(ffmpeg)
                        .args(["-v", "error", "-ca_file"])
                        .arg(ca)
                        .args(["-tls_verify", "1", "-i", &url, "-map", "0:v:0", "-f", "null", "-"])
                        .output()
                        .await
                        .unwrap()
                }
            };
            let out = decode(ca_path.clone()).await;
            assert!(out.status.success(), "ffmpeg over TLS: {}", String::from_utf8_lossy(&out.stderr));
            let wrong = data.path().join("other-ca.pem");
            std::fs::write(&wrong, &other.cert_pem).unwrap();
            let out = decode(wrong).await;
            assert!(!out.status.success(), "ffmpeg accepted the certificate with another CA");
        }
        None => assert!(std::env::var("CI").is_err(), "ffmpeg is required in CI (scripts/test installs it)"),
    }

    // The nodes `up` runs report to admin over HTTPS, trusting the local CA
    // alone (they are ready: their heartbeats got through), and so the router
    // reads its routing table (it served the locator above).
    let ca_text = String::from_utf8(ca.clone()).unwrap();
    let mut nodes = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ");
        if !cmdline.contains(" origin ") || !cmdline.contains(&*data.path().to_string_lossy()) {
            continue;
        }
        nodes += 1;
        assert!(cmdline.contains("--admin-url https://127.0.0.1:"), "{cmdline}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ca_var = environ
            .split(|b| *b == 0)
            .find_map(|v| String::from_utf8_lossy(v).strip_prefix("HEADWATER_ADMIN_CA=").map(str::to_owned));
        assert_eq!(ca_var.as_deref(), Some(ca_text.as_str()), "node {pid} does not trust the local CA alone");
    }
    assert!(nodes >= 2, "no node processes of this up found");

    // The CLI talks to admin over HTTPS with --cacert.
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap();
    let out = tokio::process::Command::new(support::BIN)
        .args(["accounts", "list", "--json", "--admin-url", &admin, "--api-key", key.trim(), "--cacert"])
        .arg(&ca_path)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["demo-sla", "demo-trial"]);
    // Without it, the CLI does not trust the local CA.
    let out = tokio::process::Command::new(support::BIN)
        .args(["accounts", "list", "--admin-url", &admin, "--api-key", key.trim()])
        .env_remove("HEADWATER_CA_FILE")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An admin, an account holding the demo asset and a ready node of its pool
/// serving HTTPS too, with a certificate of `ca` in `dir`.
async fn tls_node(ca: &LocalCa, dir: &std::path::Path, flags: &[&str]) -> (Admin, Origin) {
    let (cert, key) = (dir.join("node.pem"), dir.join("node-key.pem"));
    ca.issue_files(&["localhost", "127.0.0.1"], 1, &cert, &key).unwrap();
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, api_key) = admin.sign_up("tls@example.com").await;
    let pool =
        admin.account(&api_key, json!({"name": "tls-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&api_key, "tls-vod", "demo").await;
    let (id, token) = admin.register_node(&pool).await;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec!["--tls-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(flags);
    let origin = Origin::start(&admin, &id, &token, 1000, &args).await;
    origin.wait_state(&admin, "ready").await;
    (admin, origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_https_from_pem_files() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("node test CA").unwrap();
    let (_admin, origin) = tls_node(&ca, dir.path(), &[]).await;
    let https = origin.tls_url.clone().unwrap();
    let http = trusting(ca.cert_pem.as_bytes()).build().unwrap();
    // Every file of the asset over h2, byte for byte (files leave by read and
    // write here, not sendfile), and the same validators as over plain HTTP.
    for file in support::demo_files() {
        let res = http.get(format!("{https}/tls-vod/demo/{file}")).send().await.unwrap();
        assert_eq!((res.status(), res.version()), (StatusCode::OK, reqwest::Version::HTTP_2), "{file}");
        let etag = res.headers()[header::ETAG].clone();
        assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/{file}")).unwrap(), "{file}");
        let plain = reqwest::get(format!("{}/tls-vod/demo/{file}", origin.url)).await.unwrap();
        assert_eq!(plain.headers()[header::ETAG], etag, "{file}");
    }
    // HTTP/1.1 over TLS, a range of a segment.
    let seg = std::fs::read(format!("{DEMO}/hls/720p/seg_000.ts")).unwrap();
    let h1 = trusting(ca.cert_pem.as_bytes()).http1_only().build().unwrap();
    for _ in 0..3 {
        // Kept alive between requests.
        let res = h1
            .get(format!("{https}/tls-vod/demo/hls/720p/seg_000.ts"))
            .header(header::RANGE, "bytes=1000-200999")
            .send()
            .await
            .unwrap();
        assert_eq!((res.status(), res.version()), (StatusCode::PARTIAL_CONTENT, reqwest::Version::HTTP_11));
        assert_eq!(res.bytes().await.unwrap(), seg[1000..201_000]);
    }
    let res = h1.get(format!("{https}/tls-vod/demo/hls/nope.m3u8")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["status"], 404);

    // The certificate renewed in place (another CA, as in a rotation): new
    // connections are served with it, the node never restarts.
    let renewed = LocalCa::new("renewed CA").unwrap();
    renewed
        .issue_files(&["localhost", "127.0.0.1"], 1, &dir.path().join("node.pem"), &dir.path().join("node-key.pem"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = trusting(renewed.cert_pem.as_bytes()).build().unwrap();
        if let Ok(res) = fresh.get(format!("{https}/tls-vod/demo/hls/master.m3u8")).send().await {
            assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "the node never served its renewed certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cuts_slow_handshakes_and_caps_both_listeners_together() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("node test CA").unwrap();
    let flags = ["--header-read-timeout-ms", "300", "--max-connections", "5"];
    let (_admin, origin) = tls_node(&ca, dir.path(), &flags).await;
    let https = origin.tls_url.clone().unwrap();
    let tls_addr = https.trim_start_matches("https://").to_owned();
    // Silent, or stalled inside the ClientHello: closed at the timeout, unanswered.
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]] {
        let mut s = tokio::net::TcpStream::connect(&tls_addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{opening:?}: the node kept a stalled handshake open");
    }
    // Five idle plain connections fill the cap; an HTTPS player still gets in
    // (an idle one is closed for it), and the node never holds more than five.
    let plain = origin.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(&plain).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        held.push(s);
    }
    let res = trusting(ca.cert_pem.as_bytes())
        .build()
        .unwrap()
        .get(format!("{https}/tls-vod/demo/hls/master.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let metrics = support::metrics(&origin.url).await;
    let gauge =
        |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(-1.0);
    assert!(gauge("headwater_origin_connections_open") <= 5.0, "{metrics}");
    assert!(gauge("headwater_origin_connections_evicted_total") >= 1.0, "{metrics}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_own_domain_is_served_with_its_uploaded_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    // The customer's CA stands for a public one: admin is told to trust it
    // (`--domain-ca`, for a private PKI) besides the web's roots.
    let customer_ca = LocalCa::new("the customer's CA").unwrap();
    let ca_file = data.path().join("customer-ca.pem");
    std::fs::write(&ca_file, &customer_ca.cert_pem).unwrap();
    let (_up, lines) = support::start(
        tokio::process::Command::new(support::BIN)
            .args(["up", "--demo", "--listen", "127.0.0.1:0", "--router-listen", "127.0.0.1:0"])
            .args(["--admin-https-listen", "127.0.0.1:0", "--router-https-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .env("HEADWATER_DOMAIN_CA", &ca_file),
        "ready",
    )
    .await;
    let admin = support::value(&lines, "headwater admin listening on ").to_owned();
    let router_https = https_of(&lines, "router").to_owned();
    let port: u16 = router_https.rsplit(':').next().unwrap().parse().unwrap();
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let put = |account: &str, body: serde_json::Value| {
        http.put(format!("{admin}/v1/accounts/{account}/domain")).bearer_auth(&key).json(&body).send()
    };
    let (cert, private_key) = customer_ca.issue(&["video.ana.example"], 30).unwrap();
    let (untrusted_cert, untrusted_key) =
        LocalCa::new("nobody's CA").unwrap().issue(&["video.ana.example"], 30).unwrap();

    // Refused with the reason: a key that is not the certificate's, a
    // certificate for another name, a malformed domain, a chain no trusted CA
    // issued (anyone could make one for any name).
    let (_, other_key) = customer_ca.issue(&["video.ana.example"], 30).unwrap();
    let (other_cert, other_cert_key) = customer_ca.issue(&["elsewhere.example"], 30).unwrap();
    for (body, field, why) in [
        (json!({"domain": "video.ana.example", "certificate": cert, "private_key": other_key}), "certificate", "key"),
        (
            json!({"domain": "video.ana.example", "certificate": other_cert, "private_key": other_cert_key}),
            "certificate",
            "does not name video.ana.example",
        ),
        (json!({"domain": "Video..example", "certificate": cert, "private_key": private_key}), "domain", "DNS name"),
        (
            json!({"domain": "video.ana.example", "certificate": untrusted_cert, "private_key": untrusted_key}),
            "certificate",
            "not trusted",
        ),
    ] {
        let res = put("demo-trial", body).await.unwrap();
        let p = support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some(field)).await;
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
    }
    let body = json!({"domain": "video.ana.example", "certificate": cert, "private_key": private_key});
    let res = put("demo-trial", body.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let shown: serde_json::Value = res.json().await.unwrap();
    assert_eq!(shown["locator"], "https://video.ana.example/");
    // One account per domain; the key is sealed at rest.
    let res = put("demo-sla", body).await.unwrap();
    support::expect_problem(res, StatusCode::CONFLICT, "conflict", Some("domain")).await;
    let db = std::fs::read(data.path().join("headwater.db")).unwrap();
    let wal = std::fs::read(data.path().join("headwater.db-wal")).unwrap_or_default();
    let key_line = private_key.lines().nth(1).unwrap();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(key_line.len()).any(|w| w == key_line.as_bytes()), "the private key is stored in clear");
    }

    // A player of https://video.ana.example/ (resolved to the router), trusting
    // the customer's CA alone: the router answers with the uploaded
    // certificate and routes the Host to the account.
    let player = || {
        trusting(customer_ca.cert_pem.as_bytes())
            .resolve("video.ana.example", std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .build()
            .unwrap()
    };
    let url = format!("https://video.ana.example:{port}/demo/hls/master.m3u8");
    let deadline = Instant::now() + Duration::from_secs(30);
    let res = loop {
        match player().get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => break r,
            other => assert!(Instant::now() < deadline, "the custom domain was never served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap());
    // The router's own names keep their certificate.
    let ca = std::fs::read(data.path().join("tls/ca.pem")).unwrap();
    let own = trusting(&ca).build().unwrap().get(format!("{router_https}/demo-trial/demo/hls/master.m3u8")).send();
    assert_eq!(own.await.unwrap().status(), StatusCode::OK);

    // Removed: the router no longer answers for it with the customer's certificate.
    let res = http.delete(format!("{admin}/v1/accounts/demo-trial/domain")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while player().get(&url).send().await.is_ok() {
        assert!(Instant::now() < deadline, "the removed domain is still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
