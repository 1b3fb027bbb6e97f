//! Instances as Kubernetes pods, one pod per instance, so the caller keeps
//! per-instance control (surge, drain). A pod is named after its instance and
//! labelled with it, so a restarted caller finds every pod it launched (`list`)
//! and never launches one twice. Pods are watched, not only polled: `inspect`
//! answers from the watch's view, so a failed pod is seen on the next look.
//! Deleting a pod is how an instance drains: Kubernetes sends SIGTERM, waits the
//! grace period, then kills it. Pods of one group (a pool) spread over zones and
//! share a PodDisruptionBudget that lets a cluster drain evict one at a time; it
//! is made with the group's first pod and removed with its last.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
pub use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSpec,
    Probe, ResourceRequirements, SecretEnvSource, TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use uuid::Uuid;

use crate::{BoxFuture, Driver, DriverError, Handle, InstanceSpec, Status};

/// The label every pod of this driver carries, with its value.
pub const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "headwater-origin");
/// The label naming a pod's instance.
pub const INSTANCE_LABEL: &str = "headwater.io/node";
/// The zone label the pods spread over.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How pods are made, beside what each instance says.
#[derive(Debug, Clone, Default)]
pub struct PodTemplate {
    /// The container image, unless the instance names its own (its command and
    /// arguments come from the instance).
    pub image: String,
    /// The port the instance serves on: probes and the pod's declared port.
    pub port: u16,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Run in the Kubernetes node's network namespace (for throughput).
    pub host_network: bool,
    /// How long a deleted pod may drain before it is killed.
    pub grace: Duration,
    /// Pods with the same value of this label are a group: they spread over
    /// zones (at most one apart) and a PodDisruptionBudget lets voluntary
    /// disruptions (a cluster node drained) take one of them at a time; `None`:
    /// neither.
    pub group_by: Option<String>,
    /// A Secret whose keys every pod gets as environment variables (the content
    /// store's credentials, such as `AWS_ACCESS_KEY_ID`).
    pub env_from_secret: Option<String>,
}

/// What the watch last saw of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Running,
    Ended(String),
}

/// Runs instances as pods in one namespace.
#[derive(Clone)]
pub struct KubernetesDriver {
    pods: Api<Pod>,
    budgets: Api<PodDisruptionBudget>,
    template: PodTemplate,
    /// The watch's view of every pod of this driver (by instance).
    seen: Arc<Mutex<HashMap<Uuid, Seen>>>,
    /// Whether the watch has listed the pods once (its view is complete).
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for KubernetesDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDriver").field("template", &self.template).finish_non_exhaustive()
    }
}

fn api_error(what: &str, e: kube::Error) -> DriverError {
    let detail = match &e {
        kube::Error::Api(s) => format!("{} ({}): {}", s.reason, s.code, s.message),
        other => other.to_string(),
    };
    DriverError::Platform { what: what.to_owned(), detail }
}

fn pod_name(id: Uuid) -> String {
    format!("hw-{}", id.simple())
}

fn instance_of(pod: &Pod) -> Option<Uuid> {
    pod.metadata.labels.as_ref()?.get(INSTANCE_LABEL)?.parse().ok()
}

/// How a pod stands: ended (failed, succeeded, or deleted and gone) with why, or
/// running (pending included: it may still start).
fn seen(pod: &Pod) -> Seen {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Failed") | Some("Succeeded") => {
            let terminated = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            Seen::Ended(match terminated {
                Some(t) => match &t.reason {
                    Some(r) => format!("exit status {} ({r})", t.exit_code),
                    None => format!("exit status {}", t.exit_code),
                },
                None => status.and_then(|s| s.reason.clone()).unwrap_or_else(|| "pod ended".to_owned()),
            })
        }
        _ => Seen::Running,
    }
}

