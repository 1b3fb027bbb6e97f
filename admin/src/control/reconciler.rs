//! The reconciler: level-triggered, it compares each pool's desired size (store)
//! with its nodes (store + heartbeats + driver) and converges — launch, mark
//! failed, stop. It is not told why it was woken, so every pass is idempotent.
//! [`plan`] is pure; [`Reconciler::apply`] does the I/O, each action recorded in the
//! store as it happens, so a crash resumes from what the store says.

use std::sync::Arc;
use std::time::Duration;

use headwater_provisioner::{Driver, Handle, InstanceSpec, Policy, Status};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{Clock, UnixMs};
use crate::keys;
use crate::store::{HALT_AFTER_FAILED_NODES, NodeHealthRow, Placement, PoolTarget, Store};

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

/// What to do for one pool, from its desired size and its nodes. `listening_since`
/// is when this reconciler started hearing heartbeats: silence from before then
/// (admin was down or restarting) is not held against a node.
pub fn plan(
    pool: &PoolTarget,
    nodes: &[NodeHealthRow],
    now: UnixMs,
    listening_since: UnixMs,
    policy: HealthPolicy,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut healthy: Vec<&NodeHealthRow> = Vec::new();
    for n in nodes.iter().filter(|n| matches!(n.state.as_str(), "starting" | "ready")) {
        let silent_for = now - n.last_heartbeat.unwrap_or(n.created_at).max(listening_since);
        let limit = if n.last_heartbeat.is_some() { policy.heartbeat_timeout_ms } else { policy.start_timeout_ms };
        if silent_for > limit {
            actions.push(Action::Fail { node: n.id, reason: format!("no heartbeat for {silent_for} ms") });
        } else if n.state == "ready" && n.recent_probe_failures >= 2 {
            actions.push(Action::Fail { node: n.id, reason: "self-probe failed twice".into() });
        } else {
            healthy.push(n);
        }
    }
    // A released pool's nodes serve the account that left for a grace period
    // (routers may not have switched yet); then they stop.
    let lingering = pool.state == "deleting" && now < pool.updated_at + crate::domain::MOVE_GRACE_MS;
    let desired = if lingering {
        healthy.len()
    } else if matches!(pool.state.as_str(), "deleting" | "deleted") {
        0
    } else {
        pool.desired_nodes.max(0) as usize
    };
    if let Some(image) = pool.image_version.as_deref().filter(|_| desired > 0) {
        let (old, new): (Vec<&NodeHealthRow>, Vec<&NodeHealthRow>) =
            healthy.iter().partition(|n| n.image_version.as_deref() != Some(image));
        if !old.is_empty() {
            roll(pool, &old, &new, desired, &mut actions);
            return actions;
        }
    }
    if healthy.len() < desired {
        actions.push(Action::Launch { count: desired - healthy.len() });
    } else if healthy.len() > desired {
        // Stop the ones that serve least: starting before ready, newest first.
        healthy.sort_by_key(|n| (n.state == "ready", std::cmp::Reverse(n.id)));
        for n in healthy.iter().take(healthy.len() - desired) {
            actions.push(Action::Stop { node: n.id });
        }
    }
    actions
}

