//! The reconciler: level-triggered, it compares each pool's desired size (store)
//! with its nodes (store + heartbeats + driver) and converges — launch, mark
//! failed, stop. It is not told why it was woken, so every pass is idempotent.
//! [`plan`] is pure; [`Reconciler::apply`] does the I/O, each action recorded in the
//! store as it happens, so a crash resumes from what the store says.
//!
//! Each pool is reconciled on its own: one pool's error is logged and the pool
//! is looked at again after a growing pause, while the others go on. A pool whose
//! nodes fail before they are ready (a crash loop) backs off its launches
//! exponentially ([`launch_backoff`]) and shows as degraded until a node of it
//! becomes ready. Only the replica holding the control lease reconciles.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use headwater_provisioner::{
    Driver, Handle, InstanceSpec, KubernetesDriver, PodTemplate, Policy, Resources, Room, Status,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{Clock, UnixMs};
use crate::control::partition::{self, Heard, PartitionPolicy};
use crate::keys;
use crate::states::{NodeState, PoolKind, PoolState, TargetKind, TargetState};
use crate::store::{
    HALT_AFTER_FAILED_NODES, KubernetesSettings, NodeHealthRow, NodeSettings, Placement, PoolSpec, Store, TargetRow,
    TargetUse,
};

/// Failed node rows kept per pool (the newest): a crash loop leaves a bounded trail.
pub const FAILED_NODES_KEPT: i64 = 5;

/// The pause before the next launch after `failures` nodes in a row failed before
/// they were ready: 1 s, doubling, at most 5 minutes.
pub fn launch_backoff(failures: i32) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1)).unwrap_or(0).min(9);
    Duration::from_secs(1u64 << doublings).min(Duration::from_secs(300))
}

/// The pause before a pool whose reconcile failed is looked at again: 250 ms,
/// doubling, at most 30 s.
fn error_backoff(errors: u32) -> Duration {
    Duration::from_millis(250u64 << errors.saturating_sub(1).min(7)).min(Duration::from_secs(30))
}

/// When a node counts as failed.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// No heartbeat for this long.
    pub heartbeat_timeout_ms: i64,
    /// A launched node that never sent a heartbeat within this long.
    pub start_timeout_ms: i64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self { heartbeat_timeout_ms: 3_000, start_timeout_ms: 30_000 }
    }
}

/// When a shared pool grows or shrinks.
#[derive(Debug, Clone, Copy)]
pub struct ScalePolicy {
    /// Grow when egress stays above this share of the ready nodes' capacity…
    pub high: f64,
    /// …shrink when it stays below this share…
    pub low: f64,
    /// …for this long.
    pub sustain_ms: i64,
    pub min_nodes: i32,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        Self { high: 0.7, low: 0.3, sustain_ms: 30_000, min_nodes: crate::store::SHARED_POOL_MIN_NODES }
    }
}

/// Since when a shared pool has been above or below its thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub hot_since: Option<UnixMs>,
    pub cold_since: Option<UnixMs>,
}

/// The desired size of a shared pool from its measured egress: one node more after
/// `sustain_ms` above `high`, one fewer (never below `min_nodes`) after `sustain_ms`
/// below `low`. Returns the new size (if it changes) and the pressure to carry on.
pub fn scale(
    desired: i32,
    ready: usize,
    egress_mbps: f64,
    node_capacity_mbps: i32,
    pressure: Pressure,
    now: UnixMs,
    policy: ScalePolicy,
) -> (Option<i32>, Pressure) {
    let capacity = ready as f64 * f64::from(node_capacity_mbps.max(1));
    if ready == 0 || (ready as i32) < desired {
        // Still converging: measure only a settled pool.
        return (None, Pressure::default());
    }
    let use_share = egress_mbps / capacity;
    if use_share > policy.high {
        let since = pressure.hot_since.unwrap_or(now);
        if now - since >= policy.sustain_ms {
            return (Some(desired + 1), Pressure::default());
        }
        return (None, Pressure { hot_since: Some(since), cold_since: None });
    }
    if use_share < policy.low && desired > policy.min_nodes {
        let since = pressure.cold_since.unwrap_or(now);
        if now - since >= policy.sustain_ms {
            return (Some(desired - 1), Pressure::default());
        }
        return (None, Pressure { hot_since: None, cold_since: Some(since) });
    }
    (None, Pressure::default())
}

/// What the reconciler does to a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Launch { count: usize },
    Fail { node: Uuid, reason: String },
    Stop { node: Uuid },
}

/// What an action tells the pool's health: a node that failed before it was
/// ready (the crash-loop signal), with why.
type StartFailure = Option<String>;

/// What to do for one pool, from its desired size and its nodes. `listening_since`
/// is when this reconciler started hearing heartbeats: silence from before then
/// (admin was down or restarting) is not held against a node; nor is the silence
/// of `held` nodes (unheard on a cut-off target). While the pool backs off after
/// failed starts (`launch_after`), nothing is launched.
pub fn plan(
    pool: &PoolSpec,
    nodes: &[NodeHealthRow],
    now: UnixMs,
    listening_since: UnixMs,
    policy: HealthPolicy,
    held: &HashSet<Uuid>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut healthy: Vec<&NodeHealthRow> = Vec::new();
    for n in nodes.iter().filter(|n| n.state.live()) {
        // Unheard on a cut-off target: kept, and counted, until the partition
        // rule releases it (see `partition`).
        if held.contains(&n.id) {
            healthy.push(n);
            continue;
        }
        let silent_for = now - n.last_heartbeat.unwrap_or(n.created_at).max(listening_since);
        let limit = if n.last_heartbeat.is_some() { policy.heartbeat_timeout_ms } else { policy.start_timeout_ms };
        if silent_for > limit {
            actions.push(Action::Fail { node: n.id, reason: format!("no heartbeat for {silent_for} ms") });
        } else if n.state == NodeState::Ready && n.recent_probe_failures >= 2 {
            actions.push(Action::Fail { node: n.id, reason: "self-probe failed twice".into() });
        } else {
            healthy.push(n);
        }
    }
    // A released pool's nodes serve the account that left for a grace period
    // (routers may not have switched yet); then they stop.
    let lingering = pool.state == PoolState::Deleting && now < pool.updated_at + crate::domain::MOVE_GRACE_MS;
    let desired = if lingering {
        healthy.len()
    } else if pool.state.live() {
        pool.desired_nodes.max(0) as usize
    } else {
        0
    };
    if desired > 0 {
        // Nodes on another image than the pool's, or on a target being emptied, are
        // replaced one at a time, make-before-break.
        let stale = |n: &&&NodeHealthRow| {
            n.on_draining_target()
                || pool.image_version.as_deref().is_some_and(|image| n.image_version.as_deref() != Some(image))
        };
        let (old, new): (Vec<&NodeHealthRow>, Vec<&NodeHealthRow>) = healthy.iter().partition(stale);
        if !old.is_empty() {
            roll(pool, &old, &new, desired, &mut actions);
            return backing_off(pool, now, actions);
        }
    }
    if healthy.len() < desired {
        actions.push(Action::Launch { count: desired - healthy.len() });
    } else if healthy.len() > desired {
        // Stop the ones that serve least: starting before ready, newest first.
        healthy.sort_by_key(|n| (n.state == NodeState::Ready, std::cmp::Reverse(n.id)));
        for n in healthy.iter().take(healthy.len() - desired) {
            actions.push(Action::Stop { node: n.id });
        }
    }
    backing_off(pool, now, actions)
}

/// Drops launches while the pool backs off after failed starts.
fn backing_off(pool: &PoolSpec, now: UnixMs, mut actions: Vec<Action>) -> Vec<Action> {
    if pool.launch_after.is_some_and(|t| now < t) {
        actions.retain(|a| !matches!(a, Action::Launch { .. }));
    }
    actions
}

/// One step of a rolling upgrade inside a pool (some healthy nodes still run
/// another image): surge one node on the pool's image; once it is ready, stop (drain)
/// one old node, lowest upgrade domain first. Capacity never drops below `desired`.
/// Once [`HALT_AFTER_FAILED_NODES`] nodes on the new image failed, no more are
/// surged: the old nodes keep serving until a rollback.
fn roll(pool: &PoolSpec, old: &[&NodeHealthRow], new: &[&NodeHealthRow], desired: usize, actions: &mut Vec<Action>) {
    let healthy = old.len() + new.len();
    if new.iter().any(|n| n.state == NodeState::Starting) {
        return;
    }
    if healthy > desired {
        let mut old = old.to_vec();
        old.sort_by_key(|n| (n.state == NodeState::Ready, n.upgrade_domain, n.id));
        for n in old.iter().take(healthy - desired) {
            actions.push(Action::Stop { node: n.id });
        }
    } else if pool.failed_on_image < HALT_AFTER_FAILED_NODES {
        actions.push(Action::Launch { count: desired + 1 - healthy });
    } else if healthy < desired {
        actions.push(Action::Launch { count: desired - healthy });
    }
}