impl KubernetesDriver {
    /// Connects with a kubeconfig file (and one of its contexts), or, without
    /// one, as the pod admin runs in (its ServiceAccount); starts the watch.
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
        namespace: &str,
        template: PodTemplate,
    ) -> Result<Self, DriverError> {
        let platform = |what: &str, e: String| DriverError::Platform { what: what.to_owned(), detail: e };
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| platform("reading the kubeconfig", e.to_string()))?;
                let options =
                    kube::config::KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| platform("loading the kubeconfig", e.to_string()))?
            }
            None => kube::Config::incluster().map_err(|e| platform("in-cluster configuration", e.to_string()))?,
        };
        let client =
            kube::Client::try_from(config).map_err(|e| platform("making a Kubernetes client", e.to_string()))?;
        Ok(Self::new(client, namespace, template))
    }

    /// A driver for pods in `namespace` through `client`; starts its watch.
    pub fn new(client: kube::Client, namespace: &str, template: PodTemplate) -> Self {
        let driver = Self {
            pods: Api::namespaced(client.clone(), namespace),
            budgets: Api::namespaced(client, namespace),
            template,
            seen: Arc::default(),
            synced: Arc::default(),
        };
        driver.watch();
        driver
    }

    /// Keeps `seen` current from a watch of this driver's pods; the watch
    /// restarts with kube-runtime's backoff when it fails.
    fn watch(&self) {
        let pods = self.pods.clone();
        let seen = Arc::downgrade(&self.seen);
        let synced = self.synced.clone();
        let selector = format!("{}={}", APP_LABEL.0, APP_LABEL.1);
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(&selector);
            // Errors come back through the stream, after kube-runtime's backoff.
            let mut events = std::pin::pin!(watcher(pods, config).default_backoff());
            let mut listing: HashMap<Uuid, Seen> = HashMap::new();
            while let Some(event) = events.next().await {
                let Some(seen) = seen.upgrade() else { return };
                let mut view = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match event {
                    Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                        if let Some(id) = instance_of(&pod) {
                            listing.insert(id, self::seen(&pod));
                            view.insert(id, self::seen(&pod));
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(id) = instance_of(&pod) {
                            view.insert(id, Seen::Ended("pod deleted".to_owned()));
                        }
                    }
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitDone) => {
                        // Pods gone while the watch was down have ended.
                        for (id, state) in view.iter_mut() {
                            if !listing.contains_key(id) && *state == Seen::Running {
                                *state = Seen::Ended("pod deleted".to_owned());
                            }
                        }
                        synced.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e) => tracing::warn!(error = %e, "watching pods"),
                }
            }
        });
    }

    /// The pod an instance runs as.
    pub fn pod(&self, spec: &InstanceSpec) -> Pod {
        pod_for(&self.template, spec)
    }

    /// Makes the PodDisruptionBudget of the group `spec` is in, if it has none.
    async fn budget(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let Some(pdb) = budget_for(&self.template, spec) else { return Ok(()) };
        match self.budgets.create(&PostParams::default(), &pdb).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(api_error("creating a PodDisruptionBudget", e)),
        }
    }

    async fn delete(&self, handle: &Handle, grace: Duration) -> Result<(), DriverError> {
        let name = pod_name(handle.id);
        let group = match &self.template.group_by {
            Some(key) => match self.pods.get_opt(&name).await {
                Ok(pod) => pod.and_then(|p| Some((key.clone(), p.metadata.labels?.get(key)?.clone()))),
                Err(e) => return Err(api_error("reading a pod", e)),
            },
            None => None,
        };
        let dp = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(30)),
            ..Default::default()
        };
        match self.pods.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_error("deleting a pod", e)),
        }
        // The group's last pod takes its budget with it.
        let Some((key, value)) = group else { return Ok(()) };
        let lp = ListParams::default().labels(&format!("{key}={value}"));
        let pods = self.pods.list(&lp).await.map_err(|e| api_error("listing pods", e))?;
        let others = pods.items.iter().filter(|p| p.metadata.name.as_ref() != Some(&name));
        if others.filter(|p| p.metadata.deletion_timestamp.is_none()).any(|p| seen(p) == Seen::Running) {
            return Ok(());
        }
        match self.budgets.delete(&budget_name(&value), &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_error("deleting a PodDisruptionBudget", e)),
        }
    }
}

/// The name of the PodDisruptionBudget of the group labelled `value`.
fn budget_name(value: &str) -> String {
    let value: String = value.chars().filter(char::is_ascii_alphanumeric).take(50).collect();
    format!("hw-{}", value.to_ascii_lowercase())
}

/// The PodDisruptionBudget of the group `spec` belongs to (see
/// [`PodTemplate::group_by`]): at most one of its pods evicted at a time, and a
/// pod that is not ready may always go (it serves nobody).
pub fn budget_for(t: &PodTemplate, spec: &InstanceSpec) -> Option<PodDisruptionBudget> {
    let key = t.group_by.as_ref()?;
    let value = spec.labels.get(key)?;
    let selector: BTreeMap<String, String> =
        [(APP_LABEL.0.to_owned(), APP_LABEL.1.to_owned()), (key.clone(), value.clone())].into();
    Some(PodDisruptionBudget {
        metadata: ObjectMeta { name: Some(budget_name(value)), labels: Some(selector.clone()), ..Default::default() },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector), ..Default::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..Default::default()
        }),
        status: None,
    })
}

