//! A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC on) and
//! kube-scheduler of the release pinned in `tests/k8s/go.mod`, built by
//! `scripts/kube-cluster` into `HEADWATER_KUBE_BIN`; and a test kubelet. No
//! kubelet can run containers here, so the test kubelet registers Node objects
//! with zone labels, watches the pods the real scheduler binds to them, runs each
//! pod's command as a process on this host, reports the pod's status through the
//! API as a kubelet would (Running, Ready, the container's exit), and on deletion
//! stops the process (SIGTERM, then SIGKILL after the grace period) and removes
//! the pod. Pods share this host's network (their IP is 127.0.0.1).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::json;

/// Where the control plane's binaries are: `HEADWATER_KUBE_BIN`, as
/// `scripts/kube-cluster` prints it (`scripts/test` sets it).
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("HEADWATER_KUBE_BIN")
        .expect("HEADWATER_KUBE_BIN: export HEADWATER_KUBE_BIN=$(scripts/kube-cluster)");
    PathBuf::from(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running control plane; everything stops when it is dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub ca: PathBuf,
    procs: Vec<std::process::Child>,
    /// A kubeconfig with the cluster's own administrator (system:masters).
    pub admin_kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn spawn(dir: &Path, name: &str, program: PathBuf, args: &[String]) -> std::process::Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    std::process::Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it with scripts/kube-cluster)", program.display()))
}

/// Writes a kubeconfig for `server` with a bearer `token`.
pub fn kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) {
    let cfg = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

impl Cluster {
    pub async fn start() -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let owned = dir.path().to_path_buf();
        let d = owned.as_path();
        let bin = bin_dir();
        let key = d.join("sa.key");
        let public = d.join("sa.pub");
        let openssl = |args: &[&str]| {
            let ok = std::process::Command::new("openssl").args(args).stderr(Stdio::null()).status().unwrap();
            assert!(ok.success(), "openssl {args:?}");
        };
        openssl(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
        openssl(&["rsa", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
        let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let sched_token = format!("sched-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin_token},admin,admin,system:masters\n{sched_token},system:kube-scheduler,scheduler\n"),
        )
        .unwrap();
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut procs = vec![spawn(
            d,
            "etcd",
            bin.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
            ],
        )];
        let certs = d.join("certs");
        procs.push(spawn(
            d,
            "kube-apiserver",
            bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", certs.display()),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", public.display()),
                format!("--service-account-signing-key-file={}", key.display()),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
            ],
        ));
        let server = format!("https://127.0.0.1:{api_port}");
        let ca = certs.join("apiserver.crt");
        let admin_kubeconfig = d.join("admin.kubeconfig");
        let mut cluster = Cluster { dir, server: server.clone(), ca: ca.clone(), procs, admin_kubeconfig };
        // Ready: the generated certificate exists and /readyz answers ok.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ca.exists() {
                kubeconfig(&cluster.admin_kubeconfig, &server, &ca, &admin_token);
                let c = client(&cluster.admin_kubeconfig).await;
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                if c.request_text(req).await.is_ok_and(|t| t.trim() == "ok") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "kube-apiserver never became ready; see its log in {}", d.display());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let sched = d.join("scheduler.kubeconfig");
        kubeconfig(&sched, &server, &ca, &sched_token);
        cluster.procs.push(spawn(
            d,
            "kube-scheduler",
            bin.join("kube-scheduler"),
            &[format!("--kubeconfig={}", sched.display()), "--leader-elect=false".into(), "--secure-port=0".into()],
        ));
        cluster
    }

    pub async fn admin(&self) -> kube::Client {
        client(&self.admin_kubeconfig).await
    }

    /// A namespace with what a controller-manager would have made (its `default`
    /// ServiceAccount).
    pub async fn namespace(&self, name: &str) {
        let c = self.admin().await;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &ns).await.unwrap();
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        Api::<ServiceAccount>::namespaced(c, name).create(&PostParams::default(), &sa).await.unwrap();
    }

    /// Runs `kubectl` (of `HEADWATER_KUBE_BIN`, the pinned release) as the
    /// cluster's administrator; its output, or a panic with its errors.
    pub fn kubectl(&self, args: &[&str]) -> String {
        kubectl(&[&["--kubeconfig", self.admin_kubeconfig.to_str().unwrap()], args].concat())
    }

    /// Applies a file of manifests server-side, so each passes the API server's
    /// own validation.
    pub fn apply(&self, file: &Path, namespace: Option<&str>) -> String {
        let mut args = vec!["apply", "--server-side", "--field-manager=headwater-test", "-f", file.to_str().unwrap()];
        if let Some(ns) = namespace {
            args.extend(["--namespace", ns]);
        }
        self.kubectl(&args)
    }

    /// A ServiceAccount in `namespace` bound to the Role in `role_file` (applied
    /// there), and a kubeconfig with a token for it: what admin runs with.
    pub async fn service_account(&self, namespace: &str, name: &str, role_file: &Path) -> PathBuf {
        let c = self.admin().await;
        self.apply(role_file, Some(namespace));
        let role = self.kubectl(&[
            "get",
            "-f",
            role_file.to_str().unwrap(),
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.name}",
        ]);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<ServiceAccount>::namespaced(c.clone(), namespace).create(&PostParams::default(), &sa).await.unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.trim()},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(c, namespace).create(&PostParams::default(), &binding).await.unwrap();
        self.token_kubeconfig(namespace, name).await
    }

    /// A kubeconfig with a fresh token of the ServiceAccount `name` in `namespace`.
    pub async fn token_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 3600}});
        let token: serde_json::Value = Api::<ServiceAccount>::namespaced(self.admin().await, namespace)
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap();
        let path = self.dir.path().join(format!("{namespace}-{name}.kubeconfig"));
        kubeconfig(&path, &self.server, &self.ca, token["status"]["token"].as_str().unwrap());
        path
    }
}

