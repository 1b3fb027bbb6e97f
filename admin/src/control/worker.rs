//! The operation worker: claims operations from the durable queue and runs their
//! steps. Which steps an operation has is decided by [`plan`], a pure function; the
//! store applies each step's effect and records it atomically, so a worker can die
//! anywhere and another picks the operation up after its last finished step.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::{Clock, UnixMs};
use crate::domain::{Offer, dedicated_pool_nodes};
use crate::states::OperationKind;
use crate::store::{Effect, OperationRow, Store, StoreError, UpgradeStep};

/// How long a claim lasts before another worker may take the operation over.
pub const LEASE_MS: i64 = 30_000;
/// Attempts before an operation is marked failed.
pub const MAX_ATTEMPTS: i32 = 5;

/// One step of an operation: its name (recorded in the operation), its effect,
/// and what it waits for before it counts as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub effect: Option<Effect>,
    /// What must hold before the step counts as done.
    pub wait: Option<Wait>,
}

/// A condition outside the store's tables that a step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The pool the account's offer calls for has this many ready nodes.
    ReadyNodes(i64),
    /// Every ready node of the pool the account moves to runs the current
    /// configuration (it has heard of the account), so it serves the account before
    /// routers are pointed at it.
    NodesConfigured,
    /// Every pool of the upgrade's origin type runs its version (the pools are
    /// upgraded a few at a time; see `Store::advance_upgrade`).
    PoolsUpgraded,
}

/// Pools of one type upgraded at the same time.
pub const MAX_CONCURRENT_POOLS: usize = 2;

impl Step {
    fn apply(name: &'static str, effect: Effect) -> Self {
        Self { name, effect: Some(effect), wait: None }
    }
}

/// Facts about the account an operation acts on, read before planning.
#[derive(Debug, Clone, Copy)]
pub struct AccountFacts {
    pub id: Uuid,
    pub offer: Offer,
    pub node_capacity_mbps: u32,
}

/// How far an operation got in one run.
enum Progress {
    Done,
    /// Waiting for something outside the store since `since` (when its last
    /// step finished, or when it was asked for); run again shortly.
    Waiting {
        since: UnixMs,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("operation {0} cannot be planned: {1}")]
    Unplannable(Uuid, String),
    /// An upgrade stopped because nodes on the new image failed.
    #[error("{0}")]
    Halted(String),
    /// A newer upload of the origin type replaced this upgrade (the store has
    /// already marked it so).
    #[error("superseded by a newer upgrade")]
    Superseded,
}

/// The steps of an operation, in order. Pure: the same operation and facts always
/// give the same plan, so a resumed operation sees the plan it started with. With
/// `wait_for_nodes` (a driver runs nodes), an account is only done once its pool
/// has enough ready nodes: one for a shared pool, enough to carry the SLA for a
/// dedicated one.
pub fn plan(op: &OperationRow, account: Option<AccountFacts>, wait_for_nodes: bool) -> Result<Vec<Step>, String> {
    let need_account = || account.ok_or_else(|| "the operation names no account".to_owned());
    let steps = match op.kind {
        // Reactivation sizes a retained pool again, the way a change of offer does.
        OperationKind::Create | OperationKind::ChangeOffer | OperationKind::Reactivate => {
            let a = need_account()?;
            let nodes = match a.offer {
                Offer::Sla(m) => dedicated_pool_nodes(m, a.node_capacity_mbps),
                _ => 0,
            };
            // Make before break: the target pool is prepared and staged (its nodes
            // serve the account), its nodes are ready and configured, and only then
            // is the account moved, so routers are only ever pointed at nodes that
            // serve it; the pool it leaves serves it a while longer.
            let mut steps =
                vec![Step::apply("pool_prepared", Effect::PreparePool { account_id: a.id, dedicated_nodes: nodes })];
            if wait_for_nodes {
                // The spare is not needed to carry the SLA.
                let need = if nodes > 0 { i64::from(nodes) - 1 } else { 1 };
                steps.push(Step { name: "nodes_ready", effect: None, wait: Some(Wait::ReadyNodes(need)) });
                steps.push(Step { name: "nodes_configured", effect: None, wait: Some(Wait::NodesConfigured) });
            }
            steps.push(Step::apply("pool_assigned", Effect::AssignPool { account_id: a.id, dedicated_nodes: nodes }));
            steps.push(Step::apply("allocation_recorded", Effect::RecordAllocation { account_id: a.id }));
            steps
        }
        OperationKind::Update | OperationKind::Deactivate => {
            let a = need_account()?;
            vec![Step::apply("allocation_recorded", Effect::RecordAllocation { account_id: a.id })]
        }
        OperationKind::Delete => {
            let a = need_account()?;
            vec![Step::apply("released", Effect::Release { account_id: a.id })]
        }
        OperationKind::Upgrade => {
            let origin_type = op.origin_type.clone().ok_or("an upgrade names an origin type")?;
            let version = op.input.0.get("version").and_then(|v| v.as_str()).ok_or("an upgrade names a version")?;
            let mut steps = vec![Step::apply(
                "image_current",
                Effect::SetCurrentImage { origin_type: origin_type.clone(), version: version.to_owned() },
            )];
            if wait_for_nodes {
                steps.push(Step { name: "pools_upgraded", effect: None, wait: Some(Wait::PoolsUpgraded) });
            }
            // Where a later rollback goes back to.
            steps.push(Step::apply(
                "image_completed",
                Effect::CompleteImage { origin_type, version: version.to_owned() },
            ));
            steps
        }
    };
    Ok(steps)
}