/// How the reconciler starts a node: the program and what every node is told.
#[derive(Debug, Clone)]
pub struct NodeTemplate {
    pub program: std::path::PathBuf,
    pub admin_url: String,
    pub content_url: String,
    pub heartbeat_ms: u64,
    /// The routers' addresses: nodes believe `X-Forwarded-For` from these only.
    pub trusted_proxies: Vec<String>,
    /// The bearer token of the nodes' `/metrics`.
    pub metrics_token: String,
    /// The CA (PEM) nodes trust for an https admin URL.
    pub admin_ca: Option<String>,
    /// Nodes serve mutual TLS to routers with their node certificate too
    /// (`--tls-listen`), and with `routers_only` serve players' requests for
    /// accounts only there, to routers' certificates.
    pub node_tls: NodeTls,
    /// Nodes truncate clients' addresses in their access records.
    pub access_log_truncate_clients: bool,
}

/// What TLS the nodes admin launches serve to routers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeTls {
    /// Plain HTTP only.
    #[default]
    Off,
    /// Plain HTTP and mutual TLS beside it.
    Beside,
    /// Accounts' content over mutual TLS to routers only; plain HTTP keeps the
    /// test content, health and metrics.
    RoutersOnly,
}

pub struct Reconciler {
    pub store: Store,
    /// Runs the nodes of process targets; `None` when admin runs no processes
    /// (`--driver kubernetes`), so only other targets get nodes.
    pub driver: Option<Arc<dyn Driver>>,
    pub clock: Arc<dyn Clock>,
    pub policy: HealthPolicy,
    pub template: NodeTemplate,
    pub interval: Duration,
    /// Since when this reconciler hears heartbeats (see [`plan`]): when it took
    /// the control lease.
    pub started: std::sync::atomic::AtomicI64,
    pub scale_policy: ScalePolicy,
    /// Per shared pool, since when it has been hot or cold (in memory: a restart
    /// only restarts the window).
    pub pressure: std::sync::Mutex<std::collections::HashMap<Uuid, Pressure>>,
    /// Per pool whose last reconcile failed: errors in a row, and when to look again.
    pub errors: std::sync::Mutex<HashMap<Uuid, (u32, UnixMs)>>,
    pub partition: PartitionPolicy,
    /// Unheard nodes of cut-off targets that are not replaced (yet).
    pub held: std::sync::Mutex<HashSet<Uuid>>,
    /// Per cut-off target, when its next unheard node may be replaced.
    pub releases: std::sync::Mutex<HashMap<String, UnixMs>>,
    /// The driver of each target this pass (process targets share `driver`), and
    /// why a target has none (a Kubernetes target admin cannot connect to).
    drivers: std::sync::Mutex<HashMap<String, Arc<dyn Driver>>>,
    driver_errors: std::sync::Mutex<HashMap<String, String>>,
    /// Kubernetes drivers by target, kept while the target's settings stay.
    kube: tokio::sync::Mutex<HashMap<String, KubeDriver>>,
    /// Kubernetes targets admin could not connect to: with which settings, when,
    /// and why (tried again after [`RECONNECT_MS`] or when the settings change).
    kube_failed: std::sync::Mutex<HashMap<String, (KubernetesSettings, UnixMs, String)>>,
    /// Where each pass's time and size go (`/metrics`), when set.
    pub metrics: Option<crate::control::ControlMetrics>,
}

/// How long a Kubernetes target admin could not connect to waits before another try.
const RECONNECT_MS: i64 = 10_000;

impl Reconciler {
    pub fn new(
        store: Store,
        driver: Option<Arc<dyn Driver>>,
        clock: Arc<dyn Clock>,
        template: NodeTemplate,
        policy: HealthPolicy,
        scale_policy: ScalePolicy,
    ) -> Self {
        let started = std::sync::atomic::AtomicI64::new(clock.now_ms());
        Self {
            store,
            driver,
            clock,
            policy,
            template,
            interval: Duration::from_millis(250),
            started,
            scale_policy,
            pressure: Default::default(),
            errors: Default::default(),
            partition: PartitionPolicy::default(),
            held: Default::default(),
            releases: Default::default(),
            drivers: Default::default(),
            driver_errors: Default::default(),
            kube: Default::default(),
            kube_failed: Default::default(),
            metrics: None,
        }
    }

    /// Adopts the nodes the driver still runs that the store knows; stops strays.
    pub async fn adopt(&self) -> anyhow::Result<()> {
        let known = self.store.live_node_ids().await?;
        self.connect_drivers().await?;
        let mut drivers: Vec<Arc<dyn Driver>> = self.driver.iter().cloned().collect();
        let kube: Vec<Arc<dyn Driver>> = self.kube.lock().await.values().map(|(_, d)| d.clone()).collect();
        drivers.extend(kube);
        for driver in drivers {
            for h in driver.list().await? {
                if known.contains(&h.id) {
                    tracing::info!(node = %h.id, "adopted running node");
                    // The handle may not have been recorded if admin died right after launching.
                    self.store.set_node_handle(h.id, &h.reference, self.clock.now_ms()).await?;
                } else {
                    tracing::warn!(node = %h.id, "stopping a stray node the store does not know");
                    driver.terminate(&h, Duration::from_secs(5)).await?;
                }
            }
        }
        Ok(())
    }

    /// The driver of every target: the process driver for process targets; for a
    /// Kubernetes target one connected with its settings (again when they change).
    pub async fn connect_drivers(&self) -> anyhow::Result<()> {
        let targets = self.store.targets().await?;
        self.connect_drivers_of(&targets).await;
        Ok(())
    }

    /// [`connect_drivers`](Self::connect_drivers) for targets already read.
    async fn connect_drivers_of(&self, targets: &[TargetUse]) {
        let mut drivers: HashMap<String, Arc<dyn Driver>> = HashMap::new();
        let mut errors = HashMap::new();
        let mut kube = self.kube.lock().await;
        for t in targets {
            let t = &t.target;
            match (t.kind, &t.settings.0.kubernetes) {
                (TargetKind::Process, _) => match &self.driver {
                    Some(d) => {
                        drivers.insert(t.name.clone(), d.clone());
                    }
                    None => {
                        errors.insert(t.name.clone(), "admin runs no processes (--driver kubernetes)".to_owned());
                    }
                },
                (TargetKind::Kubernetes, None) => {
                    errors.insert(t.name.clone(), "no Kubernetes settings".to_owned());
                }
                (TargetKind::Kubernetes, Some(k)) => {
                    if let Some((settings, driver)) = kube.get(&t.name)
                        && settings == k
                    {
                        drivers.insert(t.name.clone(), driver.clone());
                        continue;
                    }
                    let now = self.clock.now_ms();
                    let failed = self.kube_failed.lock().ok().and_then(|f| f.get(&t.name).cloned());
                    if let Some((settings, at, why)) = failed
                        && settings == *k
                        && now - at < RECONNECT_MS
                    {
                        errors.insert(t.name.clone(), why);
                        continue;
                    }
                    let port = node_port(&t.settings.0.nodes);
                    let template = PodTemplate {
                        image: k.image.clone(),
                        port,
                        node_selector: k.node_selector.clone(),
                        tolerations: k.tolerations.iter().map(toleration).collect(),
                        host_network: k.host_network,
                        grace: Duration::from_secs(30),
                        group_by: Some(POOL_LABEL.to_owned()),
                        env_from_secret: k.env_from_secret.clone(),
                    };
                    let path = k.kubeconfig.as_deref().map(std::path::Path::new);
                    match KubernetesDriver::connect(path, k.context.as_deref(), &k.namespace, template).await {
                        Ok(d) => {
                            let d: Arc<dyn Driver> = Arc::new(d);
                            tracing::info!(target = %t.name, namespace = %k.namespace, "connected to Kubernetes");
                            kube.insert(t.name.clone(), (k.clone(), d.clone()));
                            drivers.insert(t.name.clone(), d);
                        }
                        Err(e) => {
                            tracing::warn!(target = %t.name, error = %e, "cannot connect to Kubernetes");
                            if let Ok(mut f) = self.kube_failed.lock() {
                                f.insert(t.name.clone(), (k.clone(), now, e.to_string()));
                            }
                            errors.insert(t.name.clone(), e.to_string());
                        }
                    }
                }
            }
        }
        kube.retain(|name, _| drivers.contains_key(name));
        if let Ok(mut d) = self.drivers.lock() {
            *d = drivers;
        }
        if let Ok(mut e) = self.driver_errors.lock() {
            *e = errors;
        }
    }

    /// Reconciles every `interval` while this replica holds the control lease
    /// (`leader`); adopts the driver's nodes each time it takes the lease.
    pub async fn run(self, shutdown: CancellationToken, leader: tokio::sync::watch::Receiver<bool>) {
        let mut every = crate::control::every::Every::new(self.interval, &shutdown);
        let mut leading = false;
        while every.next().await {
            let leads = *leader.borrow();
            if leads && !leading {
                self.started.store(self.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = self.adopt().await {
                    tracing::error!(error = %e, "adopting nodes");
                }
            }
            leading = leads;
            if !leading {
                continue;
            }
            let started = std::time::Instant::now();
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconcile");
            }
            if let Some(m) = &self.metrics {
                m.reconcile_seconds.observe(started.elapsed().as_secs_f64());
            }
        }
    }

