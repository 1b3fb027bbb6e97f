//! Origin nodes on Kubernetes through the real binary, deployed as `deploy/`
//! says: the production overlay is rendered with `kubectl kustomize` and applied
//! server-side to a real kube-apiserver; admin runs with the environment of the
//! overlay's admin Deployment (`headwater admin`, `--driver kubernetes`, its
//! targets.json) and the token of the ServiceAccount its RoleBinding binds to
//! deploy's Role. It places an SLA account's nodes as pods; the real scheduler
//! spreads them over two zones; the test kubelet runs each in a network
//! namespace of its own (see `provisioner/tests/cluster`). A player through the
//! router plays while a pod is deleted and replaced; a restarted admin adopts
//! the pods and launches none.

#[path = "../provisioner/tests/cluster/mod.rs"]
mod cluster;
mod support;

use std::time::Duration;

use cluster::{Cluster, Kubelet, Network};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, Players, wait_status};

/// The namespace deploy/ puts everything in.
const NS: &str = "headwater";

/// The environment deploy/'s admin Deployment gives its container, its Secrets
/// resolved, with what differs on a test host: the admin URL nodes reach
/// (`listen`, on the bridge), the targets file (the rendered ConfigMap's, with
/// the ServiceAccount's kubeconfig where a pod would use its mounted token), and
/// no Redis (the overlay's URL names a host that does not exist here). The
/// listen address, store, data directory and tokens are the test's own flags.
async fn deployed_admin_env(
    cluster: &Cluster,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    listen: &str,
) -> Vec<(String, String)> {
    let c = cluster.admin().await;
    let deployment = Api::<Deployment>::namespaced(c.clone(), NS).get("headwater-admin").await.unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "two admin replicas");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("headwater-admin"));
    let container = &pod.containers[0];
    assert_eq!(
        container.args.as_deref(),
        Some(&["admin".to_owned()][..]),
        "the Containerfile's entrypoint runs `headwater admin`"
    );
    let secrets: Api<Secret> = Api::namespaced(c.clone(), NS);
    let secret = |name: String, key: String| {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get(&name).await.unwrap();
            String::from_utf8(s.data.unwrap()[&key].0.clone()).unwrap()
        }
    };
    let mut env = Vec::new();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => secret(r.name.clone(), r.key.clone()).await,
            (None, None) => panic!("{}: neither a value nor a Secret", e.name),
        };
        env.push((e.name.clone(), value));
    }
    for from in container.env_from.iter().flatten() {
        let name = from.secret_ref.as_ref().unwrap().name.clone();
        for (k, v) in secrets.get(&name).await.unwrap().data.unwrap() {
            env.push((k, String::from_utf8(v.0).unwrap()));
        }
    }
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("HEADWATER_DRIVER").as_deref(), Some("kubernetes"), "admin runs no processes in a cluster");
    // The targets file: the ConfigMap mounted where HEADWATER_TARGETS_FILE says.
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "targets").unwrap();
    let map = volume.config_map.as_ref().unwrap().name.clone();
    let data = Api::<ConfigMap>::namespaced(c, NS).get(&map).await.unwrap().data.unwrap();
    assert!(get("HEADWATER_TARGETS_FILE").unwrap().ends_with("/targets.json"));
    let mut targets: Value = serde_json::from_str(&data["targets.json"]).unwrap();
    for t in targets.as_array_mut().unwrap() {
        assert_eq!(t["kubernetes"]["namespace"], NS, "pods go where the Role allows");
        t["kubernetes"]["kubeconfig"] = json!(kubeconfig);
    }
    let file = dir.join("targets.json");
    std::fs::write(&file, targets.to_string()).unwrap();
    env.retain(|(k, _)| {
        !matches!(k.as_str(), "HEADWATER_REDIS_URL" | "HEADWATER_NODE_ADMIN_URL" | "HEADWATER_TARGETS_FILE")
    });
    env.push(("HEADWATER_TARGETS_FILE".into(), file.display().to_string()));
    env.push(("HEADWATER_NODE_ADMIN_URL".into(), format!("http://{listen}")));
    env
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
    let work = tempfile::tempdir().unwrap();
    let rendered = cluster::render("production", work.path());
    cluster.apply(&rendered, None);
    // What a controller-manager would do: the namespace's default ServiceAccount.
    cluster.kubectl(&["create", "serviceaccount", "default", "-n", NS]);
    let kubeconfig = cluster.token_kubeconfig(NS, "headwater-admin").await;
    let network = Network::new();
    let kubelet =
        Kubelet::start_on(&cluster, &[("node-a", "zone-a"), ("node-b", "zone-b")], Some(network.clone())).await;
    // Admin listens on the bridge, where the pods reach it.
    let listen = format!("{}:{}", network.host_ip, support::free_port());
    let env = deployed_admin_env(&cluster, work.path(), &kubeconfig, &listen).await;
    // The router's credential from the overlay's Secret: the routing table only.
    let router_token = env.iter().find(|(k, _)| k == "HEADWATER_ROUTER_TOKEN").unwrap().1.clone();
    let mut admin = Admin::start_at(Backend::Sqlite, &[], None, env, &listen).await;
    let op = admin.operator_token.clone();
    // The declared target exists; `local` runs nothing here.
    let t = admin.call(Method::GET, "/v1/targets/cluster", Some(&op), None, StatusCode::OK).await;
    assert_eq!((&t["kind"], &t["kubernetes"]["namespace"]), (&json!("kubernetes"), &json!(NS)));
    assert_eq!(t["kubernetes"]["env_from_secret"], "headwater-content");

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
    // The pool's disruption budget, made with deploy's Role: one pod evicted at a time.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cluster.admin().await, NS);
    let pdb = budgets.get(&format!("hw-{}", pool.replace('-', ""))).await.unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // The nodes advertise their pod addresses, on the bridge (each once it has
    // heartbeated: a pod placed may not have yet).
    support::eventually(Duration::from_secs(60), "every node to report its address", || async {
        let nodes = admin.live_nodes(&pool).await;
        nodes.len() == 4 && nodes.iter().all(|n| n["address"].is_string())
    })
    .await;
    let nodes = admin.live_nodes(&pool).await;
    assert_eq!(nodes.len(), 4);
    let prefix = network.host_ip.rsplitn(3, '.').last().unwrap().to_owned();
    for n in &nodes {
        assert_eq!(n["target"], "cluster");
        let address = n["address"].as_str().unwrap_or_default();
        assert!(address.starts_with(&prefix) && address.ends_with(":8080"), "{n}");
    }

    admin.upload_demo(&key, "ana-vod", "demo").await;
    // The router on a test host of its own: players, admin and the pods reach it
    // (and it them) over the bridge, as across hosts.
    let (router_ns, router_ip) = network.host();
    let (_router, _) = support::start(
        tokio::process::Command::new("ip").args(["netns", "exec", &router_ns, support::BIN]).args([
            "router",
            "--listen",
            "0.0.0.0:7401",
            "--admin-url",
            &admin.url,
            "--router-token",
            &router_token,
            "--metrics-token",
            support::METRICS_TOKEN,
        ]),
        "headwater router listening on ",
    )
    .await;
    let router = format!("http://{router_ip}:7401");
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
    // A new image with its own container image: the pool rolls onto new pods
    // (surge one, drain one), still under the player.
    let body = json!({"version": "2.0.0", "command": "headwater", "args": ["origin"],
                      "container_image": "registry.example.com/headwater:2.0.0"});
    let op = admin.call(Method::POST, "/v1/origin-types/hls/images", Some(&op), Some(body), StatusCode::ACCEPTED).await;
    let done =
        admin.wait_operation_for(op["id"].as_str().unwrap(), &admin.operator_token, Duration::from_secs(180)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    support::eventually(Duration::from_secs(60), "four pods of the new container image", || async {
        let now = running_pods(&pods).await;
        now.len() == 4
            && now.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("registry.example.com/headwater:2.0.0")
            })
    })
    .await;

    // A cluster host cut off (its link down, its pods still running): admin
    // hears nothing from them, marks the target unreachable and replaces none
    // at once; the router serves from the pods it still reaches; when the link
    // returns the same nodes are ready again.
    let ready_ids = || async {
        let mut ids: Vec<String> = admin
            .live_nodes(&pool)
            .await
            .iter()
            .filter(|n| n["state"] == "ready")
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before_cut = ready_ids().await;
    let now = running_pods(&pods).await;
    let on_a = now.iter().filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-a")).count();
    let host = if on_a * 2 >= now.len() { "node-a" } else { "node-b" };
    let registered = admin.count("SELECT COUNT(*) FROM events WHERE action = 'node.registered'").await;
    let cut = kubelet.set_link(host, false);
    assert!(cut >= 2, "{host} runs {cut} pods");
    let target_state = || async {
        let t = admin.call(Method::GET, "/v1/targets/cluster", Some(&admin.operator_token), None, StatusCode::OK).await;
        t["state"].as_str().unwrap().to_owned()
    };
    support::eventually(Duration::from_secs(30), "the target unreachable", || async {
        target_state().await == "unreachable"
    })
    .await;
    // Two more heartbeat timeouts: still no node launched in their place.
    let quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(6) {
        assert_eq!(admin.count("SELECT COUNT(*) FROM events WHERE action = 'node.registered'").await, registered);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(kubelet.set_link(host, true), cut);
    support::eventually(Duration::from_secs(30), "the target active and the same nodes ready", || async {
        target_state().await == "active" && ready_ids().await == before_cut
    })
    .await;
    assert_eq!(admin.count("SELECT COUNT(*) FROM events WHERE action = 'node.registered'").await, registered);
    players.finish().await;

    // Every series deploy/'s alert rules and dashboard use is one admin or the
    // router exposes (a renamed metric would silently blind them).
    let exposed = format!("{}{}", support::metrics(&admin.url).await, support::metrics(&router).await);
    let monitoring = cluster::deploy_dir().join("base/monitoring");
    let mut used = std::collections::BTreeSet::new();
    for file in ["alerts.yml", "dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        for (i, _) in text.match_indices("headwater_") {
            let name: String = text[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            // `headwater_admin_*` in a comment names a family, not a series.
            if !name.ends_with('_') {
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 8, "{used:?}");
    for name in &used {
        assert!(
            exposed.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} is used by deploy/base/monitoring but exposed by neither admin nor the router"
        );
    }
    // This SLA account is served: its ready capacity is at least its SLA.
    let capacity =
        exposed.lines().find(|l| l.starts_with("headwater_admin_account_ready_capacity_mbps{account=\"ana-vod\"}"));
    let capacity: f64 = capacity.unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(capacity >= 300.0, "ready capacity {capacity}");

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

/// Every overlay of deploy/, rendered with `kubectl kustomize` and applied
/// server-side: each manifest passes the API server's own validation, and the
/// objects a user relies on are there as described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deploy_overlay_renders_and_applies_to_a_real_api_server() {
    let cluster = Cluster::start().await;
    let work = tempfile::tempdir().unwrap();
    for overlay in ["quickstart", "production"] {
        let rendered = cluster::render(overlay, work.path());
        let out = cluster.apply(&rendered, None);
        for object in [
            "deployment.apps/headwater-admin",
            "deployment.apps/headwater-router",
            "service/headwater-router",
            "horizontalpodautoscaler.autoscaling/headwater-router",
            "poddisruptionbudget.policy/headwater-router",
            "role.rbac.authorization.k8s.io/headwater-driver",
            "rolebinding.rbac.authorization.k8s.io/headwater-admin",
        ] {
            assert!(out.contains(&format!("{object} serverside-applied")), "{overlay}: {object} in\n{out}");
        }
        if overlay == "quickstart" {
            for object in [
                "statefulset.apps/postgres",
                "deployment.apps/redis",
                "statefulset.apps/minio",
                "job.batch/minio-bucket",
            ] {
                assert!(out.contains(&format!("{object} serverside-applied")), "{overlay}: {object} in\n{out}");
            }
        }
    }
    let c = cluster.admin().await;
    let service =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(c.clone(), NS).get("headwater-router").await.unwrap();
    assert_eq!(service.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    // The dashboard is found by Grafana's sidecar label; the alert rules are there.
    let maps = Api::<ConfigMap>::namespaced(c.clone(), NS)
        .list(&ListParams::default().labels("grafana_dashboard=1"))
        .await
        .unwrap();
    assert_eq!(maps.items.len(), 1);
    let dashboard: Value = serde_json::from_str(&maps.items[0].data.as_ref().unwrap()["dashboard.json"]).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
    // The Role the driver gets is exactly deploy/base/role.yaml's.
    let role = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(c, NS).get("headwater-driver").await.unwrap();
    let rules: Vec<(Vec<String>, Vec<String>)> =
        role.rules.unwrap().into_iter().map(|r| (r.resources.unwrap_or_default(), r.verbs)).collect();
    assert_eq!(
        rules,
        vec![
            (vec!["pods".to_owned()], ["create", "delete", "get", "list", "watch"].map(String::from).to_vec()),
            (vec!["poddisruptionbudgets".to_owned()], ["create", "delete"].map(String::from).to_vec()),
        ]
    );
}

/// One admin, two kinds of target at once: this host's processes (`local`) and
/// a namespace of the cluster, each with a quota of two nodes. An SLA 300
/// account's four nodes fill both; the next account's sign-up waits, saying on
/// which target there is no room, until the cluster's quota is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_kubernetes_targets_at_once_and_a_sign_up_that_waits_for_a_quota() {
    let cluster = Cluster::start().await;
    cluster.namespace(NS).await;
    let kubeconfig = cluster.service_account(NS, "headwater-admin", &cluster::driver_role_file()).await;
    let network = Network::new();
    let _kubelet = Kubelet::start_on(&cluster, &[("node-a", "zone-a")], Some(network.clone())).await;
    let listen = format!("{}:{}", network.host_ip, support::free_port());
    let admin = Admin::start_at(Backend::Sqlite, &["--driver", "process"], None, vec![], &listen).await;
    let op = admin.operator_token.clone();
    let quota = json!({"quotas": {"max_nodes": 2}});
    admin.call(Method::PATCH, "/v1/targets/local", Some(&op), Some(quota.clone()), StatusCode::OK).await;
    let target = json!({"kind": "kubernetes", "name": "cluster", "zone": "zone-a", "quotas": {"max_nodes": 2},
        "kubernetes": {"namespace": NS, "image": "registry.example.com/headwater:0.1.0", "kubeconfig": kubeconfig}});
    admin.call(Method::POST, "/v1/targets", Some(&op), Some(target), StatusCode::CREATED).await;

    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin
        .account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}}))
        .await;
    let nodes = admin.settled(&pool, 4).await;
    let on = |t: &str| nodes.iter().filter(|n| n["target"] == t).count();
    assert_eq!((on("local"), on("cluster")), (2, 2), "{nodes:#?}");
    for n in &nodes {
        let address = n["address"].as_str().unwrap();
        match n["target"].as_str().unwrap() {
            "local" => assert!(address.starts_with("127.0.0.1:"), "a process on this host: {address}"),
            _ => assert!(address.ends_with(":8080") && !address.starts_with("127."), "a pod: {address}"),
        }
    }

    // No room left on either target: the next sign-up waits, with the reason.
    let (_, key) = admin.sign_up("ben@example.com").await;
    let body = json!({"name": "ben-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}});
    let a = admin.call(Method::POST, "/v1/accounts", Some(&key), Some(body), StatusCode::ACCEPTED).await;
    let id = a["operation"]["id"].as_str().unwrap().to_owned();
    support::eventually(Duration::from_secs(60), "the sign-up waiting for capacity", || async {
        let o = admin.call(Method::GET, &format!("/v1/operations/{id}"), Some(&key), None, StatusCode::OK).await;
        o["progress"]["waiting"].is_string()
    })
    .await;
    let o = admin.call(Method::GET, &format!("/v1/operations/{id}"), Some(&key), None, StatusCode::OK).await;
    let waiting = o["progress"]["waiting"].as_str().unwrap();
    assert_eq!(o["state"], "running", "{o:#}");
    assert!(
        waiting.starts_with("waiting for capacity:")
            && waiting.contains("local: 2 of 2 nodes")
            && waiting.contains("cluster: 2 of 2 nodes"),
        "{waiting}"
    );
    // Raised, the sign-up goes on: its nodes are pods.
    let raise = json!({"quotas": {"max_nodes": 4}});
    admin.call(Method::PATCH, "/v1/targets/cluster", Some(&op), Some(raise), StatusCode::OK).await;
    let done = admin.wait_operation_for(&id, &key, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let account = admin.call(Method::GET, "/v1/accounts/ben-vod", Some(&key), None, StatusCode::OK).await;
    let ben = admin.settled(account["pool"]["id"].as_str().unwrap(), 2).await;
    assert!(ben.iter().all(|n| n["target"] == "cluster"), "{ben:#?}");
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await, NS);
    support::eventually(Duration::from_secs(30), "four running pods", || async {
        running_pods(&pods).await.len() == 4
    })
    .await;
}

/// Measures (run by `scripts/bench-kubernetes`; ignored by `cargo test`): ten
/// SLA accounts signed up one after another on the cluster, each timed from
/// its sign-up to its pods ready (the operation done) and from its upload to
/// its first segment through the router. Prints p50 and p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench-kubernetes"]
async fn bench_sign_ups_on_kubernetes() {
    let cluster = Cluster::start().await;
    cluster.namespace(NS).await;
    let kubeconfig = cluster.service_account(NS, "headwater-admin", &cluster::driver_role_file()).await;
    let network = Network::new();
    let _kubelet =
        Kubelet::start_on(&cluster, &[("node-a", "zone-a"), ("node-b", "zone-b")], Some(network.clone())).await;
    let listen = format!("{}:{}", network.host_ip, support::free_port());
    let admin = Admin::start_at(Backend::Sqlite, &["--driver", "kubernetes"], None, vec![], &listen).await;
    let op = admin.operator_token.clone();
    let target = json!({"kind": "kubernetes", "name": "cluster", "zone": "cluster",
        "kubernetes": {"namespace": NS, "image": "registry.example.com/headwater:0.1.0", "kubeconfig": kubeconfig}});
    admin.call(Method::POST, "/v1/targets", Some(&op), Some(target), StatusCode::CREATED).await;
    let (_router, router) = support::router_of(&admin, &[]).await;
    let http = reqwest::Client::new();
    let (mut ready, mut first_segment) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let (_, key) = admin.sign_up(&format!("customer{i}@example.com")).await;
        let name = format!("sla-{i}");
        let started = std::time::Instant::now();
        let body = json!({"name": name, "origin_type": "hls", "offer": {"kind": "sla", "mbps": 200}});
        let a = admin.call(Method::POST, "/v1/accounts", Some(&key), Some(body), StatusCode::ACCEPTED).await;
        let done =
            admin.wait_operation_for(a["operation"]["id"].as_str().unwrap(), &key, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        ready.push(started.elapsed());
        admin.upload_demo(&key, &name, "demo").await;
        let uploaded = std::time::Instant::now();
        wait_status(&http, &format!("{router}/{name}/demo/hls/360p/seg_000.ts"), StatusCode::OK, &name).await;
        first_segment.push(uploaded.elapsed());
    }
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await, NS);
    assert_eq!(running_pods(&pods).await.len(), 30, "three pods for each SLA of 200");
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    eprintln!(
        "10 SLA 200 accounts: sign-up -> pods ready p50 {:?} p99 {:?}; upload done -> first segment through the router p50 {:?} p99 {:?}",
        pct(&mut ready, 0.5),
        pct(&mut ready, 0.99),
        pct(&mut first_segment, 0.5),
        pct(&mut first_segment, 0.99)
    );
}