/// Runs the pinned `kubectl`; its output, or a panic with its errors.
pub fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new(bin_dir().join("kubectl")).args(args).output().expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("deploy/base/kustomization.yaml").exists() {
        assert!(dir.pop(), "no deploy/ above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir.join("deploy")
}

/// The Role `deploy/` grants admin's Kubernetes driver.
pub fn driver_role_file() -> PathBuf {
    deploy_dir().join("base/role.yaml")
}

/// Renders a `deploy/` overlay with `kubectl kustomize`, as a user would, from a
/// copy of `deploy/` with the overlay's secrets made (the quickstart's own
/// `make-secrets`; test values for the others). The rendered manifests' path.
pub fn render(overlay: &str, into: &Path) -> PathBuf {
    let copy = into.join("deploy");
    let ok = std::process::Command::new("cp").arg("-r").arg(deploy_dir()).arg(&copy).status().unwrap();
    assert!(ok.success());
    let dir = copy.join("overlays").join(overlay);
    if dir.join("make-secrets").exists() {
        let ok = std::process::Command::new(dir.join("make-secrets")).stdout(Stdio::null()).status().unwrap();
        assert!(ok.success(), "make-secrets");
    } else {
        let token = || uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(
            dir.join("headwater.env"),
            format!(
                "database-url=postgres://headwater@db.example:5432/headwater\nredis-url=redis://redis.example:6379\n\
                 operator-token={}\nmetrics-token={}\nrouter-token={}\n\
                 master-key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
                token(),
                token(),
                token()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("content.env"), "AWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID=test\n").unwrap();
    }
    let rendered = kubectl(&["kustomize", dir.to_str().unwrap()]);
    let path = into.join(format!("{overlay}.yaml"));
    std::fs::write(&path, rendered).unwrap();
    path
}

/// Test hosts on a bridge: each pod gets a network namespace of its own with its
/// own address (as a CNI plugin would give it), reachable from this host through
/// the bridge, where this host has `host_ip`. Needs root (`ip netns`, veth).
pub struct Network {
    pub bridge: String,
    /// The first two octets of the bridge's /16.
    prefix: String,
    pub host_ip: String,
    next: std::sync::atomic::AtomicU32,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Network {
    pub fn new() -> Arc<Network> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // 0 to 99: bridges 10.100.0.0/16 to 10.199.0.0/16.
        let k = (std::process::id() % 25) * 4 + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 4;
        let bridge = format!("hwkb{k}");
        let prefix = format!("10.{}", 100 + k);
        // What a crashed run may have left.
        let _ = std::process::Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.0.1/16"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        Arc::new(Network { bridge, host_ip: format!("{prefix}.0.1"), prefix, next: Default::default() })
    }

    /// A test host of its own on the bridge (for a router, say): its namespace
    /// and address.
    pub fn host(&self) -> (String, String) {
        let (ns, addr, _) = self.attach();
        (ns, addr)
    }

    /// A namespace for one pod: its name, address, and the bridge's end of its link.
    fn attach(&self) -> (String, String, String) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 2;
        let ns = format!("{}p{i}", self.bridge);
        let (host_end, pod_end) = (format!("{}h{i}", self.bridge), format!("{}c{i}", self.bridge));
        let addr = format!("{}.{}.{}", self.prefix, i / 250, i % 250 + 1);
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &pod_end]);
        ip(&["link", "set", &pod_end, "netns", &ns]);
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"]);
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{addr}/16"), "dev", &pod_end]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &pod_end, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        (ns, addr, host_end)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let n = self.next.load(std::sync::atomic::Ordering::SeqCst) + 2;
        for i in 2..n {
            let _ = std::process::Command::new("ip").args(["netns", "del", &format!("{}p{i}", self.bridge)]).output();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// A pod the test kubelet runs: telling it to stop (with the grace period).
struct Running {
    stop: tokio::sync::oneshot::Sender<Duration>,
}

/// The test kubelet: Nodes with zones, and the pods bound to them run as
/// processes (see the module's doc).
pub struct Kubelet {
    /// Pod name → its process's pid, while it runs.
    pub pids: Arc<Mutex<HashMap<String, u32>>>,
    /// Pod name → its Node and the bridge's end of its link, while it runs.
    links: Arc<Mutex<HashMap<String, (String, String)>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Kubelet {
    /// Takes the links of every pod running on `node` down (`up` false) or up
    /// again: a cluster host cut off from the network, its pods still running.
    /// How many pods it cut or restored.
    pub fn set_link(&self, node: &str, up: bool) -> usize {
        let links = self.links.lock().unwrap();
        let mut n = 0;
        for (on, host_end) in links.values() {
            if on == node {
                ip(&["link", "set", host_end, if up { "up" } else { "down" }]);
                n += 1;
            }
        }
        n
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
        for pid in self.pids.lock().unwrap().values() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Kubelet {
    /// Registers `nodes` (name, zone) as Ready and runs what is bound to them on
    /// this host's network (every pod's IP is 127.0.0.1).
    pub async fn start(cluster: &Cluster, nodes: &[(&str, &str)]) -> Kubelet {
        Self::start_on(cluster, nodes, None).await
    }

    /// Like `start`, each pod in a network namespace of its own on `network`.
    pub async fn start_on(cluster: &Cluster, nodes: &[(&str, &str)], network: Option<Arc<Network>>) -> Kubelet {
        let c = cluster.admin().await;
        let api: Api<Node> = Api::all(c.clone());
        for (name, zone) in nodes {
            let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
                "topology.kubernetes.io/zone": zone, "kubernetes.io/hostname": name}}}))
            .unwrap();
            api.create(&PostParams::default(), &node).await.unwrap();
            let status = json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet"}],
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            }});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
            // Ready: the not-ready taint admission put on the new Node goes, as
            // the node lifecycle controller would take it off.
            api.patch(name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": null}}))).await.unwrap();
        }
        let names: Vec<String> = nodes.iter().map(|(n, _)| (*n).to_owned()).collect();
        let pids: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let links: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(run(c, names, pids.clone(), links.clone(), stop.clone(), network));
        Kubelet { pids, links, stop }
    }
}