    /// One pass: every pool on its own. A pool's error is logged and the pool is
    /// skipped for a growing pause; the others are not held up.
    pub async fn reconcile_once(&self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        // The targets once a pass: their drivers, then the partition rule.
        match self.store.targets().await {
            Ok(targets) => {
                self.connect_drivers_of(&targets).await;
                if let Err(e) = self.watch_partitions(&targets, now).await {
                    tracing::warn!(error = %e, "judging targets' reachability");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading targets"),
        }
        let pools = self.store.pools_to_reconcile(now).await?;
        // Every pool's nodes in one read; a pool reconciled later in the pass
        // plans from what was read here, as of `observed`.
        let observed = self.clock.now_ms();
        let mut health = self.store.fleet_health().await?;
        if let Some(m) = &self.metrics {
            m.reconcile_pools.set(i64::try_from(pools.len()).unwrap_or(i64::MAX));
        }
        let ids: std::collections::HashSet<Uuid> = pools.iter().map(|p| p.id).collect();
        for pool in pools {
            let id = pool.id;
            let skip = self.errors.lock().map(|e| e.get(&id).is_some_and(|(_, at)| now < *at)).unwrap_or(false);
            if skip {
                continue;
            }
            let nodes = health.remove(&id).unwrap_or_default();
            match self.reconcile_pool(pool, nodes, observed).await {
                Ok(()) => {
                    if let Ok(mut e) = self.errors.lock() {
                        e.remove(&id);
                    }
                }
                Err(err) => {
                    let mut e = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let n = e.get(&id).map_or(1, |(n, _)| n + 1);
                    let pause = error_backoff(n);
                    tracing::warn!(pool = %id, error = %err, errors = n, retry_in_ms = pause.as_millis() as u64, "reconciling pool");
                    e.insert(id, (n, now + i64::try_from(pause.as_millis()).unwrap_or(30_000)));
                }
            }
        }
        // Pools that are gone leave nothing behind in memory.
        if let Ok(mut p) = self.pressure.lock() {
            p.retain(|id, _| ids.contains(id));
        }
        if let Ok(mut e) = self.errors.lock() {
            e.retain(|id, _| ids.contains(id));
        }
        Ok(())
    }

    /// Applies the partition rule (see `partition`): marks targets whose nodes
    /// went unheard together `unreachable` (and active again once they are heard),
    /// and decides which unheard nodes are held instead of replaced: all of a
    /// cut-off target's but one every `replace_every_ms`, the first that long after
    /// it was cut off.
    async fn watch_partitions(&self, targets: &[TargetUse], now: UnixMs) -> anyhow::Result<()> {
        let timeout = self.policy.heartbeat_timeout_ms;
        let listening_since = self.started.load(std::sync::atomic::Ordering::Relaxed);
        // Nodes heartbeat out of phase, so a cut link makes them cross the
        // timeout one pass after another, up to a heartbeat apart: judged at the
        // timeout, the first would be failed alone before its peers count. Judged
        // unheard from half the timeout, they are seen together, and held before
        // the first of them would be failed.
        let unheard_after = timeout / 2;
        let mut heard = Vec::new();
        for n in self.store.heard_nodes().await? {
            let silent = now - n.last_heartbeat.max(listening_since) > unheard_after;
            // Seen from elsewhere: a router fetched its test content lately.
            let reached = n.seen_by_router.is_some_and(|at| now - at <= timeout);
            let running = match (silent, &n.handle, self.driver_of(Some(&n.target))) {
                (false, _, _) => true,
                _ if reached => true,
                (true, Some(r), Some(driver)) => {
                    driver.inspect(&Handle { id: n.id, reference: r.clone() }).await.running()
                }
                (true, _, _) => false,
            };
            heard.push(Heard { id: n.id, target: n.target, last_heartbeat: n.last_heartbeat, silent, running });
        }
        let cut: std::collections::BTreeSet<String> = targets
            .iter()
            .filter(|t| t.target.state == TargetState::Unreachable)
            .map(|t| t.target.name.clone())
            .collect();
        let verdicts = partition::judge(&heard, &cut, timeout, self.partition);
        let every = self.partition.replace_every_ms();
        let mut held = HashSet::new();
        let mut releases = self.releases.lock().map(|r| r.clone()).unwrap_or_default();
        for (target, v) in &verdicts {
            if !v.cut_off {
                continue;
            }
            let reason = format!(
                "{} of {} nodes went unheard together while their instances run (or routers reach them); replacing at most one every {} s",
                v.unheard.len(),
                v.nodes,
                every / 1000
            );
            if self.store.set_target_reachable(target, false, &reason, now).await? {
                tracing::warn!(%target, %reason, "target cut off");
            }
            let next = releases.entry(target.clone()).or_insert(now + every);
            let mut unheard = v.unheard.clone();
            if now >= *next && !unheard.is_empty() {
                let released = unheard.remove(0);
                tracing::warn!(%target, node = %released, "replacing one unheard node of a cut-off target");
                *next = now + every;
            }
            held.extend(unheard);
        }
        for name in &cut {
            if !verdicts.get(name).is_some_and(|v| v.cut_off) {
                self.store.set_target_reachable(name, true, "its nodes are heard again", now).await?;
                tracing::info!(target = %name, "target reachable again");
            }
        }
        releases.retain(|t, _| verdicts.get(t).is_some_and(|v| v.cut_off));
        if let Ok(mut r) = self.releases.lock() {
            *r = releases;
        }
        if let Ok(mut h) = self.held.lock() {
            *h = held;
        }
        Ok(())
    }

    /// Plans one pool from its nodes as read at `observed`, applies, and keeps
    /// its health: a node that failed before it was ready backs its launches off
    /// and marks it degraded; a node that became ready since clears that.
    pub async fn reconcile_pool(
        &self,
        mut pool: PoolSpec,
        mut nodes: Vec<NodeHealthRow>,
        observed: UnixMs,
    ) -> anyhow::Result<()> {
        // Failures seen now hold back this pass's launches too.
        let exited = self.fail_exited(&mut nodes).await?;
        self.end_drained(&mut nodes, observed).await?;
        self.back_off(&mut pool, &exited).await?;
        if pool.kind == PoolKind::Shared && pool.state.live() {
            self.autoscale(&mut pool, &nodes).await?;
        }
        // Silence is judged as of the read: a heartbeat since then is not missed.
        let listening_since = self.started.load(std::sync::atomic::Ordering::Relaxed);
        let mut failed = Vec::new();
        let held = self.held.lock().map(|h| h.clone()).unwrap_or_default();
        for action in plan(&pool, &nodes, observed, listening_since, self.policy, &held) {
            if let Some(why) = self.apply(&pool, &nodes, action).await? {
                failed.push(why);
            }
        }
        self.back_off(&mut pool, &failed).await?;
        self.stop_failed(&nodes);
        let now = self.clock.now_ms();
        let recovered = pool.degraded_since.is_some_and(|since| {
            exited.is_empty()
                && failed.is_empty()
                && nodes.iter().any(|n| n.state == NodeState::Ready && n.created_at >= since)
        });
        if recovered {
            tracing::info!(pool = %pool.id, "a node became ready; the pool recovered");
            self.store.clear_degraded(pool.id, now).await?;
        }
        if pool.state == PoolState::Creating {
            let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
            // Ready once it carries what it owes (the spare of a dedicated pool
            // aside), or for a shared pool once it serves at all.
            let owed = match pool.kind {
                PoolKind::Shared => 1,
                PoolKind::Dedicated => usize::try_from(pool.desired_nodes - 1).unwrap_or(0).max(1),
            };
            if ready >= owed {
                self.store.mark_pool_ready(pool.id, now).await?;
            }
        }
        Ok(())
    }

    /// Counts nodes of `pool` that failed before they were ready (`why`, one
    /// each): the pool degrades and its next launch waits [`launch_backoff`]; its
    /// failed node rows are trimmed to the newest [`FAILED_NODES_KEPT`].
    async fn back_off(&self, pool: &mut PoolSpec, why: &[String]) -> anyhow::Result<()> {
        let Some(last) = why.last() else { return Ok(()) };
        let now = self.clock.now_ms();
        let count = i32::try_from(why.len()).unwrap_or(i32::MAX);
        pool.launch_failures = pool.launch_failures.saturating_add(count);
        let pause = launch_backoff(pool.launch_failures);
        let after = now + i64::try_from(pause.as_millis()).unwrap_or(300_000);
        tracing::warn!(pool = %pool.id, failures = pool.launch_failures, reason = %last,
            retry_in_s = pause.as_secs(), "nodes fail at start; backing off");
        self.store.record_launch_failures(pool.id, count, last, after, now).await?;
        self.store.trim_failed_nodes(pool.id, FAILED_NODES_KEPT).await?;
        pool.launch_after = Some(after);
        pool.degraded_since.get_or_insert(now);
        pool.degraded_reason = Some(last.clone());
        Ok(())
    }

    /// A starting node whose process has exited will never be ready: failed now,
    /// not at the start timeout. Returns why, for each such node.
    async fn fail_exited(&self, nodes: &mut [NodeHealthRow]) -> anyhow::Result<Vec<String>> {
        let mut failed = Vec::new();
        for n in nodes.iter_mut().filter(|n| n.state == NodeState::Starting) {
            let (Some(h), Some(driver)) = (handle(n), self.node_driver(n.target.as_deref())) else { continue };
            if let Status::Exited { detail } = driver.inspect(&h).await {
                let why = match detail {
                    Some(d) => format!("node exits at start ({d})"),
                    None => "node exits at start".to_owned(),
                };
                tracing::warn!(node = %n.id, reason = %why, "node exited before it was ready");
                let now = self.clock.now_ms();
                self.store.set_node_state(n.id, NodeState::Failed, &why, "health-monitor", now).await?;
                self.store.clear_node_handle(n.id).await?;
                n.state = NodeState::Failed;
                n.handle = None;
                failed.push(why);
            }
        }
        Ok(failed)
    }

    /// A node that drained by itself (its pod was deleted or evicted, or it got
    /// SIGTERM from elsewhere) is stopped once it is gone: its instance has
    /// exited, or it has said nothing for a heartbeat timeout (then it is stopped
    /// for good). Left draining, it would count against its pool for ever, and an
    /// upgrade would wait for it. Silence is judged as of `observed`, when
    /// `nodes` were read.
    async fn end_drained(&self, nodes: &mut [NodeHealthRow], observed: UnixMs) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let listening_since = self.started.load(std::sync::atomic::Ordering::Relaxed);
        for n in nodes.iter_mut().filter(|n| n.state == NodeState::Draining) {
            let h = handle(n);
            let exited = match (&h, self.node_driver(n.target.as_deref())) {
                (Some(h), Some(driver)) => matches!(driver.inspect(h).await, Status::Exited { .. }),
                _ => false,
            };
            let silent_for = observed - n.last_heartbeat.unwrap_or(n.created_at).max(listening_since);
            if !exited && silent_for <= self.policy.heartbeat_timeout_ms {
                continue;
            }
            let why = if exited {
                "drained and exited".to_owned()
            } else {
                format!("drained and silent for {silent_for} ms")
            };
            tracing::info!(node = %n.id, reason = %why, "drained node stopped");
            self.store.set_node_state(n.id, NodeState::Stopped, &why, "reconciler", now).await?;
            match h {
                Some(_) if exited => self.store.clear_node_handle(n.id).await?,
                Some(h) => self.terminate_later(n.target.as_deref(), h, Duration::from_secs(5), true),
                None => {}
            }
            n.state = NodeState::Stopped;
        }
        Ok(())
    }

    /// A node the store gave up on must not keep running: stopped in the
    /// background; its handle is forgotten once it is gone.
    fn stop_failed(&self, nodes: &[NodeHealthRow]) {
        for n in nodes.iter().filter(|n| n.state == NodeState::Failed) {
            if let Some(h) = handle(n) {
                self.terminate_later(n.target.as_deref(), h, Duration::from_secs(5), true);
            }
        }
    }

    /// Grows or shrinks a shared pool on its measured egress.
    async fn autoscale(&self, pool: &mut PoolSpec, nodes: &[NodeHealthRow]) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let ready: Vec<_> = nodes.iter().filter(|n| n.state == NodeState::Ready).collect();
        let egress: f64 = ready.iter().map(|n| n.egress_mbps).sum();
        let before = self.pressure.lock().map(|p| p.get(&pool.id).copied().unwrap_or_default()).unwrap_or_default();
        let (change, after) =
            scale(pool.desired_nodes, ready.len(), egress, pool.node_capacity_mbps, before, now, self.scale_policy);
        if let Ok(mut p) = self.pressure.lock() {
            p.insert(pool.id, after);
        }
        if let Some(n) = change {
            let reason = format!("egress {egress:.1} Mbit/s on {} ready nodes", ready.len());
            tracing::info!(pool = %pool.id, from = pool.desired_nodes, to = n, %reason, "scaling shared pool");
            self.store.set_pool_desired(pool.id, n, &reason, now).await?;
            pool.desired_nodes = n;
        }
        Ok(())
    }

