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
use support::{Admin, Backend, Players, router_of, wait_status};

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
    let _kubelet =
        Kubelet::start_on(&cluster, &[("node-a", "zone-a"), ("node-b", "zone-b")], Some(network.clone())).await;
    // Admin listens on the bridge, where the pods reach it.
    let listen = format!("{}:{}", network.host_ip, support::free_port());
    let env = deployed_admin_env(&cluster, work.path(), &kubeconfig, &listen).await;
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