/// The pod `spec` runs as, made from `t`.
pub fn pod_for(t: &PodTemplate, spec: &InstanceSpec) -> Pod {
    let mut labels: BTreeMap<String, String> = spec.labels.clone();
    labels.insert(APP_LABEL.0.to_owned(), APP_LABEL.1.to_owned());
    labels.insert(INSTANCE_LABEL.to_owned(), spec.id.to_string());
    let mut env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() })
        .collect();
    // The address others reach the pod at, for `$(POD_IP)` in the arguments.
    env.push(EnvVar {
        name: "POD_IP".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".to_owned(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(t.port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let requests: Option<BTreeMap<String, Quantity>> = spec.resources.map(|r| {
        [
            ("cpu".to_owned(), Quantity(format!("{}m", r.cpu_millis))),
            ("memory".to_owned(), Quantity(format!("{}Mi", r.memory_mib))),
        ]
        .into()
    });
    let spread = t.group_by.as_ref().and_then(|key| {
        let value = spec.labels.get(key)?;
        Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: ZONE_LABEL.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some([(key.clone(), value.clone())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }])
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(spec.id)),
            labels: Some(labels),
            // Where Prometheus finds the node's metrics (its scrape job brings the token).
            annotations: Some(
                [
                    ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                    ("prometheus.io/port".to_owned(), t.port.to_string()),
                    ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "origin".to_owned(),
                image: Some(spec.image.clone().unwrap_or_else(|| t.image.clone())),
                command: Some(vec![spec.program.display().to_string()]),
                args: Some(spec.args.clone()),
                env: Some(env),
                env_from: t.env_from_secret.as_ref().map(|name| {
                    vec![EnvFromSource {
                        secret_ref: Some(SecretEnvSource { name: name.clone(), optional: Some(false) }),
                        ..Default::default()
                    }]
                }),
                ports: Some(vec![ContainerPort {
                    container_port: i32::from(t.port),
                    name: Some("http".to_owned()),
                    ..Default::default()
                }]),
                readiness_probe: Some(probe("/readyz", 1)),
                liveness_probe: Some(probe("/healthz", 5)),
                resources: requests.map(|r| ResourceRequirements { requests: Some(r), ..Default::default() }),
                ..Default::default()
            }],
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(i64::try_from(t.grace.as_secs()).unwrap_or(30)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
            tolerations: (!t.tolerations.is_empty()).then(|| t.tolerations.clone()),
            host_network: t.host_network.then_some(true),
            topology_spread_constraints: spread,
            ..Default::default()
        }),
        status: None,
    }
}

