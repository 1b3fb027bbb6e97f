//! Access logs: the router writes a record per player request it answered, to
//! its hourly file and in batches to admin, where the account's owner (and no
//! one else) reads them, pages them and follows them from the CLI; in redirect
//! mode the node the player is sent to writes them, and no request is logged
//! twice; a batch sent twice is kept once, and records go when their retention
//! is over.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, NodeCleanup, expect_problem, value};
use tokio::io::AsyncBufReadExt;

const UA: &str = "headwater-access-log-test/1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_logs_each_request_for_the_accounts_owner() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = NodeCleanup(data.path().to_path_buf());
    let (_up, lines) = support::up_demo(data.path()).await;
    let admin = value(&lines, "headwater admin listening on ").to_owned();
    let router = value(&lines, "headwater router listening on ").to_owned();
    let key = std::fs::read_to_string(data.path().join("demo-api-key")).unwrap().trim().to_owned();
    let operator = std::fs::read_to_string(data.path().join("operator-token")).unwrap().trim().to_owned();
    let http = reqwest::Client::builder().user_agent(UA).build().unwrap();
    let started = time::OffsetDateTime::now_utc();

    // Four requests of a player: a playlist, a range of a segment, a HEAD and a
    // file that is not there; and one for an account that does not exist.
    let mut sent = Vec::new();
    for (method, path, range) in [
        (Method::GET, "demo/hls/master.m3u8", None),
        (Method::GET, "demo/hls/360p/seg_001.ts", Some("bytes=100-1099")),
        (Method::HEAD, "demo/hls/360p/index.m3u8", None),
        (Method::GET, "demo/hls/nothing.ts", None),
    ] {
        let mut req = http.request(method.clone(), format!("{router}/demo-trial/{path}?session=abc"));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap().len() as u64;
        sent.push((method.as_str().to_owned(), path.to_owned(), status, bytes));
    }
    assert_eq!(sent.iter().map(|s| s.2).collect::<Vec<_>>(), [200, 206, 200, 404]);
    http.get(format!("{router}/no-such-account/demo/hls/master.m3u8")).send().await.unwrap();

    // Admin has them within a few seconds of the router's batches.
    let api = reqwest::Client::new();
    let logs = |token: String, query: &'static str| {
        let req = api.get(format!("{admin}/v1/accounts/demo-trial/logs{query}")).bearer_auth(token).send();
        async move { req.await.unwrap() }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ours = loop {
        let page: Value = logs(key.clone(), "?limit=500").await.json().await.unwrap();
        let ours: Vec<Value> =
            page["items"].as_array().unwrap().iter().filter(|r| r["user_agent"] == UA).cloned().collect();
        if ours.len() >= sent.len() {
            break ours;
        }
        assert!(tokio::time::Instant::now() < deadline, "the router's records never reached admin: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: Vec<(String, String, u16, u64)> = ours
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap() as u16,
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, sent, "one record per request, in order, with the bytes the player got: {ours:#?}");
    let account: Value = api
        .get(format!("{admin}/v1/accounts/demo-trial"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes: Value =
        api.get(format!("{admin}/v1/nodes")).bearer_auth(&operator).send().await.unwrap().json().await.unwrap();
    let pool_nodes: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == account["pool"]["id"])
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for r in &ours {
        assert_eq!(r["client"], "127.0.0.1", "{r}");
        assert!(r["source"].as_str().unwrap().starts_with("router:"), "{r}");
        assert!(pool_nodes.contains(&r["node"].as_str().unwrap()), "a node of the account's pool answered: {r}");
        let at = time::OffsetDateTime::parse(r["at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
        assert!(at >= started - time::Duration::seconds(1), "{r}");
        assert!(!r.to_string().contains("session=abc"), "no query: {r}");
        // A file served says whether the node's cache had it; a 404 has no file.
        assert_eq!(r["cache_hit"].is_boolean(), r["status"] != 404, "{r}");
    }
    let ids: Vec<i64> = ours.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // The router's own file holds the same records.
    let dir = data.path().join("access-logs");
    let mut in_file = Vec::new();
    support::eventually(Duration::from_secs(10), "the records in the router's file", || {
        in_file = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| {
                std::fs::read_to_string(e.path()).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|r| r["user_agent"] == UA)
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_owned(),
                    r["path"].as_str().unwrap().to_owned(),
                    r["status"].as_u64().unwrap() as u16,
                    r["bytes"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>();
        let done = in_file.len() >= sent.len();
        async move { done }
    })
    .await;
    assert_eq!(in_file, sent);

    // Pages follow the ids; another customer sees none; bad input is a problem.
    let first: Value = logs(key.clone(), "?limit=2").await.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().expect("a full page has a next cursor").to_owned();
    let next: Value = api
        .get(format!("{admin}/v1/accounts/demo-trial/logs?limit=2&cursor={cursor}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(next["items"][0]["id"].as_i64().unwrap() > cursor.parse::<i64>().unwrap());
    let other: Value = api
        .post(format!("{admin}/v1/customers"))
        .json(&json!({"name": "Bo", "email": "bo@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = logs(other["api_key"].as_str().unwrap().to_owned(), "").await;
    expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    let res = logs(key.clone(), "?since=yesterday").await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("since")).await;
    let res = logs(key.clone(), "?limit=0").await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("limit")).await;
    let res = logs(operator.clone(), "?limit=1").await;
    assert_eq!(res.status(), StatusCode::OK, "the operator reads any account's");
    let by_operator: Value = res.json().await.unwrap();
    assert_eq!(by_operator["items"][0], first["items"][0], "the same records as the owner's");

    // `headwater logs --follow` prints what is kept, then each new request.
    let mut follow = tokio::process::Command::new(support::BIN)
        .args(["logs", "demo-trial", "--follow", "--json"])
        .env("HEADWATER_ADMIN_URL", &admin)
        .env("HEADWATER_API_KEY", &key)
        .env_remove("HEADWATER_OPERATOR_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let later = "demo/hls/720p/index.m3u8";
    let res = http.get(format!("{router}/demo-trial/{later}")).send().await.unwrap();
    let length = res.bytes().await.unwrap().len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline, out.next_line()).await.expect("the new record").unwrap().unwrap();
        let r: Value = serde_json::from_str(&line).unwrap();
        if r["path"] == later && r["user_agent"] == UA {
            assert_eq!(r["bytes"].as_u64(), Some(length), "{r}");
            break;
        }
    }
    follow.kill().await.unwrap();

    // Redirect mode: a second router sends players to a node, which logs what
    // it serves. The router logs none of its redirects.
    const REDIRECTED: &str = "headwater-access-log-test/redirected";
    let router_token = std::fs::read_to_string(data.path().join("router-token")).unwrap().trim().to_owned();
    let (_redirect_router, lines) = support::start(
        tokio::process::Command::new(support::BIN).args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--admin-url",
            &admin,
            "--router-token",
            &router_token,
            "--mode",
            "redirect",
            "--name",
            "redirect",
        ]),
        "headwater router listening on ",
    )
    .await;
    let redirecting = value(&lines, "headwater router listening on ").to_owned();
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    support::wait_status(
        &no_follow,
        &format!("{redirecting}/demo-trial/demo/hls/master.m3u8"),
        StatusCode::FOUND,
        "the redirecting router's table",
    )
    .await;
    let player = reqwest::Client::builder().user_agent(REDIRECTED).build().unwrap();
    let mut redirected = Vec::new();
    for (path, range) in [
        ("demo/hls/master.m3u8", None),
        ("demo/hls/360p/seg_002.ts", Some("bytes=0-499")),
        ("demo/hls/missing.ts", None),
    ] {
        let mut req = player.get(format!("{redirecting}/demo-trial/{path}?session=def"));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let res = req.send().await.unwrap();
        assert_ne!(res.url().as_str(), format!("{redirecting}/demo-trial/{path}?session=def"), "redirected");
        let status = res.status().as_u16();
        redirected.push(("GET".to_owned(), path.to_owned(), status, res.bytes().await.unwrap().len() as u64));
    }
    assert_eq!(redirected.iter().map(|r| r.2).collect::<Vec<_>>(), [200, 206, 404]);
    // One the router answers itself (a forged playback token): its record, the
    // router's last, says any it made of the redirects before would be in too.
    let refused =
        player.get(format!("{redirecting}/demo-trial/~hw1.k.1.p.i.forged/demo/hls/master.m3u8")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // And once straight to every node of the pool, as a redirected player
    // would: each node's writer sends its records in order, so once these are
    // in, any record a node made of the proxied requests above would be too.
    const DIRECT: &str = "headwater-access-log-test/direct";
    let direct = reqwest::Client::builder().user_agent(DIRECT).build().unwrap();
    let addresses: Vec<(String, String)> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["pool_id"] == account["pool"]["id"])
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["address"].as_str().unwrap().to_owned()))
        .collect();
    for (_, address) in &addresses {
        // The account's name percent-encoded: served as the account, logged as it.
        let res = direct.get(format!("http://{address}/%64emo-trial/demo/hls/master.m3u8")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let page: Value = logs(key.clone(), "?limit=500").await.json().await.unwrap();
        let all = page["items"].as_array().unwrap().clone();
        let by = |ua: &str| all.iter().filter(|r| r["user_agent"] == ua).count();
        let router_done = all.iter().any(|r| r["source"] == "router:redirect" && r["status"] == 403);
        // The nodes' records and the router's refusal.
        if by(REDIRECTED) > redirected.len() && by(DIRECT) >= addresses.len() && router_done {
            break all;
        }
        assert!(tokio::time::Instant::now() < deadline, "the nodes' records never reached admin: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let of = |ua: &str| all.iter().filter(|r| r["user_agent"] == ua).cloned().collect::<Vec<Value>>();
    let fields = |r: &Value| {
        (
            r["method"].as_str().unwrap().to_owned(),
            r["path"].as_str().unwrap().to_owned(),
            r["status"].as_u64().unwrap() as u16,
            r["bytes"].as_u64().unwrap(),
        )
    };
    let from_nodes: Vec<Value> = of(REDIRECTED).into_iter().filter(|r| r["source"] != "router:redirect").collect();
    // In the order they finished: a body's record is made when it is sent.
    let mut got: Vec<_> = from_nodes.iter().map(fields).collect();
    got.sort();
    redirected.sort();
    assert_eq!(got, redirected, "one record per request, with the bytes the player got: {from_nodes:#?}");
    for r in &from_nodes {
        let node = r["node"].as_str().unwrap();
        assert!(pool_nodes.contains(&node), "{r}");
        assert_eq!(r["source"], format!("node:{node}"), "the node that served it wrote it: {r}");
        assert_eq!(r["client"], "127.0.0.1", "{r}");
        assert!(!r.to_string().contains("session=def"), "no query: {r}");
        assert_eq!(r["cache_hit"].is_boolean(), r["status"] != 404, "{r}");
    }
    assert!(of(DIRECT).iter().all(|r| r["path"] == "demo/hls/master.m3u8"), "{:#?}", of(DIRECT));
    let mut direct_nodes: Vec<String> = of(DIRECT).iter().map(|r| r["node"].as_str().unwrap().to_owned()).collect();
    direct_nodes.sort();
    let mut pool_ids: Vec<String> = addresses.iter().map(|(id, _)| id.clone()).collect();
    pool_ids.sort();
    assert_eq!(direct_nodes, pool_ids, "one record per node for the direct requests");
    let by_router: Vec<&Value> = all.iter().filter(|r| r["source"] == "router:redirect").collect();
    assert_eq!(by_router.len(), 1, "the router logged its refusal and none of its redirects: {by_router:#?}");
    assert_eq!(
        (by_router[0]["status"].as_u64(), by_router[0]["path"].as_str()),
        (Some(403), Some("demo/hls/master.m3u8"))
    );
    assert!(!by_router[0].to_string().contains("forged"), "no token in the record: {}", by_router[0]);
    // Never twice: the proxied requests are the router's records alone.
    let proxied = of(UA);
    assert!(proxied.iter().all(|r| r["source"].as_str().unwrap().starts_with("router:")), "{proxied:#?}");
    assert_eq!(proxied.len(), sent.len() + 1, "the four requests and the followed one: {proxied:#?}");
}

/// A batch sent again (its answer lost) is kept once, a record of an account
/// admin does not have is refused, and records go when their retention is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_batches_are_kept_once_and_for_their_retention() {
    const ROUTER: &str = "hw-test-router-token";
    let admin =
        Admin::start(Backend::Sqlite, &["--test-clock", "--router-token", ROUTER, "--access-log-retention-hours", "1"])
            .await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let ana_pool =
        admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let record = |account: &str| {
        json!({"at_ms": now, "account": account, "path": "demo/a.ts", "method": "GET", "status": 200, "bytes": 10,
               "duration_ms": 3, "client": "192.0.2.0", "user_agent": null, "node": null, "cache_hit": null,
               "source": "router:test"})
    };
    let batch = json!({"id": uuid::Uuid::now_v7(), "records": [record("ana-vod"), record("nobody")]});
    let first =
        admin.call(Method::POST, "/v1/routing/access-logs", Some(ROUTER), Some(batch.clone()), StatusCode::OK).await;
    assert_eq!(first, json!({"kept": 1, "refused": 1, "duplicate": false}));
    let again = admin.call(Method::POST, "/v1/routing/access-logs", Some(ROUTER), Some(batch), StatusCode::OK).await;
    assert_eq!(again, json!({"kept": 0, "refused": 0, "duplicate": true}));
    let page = admin.call(Method::GET, "/v1/accounts/ana-vod/logs", Some(&key), None, StatusCode::OK).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(
        (items[0]["path"].as_str(), items[0]["bytes"].as_u64(), items[0]["client"].as_str()),
        (Some("demo/a.ts"), Some(10), Some("192.0.2.0"))
    );

    // A customer's key cannot send records; a bad one is refused whole.
    let res = admin
        .request(
            Method::POST,
            "/v1/routing/access-logs",
            Some(&key),
            Some(json!({"id": uuid::Uuid::now_v7(), "records": []})),
        )
        .await;
    expect_problem(res, StatusCode::FORBIDDEN, "forbidden", None).await;
    let mut bad = record("ana-vod");
    bad["status"] = json!(42);
    let res = admin
        .request(
            Method::POST,
            "/v1/routing/access-logs",
            Some(ROUTER),
            Some(json!({"id": uuid::Uuid::now_v7(), "records": [record("ana-vod"), bad]})),
        )
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("records[1].status")).await;
    let page = admin.call(Method::GET, "/v1/accounts/ana-vod/logs", Some(&key), None, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "nothing of the refused batch was kept: {page}");

    // A node's batch: kept for accounts of its pool only, named as the node's
    // whatever it says; another node's route is not its to call.
    let (_, bo_key) = admin.sign_up("bo@example.com").await;
    let bo_pool =
        admin.account(&bo_key, json!({"name": "bo-vod", "origin_type": "dash", "offer": {"kind": "payg"}})).await;
    assert_ne!(ana_pool, bo_pool, "the test needs two pools");
    let (node, node_token) = admin.register_node(&ana_pool).await;
    let (other_node, _) = admin.register_node(&bo_pool).await;
    let mut claimed = record("ana-vod");
    claimed["path"] = json!("demo/from-node.ts");
    // A day ahead of admin's clock: retention would never delete it.
    let mut future = record("ana-vod");
    future["at_ms"] = json!(now + 86_400_000);
    let batch = json!({"id": uuid::Uuid::now_v7(), "records": [claimed, record("bo-vod"), future]});
    let from_node = admin
        .call(Method::POST, &format!("/v1/nodes/{node}/access-logs"), Some(&node_token), Some(batch), StatusCode::OK)
        .await;
    assert_eq!(from_node, json!({"kept": 1, "refused": 2, "duplicate": false}), "another pool's, and the future");
    let page = admin.call(Method::GET, "/v1/accounts/ana-vod/logs", Some(&key), None, StatusCode::OK).await;
    let kept = page["items"].as_array().unwrap().iter().find(|r| r["path"] == "demo/from-node.ts").unwrap().clone();
    assert_eq!((kept["node"].as_str(), kept["source"].clone()), (Some(node.as_str()), json!(format!("node:{node}"))));
    let bo_page = admin.call(Method::GET, "/v1/accounts/bo-vod/logs", Some(&bo_key), None, StatusCode::OK).await;
    assert_eq!(bo_page["items"], json!([]), "{bo_page}");
    let res = admin
        .request(
            Method::POST,
            &format!("/v1/nodes/{other_node}/access-logs"),
            Some(&node_token),
            Some(json!({"id": uuid::Uuid::now_v7(), "records": []})),
        )
        .await;
    expect_problem(res, StatusCode::FORBIDDEN, "forbidden", None).await;

    // Two hours on, past the retention of one: gone.
    admin
        .call(
            Method::POST,
            "/v1/test/clock",
            Some(&admin.operator_token),
            Some(json!({"advance_ms": 2 * 3_600_000})),
            StatusCode::OK,
        )
        .await;
    support::eventually(Duration::from_secs(30), "the old records deleted", || {
        let req = admin.request(Method::GET, "/v1/accounts/ana-vod/logs", Some(&key), None);
        async move {
            let page: Value = req.await.json().await.unwrap();
            page["items"].as_array().unwrap().is_empty()
        }
    })
    .await;
}