/// One step of a rolling upgrade inside a pool (some healthy nodes still run
/// another image): surge one node on the pool's image; once it is ready, stop (drain)
/// one old node, lowest upgrade domain first. Capacity never drops below `desired`.
/// Once [`HALT_AFTER_FAILED_NODES`] nodes on the new image failed, no more are
/// surged: the old nodes keep serving until a rollback.
fn roll(pool: &PoolTarget, old: &[&NodeHealthRow], new: &[&NodeHealthRow], desired: usize, actions: &mut Vec<Action>) {
    let healthy = old.len() + new.len();
    if new.iter().any(|n| n.state == "starting") {
        return;
    }
    if healthy > desired {
        let mut old = old.to_vec();
        old.sort_by_key(|n| (n.state == "ready", n.upgrade_domain, n.id));
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
}

pub struct Reconciler {
    pub store: Store,
    pub driver: Arc<dyn Driver>,
    pub clock: Arc<dyn Clock>,
    pub policy: HealthPolicy,
    pub template: NodeTemplate,
    pub interval: Duration,
    /// When this reconciler started (see [`plan`]).
    pub started: UnixMs,
    pub scale_policy: ScalePolicy,
    /// Per shared pool, since when it has been hot or cold (in memory: a restart
    /// only restarts the window).
    pub pressure: std::sync::Mutex<std::collections::HashMap<Uuid, Pressure>>,
}

impl Reconciler {
    /// Adopts the nodes the driver still runs that the store knows; stops strays.
    pub async fn adopt(&self) -> anyhow::Result<()> {
        let known = self.store.live_node_ids().await?;
        for h in self.driver.list().await? {
            if known.contains(&h.id) {
                tracing::info!(node = %h.id, "adopted running node");
                // The handle may not have been recorded if admin died right after launching.
                self.store.set_node_handle(h.id, &h.reference, self.clock.now_ms()).await?;
            } else {
                tracing::warn!(node = %h.id, "stopping a stray node the store does not know");
                self.driver.terminate(&h, Duration::from_secs(5)).await?;
            }
        }
        Ok(())
    }

    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.adopt().await {
            tracing::error!(error = %e, "adopting nodes");
        }
        let mut every = crate::control::every::Every::new(self.interval, &shutdown);
        while every.next().await {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconcile");
            }
        }
    }

    /// One pass over every pool.
    pub async fn reconcile_once(&self) -> anyhow::Result<()> {
        for mut pool in self.store.pool_targets(self.clock.now_ms()).await? {
            let mut nodes = self.store.pool_health(pool.id).await?;
            self.fail_exited(&mut nodes).await?;
            if pool.kind == "shared" && pool.state != "deleted" {
                self.autoscale(&mut pool, &nodes).await?;
            }
            for action in plan(&pool, &nodes, self.clock.now_ms(), self.started, self.policy) {
                self.apply(&pool, &nodes, action).await?;
            }
            // A node the store gave up on must not keep running.
            for n in nodes.iter().filter(|n| n.state == "failed") {
                if let Some(h) = handle(n)
                    && self.driver.inspect(&h).await == Status::Running
                {
                    self.terminate_later(h, Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    /// A starting node whose process has exited will never be ready: failed now,
    /// not at the start timeout.
    async fn fail_exited(&self, nodes: &mut [NodeHealthRow]) -> anyhow::Result<()> {
        for n in nodes.iter_mut().filter(|n| n.state == "starting") {
            if let Some(h) = handle(n)
                && self.driver.inspect(&h).await == Status::Exited
            {
                tracing::warn!(node = %n.id, "node exited before it was ready");
                let now = self.clock.now_ms();
                self.store.set_node_state(n.id, "failed", "exited before it was ready", "health-monitor", now).await?;
                n.state = "failed".into();
            }
        }
        Ok(())
    }

    /// Grows or shrinks a shared pool on its measured egress.
    async fn autoscale(&self, pool: &mut PoolTarget, nodes: &[NodeHealthRow]) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let ready: Vec<_> = nodes.iter().filter(|n| n.state == "ready").collect();
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

    async fn apply(&self, pool: &PoolTarget, nodes: &[NodeHealthRow], action: Action) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        match action {
            Action::Launch { count } => {
                // Spread over upgrade domains, so a rolling upgrade never takes a pool down.
                let mut domains: Vec<i32> = nodes
                    .iter()
                    .filter(|n| matches!(n.state.as_str(), "starting" | "ready"))
                    .map(|n| n.upgrade_domain)
                    .collect();
                for _ in 0..count {
                    let id = Uuid::now_v7();
                    let token = format!("hwn_{}", keys::random_token().trim_start_matches("hwop_"));
                    let domain = Policy::DEFAULT.upgrade_domain(&domains);
                    domains.push(domain);
                    let image = pool.image_version.as_deref();
                    self.store
                        .register_node(
                            id,
                            pool.id,
                            &keys::hash(&token),
                            Placement { upgrade_domain: domain, image_version: image },
                            "reconciler",
                            now,
                        )
                        .await?;
                    let spec = self.spec(id, token, pool).await?;
                    match self.driver.launch(&spec).await {
                        Ok(h) => {
                            self.store.set_node_handle(id, &h.reference, now).await?;
                            tracing::info!(node = %id, pool = %pool.id, "node launched");
                        }
                        Err(e) => {
                            tracing::warn!(node = %id, error = %e, "node could not be launched");
                            let reason = format!("could not be launched: {e}");
                            self.store.set_node_state(id, "failed", &reason, "reconciler", now).await?;
                        }
                    }
                }
            }
            Action::Fail { node, reason } => {
                tracing::warn!(%node, %reason, "node failed");
                self.store.set_node_state(node, "failed", &reason, "health-monitor", now).await?;
                if let Some(h) = nodes.iter().find(|n| n.id == node).and_then(handle) {
                    self.terminate_later(h, Duration::from_secs(5));
                }
            }
            Action::Stop { node } => {
                self.store.set_node_state(node, "stopped", "the pool needs fewer nodes", "reconciler", now).await?;
                if let Some(h) = nodes.iter().find(|n| n.id == node).and_then(handle) {
                    // SIGTERM: the node drains, then exits.
                    self.terminate_later(h, Duration::from_secs(30));
                }
            }
        }
        Ok(())
    }

    /// Stops a node in the background, so a slow drain never holds up the loop.
    fn terminate_later(&self, h: Handle, grace: Duration) {
        let driver = self.driver.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.terminate(&h, grace).await {
                tracing::warn!(node = %h.id, error = %e, "terminating");
            }
        });
    }

    /// How to run a node of `pool`: its image's program and arguments (`headwater`
    /// means this very binary), then what every node is told.
    async fn spec(&self, id: Uuid, token: String, pool: &PoolTarget) -> anyhow::Result<InstanceSpec> {
        let t = &self.template;
        let image = match &pool.image_version {
            Some(v) => self.store.image(&pool.origin_type, v).await?,
            None => None,
        };
        let (program, mut args) = match image {
            Some(i) if i.command != "headwater" => (std::path::PathBuf::from(i.command), i.args.0),
            Some(i) => (t.program.clone(), i.args.0),
            None => (t.program.clone(), vec!["origin".to_owned()]),
        };
        args.extend(["--listen", "127.0.0.1:0", "--node-id"].map(String::from));
        args.push(id.to_string());
        args.extend(["--admin-url".into(), t.admin_url.clone(), "--content".into(), t.content_url.clone()]);
        args.extend(["--capacity-mbps".into(), pool.node_capacity_mbps.to_string()]);
        args.extend(["--heartbeat-ms".into(), t.heartbeat_ms.to_string()]);
        // A router on this machine forwards players' addresses (for IP allow-lists).
        args.extend(["--trusted-proxy".into(), "127.0.0.1/32".into()]);
        if let Some(v) = &pool.image_version {
            args.extend(["--image-version".into(), v.clone()]);
        }
        // The token goes in the environment, not on the command line.
        Ok(InstanceSpec { id, program, args, env: vec![("HEADWATER_NODE_TOKEN".into(), token)] })
    }
}

fn handle(n: &NodeHealthRow) -> Option<Handle> {
    n.handle.as_ref().map(|r| Handle { id: n.id, reference: r.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn pool(desired: i32, state: &str) -> PoolTarget {
        PoolTarget {
            kind: "dedicated".into(),
            id: Uuid::now_v7(),
            state: state.into(),
            desired_nodes: desired,
            node_capacity_mbps: 100,
            image_version: None,
            updated_at: NOW - crate::domain::MOVE_GRACE_MS,
            origin_type: "hls".into(),
            failed_on_image: 0,
        }
    }

    fn node(state: &str, heartbeat_ago: Option<i64>, probe_failures: i64) -> NodeHealthRow {
        NodeHealthRow {
            id: Uuid::now_v7(),
            pool_id: Uuid::nil(),
            handle: Some("pid:1".into()),
            state: state.into(),
            last_heartbeat: heartbeat_ago.map(|a| NOW - a),
            created_at: NOW - 60_000,
            recent_probe_failures: probe_failures,
            egress_mbps: 0.0,
            upgrade_domain: 0,
            image_version: None,
        }
    }

    fn on(image: &str, state: &str, domain: i32) -> NodeHealthRow {
        NodeHealthRow { image_version: Some(image.into()), upgrade_domain: domain, ..node(state, Some(100), 0) }
    }

    #[test]
    fn a_rolling_upgrade_surges_one_new_node_then_drains_one_old_node() {
        let pool = PoolTarget { image_version: Some("2".into()), ..pool(2, "ready") };
        let (a, b) = (on("1", "ready", 0), on("1", "ready", 1));
        let plan_for = |nodes: &[NodeHealthRow]| plan(&pool, nodes, NOW, 0, HealthPolicy::default());
        // Two old nodes: one new node first, capacity never below two.
        assert_eq!(plan_for(&[a.clone(), b.clone()]), [Action::Launch { count: 1 }]);
        // While it starts, nothing else.
        let starting = on("2", "starting", 0);
        assert!(plan_for(&[a.clone(), b.clone(), starting]).is_empty());
        // Ready: the old node of the lowest upgrade domain is drained.
        let ready = on("2", "ready", 0);
        assert_eq!(plan_for(&[b.clone(), a.clone(), ready.clone()]), [Action::Stop { node: a.id }]);
        // Then the next one, the same way.
        assert_eq!(plan_for(&[b.clone(), ready.clone()]), [Action::Launch { count: 1 }]);
        let second = on("2", "ready", 1);
        assert_eq!(plan_for(&[b.clone(), ready.clone(), second.clone()]), [Action::Stop { node: b.id }]);
        assert!(plan_for(&[ready.clone(), second]).is_empty(), "done");
        // Two new nodes failed: the upgrade is halted, the old nodes keep serving.
        let halted = PoolTarget { failed_on_image: 2, ..pool.clone() };
        assert!(plan(&halted, &[a, b], NOW, 0, HealthPolicy::default()).is_empty());
    }

    #[test]
    fn an_empty_pool_is_filled() {
        assert_eq!(plan(&pool(4, "creating"), &[], NOW, 0, HealthPolicy::default()), [Action::Launch { count: 4 }]);
    }

    #[test]
    fn a_silent_node_is_failed_and_replaced() {
        let nodes = [node("ready", Some(500), 0), node("ready", Some(10_000), 0)];
        let actions = plan(&pool(2, "ready"), &nodes, NOW, 0, HealthPolicy::default());
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
        let nodes = [node("ready", Some(10_000), 0)];
        assert!(plan(&pool(1, "ready"), &nodes, NOW, NOW - 1_000, HealthPolicy::default()).is_empty());
        assert!(matches!(
            plan(&pool(1, "ready"), &nodes, NOW, NOW - 4_000, HealthPolicy::default())[0],
            Action::Fail { .. }
        ));
    }

    #[test]
    fn two_failed_self_probes_fail_a_node() {
        let nodes = [node("ready", Some(100), 2), node("ready", Some(100), 1)];
        let actions = plan(&pool(2, "ready"), &nodes, NOW, 0, HealthPolicy::default());
        assert_eq!(actions[0], Action::Fail { node: nodes[0].id, reason: "self-probe failed twice".into() });
        assert_eq!(actions[1], Action::Launch { count: 1 });
    }

    #[test]
    fn a_starting_node_gets_time_to_start() {
        let mut starting = node("starting", None, 0);
        starting.created_at = NOW - 5_000;
        assert!(plan(&pool(1, "creating"), &[starting.clone()], NOW, 0, HealthPolicy::default()).is_empty());
        starting.created_at = NOW - 31_000;
        assert!(matches!(
            plan(&pool(1, "creating"), &[starting], NOW, 0, HealthPolicy::default())[0],
            Action::Fail { .. }
        ));
    }

    #[test]
    fn surplus_nodes_are_stopped_starting_first_and_released_pools_emptied() {
        let ready = node("ready", Some(100), 0);
        let starting = node("starting", Some(100), 0);
        let actions = plan(&pool(1, "ready"), &[ready.clone(), starting.clone()], NOW, 0, HealthPolicy::default());
        assert_eq!(actions, [Action::Stop { node: starting.id }]);
        let actions = plan(&pool(3, "deleting"), std::slice::from_ref(&ready), NOW, 0, HealthPolicy::default());
        assert_eq!(actions, [Action::Stop { node: ready.id }]);
        // ... but only once the grace for routers to follow the move is over.
        let just_released = PoolTarget { updated_at: NOW - 1_000, ..pool(3, "deleting") };
        assert!(plan(&just_released, std::slice::from_ref(&ready), NOW, 0, HealthPolicy::default()).is_empty());
        // Failed, draining and stopped nodes are not counted as serving.
        let drained = node("draining", Some(100), 0);
        assert_eq!(plan(&pool(1, "ready"), &[drained], NOW, 0, HealthPolicy::default()), [Action::Launch { count: 1 }]);
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