impl Driver for KubernetesDriver {
    fn launch<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Handle, DriverError>> {
        Box::pin(async move {
            let pod = self.pod(spec);
            let name = pod_name(spec.id);
            // The budget first: a pod never runs unprotected by its group's.
            self.budget(spec).await?;
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                // Launched before (the caller died before it recorded the handle).
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api_error("creating a pod", e)),
            }
            if let Ok(mut seen) = self.seen.lock() {
                seen.entry(spec.id).or_insert(Seen::Running);
            }
            tracing::info!(instance = %spec.id, pod = %name, "pod created");
            Ok(Handle { id: spec.id, reference: format!("pod:{name}") })
        })
    }

    fn drain<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { self.delete(handle, self.template.grace).await })
    }

    fn terminate<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { self.delete(handle, grace).await })
    }

    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Status> {
        Box::pin(async move {
            let known = self.seen.lock().ok().and_then(|s| s.get(&handle.id).cloned());
            let state = match known {
                Some(s) => s,
                // Not seen by the watch (yet): ask.
                None => match self.pods.get_opt(&pod_name(handle.id)).await {
                    Ok(Some(pod)) => seen(&pod),
                    Ok(None) => Seen::Ended("pod deleted".to_owned()),
                    // Unknown is not ended: never replace what may still run.
                    Err(_) => Seen::Running,
                },
            };
            match state {
                Seen::Running => Status::Running,
                Seen::Ended(detail) => Status::Exited { detail: Some(detail) },
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(async move {
            let lp = ListParams::default().labels(&format!("{}={}", APP_LABEL.0, APP_LABEL.1));
            let pods = self.pods.list(&lp).await.map_err(|e| api_error("listing pods", e))?;
            let mut out: Vec<Handle> = pods
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && seen(p) == Seen::Running)
                .filter_map(|p| {
                    Some(Handle { id: instance_of(p)?, reference: format!("pod:{}", p.metadata.name.as_deref()?) })
                })
                .collect();
            out.sort_by_key(|h| h.id);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            id: Uuid::from_u128(7),
            program: "/usr/local/bin/headwater".into(),
            args: vec!["origin".into(), "--advertise".into(), "$(POD_IP):8080".into()],
            env: vec![("HEADWATER_NODE_TOKEN".into(), "secret".into())],
            labels: [("headwater.io/pool".to_owned(), "p".to_owned())].into(),
            resources: Some(crate::Resources { cpu_millis: 500, memory_mib: 228 }),
            image: None,
        }
    }

    #[test]
    fn a_pod_says_what_the_instance_needs() {
        let t = PodTemplate {
            image: "registry.example/headwater:1.2".into(),
            port: 8080,
            grace: Duration::from_secs(30),
            group_by: Some("headwater.io/pool".into()),
            host_network: true,
            env_from_secret: Some("content".into()),
            ..Default::default()
        };
        let pod = pod_for(&t, &spec());
        assert_eq!(pod.metadata.name.as_deref(), Some("hw-00000000000000000000000000000007"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "headwater-origin");
        assert_eq!(labels["headwater.io/pool"], "p");
        let ps = pod.spec.unwrap();
        assert_eq!(ps.termination_grace_period_seconds, Some(30));
        assert_eq!(ps.host_network, Some(true));
        let spread = &ps.topology_spread_constraints.unwrap()[0];
        assert_eq!((spread.max_skew, spread.topology_key.as_str()), (1, ZONE_LABEL));
        assert_eq!(spread.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["headwater.io/pool"], "p");
        let c = &ps.containers[0];
        assert_eq!(c.command.as_deref(), Some(&["/usr/local/bin/headwater".to_owned()][..]));
        assert_eq!(c.args.as_ref().unwrap()[2], "$(POD_IP):8080");
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "HEADWATER_NODE_TOKEN" && e.value.as_deref() == Some("secret")));
        let pod_ip = env.iter().find(|e| e.name == "POD_IP").unwrap();
        assert_eq!(pod_ip.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "status.podIP");
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("500m", "228Mi"));
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().port, IntOrString::Int(8080));
        assert_eq!(c.image.as_deref(), Some("registry.example/headwater:1.2"));
        assert_eq!(c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "content");
        // An instance that names its image runs that one.
        let own = InstanceSpec { image: Some("registry.example/headwater:2.0".into()), ..spec() };
        assert_eq!(
            pod_for(&t, &own).spec.unwrap().containers[0].image.as_deref(),
            Some("registry.example/headwater:2.0")
        );
    }

    #[test]
    fn a_group_has_one_budget_that_lets_one_pod_go_at_a_time() {
        let t = PodTemplate { group_by: Some("headwater.io/pool".into()), ..Default::default() };
        let pdb = budget_for(&t, &spec()).unwrap();
        assert_eq!(pdb.metadata.name.as_deref(), Some("hw-p"));
        let s = pdb.spec.unwrap();
        assert_eq!(s.max_unavailable, Some(IntOrString::Int(1)));
        let selector = s.selector.unwrap().match_labels.unwrap();
        assert_eq!(
            (selector["headwater.io/pool"].as_str(), selector["app.kubernetes.io/name"].as_str()),
            ("p", "headwater-origin")
        );
        assert!(budget_for(&PodTemplate::default(), &spec()).is_none());
        let uuid = InstanceSpec {
            labels: [("headwater.io/pool".to_owned(), "0190C1E2-aaaa-7bbb-8ccc-ddddeeeeffff".to_owned())].into(),
            ..spec()
        };
        assert_eq!(budget_for(&t, &uuid).unwrap().metadata.name.unwrap(), "hw-0190c1e2aaaa7bbb8cccddddeeeeffff");
    }

    #[test]
    fn no_spread_without_the_label() {
        let t = PodTemplate { group_by: Some("headwater.io/other".into()), ..Default::default() };
        assert!(pod_for(&t, &spec()).spec.unwrap().topology_spread_constraints.is_none());
        let plain = PodTemplate::default();
        let ps = pod_for(&plain, &spec()).spec.unwrap();
        assert_eq!((ps.host_network, ps.node_selector, ps.tolerations), (None, None, None));
    }
}