async fn run(
    c: kube::Client,
    nodes: Vec<String>,
    pids: Arc<Mutex<HashMap<String, u32>>>,
    links: Arc<Mutex<HashMap<String, (String, String)>>>,
    stop: tokio_util::sync::CancellationToken,
    network: Option<Arc<Network>>,
) {
    let pods: Api<Pod> = Api::all(c);
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    let mut events = std::pin::pin!(watcher(pods.clone(), watcher::Config::default()));
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.cancelled() => return,
        };
        let Some(Ok(event)) = event else { continue };
        let pod = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => p,
            _ => continue,
        };
        let (Some(name), Some(ns)) = (pod.metadata.name.clone(), pod.metadata.namespace.clone()) else { continue };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        if !nodes.contains(&node) {
            continue;
        }
        let key = (ns.clone(), name.clone());
        let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            match running.remove(&key) {
                // Its task stops it, then removes the pod.
                Some(r) => {
                    let _ = r.stop.send(Duration::from_secs(u64::try_from(grace).unwrap_or(30)));
                }
                None => {
                    let _ =
                        api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                }
            }
            continue;
        }
        if running.contains_key(&key)
            || pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p != "Pending")
        {
            continue;
        }
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let program = container.command.as_ref().unwrap()[0].clone();
        let (mut cmd, pod_ip) = match &network {
            Some(net) => {
                let (ns, addr, host_end) = net.attach();
                links.lock().unwrap().insert(name.clone(), (node.clone(), host_end));
                let mut cmd = tokio::process::Command::new("ip");
                cmd.args(["netns", "exec", &ns, &program]);
                (cmd, addr)
            }
            None => (tokio::process::Command::new(&program), "127.0.0.1".to_owned()),
        };
        // `envFrom` Secrets first, then `env` (which wins), as a kubelet sets them.
        for from in container.env_from.iter().flatten() {
            let Some(secret) = from.secret_ref.as_ref() else { continue };
            let secrets: Api<Secret> = Api::namespaced(pods.clone().into_client(), &ns);
            match secrets.get_opt(&secret.name).await {
                Ok(Some(found)) => {
                    for (k, v) in found.data.into_iter().flatten() {
                        cmd.env(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                _ if secret.optional == Some(true) => {}
                _ => {
                    let failed = json!({"status": {"phase": "Failed", "reason": "CreateContainerConfigError",
                        "message": format!("secret \"{}\" not found", secret.name)}});
                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&failed)).await;
                    continue;
                }
            }
        }
        // `$(POD_IP)` and other variables in the arguments, as a kubelet expands them.
        let mut vars: HashMap<String, String> = HashMap::new();
        for e in container.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(_)) => pod_ip.clone(),
                (None, None) => String::new(),
            };
            cmd.env(&e.name, &value);
            vars.insert(e.name.clone(), value);
        }
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|a| vars.iter().fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v)))
            .collect();
        // A container's output is its log; the test's output stays readable.
        let (out, err) = if std::env::var_os("TEST_LOG").is_some() {
            (Stdio::inherit(), Stdio::inherit())
        } else {
            (Stdio::null(), Stdio::null())
        };
        cmd.args(&args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let failed = json!({"status": {"phase": "Failed", "reason": e.to_string()}});
                let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&failed)).await;
                continue;
            }
        };
        pids.lock().unwrap().insert(name.clone(), child.id().unwrap_or_default());
        let image = container.image.clone().unwrap_or_default();
        let status = |ready: bool| {
            let ready_s = if ready { "True" } else { "False" };
            json!({"status": {
                "phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": ready_s}, {"type": "ContainersReady", "status": ready_s}],
                "containerStatuses": [{"name": container.name, "image": image, "imageID": image, "ready": ready,
                                       "restartCount": 0, "state": {"running": {}}}],
            }})
        };
        let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status(false))).await;
        // Ready when the readiness probe answers 2xx, as a kubelet probes it.
        let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| {
            let port = match &h.port {
                IntOrString::Int(p) => *p,
                IntOrString::String(_) => return None,
            };
            Some(format!("http://{pod_ip}:{port}{}", h.path.as_deref().unwrap_or("/")))
        });
        {
            let (api, name, ready) = (api.clone(), name.clone(), status(true));
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
                if let Some(url) = probe {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                        if Instant::now() > deadline {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&ready)).await;
            });
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Duration>();
        running.insert(key.clone(), Running { stop: stop_tx });
        let (pids, links, image) = (pids.clone(), links.clone(), image.clone());
        tokio::spawn(async move {
            tokio::select! {
                // The container ended by itself: the pod failed (or succeeded).
                status = child.wait() => {
                    let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
                    let phase = if code == 0 { "Succeeded" } else { "Failed" };
                    let status = json!({"status": {"phase": phase,
                        "conditions": [{"type": "Ready", "status": "False"}],
                        "containerStatuses": [{"name": "origin", "image": image, "imageID": image, "ready": false,
                            "restartCount": 0, "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}});
                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                }
                // Deleted: SIGTERM, the grace period, SIGKILL; then the pod goes.
                grace = stop_rx => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    }
                    let grace = grace.unwrap_or(Duration::ZERO);
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                }
            }
            pids.lock().unwrap().remove(&name);
            links.lock().unwrap().remove(&name);
        });
    }
}
