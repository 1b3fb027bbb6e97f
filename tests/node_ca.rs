//! The node CA through the real binaries: admin serves HTTPS and launches
//! nodes with one-time join tokens; each node makes its key, joins with a CSR
//! and from then on talks to admin over mutual TLS only; nodes serve accounts'
//! content over mutual TLS to the router's certificate only; and a CA rotation
//! (stage, activation, retirement of the old CA) costs a looping player nothing.

mod support;

use std::time::{Duration, Instant};

use headwater_serve::tls::local_ca::LocalCa;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, NodeCleanup, Players};

/// The node CA as the operator sees it.
async fn cas(admin: &Admin) -> Value {
    admin.call(Method::GET, "/v1/node-ca", Some(&admin.operator_token), None, StatusCode::OK).await
}

fn ca_of<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["items"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("no CA {id}: {list}"))
}

/// Waits (deadline 60 s) until `check` holds of the CA list.
async fn wait_cas(admin: &Admin, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = cas(admin).await;
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (deadline 60 s) until `pool`'s live nodes are all ready with their
/// mutual-TLS address reported; returns them.
async fn ready_nodes(admin: &Admin, pool: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = admin.live_nodes(pool).await;
        if !nodes.is_empty() && nodes.iter().all(|n| n["state"] == "ready" && n["tls_address"].is_string()) {
            return nodes;
        }
        assert!(Instant::now() < deadline, "the pool's nodes never all ready: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_once_serve_routers_over_mutual_tls_and_a_ca_rotation_costs_a_player_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let local = LocalCa::new("test admin CA").unwrap();
    let (cert, key, ca_file) =
        (dir.path().join("admin.pem"), dir.path().join("admin-key.pem"), dir.path().join("ca.pem"));
    local.issue_files(&["localhost", "127.0.0.1"], 1, &cert, &key).unwrap();
    std::fs::write(&ca_file, &local.cert_pem).unwrap();
    let port = support::free_port();
    let https = format!("https://127.0.0.1:{port}");
    let path = |p: &std::path::Path| p.display().to_string();
    let admin = Admin::start(
        Backend::Sqlite,
        &[
            "--driver",
            "process",
            "--tls-listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--node-admin-url",
            &https,
            "--node-admin-ca",
            &path(&ca_file),
            "--node-tls",
            "routers-only",
            "--node-ca-stage-secs",
            "2",
        ],
    )
    .await;
    let _cleanup = NodeCleanup(admin.data_dir.path().to_path_buf());
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (_router, lines) = support::start(
        tokio::process::Command::new(support::BIN).args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--admin-url",
            &https,
            "--admin-ca",
            &path(&ca_file),
            "--router-token",
            &admin.operator_token,
            "--name",
            "router-a",
        ]),
        "headwater router listening on ",
    )
    .await;
    let router = support::value(&lines, "headwater router listening on ").to_owned();
    let http = reqwest::Client::new();
    let segment = "ana-vod/demo/hls/360p/seg_001.ts";
    support::wait_status(&http, &format!("{router}/{segment}"), StatusCode::OK, "the locator through the router").await;

    // Every node joined (its join token is used up) and holds a short-lived
    // certificate; it serves mutual TLS beside plain HTTP.
    let nodes = ready_nodes(&admin, &pool).await;
    let list = cas(&admin).await;
    let first = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(ca_of(&list, &first)["state"], "active", "{list}");
    for n in &nodes {
        let id = n["id"].as_str().unwrap();
        assert!(admin.has_event("node.joined", &format!("node:{id}")).await, "{n}");
        assert!(n["certificate_expires_at"].is_string() && n["tls_address"].is_string(), "{n}");
    }
    let id = nodes[0]["id"].as_str().unwrap().to_owned();
    let (plain, tls) = (nodes[0]["address"].as_str().unwrap(), nodes[0]["tls_address"].as_str().unwrap().to_owned());

    // Straight to the node: accounts' content only for the router's certificate.
    let direct = http.get(format!("http://{plain}/{segment}")).send().await.unwrap();
    let problem = support::expect_problem(direct, StatusCode::FORBIDDEN, "routers-only", None).await;
    assert!(problem["detail"].as_str().unwrap().contains("mutual TLS"), "{problem}");
    let probe = http.get(format!("http://{plain}/_probe/hls/360p/index.m3u8")).send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::OK, "the test content stays on plain HTTP");
    // Over TLS the node's certificate names the node (and no other), and a
    // client without a router certificate is refused the content still.
    let node_ca = reqwest::Certificate::from_pem(list["items"][0]["certificate"].as_str().unwrap().as_bytes()).unwrap();
    let name = format!("{}.node.headwater", uuid::Uuid::try_parse(&id).unwrap().simple());
    let addr: std::net::SocketAddr = tls.parse().unwrap();
    let as_node = reqwest::Client::builder().tls_certs_only([node_ca.clone()]).resolve(&name, addr).build().unwrap();
    let res = as_node.get(format!("https://{name}:{}/{segment}", addr.port())).send().await.unwrap();
    support::expect_problem(res, StatusCode::FORBIDDEN, "routers-only", None).await;
    let other = format!("{}.node.headwater", uuid::Uuid::now_v7().simple());
    let wrong = reqwest::Client::builder().tls_certs_only([node_ca]).resolve(&other, addr).build().unwrap();
    assert!(wrong.get(format!("https://{other}:{}/{segment}", addr.port())).send().await.is_err(), "another name");

    // A rotation under a looping player: staged, then signing, then the old
    // CA retired once nobody holds it. Not one request fails.
    let players = Players::start(&router, &["ana-vod"]);
    let rotated =
        admin.call(Method::POST, "/v1/node-ca/rotate", Some(&admin.operator_token), None, StatusCode::CREATED).await;
    let second = rotated["items"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(ca_of(&rotated, &second)["state"], "staged", "{rotated}");
    // Retiring the signing CA, or the one about to sign, is refused.
    for id in [&first, &second] {
        let res = admin.request(Method::DELETE, &format!("/v1/node-ca/{id}"), Some(&admin.operator_token), None).await;
        support::expect_problem(res, StatusCode::CONFLICT, "conflict", None).await;
    }
    let live = nodes.len() as i64;
    let moved = wait_cas(&admin, "every node and the router renew onto the new CA", |l| {
        let (old, new) = (ca_of(l, &first), ca_of(l, &second));
        new["state"] == "active" && old["holders"] == 0 && old["routers"] == 0 && new["holders"].as_i64() >= Some(live)
    })
    .await;
    assert_eq!(ca_of(&moved, &first)["state"], "trusted", "{moved}");
    let retired = admin
        .call(Method::DELETE, &format!("/v1/node-ca/{first}"), Some(&admin.operator_token), None, StatusCode::OK)
        .await;
    assert_eq!(ca_of(&retired, &first)["state"], "retired", "{retired}");
    assert!(admin.has_event("node_ca.retired", &format!("node_ca:{first}")).await);
    // Everyone renews once more (the trusted set shrank); playing goes on.
    wait_cas(&admin, "renewed after the retirement", |l| {
        l["generation"] != moved["generation"] && ca_of(l, &second)["routers"] == 1
    })
    .await;
    let nodes_after = ready_nodes(&admin, &pool).await;
    assert!(
        nodes_after.iter().all(|n| nodes.iter().any(|m| m["id"] == n["id"])),
        "no node was replaced by the rotation"
    );
    // The player keeps going on the new CA alone.
    let before = players.played();
    let deadline = Instant::now() + Duration::from_secs(60);
    while players.played() < before + 30 {
        assert!(Instant::now() < deadline, "the player stalled after the retirement");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    players.finish().await;

    // A router's certificate reads the routing table, but never renews itself:
    // that takes the router token (rotating it cuts a stolen key off).
    let creds = headwater_serve::mtls::Credentials::new().unwrap();
    let csr = creds.csr(headwater_serve::mtls::Peer::Router).unwrap();
    let issued = admin
        .call(
            Method::POST,
            "/v1/routing/certificate",
            Some(&admin.operator_token),
            Some(json!({"csr": csr, "name": "test-router"})),
            StatusCode::OK,
        )
        .await;
    let text = |k: &str| issued[k].as_str().unwrap().to_owned();
    creds
        .install(&headwater_serve::mtls::Issued {
            certificate: text("certificate"),
            ca: text("ca"),
            generation: text("generation"),
            not_after_ms: issued["not_after_ms"].as_i64().unwrap(),
        })
        .unwrap();
    let roots = headwater_serve::mtls::roots(Some(&path(&ca_file))).unwrap();
    let as_router = reqwest::Client::builder().tls_backend_preconfigured(creds.client_config(roots)).build().unwrap();
    let table = as_router.get(format!("{https}/v1/routing")).send().await.unwrap();
    assert_eq!(table.status(), StatusCode::OK, "the certificate authenticates a router");
    let body = json!({"csr": creds.csr(headwater_serve::mtls::Peer::Router).unwrap()});
    let renew = as_router.post(format!("{https}/v1/routing/certificate")).json(&body).send().await.unwrap();
    support::expect_problem(renew, StatusCode::FORBIDDEN, "forbidden", None).await;
    // Nor does it pass for a node's or the operator's routes.
    let nodes = as_router.get(format!("{https}/v1/nodes")).send().await.unwrap();
    support::expect_problem(nodes, StatusCode::FORBIDDEN, "forbidden", None).await;
}