    /// Carries out one action, recording it in the store as it goes. Returns why,
    /// when a node failed before it was ready (it could not be launched, or a
    /// starting node was given up on).
    pub async fn apply(
        &self,
        pool: &PoolSpec,
        nodes: &[NodeHealthRow],
        action: Action,
    ) -> anyhow::Result<StartFailure> {
        let now = self.clock.now_ms();
        match action {
            Action::Launch { count } => {
                // Spread over upgrade domains, so a rolling upgrade never takes a pool down.
                let live = nodes.iter().filter(|n| n.state.live());
                let mut domains: Vec<i32> = live.clone().map(|n| n.upgrade_domain).collect();
                let mut zones: Vec<(String, i32)> =
                    live.filter_map(|n| Some((n.zone.clone()?, n.upgrade_domain))).collect();
                let mut targets = self.store.targets().await?;
                // A target added since this pass connected its drivers gets one now,
                // so a new node is placed with every target in view.
                if targets.iter().any(|t| !self.knows(&t.target.name)) {
                    self.connect_drivers().await?;
                }
                for _ in 0..count {
                    let id = Uuid::now_v7();
                    let domain = Policy::DEFAULT.upgrade_domain(&domains);
                    let Some(at) = self.place(&targets, pool, domain, &zones) else {
                        let errors = self.driver_errors.lock().map(|e| e.clone()).unwrap_or_default();
                        let reason = waiting_for_capacity(&targets, pool.node_capacity_mbps, &errors);
                        if pool.waiting_reason.as_deref() != Some(reason.as_str()) {
                            tracing::warn!(pool = %pool.id, %reason, "no target has room");
                        }
                        self.store.set_pool_waiting(pool.id, Some(&reason), now).await?;
                        return Ok(None);
                    };
                    let target = targets[at].target.clone();
                    let Some(driver) = self.driver_of(Some(&target.name)) else { return Ok(None) };
                    let (token, token_hash) = keys::join_token(id);
                    let image = pool.image_version.as_deref();
                    // The spec first: a pool whose image cannot be read registers nothing.
                    let spec = self.spec(id, token.clone(), pool, &target, domain).await?;
                    let placement =
                        Placement { upgrade_domain: domain, image_version: image, target: Some(&target.name) };
                    let registered = self.store.register_launch(id, pool.id, &token_hash, placement, now).await?;
                    if registered.is_none() {
                        tracing::debug!(pool = %pool.id, "the pool moved to another image; launching next pass");
                        return Ok(None);
                    }
                    domains.push(domain);
                    zones.push((target.zone.clone(), domain));
                    targets[at].nodes += 1;
                    targets[at].mbps += i64::from(pool.node_capacity_mbps);
                    match driver.launch(&spec).await {
                        Ok(h) => {
                            self.store.set_node_handle(id, &h.reference, now).await?;
                            tracing::info!(node = %id, pool = %pool.id, target = %target.name, "node launched");
                        }
                        Err(e) => {
                            tracing::warn!(node = %id, error = %e, "node could not be launched");
                            let reason = format!("node could not be launched: {e}");
                            self.store.set_node_state(id, NodeState::Failed, &reason, "reconciler", now).await?;
                            // The rest would fail the same way; the backoff decides when to try again.
                            return Ok(Some(reason));
                        }
                    }
                }
                if pool.waiting_reason.is_some() {
                    self.store.set_pool_waiting(pool.id, None, now).await?;
                }
                Ok(None)
            }
            Action::Fail { node, reason } => {
                tracing::warn!(%node, %reason, "node failed");
                self.store.set_node_state(node, NodeState::Failed, &reason, "health-monitor", now).await?;
                let n = nodes.iter().find(|n| n.id == node);
                if let Some((n, h)) = n.and_then(|n| Some((n, handle(n)?))) {
                    self.terminate_later(n.target.as_deref(), h, Duration::from_secs(5), true);
                }
                let at_start = n.is_some_and(|n| n.state == NodeState::Starting);
                Ok(at_start.then(|| format!("node never became ready: {reason}")))
            }
            Action::Stop { node } => {
                self.store
                    .set_node_state(node, NodeState::Stopped, "the pool needs fewer nodes", "reconciler", now)
                    .await?;
                if let Some((n, h)) = nodes.iter().find(|n| n.id == node).and_then(|n| Some((n, handle(n)?))) {
                    // SIGTERM: the node drains, then exits.
                    self.terminate_later(n.target.as_deref(), h, Duration::from_secs(30), false);
                }
                Ok(None)
            }
        }
    }