/// Runs operations until cancelled.
pub struct Worker {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Names this worker in leases, so a step is only recorded by the lease holder.
    pub owner: String,
    /// Rung by the API when it enqueues an operation.
    pub wake: Arc<Notify>,
    /// How often to look for work when nobody rings.
    pub poll: Duration,
    /// Whether a driver runs nodes, so operations wait for them to be ready.
    pub wait_for_nodes: bool,
    /// When the soonest operation this worker put back to wait may run again (0:
    /// none), so the worker looks again then rather than at its next poll.
    retry_at: std::sync::atomic::AtomicI64,
}

/// How long an operation waiting for nodes waits before it looks again: a
/// quarter of how long it has waited so far, from 100 ms up to 1 s. Looking
/// again every 100 ms whatever the wait, a few waiting operations kept a
/// worker busy and the operations queued behind them waited their turn (the
/// fleet bench provisioned 3 accounts a second).
fn wait_recheck_ms(waited_ms: i64) -> i64 {
    (waited_ms / 4).clamp(100, 1_000)
}

impl Worker {
    pub fn new(store: Store, clock: Arc<dyn Clock>, wake: Arc<Notify>) -> Self {
        Self {
            store,
            clock,
            owner: format!("worker-{}", Uuid::now_v7().simple()),
            wake,
            poll: Duration::from_millis(500),
            wait_for_nodes: false,
            retry_at: std::sync::atomic::AtomicI64::new(0),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.run_once().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "operation worker"),
            }
            let retry_at = self.retry_at.swap(0, std::sync::atomic::Ordering::Relaxed);
            let pause = if retry_at > 0 {
                let ms = u64::try_from(retry_at - self.clock.now_ms()).unwrap_or(0);
                self.poll.min(Duration::from_millis(ms))
            } else {
                self.poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Claims and runs one operation; `false` when there was none to run.
    pub async fn run_once(&self) -> Result<bool, WorkerError> {
        let Some(op) = self.store.claim_operation(&self.owner, self.clock.now_ms(), LEASE_MS).await? else {
            return Ok(false);
        };
        tracing::debug!(operation = %op.id, kind = %op.kind, attempt = op.attempts, "running operation");
        match self.execute(&op).await {
            Ok(Progress::Done) => {
                tracing::info!(operation = %op.id, kind = %op.kind, "operation succeeded");
            }
            Err(WorkerError::Superseded) => {
                tracing::info!(operation = %op.id, "upgrade superseded by a newer one; left as it is");
            }
            Ok(Progress::Waiting { since }) => {
                let now = self.clock.now_ms();
                let at = now + wait_recheck_ms(now - since);
                self.store.defer_operation(&op, &self.owner, at, now).await?;
                let _ = self.retry_at.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |r| Some(if r == 0 { at } else { r.min(at) }),
                );
            }
            Err(e) => {
                let now = self.clock.now_ms();
                let give_up =
                    op.attempts >= MAX_ATTEMPTS || matches!(e, WorkerError::Unplannable(..) | WorkerError::Halted(_));
                let backoff = 1_000i64 << op.attempts.clamp(0, 6);
                if give_up {
                    tracing::warn!(operation = %op.id, kind = %op.kind, error = %e, "operation failed");
                } else {
                    tracing::warn!(operation = %op.id, error = %e, attempt = op.attempts, "operation attempt failed; retrying");
                }
                self.store.fail_attempt(&op, &self.owner, &e.to_string(), now + backoff, give_up, now).await?;
            }
        }
        Ok(true)
    }

