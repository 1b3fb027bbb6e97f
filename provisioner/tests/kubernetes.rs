//! The Kubernetes driver against a real kube-apiserver and kube-scheduler, with
//! RBAC on: the driver authenticates as a ServiceAccount bound to a Role with
//! only the verbs it needs, so the Role is proven sufficient (and anything more
//! is refused). Pods are run by the test kubelet (see `cluster`).

mod cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{Cluster, Kubelet};
use headwater_provisioner::{Driver, Handle, InstanceSpec, KubernetesDriver, PodTemplate, Resources, Status};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use uuid::Uuid;

const NS: &str = "headwater";

fn instance(pool: &str, script: &str) -> InstanceSpec {
    let id = Uuid::now_v7();
    InstanceSpec {
        id,
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), id.to_string()],
        env: vec![("HEADWATER_NODE_TOKEN".into(), "hwn_secret".into())],
        labels: BTreeMap::from([("headwater.io/pool".to_owned(), pool.to_owned())]),
        resources: Some(Resources { cpu_millis: 250, memory_mib: 128 }),
        image: None,
    }
}

/// A process that drains on SIGTERM (it exits 0).
const SERVES: &str = "trap 'exit 0' TERM; while :; do sleep 0.05; done";

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_made_spread_watched_adopted_and_removed_through_a_real_api_server() {
    let cluster = Cluster::start().await;
    cluster.namespace(NS).await;
    // The Role deploy/ grants admin, and nothing more.
    let kubeconfig = cluster.service_account(NS, "headwater-admin", &cluster::driver_role_file()).await;
    let _kubelet = Kubelet::start(&cluster, &[("node-a", "zone-a"), ("node-b", "zone-b")]).await;
    let template = PodTemplate {
        image: "headwater:test".into(),
        port: 8080,
        grace: Duration::from_secs(5),
        group_by: Some("headwater.io/pool".into()),
        ..Default::default()
    };
    let driver = KubernetesDriver::new(cluster::client(&kubeconfig).await, NS, template.clone());

    // Four instances of one pool: four pods, spread over the two zones.
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(driver.launch(&instance("p1", SERVES)).await.unwrap());
    }
    let pods: Api<Pod> = Api::namespaced(cluster.admin().await, NS);
    wait_for("four running pods", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.unwrap();
        list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count() == 4
    })
    .await;
    let list = pods.list(&ListParams::default()).await.unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        *per_node.entry(p.spec.as_ref().unwrap().node_name.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_node, BTreeMap::from([("node-a".into(), 2), ("node-b".into(), 2)]), "spread over zones");
    // The pool's PodDisruptionBudget: a cluster drain evicts one of its pods at a time.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cluster.admin().await, NS);
    let pdb = budgets.get("hw-p1").await.unwrap().spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.selector.unwrap().match_labels.unwrap()["headwater.io/pool"], "p1");
    // What a pod says: labels, probes, grace, requests, no service account token.
    let p = list
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&format!("hw-{}", handles[0].id.simple())))
        .unwrap();
    let labels = p.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "headwater-origin");
    assert_eq!(labels["headwater.io/node"], handles[0].id.to_string());
    assert_eq!(labels["headwater.io/pool"], "p1");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(5));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let c = &spec.containers[0];
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    assert_eq!(c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0, "250m");
    assert!(c.env.iter().flatten().any(|e| e.name == "POD_IP" && e.value_from.is_some()));
    assert!(!c.args.iter().flatten().any(|a| a.contains("hwn_")), "secrets in the environment only");
    for h in &handles {
        assert_eq!(driver.inspect(h).await, Status::Running);
    }

    // A restarted caller finds every pod by its labels: none is launched twice.
    let again = KubernetesDriver::new(cluster::client(&kubeconfig).await, NS, template.clone());
    let mut listed = again.list().await.unwrap();
    listed.sort_by_key(|h| h.id);
    let mut want = handles.clone();
    want.sort_by_key(|h| h.id);
    assert_eq!(listed, want);
    // Launching the same instance again (a caller that died before recording it) is no second pod.
    let twice = instance("p1", SERVES);
    driver.launch(&twice).await.unwrap();
    driver.launch(&twice).await.unwrap();
    handles.push(Handle { id: twice.id, reference: format!("pod:hw-{}", twice.id.simple()) });
    wait_for("five pods", Duration::from_secs(30), || async {
        pods.list(&ListParams::default()).await.unwrap().items.len() == 5
    })
    .await;

    // A pod whose process exits is seen to have ended, with its exit status, from the watch.
    let failing = driver.launch(&instance("p1", "sleep 0.5; exit 3")).await.unwrap();
    wait_for("the failed pod noticed", Duration::from_secs(30), || async {
        matches!(driver.inspect(&failing).await, Status::Exited { .. })
    })
    .await;
    assert_eq!(driver.inspect(&failing).await, Status::Exited { detail: Some("exit status 3 (Error)".into()) });
    assert!(!driver.list().await.unwrap().iter().any(|h| h.id == failing.id), "an ended pod is not listed");

    // Terminating drains (SIGTERM) and the pod goes; twice is fine.
    driver.terminate(&handles[0], Duration::from_secs(5)).await.unwrap();
    driver.terminate(&handles[0], Duration::from_secs(5)).await.unwrap();
    wait_for("the pod gone", Duration::from_secs(30), || async {
        driver.inspect(&handles[0]).await == Status::Exited { detail: Some("pod deleted".into()) }
    })
    .await;
    assert!(pods.get_opt(&format!("hw-{}", handles[0].id.simple())).await.unwrap().is_none());

    // The pool's last pod takes its budget with it.
    assert!(budgets.get_opt("hw-p1").await.unwrap().is_some(), "pods of p1 remain");
    for h in &handles[1..] {
        driver.terminate(h, Duration::from_secs(5)).await.unwrap();
    }
    assert!(budgets.get_opt("hw-p1").await.unwrap().is_none(), "the budget goes with the pool's last pod");

    // What the Role does not grant is refused, with the API's message.
    let elsewhere = KubernetesDriver::new(cluster::client(&kubeconfig).await, "default", template);
    let err = elsewhere.launch(&instance("p2", SERVES)).await.unwrap_err().to_string();
    assert!(err.contains("Forbidden (403)") && err.contains("cannot create resource"), "{err}");
}