    /// Stops a node in the background, so a slow drain never holds up the loop;
    /// with `forget`, its handle is cleared once it is gone.
    fn terminate_later(&self, target: Option<&str>, h: Handle, grace: Duration, forget: bool) {
        let Some(driver) = self.node_driver(target) else {
            tracing::warn!(node = %h.id, "no driver runs this node's target; it is left as it is");
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.terminate(&h, grace).await {
                tracing::warn!(node = %h.id, error = %e, "terminating");
                return;
            }
            if forget && let Err(e) = store.clear_node_handle(h.id).await {
                tracing::warn!(node = %h.id, error = %e, "forgetting a stopped node's handle");
            }
        });
    }

    /// The driver of a target this pass, if admin has one for it.
    fn driver_of(&self, target: Option<&str>) -> Option<Arc<dyn Driver>> {
        self.drivers.lock().ok()?.get(target?).cloned()
    }

    /// The driver that runs a node: its target's; the process driver for a node
    /// without a target (or one whose target is gone).
    fn node_driver(&self, target: Option<&str>) -> Option<Arc<dyn Driver>> {
        self.driver_of(target).or_else(|| self.driver.clone())
    }

    fn drives(&self, target: &str) -> bool {
        self.driver_of(Some(target)).is_some()
    }

    /// Whether this pass looked at `target` (it has a driver, or a reason for none).
    fn knows(&self, target: &str) -> bool {
        self.drives(target) || self.driver_errors.lock().is_ok_and(|e| e.contains_key(target))
    }

    /// The index in `targets` of where a new node of `pool` in upgrade domain
    /// `domain` goes (see [`Policy::place`]); `zones` are the zones and domains of
    /// the pool's live nodes.
    fn place(&self, targets: &[TargetUse], pool: &PoolSpec, domain: i32, zones: &[(String, i32)]) -> Option<usize> {
        let size = i64::from(pool.node_capacity_mbps);
        let rooms: Vec<Room<'_>> = targets
            .iter()
            .filter(|t| t.target.state == TargetState::Active && self.drives(&t.target.name))
            .map(|t| Room {
                name: &t.target.name,
                zone: &t.target.zone,
                free_instances: t.target.max_nodes.map(|m| i64::from(m) - t.nodes),
                free_capacity: t.target.max_mbps.map(|m| i64::from(m) - t.mbps),
            })
            .collect();
        let zones: Vec<(&str, i32)> = zones.iter().map(|(z, d)| (z.as_str(), *d)).collect();
        let name = Policy::DEFAULT.place(&rooms, size, domain, &zones)?;
        targets.iter().position(|t| t.target.name == name)
    }

    /// How to run a node of `pool` on `target`: its image's program and arguments
    /// (`headwater` means this very binary), then what every node is told, as the
    /// target says where it differs.
    async fn spec(
        &self,
        id: Uuid,
        token: String,
        pool: &PoolSpec,
        target: &TargetRow,
        domain: i32,
    ) -> anyhow::Result<InstanceSpec> {
        let t = &self.template;
        let at = &target.settings.0.nodes;
        let image = match &pool.image_version {
            Some(v) => self.store.image(&pool.origin_type, v).await?,
            None => None,
        };
        let container_image = image.as_ref().and_then(|i| i.container_image.clone());
        let (program, mut args) = match image {
            Some(i) if i.command != "headwater" => (std::path::PathBuf::from(i.command), i.args.0),
            Some(i) => (t.program.clone(), i.args.0),
            None => (t.program.clone(), vec!["origin".to_owned()]),
        };
        let pods = target.kind == TargetKind::Kubernetes;
        let listen = match (&at.node_listen, pods) {
            (Some(l), _) => l.clone(),
            (None, true) => format!("0.0.0.0:{DEFAULT_POD_PORT}"),
            (None, false) => "127.0.0.1:0".to_owned(),
        };
        let admin_url = at.node_admin_url.clone().unwrap_or_else(|| t.admin_url.clone());
        args.extend(["--listen".into(), listen.clone(), "--node-id".into(), id.to_string()]);
        if pods {
            // Others reach a pod at its IP (the driver passes it in as POD_IP).
            args.extend(["--advertise".into(), format!("$(POD_IP):{}", node_port(at))]);
        }
        if t.node_tls != NodeTls::Off {
            // Mutual TLS with the node's certificate, on the next port in a pod.
            if pods {
                let port = node_port(at) + 1;
                args.extend(["--tls-listen".into(), format!("0.0.0.0:{port}")]);
                args.extend(["--tls-advertise".into(), format!("$(POD_IP):{port}")]);
            } else {
                // On the host the plain listener binds (a process target's `node_listen`).
                let host = listen.parse::<std::net::SocketAddr>().map_or("127.0.0.1".to_owned(), |a| match a {
                    std::net::SocketAddr::V4(a) => a.ip().to_string(),
                    std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
                });
                args.extend(["--tls-listen".into(), format!("{host}:0")]);
            }
            if t.node_tls == NodeTls::RoutersOnly {
                args.push("--routers-only".into());
            }
        }
        args.extend(["--admin-url".into(), admin_url, "--content".into(), t.content_url.clone()]);
        args.extend(["--capacity-mbps".into(), pool.node_capacity_mbps.to_string()]);
        args.extend(["--heartbeat-ms".into(), t.heartbeat_ms.to_string()]);
        // The routers forward players' addresses (for IP allow-lists); nobody else
        // is believed.
        for proxy in at.trusted_proxies.as_ref().unwrap_or(&t.trusted_proxies) {
            args.extend(["--trusted-proxy".into(), proxy.clone()]);
        }
        if let Some(v) = &pool.image_version {
            args.extend(["--image-version".into(), v.clone()]);
        }

        // Tokens go in the environment, not on the command line. The join token
        // is good for one join: read from the environment later, it opens nothing.
        let mut env =
            vec![("HEADWATER_JOIN_TOKEN".into(), token), ("HEADWATER_METRICS_TOKEN".into(), t.metrics_token.clone())];
        if let Some(ca) = &t.admin_ca {
            env.push(("HEADWATER_ADMIN_CA".into(), ca.clone()));
        }
        // In the environment, which an older image ignores (a flag it would refuse).
        if t.access_log_truncate_clients {
            env.push(("HEADWATER_ACCESS_LOG_TRUNCATE_CLIENTS".into(), "true".into()));
        }
        let labels =
            [(POOL_LABEL.to_owned(), pool.id.to_string()), (DOMAIN_LABEL.to_owned(), domain.to_string())].into();
        // A node's reservation grows with its bandwidth: a core per 2 Gbit/s.
        let mbps = u32::try_from(pool.node_capacity_mbps).unwrap_or(100);
        let resources = pods.then(|| Resources { cpu_millis: (mbps / 2).max(100), memory_mib: 128 + mbps / 10 });
        Ok(InstanceSpec { id, program, args, env, labels, resources, image: container_image })
    }
}

/// Why no target takes a node of `mbps`: `waiting for capacity: ` and each
/// target's reason.
fn waiting_for_capacity(targets: &[TargetUse], mbps: i32, driver_errors: &HashMap<String, String>) -> String {
    let why: Vec<String> = targets
        .iter()
        .map(|t| match driver_errors.get(&t.target.name) {
            Some(e) => format!("{}: {e}", t.target.name),
            None => t.no_room(mbps).unwrap_or_else(|| format!("{}: room", t.target.name)),
        })
        .collect();
    let list = if why.is_empty() { "no targets".to_owned() } else { why.join(", ") };
    format!("waiting for capacity: no target has room for a {mbps} Mbit/s node ({list})")
}

/// A Kubernetes target's driver, with the settings it was connected with.
type KubeDriver = (KubernetesSettings, Arc<dyn Driver>);

/// The labels of a node's pod: its pool and upgrade domain.
pub const POOL_LABEL: &str = "headwater.io/pool";
pub const DOMAIN_LABEL: &str = "headwater.io/upgrade-domain";
/// The port nodes in pods listen on unless the target says otherwise.
const DEFAULT_POD_PORT: u16 = 8080;

fn node_port(s: &NodeSettings) -> u16 {
    s.node_listen.as_deref().and_then(|l| l.parse::<std::net::SocketAddr>().ok()).map_or(DEFAULT_POD_PORT, |a| a.port())
}

fn toleration(t: &crate::store::Toleration) -> headwater_provisioner::kubernetes::Toleration {
    headwater_provisioner::kubernetes::Toleration {
        key: t.key.clone(),
        operator: t.operator.map(|o| format!("{o:?}")),
        value: t.value.clone(),
        effect: t.effect.map(|e| format!("{e:?}")),
        ..Default::default()
    }
}