    async fn execute(&self, op: &OperationRow) -> Result<Progress, WorkerError> {
        let facts = match op.account_id {
            Some(id) => Some(self.account_facts(id).await?),
            None => None,
        };
        let steps = plan(op, facts, self.wait_for_nodes).map_err(|e| WorkerError::Unplannable(op.id, e))?;
        let mut current = op.clone();
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            if current.done(step.name) {
                continue;
            }
            if let Some(wait) = step.wait
                && !self.holds(wait, op).await?
            {
                let since = current.steps.0.last().map_or(current.created_at, |s| s.at);
                return Ok(Progress::Waiting { since });
            }
            current = match self
                .store
                .complete_step(&current, &self.owner, step.name, step.effect.as_ref(), i == last, self.clock.now_ms())
                .await
            {
                // The lease was lost: to another worker, or to a newer upgrade.
                Err(StoreError::NotFound) if op.kind == OperationKind::Upgrade => return Err(WorkerError::Superseded),
                other => other?,
            };
            tracing::info!(operation = %op.id, kind = %op.kind, step = step.name, "step done");
        }
        Ok(Progress::Done)
    }

    async fn holds(&self, wait: Wait, op: &OperationRow) -> Result<bool, WorkerError> {
        Ok(match (wait, op.account_id) {
            (Wait::PoolsUpgraded, _) => self.upgrade_done(op).await?,
            (_, None) => true,
            (Wait::ReadyNodes(need), Some(account)) => {
                let ready = self.store.wanted_pool_ready_nodes(account).await? >= need;
                // Why it waits, on the operation, while it does.
                let waiting = if ready { None } else { self.store.account_pool_waiting(account).await? };
                let progress = waiting.map(|why| serde_json::json!({ "waiting": why }));
                let shown = op.progress.as_ref().map(|p| &p.0).filter(|p| !p.is_null());
                if shown != progress.as_ref() {
                    let value = progress.unwrap_or(serde_json::Value::Null);
                    self.store.set_progress(op.id, &value, self.clock.now_ms()).await?;
                }
                ready
            }
            (Wait::NodesConfigured, Some(account)) => {
                // A node that fetched the account's configuration serves it; only
                // for the others is the configuration as it is now worked out.
                for node in self.store.account_node_configs(account).await? {
                    if node.fetched_since_staging() {
                        continue;
                    }
                    let serving = self.store.node_serving(node.id, self.clock.now_ms()).await?;
                    if !node.runs(crate::control::node_config::node_config(node.id, &serving).version) {
                        return Ok(false);
                    }
                }
                true
            }
        })
    }

    /// Moves an upgrade on (see `Store::advance_upgrade`) and shows its progress on
    /// the operation; a halted upgrade fails the operation.
    async fn upgrade_done(&self, op: &OperationRow) -> Result<bool, WorkerError> {
        let (Some(origin_type), Some(version)) = (&op.origin_type, op.input.0.get("version").and_then(|v| v.as_str()))
        else {
            return Err(WorkerError::Unplannable(op.id, "an upgrade names a type and a version".into()));
        };
        let now = self.clock.now_ms();
        let concurrent = op.input.0.get("max_concurrent_pools").and_then(serde_json::Value::as_u64);
        let concurrent = concurrent.and_then(|c| usize::try_from(c).ok()).unwrap_or(MAX_CONCURRENT_POOLS).max(1);
        let step = UpgradeStep { op: op.id, owner: &self.owner, origin_type, version, since: op.created_at };
        let Some(progress) = self.store.advance_upgrade(&step, concurrent, now).await? else {
            return Err(WorkerError::Superseded);
        };
        self.store.set_progress(op.id, &serde_json::to_value(&progress).unwrap_or_default(), now).await?;
        if let Some(why) = progress.halted {
            return Err(WorkerError::Halted(why));
        }
        Ok(progress.finished())
    }

    async fn account_facts(&self, id: Uuid) -> Result<AccountFacts, WorkerError> {
        let a = self.store.account_by_id(id).await?;
        let t = self
            .store
            .origin_type(&a.origin_type)
            .await?
            .ok_or_else(|| WorkerError::Unplannable(id, format!("origin type {} is gone", a.origin_type)))?;
        let offer = Offer::from_db(a.offer, a.sla_mbps)
            .ok_or_else(|| WorkerError::Unplannable(id, format!("the stored offer {} has no SLA", a.offer)))?;
        Ok(AccountFacts { id, offer, node_capacity_mbps: u32::try_from(t.node_capacity_mbps).unwrap_or(1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OfferKind;
    use sqlx::types::Json;

    #[test]
    fn waiting_operations_look_again_less_often_the_longer_they_wait() {
        assert_eq!(wait_recheck_ms(0), 100);
        assert_eq!(wait_recheck_ms(2_000), 500);
        assert_eq!(wait_recheck_ms(60_000), 1_000);
        assert_eq!(wait_recheck_ms(-5), 100, "a clock that stepped back");
    }

    fn op(kind: OperationKind) -> OperationRow {
        OperationRow {
            id: Uuid::now_v7(),
            kind,
            account_id: None,
            origin_type: Some("hls".into()),
            customer_id: None,
            state: crate::states::OperationState::Running,
            step: None,
            steps: Json(vec![]),
            input: Json(serde_json::json!({"version": "2"})),
            attempts: 1,
            last_error: None,
            lease_owner: None,
            lease_until: None,
            not_before: 0,
            created_at: 0,
            updated_at: 0,
            progress: None,
        }
    }

    #[test]
    fn sla_creation_assigns_a_dedicated_pool_with_a_spare_then_records() {
        let id = Uuid::now_v7();
        let sla = Offer::parse(OfferKind::Sla, Some(300), 100).unwrap();
        let facts = AccountFacts { id, offer: sla, node_capacity_mbps: 100 };
        let steps = plan(&op(OperationKind::Create), Some(facts), false).unwrap();
        assert_eq!(
            steps.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["pool_prepared", "pool_assigned", "allocation_recorded"]
        );
        assert_eq!(steps[0].effect, Some(Effect::PreparePool { account_id: id, dedicated_nodes: 4 }));
        assert_eq!(steps[1].effect, Some(Effect::AssignPool { account_id: id, dedicated_nodes: 4 }));
        // With a driver, the SLA waits for the three nodes that carry 300 Mbit/s.
        let steps = plan(&op(OperationKind::Create), Some(facts), true).unwrap();
        assert_eq!(
            steps.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["pool_prepared", "nodes_ready", "nodes_configured", "pool_assigned", "allocation_recorded"]
        );
        assert_eq!(steps[1].wait, Some(Wait::ReadyNodes(3)));
        assert_eq!(steps[2].wait, Some(Wait::NodesConfigured));
    }

    #[test]
    fn shared_offers_need_no_dedicated_nodes() {
        let id = Uuid::now_v7();
        let facts = AccountFacts { id, offer: Offer::Payg, node_capacity_mbps: 100 };
        let steps = plan(&op(OperationKind::ChangeOffer), Some(facts), true).unwrap();
        assert_eq!(steps[0].effect, Some(Effect::PreparePool { account_id: id, dedicated_nodes: 0 }));
        assert_eq!(steps[1].wait, Some(Wait::ReadyNodes(1)), "a shared pool needs one ready node");
    }

    #[test]
    fn lifecycle_and_upgrade_plans() {
        let id = Uuid::now_v7();
        let facts = Some(AccountFacts { id, offer: Offer::Trial, node_capacity_mbps: 100 });
        assert_eq!(
            plan(&op(OperationKind::Delete), facts, true).unwrap()[0].effect,
            Some(Effect::Release { account_id: id })
        );
        assert_eq!(plan(&op(OperationKind::Deactivate), facts, true).unwrap()[0].name, "allocation_recorded");
        assert_eq!(
            plan(&op(OperationKind::Reactivate), facts, true).unwrap()[0].name,
            "pool_prepared",
            "a retained pool is resized"
        );
        let up = plan(&op(OperationKind::Upgrade), None, true).unwrap();
        assert_eq!(up[0].effect, Some(Effect::SetCurrentImage { origin_type: "hls".into(), version: "2".into() }));
        assert_eq!(up[1].wait, Some(Wait::PoolsUpgraded), "with a driver, the pools are rolled over");
        assert!(plan(&op(OperationKind::Create), None, true).is_err());
    }
}
