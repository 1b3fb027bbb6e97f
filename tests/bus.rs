//! Admin replicas over Redis: an operation accepted by one replica is carried out
//! by a worker on another, woken through the bus rather than by its poll.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Admin, Backend, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_another_replica_is_woken_through_redis() {
    let redis = redis_url();
    let prefix = format!("hwtest-{}", uuid::Uuid::new_v4().simple());
    // The API replica runs no worker; the worker replica would poll only every 10 minutes.
    let api =
        Admin::start(Backend::Postgres, &["--redis-url", &redis, "--redis-prefix", &prefix, "--workers", "0"]).await;
    let worker = api.replica(&["--redis-url", &redis, "--redis-prefix", &prefix, "--worker-poll-ms", "600000"]).await;
    // Both are ready only with Redis answering.
    for a in [&api, &worker] {
        let r = a.request(Method::GET, "/readyz", None, None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (_, key) = api.sign_up("ana@example.com").await;
    let created = api
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})),
            StatusCode::ACCEPTED,
        )
        .await;
    // Deadline 30 s, far below the 600 s poll: only the bus can have woken it.
    let op = api.wait_operation(created["operation"]["id"].as_str().unwrap(), &key).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let account = worker.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(account["state"], "active");
}

/// The node processes a replica's process driver runs, by the `pid` file each
/// node's state file holds.
fn running_nodes(admins: &[&Admin]) -> usize {
    admins.iter().map(|a| a.node_processes().len()).sum()
}

/// Two replicas with the process driver on one PostgreSQL: only the one holding
/// the control lease launches nodes, so none is launched twice; killing it hands
/// the lease to the other, whose reconciler then replaces a node that dies, and
/// the nodes report to it (they know both admins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reconciles_and_a_killed_leader_hands_over() {
    let (port_a, port_b) = (support::free_port(), support::free_port());
    let urls = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    let flags = ["--driver", "process", "--node-admin-url", &urls];
    let mut a = Admin::start_at(Backend::Postgres, &flags, None, vec![], &format!("127.0.0.1:{port_a}")).await;
    let mut b = a.replica_at(&flags, &format!("127.0.0.1:{port_b}")).await;
    let (_, key) = a.sign_up("ana@example.com").await;
    // An SLA of 100 Mbit/s: a dedicated pool of 2 nodes; payg: the shared pool of 2.
    a.account(&key, json!({"name": "ana-sla", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}})).await;
    let (_, key2) = a.sign_up("bo@example.com").await;
    b.account(&key2, json!({"name": "bo-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let ready = |admin: &Admin| {
        let (url, token) = (admin.url.clone(), admin.operator_token.clone());
        async move {
            let nodes: serde_json::Value = reqwest::Client::new()
                .get(format!("{url}/v1/nodes?limit=500"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            nodes["items"].as_array().unwrap().iter().filter(|n| n["state"] == "ready").count()
        }
    };
    support::eventually(Duration::from_secs(60), "4 ready nodes", || async { ready(&a).await == 4 }).await;
    // Both replicas reconcile every 250 ms; over a few seconds neither launches
    // a node the other did.
    let registered = "SELECT COUNT(*) FROM events WHERE action = 'node.registered'";
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < settle {
        assert_eq!(a.count("SELECT COUNT(*) FROM nodes").await, 4, "a node launched twice");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.count(registered).await, 4);
    let (leader, other) = if a.node_processes().len() == 4 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!((leader.node_processes().len(), other.node_processes().len()), (4, 0), "one replica launched them all");
    let holder = "SELECT COUNT(DISTINCT holder) FROM leases WHERE name = 'control'";
    assert_eq!(leader.count(holder).await, 1);

    // The leader dies: its nodes keep running and move their reports to the other
    // replica, which takes the lease once the dead one's expires (5 s).
    let before: Vec<u32> = leader.node_processes().iter().map(|(_, pid)| *pid).collect();
    let lease = "SELECT holder FROM leases WHERE name = 'control'";
    let old = leader.text(lease).await;
    leader.kill().await;
    let killed = tokio::time::Instant::now();
    support::eventually(Duration::from_secs(15), "the lease to pass to the other replica", || async {
        other.text(lease).await != old
    })
    .await;
    eprintln!("control lease handed over {:?} after the leader was killed", killed.elapsed());
    assert_eq!(other.count("SELECT COUNT(*) FROM events WHERE action = 'node.failed'").await, 0);
    assert_eq!(ready(other).await, 4, "the nodes report to the other replica and stay ready");
    // The new leader replaces a node that dies.
    nix_kill(before[0]);
    support::eventually(Duration::from_secs(30), "the killed node to be replaced", || async {
        other.count(registered).await == 5 && ready(other).await == 4
    })
    .await;
    assert_eq!(running_nodes(&[other]), 1, "the replacement runs under the new leader");
}

fn nix_kill(pid: u32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