fn handle(n: &NodeHealthRow) -> Option<Handle> {
    n.handle.as_ref().map(|r| Handle { id: n.id, reference: r.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn pool(desired: i32, state: PoolState) -> PoolSpec {
        PoolSpec {
            kind: PoolKind::Dedicated,
            id: Uuid::now_v7(),
            state,
            desired_nodes: desired,
            node_capacity_mbps: 100,
            image_version: None,
            updated_at: NOW - crate::domain::MOVE_GRACE_MS,
            origin_type: "hls".into(),
            failed_on_image: 0,
            launch_failures: 0,
            launch_after: None,
            degraded_reason: None,
            degraded_since: None,
            waiting_reason: None,
        }
    }

    fn node(state: NodeState, heartbeat_ago: Option<i64>, probe_failures: i64) -> NodeHealthRow {
        NodeHealthRow {
            id: Uuid::now_v7(),
            pool_id: Uuid::nil(),
            handle: Some("pid:1".into()),
            state,
            last_heartbeat: heartbeat_ago.map(|a| NOW - a),
            created_at: NOW - 60_000,
            recent_probe_failures: probe_failures,
            egress_mbps: 0.0,
            upgrade_domain: 0,
            image_version: None,
            target: Some("local".into()),
            zone: Some("local".into()),
            target_state: Some(TargetState::Active),
        }
    }

    fn on(image: &str, state: NodeState, domain: i32) -> NodeHealthRow {
        NodeHealthRow { image_version: Some(image.into()), upgrade_domain: domain, ..node(state, Some(100), 0) }
    }

    #[test]
    fn nodes_on_a_draining_target_are_replaced_make_before_break() {
        let pool = pool(2, PoolState::Ready);
        let leaving = |d| NodeHealthRow {
            target: Some("a".into()),
            target_state: Some(TargetState::Draining),
            ..on("1", NodeState::Ready, d)
        };
        let (a, b) = (leaving(0), leaving(1));
        let plan_for = |nodes: &[NodeHealthRow]| plan(&pool, nodes, NOW, 0, HealthPolicy::default(), &HashSet::new());
        assert_eq!(plan_for(&[a.clone(), b.clone()]), [Action::Launch { count: 1 }], "a new node first");
        let new = NodeHealthRow { target: Some("b".into()), ..on("1", NodeState::Ready, 0) };
        assert_eq!(plan_for(&[a.clone(), b.clone(), new.clone()]), [Action::Stop { node: a.id }], "then one leaves");
        assert!(plan_for(&[new.clone(), NodeHealthRow { id: Uuid::now_v7(), ..new.clone() }]).is_empty());
    }

    #[test]
    fn a_rolling_upgrade_surges_one_new_node_then_drains_one_old_node() {
        let pool = PoolSpec { image_version: Some("2".into()), ..pool(2, PoolState::Ready) };
        let (a, b) = (on("1", NodeState::Ready, 0), on("1", NodeState::Ready, 1));
        let plan_for = |nodes: &[NodeHealthRow]| plan(&pool, nodes, NOW, 0, HealthPolicy::default(), &HashSet::new());
        // Two old nodes: one new node first, capacity never below two.
        assert_eq!(plan_for(&[a.clone(), b.clone()]), [Action::Launch { count: 1 }]);
        // While it starts, nothing else.
        let starting = on("2", NodeState::Starting, 0);
        assert!(plan_for(&[a.clone(), b.clone(), starting]).is_empty());
        // Ready: the old node of the lowest upgrade domain is drained.
        let ready = on("2", NodeState::Ready, 0);
        assert_eq!(plan_for(&[b.clone(), a.clone(), ready.clone()]), [Action::Stop { node: a.id }]);
        // Then the next one, the same way.
        assert_eq!(plan_for(&[b.clone(), ready.clone()]), [Action::Launch { count: 1 }]);
        let second = on("2", NodeState::Ready, 1);
        assert_eq!(plan_for(&[b.clone(), ready.clone(), second.clone()]), [Action::Stop { node: b.id }]);
        assert!(plan_for(&[ready.clone(), second]).is_empty(), "done");
        // Two new nodes failed: the upgrade is halted, the old nodes keep serving.
        let halted = PoolSpec { failed_on_image: 2, ..pool.clone() };
        assert!(plan(&halted, &[a, b], NOW, 0, HealthPolicy::default(), &HashSet::new()).is_empty());
    }

    #[test]
    fn an_empty_pool_is_filled() {
        assert_eq!(
            plan(&pool(4, PoolState::Creating), &[], NOW, 0, HealthPolicy::default(), &HashSet::new()),
            [Action::Launch { count: 4 }]
        );
    }

    #[test]
    fn a_silent_node_is_failed_and_replaced() {
        let nodes = [node(NodeState::Ready, Some(500), 0), node(NodeState::Ready, Some(10_000), 0)];
        let actions = plan(&pool(2, PoolState::Ready), &nodes, NOW, 0, HealthPolicy::default(), &HashSet::new());
        assert_eq!(
            actions,
            [
                Action::Fail { node: nodes[1].id, reason: "no heartbeat for 10000 ms".into() },
                Action::Launch { count: 1 }
            ]
        );
    }

    #[test]
    fn silence_while_admin_was_down_does_not_count() {
        // Admin restarted 1 s ago; the node's last heartbeat reached the old one 10 s ago.
        let nodes = [node(NodeState::Ready, Some(10_000), 0)];
        assert!(
            plan(&pool(1, PoolState::Ready), &nodes, NOW, NOW - 1_000, HealthPolicy::default(), &HashSet::new())
                .is_empty()
        );
        assert!(matches!(
            plan(&pool(1, PoolState::Ready), &nodes, NOW, NOW - 4_000, HealthPolicy::default(), &HashSet::new())[0],
            Action::Fail { .. }
        ));
    }

    #[test]
    fn two_failed_self_probes_fail_a_node() {
        let nodes = [node(NodeState::Ready, Some(100), 2), node(NodeState::Ready, Some(100), 1)];
        let actions = plan(&pool(2, PoolState::Ready), &nodes, NOW, 0, HealthPolicy::default(), &HashSet::new());
        assert_eq!(actions[0], Action::Fail { node: nodes[0].id, reason: "self-probe failed twice".into() });
        assert_eq!(actions[1], Action::Launch { count: 1 });
    }

    #[test]
    fn a_starting_node_gets_time_to_start() {
        let mut starting = node(NodeState::Starting, None, 0);
        starting.created_at = NOW - 5_000;
        assert!(
            plan(&pool(1, PoolState::Creating), &[starting.clone()], NOW, 0, HealthPolicy::default(), &HashSet::new())
                .is_empty()
        );
        starting.created_at = NOW - 31_000;
        assert!(matches!(
            plan(&pool(1, PoolState::Creating), &[starting], NOW, 0, HealthPolicy::default(), &HashSet::new())[0],
            Action::Fail { .. }
        ));
    }

    #[test]
    fn surplus_nodes_are_stopped_starting_first_and_released_pools_emptied() {
        let ready = node(NodeState::Ready, Some(100), 0);
        let starting = node(NodeState::Starting, Some(100), 0);
        let actions = plan(
            &pool(1, PoolState::Ready),
            &[ready.clone(), starting.clone()],
            NOW,
            0,
            HealthPolicy::default(),
            &HashSet::new(),
        );
        assert_eq!(actions, [Action::Stop { node: starting.id }]);
        let actions = plan(
            &pool(3, PoolState::Deleting),
            std::slice::from_ref(&ready),
            NOW,
            0,
            HealthPolicy::default(),
            &HashSet::new(),
        );
        assert_eq!(actions, [Action::Stop { node: ready.id }]);
        // ... but only once the grace for routers to follow the move is over.
        let just_released = PoolSpec { updated_at: NOW - 1_000, ..pool(3, PoolState::Deleting) };
        assert!(
            plan(&just_released, std::slice::from_ref(&ready), NOW, 0, HealthPolicy::default(), &HashSet::new())
                .is_empty()
        );
        // Failed, draining and stopped nodes are not counted as serving.
        let drained = node(NodeState::Draining, Some(100), 0);
        assert_eq!(
            plan(&pool(1, PoolState::Ready), &[drained], NOW, 0, HealthPolicy::default(), &HashSet::new()),
            [Action::Launch { count: 1 }]
        );
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    #[test]
    fn a_hot_pool_grows_only_after_the_window() {
        let p = ScalePolicy { sustain_ms: 30_000, ..ScalePolicy::default() };
        // 2 nodes of 100 Mbit/s carrying 150: 75 % > 70 %.
        let (change, pressure) = scale(2, 2, 150.0, 100, Pressure::default(), T, p);
        assert_eq!(change, None);
        assert_eq!(pressure.hot_since, Some(T));
        let (change, pressure) = scale(2, 2, 150.0, 100, pressure, T + 29_999, p);
        assert_eq!((change, pressure.hot_since), (None, Some(T)));
        let (change, pressure) = scale(2, 2, 150.0, 100, pressure, T + 30_000, p);
        assert_eq!((change, pressure), (Some(3), Pressure::default()));
    }

    #[test]
    fn a_dip_resets_the_window() {
        let p = ScalePolicy::default();
        let (_, hot) = scale(2, 2, 150.0, 100, Pressure::default(), T, p);
        let (_, calm) = scale(2, 2, 100.0, 100, hot, T + 10_000, p);
        assert_eq!(calm, Pressure::default());
        let (change, _) = scale(2, 2, 150.0, 100, calm, T + 31_000, p);
        assert_eq!(change, None, "the window starts again after the dip");
    }

    #[test]
    fn a_cold_pool_shrinks_but_never_below_the_minimum() {
        let p = ScalePolicy { sustain_ms: 1_000, ..ScalePolicy::default() };
        let (_, cold) = scale(4, 4, 10.0, 100, Pressure::default(), T, p);
        assert_eq!(scale(4, 4, 10.0, 100, cold, T + 1_000, p).0, Some(3));
        let (_, cold) = scale(2, 2, 0.0, 100, Pressure::default(), T, p);
        assert_eq!(cold, Pressure::default(), "at the minimum, nothing to shrink");
        assert_eq!(scale(2, 2, 0.0, 100, cold, T + 5_000, p).0, None);
    }

    #[test]
    fn a_converging_pool_is_not_judged() {
        let p = ScalePolicy { sustain_ms: 0, ..ScalePolicy::default() };
        assert_eq!(scale(3, 2, 200.0, 100, Pressure::default(), T, p), (None, Pressure::default()));
    }
}

/// `apply` and whole passes against a real store (SQLite) and the fake driver:
/// crash loops back off, a ready node clears that, one pool's error spares the
/// others.
#[cfg(test)]
mod driven {
    use super::*;
    use crate::clock::ManualClock;
    use headwater_provisioner::FakeDriver;

    const T0: i64 = 1_800_000_000_000;

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        clock: Arc<ManualClock>,
        driver: Arc<FakeDriver>,
        reconciler: Reconciler,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display())).await.unwrap();
        store.seed_builtin_types(T0).await.unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let driver = Arc::new(FakeDriver::new());
        let template = NodeTemplate {
            program: "/bin/headwater".into(),
            admin_url: "http://127.0.0.1:1".into(),
            content_url: "/tmp/content".into(),
            heartbeat_ms: 1000,
            trusted_proxies: vec![],
            metrics_token: "metrics".into(),
            admin_ca: None,
            node_tls: NodeTls::Off,
            access_log_truncate_clients: false,
        };
        let reconciler = Reconciler::new(
            store.clone(),
            Some(driver.clone() as Arc<dyn Driver>),
            clock.clone(),
            template,
            HealthPolicy::default(),
            ScalePolicy::default(),
        );
        Rig { _dir: dir, store, clock, driver, reconciler }
    }

    async fn sql(store: &Store, q: &str) {
        match &store.backend {
            crate::store::Backend::Sqlite(p) => {
                sqlx::query(sqlx::AssertSqlSafe(q.to_owned())).execute(p).await.unwrap();
            }
            crate::store::Backend::Postgres(_) => unreachable!("the rig runs on SQLite"),
        }
    }

    async fn spec_of(store: &Store, id: Uuid, now: UnixMs) -> PoolSpec {
        store.pools_to_reconcile(now).await.unwrap().into_iter().find(|p| p.id == id).unwrap()
    }

    async fn events(store: &Store, action: &str) -> usize {
        store.events(None, 500).await.unwrap().iter().filter(|e| e.action == action).count()
    }

    /// Marks a node ready as its heartbeat would.
    async fn heartbeat(store: &Store, node: Uuid, now: UnixMs) {
        let hb = crate::store::HeartbeatRecord {
            state: headwater_protocol::NodeState::Ready,
            address: "127.0.0.1:9".into(),
            image_version: "0.1.0".into(),
            egress_mbps: 0.0,
            open_connections: 0,
            cache_hit_ratio: 0.0,
            config_version: 1,
            probe_ok: true,
            probe_latency_ms: 1,
            probe_error: None,
            tls_address: None,
        };
        store.record_heartbeats(&[(node, hb, now)]).await.unwrap();
    }

    #[tokio::test]
    async fn a_crash_loop_backs_off_and_degrades_the_pool_once() {
        let r = rig().await;
        let pool = r.store.create_warm_pool("hls", 1, T0).await.unwrap();
        r.driver.exit_at_start(Some("exit status 1"));
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 1, "the pool's one node");
        // The node exited: failed, and no launch before the backoff (1 s) is over.
        r.clock.advance_ms(250);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 1);
        let p = spec_of(&r.store, pool, r.clock.now_ms()).await;
        assert_eq!(p.degraded_reason.as_deref(), Some("node exits at start (exit status 1)"));
        assert_eq!(p.launch_failures, 1);
        assert_eq!(p.launch_after, Some(T0 + 250 + 1_000));
        r.clock.advance_ms(500);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 1, "still backing off");
        // Each failure doubles the pause: launches at +1.25 s, then 2 s, 4 s, 8 s later.
        let mut launches = vec![];
        for _ in 0..(60 * 4) {
            r.clock.advance_ms(250);
            let before = r.driver.launched().len();
            r.reconciler.reconcile_once().await.unwrap();
            if r.driver.launched().len() > before {
                launches.push(r.clock.now_ms() - T0);
            }
        }
        assert_eq!(launches[..4], [1_250, 3_500, 7_750, 16_000], "{launches:?}");
        assert!(launches.len() <= 7, "a minute of crash loop launches a handful of nodes, not 240: {launches:?}");
        assert_eq!(events(&r.store, "pool.degraded").await, 1, "one event when it degrades");
        let failed: i64 =
            r.store.pool_health(pool).await.unwrap().iter().filter(|n| n.state == NodeState::Failed).count() as i64;
        assert!(failed <= FAILED_NODES_KEPT, "failed rows are trimmed: {failed}");
    }

    #[tokio::test]
    async fn unheard_nodes_routers_still_reach_are_held_when_admin_cannot_see_their_instances() {
        let r = rig().await;
        // A Kubernetes target admin cannot connect to: it lost its view of that
        // cluster, so no driver can say whether the pods run.
        let kubernetes: KubernetesSettings = serde_json::from_value(serde_json::json!({
            "namespace": "ns", "image": "headwater:1", "kubeconfig": "/nonexistent/kubeconfig"}))
        .unwrap();
        let far = crate::store::NewTarget {
            name: "far".into(),
            kind: TargetKind::Kubernetes,
            zone: "far".into(),
            region: "far".into(),
            max_nodes: None,
            max_mbps: None,
            settings: crate::store::TargetSettings { nodes: NodeSettings::default(), kubernetes: Some(kubernetes) },
        };
        r.store.create_target(&far, "test", T0).await.unwrap();
        let pool = r.store.create_warm_pool("hls", 4, T0).await.unwrap();
        let mut ids = Vec::new();
        for domain in 0..4 {
            let id = Uuid::now_v7();
            let placement = Placement { upgrade_domain: domain, image_version: None, target: Some("far") };
            r.store.register_node(id, pool, b"hash", b"join", placement, "test", T0).await.unwrap();
            r.store.set_node_handle(id, &format!("pod:hw-{}", id.simple()), T0).await.unwrap();
            heartbeat(&r.store, id, T0).await;
            ids.push(id);
        }
        let live = || async { r.store.pool_health(pool).await.unwrap().iter().filter(|n| n.state.live()).count() };
        let state = || async { r.store.target("far").await.unwrap().unwrap().target.state };
        // Admin hears none of them for a heartbeat timeout; the routers still reach them all.
        r.clock.advance_ms(HealthPolicy::default().heartbeat_timeout_ms + 1);
        r.store.record_sightings("router-a", &ids, r.clock.now_ms()).await.unwrap();
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(state().await, TargetState::Unreachable);
        assert_eq!(live().await, 4, "held: players still reach them");
        assert!(r.driver.launched().is_empty(), "nothing launched in their place");
        // The routers lose them too: then they are gone, and replaced as usual.
        r.clock.advance_ms(HealthPolicy::default().heartbeat_timeout_ms + 1);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(live().await, 4, "replaced on local");
        assert!(
            r.store
                .pool_health(pool)
                .await
                .unwrap()
                .iter()
                .all(|n| !n.state.live() || n.target.as_deref() == Some("local"))
        );
    }

    #[tokio::test]
    async fn a_node_that_drains_by_itself_is_stopped_once_it_is_gone() {
        let r = rig().await;
        let pool = r.store.create_warm_pool("hls", 2, T0).await.unwrap();
        r.reconciler.reconcile_once().await.unwrap();
        let ids: Vec<Uuid> = r.driver.launched().iter().map(|s| s.id).collect();
        for id in &ids {
            heartbeat(&r.store, *id, T0).await;
        }
        // Both drain on their own (pods deleted by someone): one exits, one goes silent.
        for id in &ids {
            sql(&r.store, &format!("UPDATE nodes SET state = 'draining' WHERE id = x'{}'", id.simple())).await;
        }
        r.driver.exit(ids[0], "exit status 0");
        r.reconciler.reconcile_once().await.unwrap();
        let state = |id: Uuid| {
            let store = r.store.clone();
            async move { store.pool_health(pool).await.unwrap().into_iter().find(|n| n.id == id).map(|n| n.state) }
        };
        assert_eq!(state(ids[0]).await, None, "stopped: no longer among the pool's nodes");
        assert_eq!(state(ids[1]).await, Some(NodeState::Draining), "still draining, still heard from");
        r.clock.advance_ms(HealthPolicy::default().heartbeat_timeout_ms + 1);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(state(ids[1]).await, None);
        assert_eq!(events(&r.store, "node.stopped").await, 2);
        // And the pool got two nodes in their place.
        let live = r.store.pool_health(pool).await.unwrap().iter().filter(|n| n.state.live()).count();
        assert_eq!(live, 2);
    }

    #[tokio::test]
    async fn a_node_that_becomes_ready_ends_the_backoff() {
        let r = rig().await;
        let pool = r.store.create_warm_pool("hls", 1, T0).await.unwrap();
        r.driver.refuse_launches(Some("no room"));
        r.reconciler.reconcile_once().await.unwrap();
        let p = spec_of(&r.store, pool, r.clock.now_ms()).await;
        assert!(
            p.degraded_reason.as_deref().is_some_and(|r| r.contains("could not be launched") && r.contains("no room"))
        );
        r.driver.refuse_launches(None);
        r.clock.advance_ms(1_000);
        r.reconciler.reconcile_once().await.unwrap();
        let node = r.driver.launched().last().unwrap().id;
        assert_eq!(r.driver.running(), vec![node]);
        heartbeat(&r.store, node, r.clock.now_ms()).await;
        r.reconciler.reconcile_once().await.unwrap();
        let p = spec_of(&r.store, pool, r.clock.now_ms()).await;
        assert_eq!((p.degraded_reason, p.launch_failures, p.launch_after), (None, 0, None));
        assert_eq!(p.state, PoolState::Ready, "a warm pool whose node is ready is ready");
        assert_eq!(events(&r.store, "pool.recovered").await, 1);
    }

    #[tokio::test]
    async fn one_pools_error_spares_the_others_and_is_retried_later() {
        let r = rig().await;
        // An image whose stored arguments cannot be read: launching its pool's
        // nodes fails in the store, for that pool only.
        sql(&r.store, &format!("INSERT INTO images (origin_type, version, command, args, created_at) VALUES ('hls', 'bad', 'headwater', '{{\"x\": 1}}', {T0})")).await;
        sql(&r.store, "UPDATE origin_types SET current_image = 'bad' WHERE name = 'hls'").await;
        let broken = r.store.create_warm_pool("hls", 1, T0).await.unwrap();
        sql(&r.store, "UPDATE origin_types SET current_image = NULL WHERE name = 'hls'").await;
        let fine = r.store.create_warm_pool("hls", 2, T0).await.unwrap();
        r.reconciler.reconcile_once().await.unwrap();
        let nodes_of = |pool: Uuid| {
            let store = r.store.clone();
            async move { store.pool_health(pool).await.unwrap().len() }
        };
        assert_eq!(nodes_of(fine).await, 2, "the pool after the broken one got its nodes");
        let (errors, retry_at) = r.reconciler.errors.lock().unwrap()[&broken];
        assert_eq!((errors, retry_at), (1, T0 + 250));
        // Skipped until then; looked at again after it, and the pause grows.
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.reconciler.errors.lock().unwrap()[&broken], (1, T0 + 250));
        r.clock.advance_ms(250);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.reconciler.errors.lock().unwrap()[&broken], (2, T0 + 250 + 500));
        // Fixed, it is reconciled and forgotten.
        sql(&r.store, "UPDATE images SET args = '[\"origin\"]' WHERE version = 'bad'").await;
        r.clock.advance_ms(500);
        r.reconciler.reconcile_once().await.unwrap();
        assert!(!r.reconciler.errors.lock().unwrap().contains_key(&broken));
        assert_eq!(nodes_of(broken).await, 1);
        let spec = r
            .driver
            .launched()
            .into_iter()
            .find(|s| s.args.contains(&"bad".to_owned()))
            .expect("launched on its image");
        assert_eq!(spec.args[0], "origin");
    }

    #[tokio::test]
    async fn launches_wait_for_a_target_with_room_and_go_on_when_a_quota_is_raised() {
        let r = rig().await;
        sql(&r.store, "UPDATE targets SET max_nodes = 1 WHERE name = 'local'").await;
        let pool = r.store.create_warm_pool("hls", 3, T0).await.unwrap();
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 1, "the quota holds");
        let p = spec_of(&r.store, pool, T0).await;
        let want = "waiting for capacity: no target has room for a 100 Mbit/s node (local: 1 of 1 nodes)";
        assert_eq!(p.waiting_reason.as_deref(), Some(want));
        assert_eq!(p.degraded_reason, None, "waiting for room is not a failure");
        // Pass after pass, one event.
        r.clock.advance_ms(250);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(events(&r.store, "pool.waiting").await, 1);
        // 250 Mbit/s takes one more 100 Mbit/s node, not two.
        sql(&r.store, "UPDATE targets SET max_nodes = NULL, max_mbps = 250 WHERE name = 'local'").await;
        r.clock.advance_ms(250);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 2);
        let p = spec_of(&r.store, pool, r.clock.now_ms()).await;
        assert!(p.waiting_reason.as_deref().is_some_and(|w| w.contains("local: 200 of 250 Mbit/s in use")), "{p:?}");
        sql(&r.store, "UPDATE targets SET max_mbps = NULL WHERE name = 'local'").await;
        r.clock.advance_ms(250);
        r.reconciler.reconcile_once().await.unwrap();
        assert_eq!(r.driver.launched().len(), 3);
        assert_eq!(spec_of(&r.store, pool, r.clock.now_ms()).await.waiting_reason, None);
        assert_eq!(events(&r.store, "pool.placed").await, 1);
        let on_local =
            r.store.pool_health(pool).await.unwrap().iter().filter(|n| n.target.as_deref() == Some("local")).count();
        assert_eq!(on_local, 3, "every node names its target");
    }

    #[tokio::test]
    async fn a_target_added_during_a_pass_is_placed_on_at_once() {
        let r = rig().await;
        r.reconciler.connect_drivers().await.unwrap();
        // Made after this pass looked at the targets.
        let b = crate::store::NewTarget {
            name: "host-b".into(),
            kind: TargetKind::Process,
            zone: "b".into(),
            region: "b".into(),
            max_nodes: None,
            max_mbps: None,
            settings: Default::default(),
        };
        r.store.create_target(&b, "operator", T0).await.unwrap();
        let pool = r.store.create_warm_pool("hls", 2, T0).await.unwrap();
        let p = spec_of(&r.store, pool, T0).await;
        assert_eq!(r.reconciler.apply(&p, &[], Action::Launch { count: 2 }).await.unwrap(), None);
        let mut on: Vec<Option<String>> =
            r.store.pool_health(pool).await.unwrap().into_iter().map(|n| n.target).collect();
        on.sort();
        assert_eq!(on, [Some("host-b".to_owned()), Some("local".to_owned())], "spread over both zones");
    }

    #[tokio::test]
    async fn apply_records_each_action_in_the_store() {
        let r = rig().await;
        let pool = r.store.create_warm_pool("hls", 2, T0).await.unwrap();
        let p = spec_of(&r.store, pool, T0).await;
        r.reconciler.connect_drivers().await.unwrap();
        assert_eq!(r.reconciler.apply(&p, &[], Action::Launch { count: 2 }).await.unwrap(), None);
        let nodes = r.store.pool_health(pool).await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| n.state == NodeState::Starting && n.handle.is_some()));
        // Spread over the upgrade domains, tokens passed in the environment only.
        let mut domains: Vec<i32> = nodes.iter().map(|n| n.upgrade_domain).collect();
        domains.sort();
        assert_eq!(domains, [0, 1]);
        for spec in r.driver.launched() {
            assert!(spec.env.iter().any(|(k, v)| k == "HEADWATER_JOIN_TOKEN" && v.starts_with("hwj_")));
            assert!(!spec.args.iter().any(|a| a.starts_with("hwn_")));
        }
        // A starting node given up on is a failed start, and it is stopped.
        let why = r
            .reconciler
            .apply(&p, &nodes, Action::Fail { node: nodes[0].id, reason: "no heartbeat for 31000 ms".into() })
            .await
            .unwrap();
        assert_eq!(why.as_deref(), Some("node never became ready: no heartbeat for 31000 ms"));
        assert_eq!(r.store.node_state(nodes[0].id).await.unwrap(), NodeState::Failed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !r.driver.terminated().contains(&nodes[0].id) {
            assert!(std::time::Instant::now() < deadline, "never terminated");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Stopping is not a failure.
        assert_eq!(r.reconciler.apply(&p, &nodes, Action::Stop { node: nodes[1].id }).await.unwrap(), None);
        assert_eq!(r.store.node_state(nodes[1].id).await.unwrap(), NodeState::Stopped);
    }
}
