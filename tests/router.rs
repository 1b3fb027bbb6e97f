//! The router and `headwater up` through the real binary: locators that serve the
//! demo asset byte for byte, a node killed under a playing client with no failed
//! request, a router that keeps serving while admin is down, Host-based locators,
//! redirect mode, and 410 after deactivation.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Admin, Backend, NodeCleanup, router_of, value, wait_status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_serves_the_demo_and_survives_a_killed_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (mut up, lines) = support::up_demo(data.path()).await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    assert!(lines.iter().any(|l| l.starts_with("demo API key: hw_")), "{lines:?}");
    // Secrets and the database are the owner's only.
    for file in ["operator-token", "demo-api-key", "headwater.db", "headwater.db-wal"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
    let locator = lines.iter().find_map(|l| l.strip_prefix("demo locator: ")).unwrap().to_owned();
    assert_eq!(locator, format!("{router}/demo-trial/demo/hls/master.m3u8"));

    // The locator's playlist and every segment, byte for byte.
    let http = reqwest::Client::new();
    let base = locator.trim_end_matches("master.m3u8").to_owned();
    for file in support::demo_files().iter().filter(|f| f.starts_with("hls/")) {
        let rel = file.trim_start_matches("hls/");
        let got = http.get(format!("{base}{rel}")).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{rel}");
        assert_eq!(got.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/{file}")).unwrap(), "{rel}");
    }

    // A player fetching segments in a loop; the node serving it is killed.
    let seg = format!("{base}720p/seg_001.ts");
    let served_by = http.get(&seg).send().await.unwrap().headers()["x-headwater-node"].to_str().unwrap().to_owned();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let player = {
        let seg = seg.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed, mut nodes) = (0, 0, std::collections::HashSet::new());
            let end = Instant::now() + Duration::from_secs(8);
            while Instant::now() < end {
                match http.get(&seg).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        nodes.insert(r.headers()["x-headwater-node"].to_str().unwrap().to_owned());
                        if r.bytes().await.is_ok() {
                            ok += 1
                        } else {
                            failed += 1
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, nodes)
        })
    };
    // Kill the node once the player is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "the player made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.path().join(format!("nodes/{served_by}.json"))).unwrap()).unwrap();
    let pid = record["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let (ok, failed, _) = player.await.unwrap();
    assert_eq!(failed, 0, "{failed} failed player requests ({ok} ok)");
    assert!(ok > 10, "{ok}");

    // The replacement appears in the routing table.
    let token = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table: serde_json::Value = http
            .get(format!("{admin}/v1/routing"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes: Vec<String> = table["accounts"]["demo-trial"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        if nodes.len() == 2 && !nodes.contains(&served_by) {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement in the routing table: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ctrl-C (SIGTERM) stops everything, nodes included.
    Command::new("kill").args(["-TERM", &up.id().unwrap().to_string()]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let left: Vec<_> = std::fs::read_dir(data.path().join("nodes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(left.is_empty(), "node state left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_keeps_serving_without_admin_and_knows_hosts_redirects_and_deactivation() {
    let mut admin = Admin::start(Backend::Sqlite, &["--driver", "process"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (_proxy, proxy) = router_of(&admin, &["--domain", "example.test"]).await;
    let (_redirect, redirect) = router_of(&admin, &["--mode", "redirect"]).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let playlist = std::fs::read(format!("{DEMO}/hls/master.m3u8")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{proxy}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the router never served the account");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Host-based locator.
    let res =
        http.get(format!("{proxy}/demo/hls/master.m3u8")).header("host", "ana-vod.example.test").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), playlist);
    // Redirect mode points at a node that serves it (once that router has its table).
    let deadline = Instant::now() + Duration::from_secs(60);
    let res = loop {
        let res = http.get(format!("{redirect}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap();
        if res.status() != StatusCode::NOT_FOUND || Instant::now() > deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(reqwest::get(&location).await.unwrap().bytes().await.unwrap(), playlist);
    // CORS per account: a bad origin is refused; once the account names its
    // player's origin, the router and the node let only that page read.
    let res = admin
        .request(Method::PATCH, "/v1/accounts/ana-vod", Some(&key), Some(json!({"allow_origins": ["ftp://x.example"]})))
        .await;
    support::expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("allow_origins[0]")).await;
    let patched = admin
        .call(
            Method::PATCH,
            "/v1/accounts/ana-vod",
            Some(&key),
            Some(json!({"allow_origins": ["https://Player.example"]})),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(patched["account"]["allow_origins"], json!(["https://player.example"]));
    let acao =
        |r: &reqwest::Response| r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
    let node_url = location.clone();
    for url in [format!("{proxy}/ana-vod/demo/hls/master.m3u8"), node_url] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http.get(&url).header("origin", "https://player.example").send().await.unwrap();
            if acao(&r).as_deref() == Some("https://player.example") {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: still {:?}", acao(&r));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = http.get(&url).header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(acao(&r), None, "{url}: another page may not read");
        assert!(r.headers().get_all("vary").iter().any(|v| v.to_str().unwrap().contains("Origin")), "{url}");
    }
    let preflight = http
        .request(Method::OPTIONS, format!("{proxy}/ana-vod/demo/hls/master.m3u8"))
        .header("origin", "https://player.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(acao(&preflight).as_deref(), Some("https://player.example"));

    // Unknown accounts are 404.
    let res = http.get(format!("{proxy}/nobody/demo/hls/master.m3u8")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Admin down: the router serves from its last table.
    admin.stop().await;
    for _ in 0..5 {
        let res = http.get(format!("{proxy}/ana-vod/demo/hls/360p/seg_000.ts")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Admin back (nodes were adopted): a deactivation reaches the router as 410.
    admin.crash_and_restart().await;
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = http.get(format!("{proxy}/ana-vod/demo/hls/master.m3u8")).send().await.unwrap().status();
        if s == StatusCode::GONE {
            break;
        }
        assert!(Instant::now() < deadline, "still {s} after deactivation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_changes_reach_the_router_over_redis_and_it_serves_while_redis_is_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut redis = support::RedisServer::start().await;
    let admin =
        Admin::start(Backend::Postgres, &["--driver", "process", "--redis-url", &redis.url(), "--redis-prefix", "hw"])
            .await;
    // The router polls admin only at start (and then every 10 minutes): what it
    // learns afterwards comes over Redis.
    let (_router, router) =
        router_of(&admin, &["--redis-url", &redis.url(), "--redis-prefix", "hw", "--refresh-ms", "600000"]).await;
    let http = reqwest::Client::new();
    wait_status(&http, &format!("{router}/readyz"), StatusCode::OK, "the router's first table").await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let url = format!("{router}/ana-vod/demo/hls/master.m3u8");
    wait_status(&http, &url, StatusCode::OK, "the new account over Redis").await;

    // Redis stops: the router goes on serving from its table.
    redis.stop().await;
    let segment = std::fs::read(format!("{DEMO}/hls/360p/seg_000.ts")).unwrap();
    for _ in 0..20 {
        let res = http.get(format!("{router}/ana-vod/demo/hls/360p/seg_000.ts")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.bytes().await.unwrap(), segment);
    }
    // A change made while Redis is away reaches the router once it is back.
    admin.call(Method::POST, "/v1/accounts/ana-vod/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    redis.start_again().await;
    wait_status(&http, &url, StatusCode::GONE, "the deactivation after Redis came back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_starts_while_redis_is_down_and_publishes_once_it_is_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut redis = support::RedisServer::start().await;
    redis.stop().await;
    let admin =
        Admin::start(Backend::Sqlite, &["--driver", "process", "--redis-url", &redis.url(), "--redis-prefix", "hw"])
            .await;
    let http = reqwest::Client::new();
    let res = http.get(format!("{}/readyz", admin.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why = res.text().await.unwrap();
    assert!(why.contains("bus unreachable"), "{why}");
    // The API works meanwhile: a sign-up, and an account whose operation runs here.
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;

    redis.start_again().await;
    wait_status(&http, &format!("{}/readyz", admin.url), StatusCode::OK, "admin ready once Redis is up").await;
    // What admin publishes now reaches a router that hears only Redis (it polls
    // admin at start, then every 10 minutes).
    let (_router, router) =
        router_of(&admin, &["--redis-url", &redis.url(), "--redis-prefix", "hw", "--refresh-ms", "600000"]).await;
    wait_status(&http, &format!("{router}/readyz"), StatusCode::OK, "the router's first table").await;
    let (_, other) = admin.sign_up("bo@example.com").await;
    admin.account(&other, json!({"name": "bo-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&other, "bo-vod", "demo").await;
    wait_status(&http, &format!("{router}/bo-vod/demo/hls/master.m3u8"), StatusCode::OK, "the new account over Redis")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payg_to_sla_under_a_playing_client_moves_it_to_the_dedicated_pool_with_no_failed_request() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(Backend::Sqlite, &["--driver", "process"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let shared = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let before = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    // Without Redis: the router follows admin's routing stream.
    let (_router, router) = router_of(&admin, &[]).await;
    let http = reqwest::Client::new();
    let segment_url = format!("{router}/ana-vod/demo/hls/720p/seg_001.ts");
    wait_status(&http, &segment_url, StatusCode::OK, "the account through the router").await;
    let segment = std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap();

    // A player fetching the segment in a loop, noting which node served each.
    let stop = tokio_util::sync::CancellationToken::new();
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let player = tokio::spawn({
        let (stop, served, http) = (stop.clone(), served.clone(), http.clone());
        async move {
            let mut failed = Vec::new();
            while !stop.is_cancelled() {
                match http.get(&segment_url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let node = r.headers()["x-headwater-node"].to_str().unwrap().to_owned();
                        match r.bytes().await {
                            Ok(b) if b == segment => served.lock().unwrap().push(node),
                            Ok(b) => failed.push(format!("{} bytes from {node}", b.len())),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            failed
        }
    });
    let change = json!({"offer": {"kind": "sla", "mbps": 100}});
    let res = admin.call(Method::PATCH, "/v1/accounts/ana-vod", Some(&key), Some(change), StatusCode::ACCEPTED).await;
    let op = admin.wait_operation_for(res["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let now = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(now["pool"]["kind"], "dedicated");
    assert_eq!(now["locator"], before["locator"], "the locator never changes");
    assert_ne!(now["pool"]["id"], shared.as_str());
    let pool = now["pool"]["id"].as_str().unwrap().to_owned();
    let nodes = admin.call(Method::GET, "/v1/nodes?limit=500", Some(&admin.operator_token), None, StatusCode::OK).await;
    let dedicated: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == pool.as_str())
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    // The player moves to the dedicated pool's nodes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last: Vec<String> = served.lock().unwrap().iter().rev().take(5).cloned().collect();
        if last.len() == 5 && last.iter().all(|n| dedicated.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "the player still on {last:?}, not on {dedicated:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let failed = player.await.unwrap();
    let served = served.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} failed player requests: {failed:?}", failed.len());
    assert!(served.iter().any(|n| !dedicated.contains(n)), "the player started on the shared pool");
    eprintln!("player: {} segments, none failed", served.len());
}

/// A player's GET with a body (HTTP/1.1 and h2c) is refused by the router at
/// once and never forwarded half: no node waits for a body that never comes, and
/// no node is taken for failed (the probe saw 502 after 20 s and both nodes
/// skipped). Framing headers are the router's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_refused_and_no_node_is_ejected() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let router = value(&lines, "headwater router listening on ").to_owned();
    let path = "/demo-trial/demo/hls/master.m3u8";
    // HTTP/1.1: Content-Length 1 and one byte of body.
    let mut s = tokio::net::TcpStream::connect(router.trim_start_matches("http://")).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx").as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await.expect("answered at once").unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("application/problem+json") && head.contains("/problems/bad-request"), "{head}");
    // h2c: a GET with DATA.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), h2.get(format!("{router}{path}")).body("x").send())
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    support::expect_problem(res, StatusCode::BAD_REQUEST, "bad-request", None).await;
    // Both nodes of the pool still take players: none was ejected.
    let http = reqwest::Client::new();
    let mut nodes = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = http.get(format!("{router}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        nodes.insert(r.headers()["x-headwater-node"].to_str().unwrap().to_owned());
    }
    assert_eq!(nodes.len(), 2, "requests go to both nodes: {nodes:?}");
    // HTTP/2 control floods (the probe's 20,000 PINGs and SETTINGS were all
    // answered): the router and the nodes end such a connection early.
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    let op = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    let listed: serde_json::Value =
        http.get(format!("{admin}/v1/nodes")).bearer_auth(op.trim()).send().await.unwrap().json().await.unwrap();
    let node_addr = listed["items"][0]["address"].as_str().unwrap().to_owned();
    for (target, addr) in [("router", router.trim_start_matches("http://").to_owned()), ("node", node_addr)] {
        for settings in [false, true] {
            let (answered, closed) = support::h2_control_flood(&addr, 20_000, settings).await;
            assert!(
                closed && answered < 1_000,
                "{target}, settings {settings}: {answered} of 20000 answered, closed {closed}"
            );
        }
    }
    let token = std::fs::read_to_string(data.path().join("metrics-token")).unwrap();
    let res = http.get(format!("{router}/metrics")).send().await.unwrap();
    support::expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let metrics =
        http.get(format!("{router}/metrics")).bearer_auth(token.trim()).send().await.unwrap().text().await.unwrap();
    let errors =
        metrics.lines().find(|l| l.starts_with("headwater_router_upstream_errors_total{account=\"demo-trial\"}"));
    assert!(errors.is_none_or(|l| l.ends_with(" 0")), "{errors:?}");
}

/// Nodes believe `X-Forwarded-For` from the routers alone (admin's
/// `--trusted-proxy`, the router's `--source-ip`): a local client talking to a
/// node directly cannot claim an allowed address, while players through the router
/// are judged by their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_router_may_say_who_the_client_is() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::start(Backend::Sqlite, &["--driver", "process", "--trusted-proxy", "127.0.0.2/32"]).await;
    let (_, ana) = admin.sign_up("ana@example.com").await;
    let (_, bo) = admin.sign_up("bo@example.com").await;
    // Two trial accounts of the shared pool: one allows this host, one only 10.9.9.9.
    admin
        .account(
            &ana,
            json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "trial"}, "ip_allow": ["127.0.0.1/32"]}),
        )
        .await;
    admin
        .account(
            &bo,
            json!({"name": "bo-vod", "origin_type": "hls", "offer": {"kind": "trial"}, "ip_allow": ["10.9.9.9/32"]}),
        )
        .await;
    admin.upload_demo(&ana, "ana-vod", "demo").await;
    admin.upload_demo(&bo, "bo-vod", "demo").await;
    let (_router, router) = router_of(&admin, &["--source-ip", "127.0.0.2"]).await;
    let http = reqwest::Client::new();
    wait_status(&http, &format!("{router}/ana-vod/demo/hls/master.m3u8"), StatusCode::OK, "ana through the router")
        .await;
    let nodes = admin.call(Method::GET, "/v1/nodes", Some(&admin.operator_token), None, StatusCode::OK).await;
    let node = nodes["items"].as_array().unwrap().iter().find(|n| n["state"] == "ready").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |url: String, claim: Option<&'static str>| {
        let mut req = http.get(url);
        if let Some(ip) = claim {
            req = req.header("x-forwarded-for", ip);
        }
        req.send()
    };
    // Directly to the node, claiming the allowed address: refused (it was served before).
    let res = get(format!("http://{node}/bo-vod/demo/hls/master.m3u8"), Some("10.9.9.9")).await.unwrap();
    support::expect_problem(res, StatusCode::FORBIDDEN, "forbidden", None).await;
    // Through the router the claim is a hop, not the client.
    let res = get(format!("{router}/bo-vod/demo/hls/master.m3u8"), Some("10.9.9.9")).await.unwrap();
    support::expect_problem(res, StatusCode::FORBIDDEN, "forbidden", None).await;
    // A player this host may be: served through the router (the node believes
    // the router's word) and directly.
    for url in [format!("{router}/ana-vod/demo/hls/master.m3u8"), format!("http://{node}/ana-vod/demo/hls/master.m3u8")]
    {
        let res = get(url.clone(), None).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
    }
}
