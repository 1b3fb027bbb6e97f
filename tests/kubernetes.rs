//! Origin nodes on Kubernetes through the real binary: admin with a `kubernetes`
//! target (a namespace of a real kube-apiserver, reached with a ServiceAccount
//! token bound to the driver's Role) places an SLA account's nodes as pods; the
//! real scheduler spreads them over two zones; the test kubelet runs each in a
//! network namespace of its own (see `provisioner/tests/cluster`). A player
//! through the router plays while a pod is deleted and replaced; a restarted
//! admin adopts the pods and launches none.

#[path = "../provisioner/tests/cluster/mod.rs"]
mod cluster;
mod support;

use std::time::Duration;

use cluster::{Cluster, Kubelet, Network};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, Players, router_of, wait_status};

const NS: &str = "origins";

fn driver_role() -> Value {
    json!({
        "metadata": {"name": "headwater-driver"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]}],
    })
}

async fn running_pods(pods: &Api<Pod>) -> Vec<Pod> {
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=headwater-origin")).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sla_account_runs_as_pods_spread_over_zones_replaced_and_adopted() {
    let cluster = Cluster::start().await;
    cluster.namespace(NS).await;
    let kubeconfig = cluster.service_account(NS, "headwater-admin", driver_role()).await;
    let network = Network::new();
    let _kubelet =
        Kubelet::start_on(&cluster, &[("node-a", "zone-a"), ("node-b", "zone-b")], Some(network.clone())).await;
    // Admin listens on the bridge, where the pods reach it.
    let listen = format!("{}:{}", network.host_ip, support::free_port());
    let mut admin = Admin::start_at(Backend::Sqlite, &["--driver", "process"], None, vec![], &listen).await;
    let op = admin.operator_token.clone();
    admin.call(Method::PATCH, "/v1/targets/local", Some(&op), Some(json!({"state": "draining"})), StatusCode::OK).await;
    let target = json!({"kind": "kubernetes", "name": "cluster", "zone": "cluster",
        "kubernetes": {"namespace": NS, "image": "headwater:test", "kubeconfig": kubeconfig}});
    let t = admin.call(Method::POST, "/v1/targets", Some(&op), Some(target), StatusCode::CREATED).await;
    assert_eq!((&t["kind"], &t["kubernetes"]["namespace"]), (&json!("kubernetes"), &json!(NS)));

    let (_, key) = admin.sign_up("ana@example.com").await;
    let signed_up = std::time::Instant::now();
    let body = json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}});
    let a = admin.call(Method::POST, "/v1/accounts", Some(&key), Some(body), StatusCode::ACCEPTED).await;
    let done = admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    eprintln!("sign-up -> operation done (pods ready): {:?}", signed_up.elapsed());
    let account = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    let pool = account["pool"]["id"].as_str().unwrap().to_owned();
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await, NS);
    support::eventually(Duration::from_secs(60), "four running pods", || async {
        running_pods(&pods).await.len() == 4
    })
    .await;
    let placed = running_pods(&pods).await;
    let on = |node: &str| placed.iter().filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node)).count();
    assert_eq!((on("node-a"), on("node-b")), (2, 2), "spread over the zones");
    for p in &placed {
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["headwater.io/pool"], pool);
        assert!(labels.contains_key("headwater.io/upgrade-domain"));
    }
    // The nodes advertise their pod addresses, on the bridge.
    let nodes = admin.live_nodes(&pool).await;
    assert_eq!(nodes.len(), 4);
    let prefix = network.host_ip.rsplitn(3, '.').last().unwrap().to_owned();
    for n in &nodes {
        assert_eq!(n["target"], "cluster");
        let address = n["address"].as_str().unwrap_or_default();
        assert!(address.starts_with(&prefix) && address.ends_with(":8080"), "{n}");
    }

    admin.upload_demo(&key, "ana-vod", "demo").await;
    let (_router, router) = router_of(&admin, &[]).await;
    wait_status(&reqwest::Client::new(), &format!("{router}/ana-vod/demo/hls/master.m3u8"), StatusCode::OK, "ana-vod")
        .await;
    eprintln!(
        "sign-up -> master playlist through the router (demo upload, router start included): {:?}",
        signed_up.elapsed()
    );
    let players = Players::start(&router, &["ana-vod"]);
    // A pod deleted (a cluster node drained, an operator's kubectl delete): the
    // node drains, is replaced by a new pod, and no player request fails.
    let victim = placed[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default()).await.unwrap();
    let deleted = std::time::Instant::now();
    support::eventually(Duration::from_secs(60), "a replacement pod", || async {
        let now = running_pods(&pods).await;
        now.len() == 4 && !now.iter().any(|p| p.metadata.name.as_deref() == Some(victim.as_str()))
    })
    .await;
    support::eventually(Duration::from_secs(60), "four ready nodes again", || async {
        admin.live_nodes(&pool).await.iter().filter(|n| n["state"] == "ready").count() == 4
    })
    .await;
    eprintln!("pod deleted -> replacement node ready: {:?}", deleted.elapsed());
    players.finish().await;

    // Restarted, admin adopts the pods by label and launches none.
    let registered = admin.count("SELECT COUNT(*) FROM events WHERE action = 'node.registered'").await;
    let before: Vec<String> = running_pods(&pods).await.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    admin.restart().await;
    support::eventually(Duration::from_secs(30), "admin ready again", || async {
        admin.request(Method::GET, "/readyz", None, None).await.status() == StatusCode::OK
    })
    .await;
    // Two heartbeat timeouts after the restart, still the same pods and nodes.
    let settle = std::time::Instant::now();
    while settle.elapsed() < Duration::from_secs(7) {
        let mut now: Vec<String> = running_pods(&pods).await.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        now.sort();
        let mut want = before.clone();
        want.sort();
        assert_eq!(now, want, "no pod launched or removed after the restart");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(admin.count("SELECT COUNT(*) FROM events WHERE action = 'node.registered'").await, registered);
    assert_eq!(admin.live_nodes(&pool).await.iter().filter(|n| n["state"] == "ready").count(), 4);
}
