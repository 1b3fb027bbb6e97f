//! `allocation_operations`: the durable work queue. An operation is claimed with a
//! lease; each step commits its effect and its record in one transaction, so a
//! worker that dies mid-operation loses nothing and repeats nothing: its lease
//! expires, another worker claims the operation and continues after the last
//! recorded step. Operations of one account run one at a time, oldest first, and
//! so do upgrades of one origin type.

use sqlx::types::Json;
use uuid::Uuid;

use super::{BeginWrite, OperationRow, Result, StepRecord, Store, StoreError, event, on_pool};
use crate::clock::UnixMs;
use crate::domain::OfferKind;
use crate::states::{AccountState, PoolKind, PoolState};

/// Inserts an operation inside the caller's transaction, returning its row.
macro_rules! insert_operation {
    ($tx:expr, $op:expr, $now:expr) => {
        sqlx::query_as::<_, $crate::store::OperationRow>(
            "INSERT INTO allocation_operations (id, kind, account_id, origin_type, customer_id, state, steps, input,
                 attempts, not_before, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, 0, $8, $8, $8)
             RETURNING id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
                 last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress",
        )
        .bind($op.id)
        .bind($op.kind)
        .bind($op.account_id)
        .bind(&$op.origin_type)
        .bind($op.customer_id)
        .bind(sqlx::types::Json(Vec::<$crate::store::StepRecord>::new()))
        .bind(sqlx::types::Json(&$op.input))
        .bind($now)
        .fetch_one(&mut *$tx)
        .await
    };
}
pub(crate) use insert_operation;

/// What a listing of operations keeps: each field set narrows it.
#[derive(Debug, Clone, Default)]
pub struct OperationQuery {
    /// Only this customer's (a customer never sees another's).
    pub customer: Option<Uuid>,
    pub state: Option<crate::states::OperationState>,
    pub kind: Option<crate::states::OperationKind>,
    pub account_id: Option<Uuid>,
    pub origin_type: Option<String>,
}

/// Which operations a caller may see.
#[derive(Debug, Clone, Copy)]
pub enum OperationFilter {
    /// The operator sees all of them.
    Any,
    /// A customer sees only its own.
    Customer(Uuid),
}

/// A change to the allocation tables that one step of an operation makes. Each is
/// idempotent and level-triggered: it reads the account's desired state (the
/// `accounts` row) and makes the pool and allocation tables agree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the pool the account's offer calls for exist, without moving the
    /// account: its own dedicated pool of `dedicated_nodes` nodes for sla (created or
    /// resized), a shared pool of its type for trial/payg.
    PreparePool { account_id: Uuid, dedicated_nodes: i32 },
    /// Put the account in that pool, and release the pool it leaves.
    AssignPool { account_id: Uuid, dedicated_nodes: i32 },
    /// Write the account's row in the global allocation table from its desired state,
    /// and mark the account active (or its pool retained when deactivated).
    RecordAllocation { account_id: Uuid },
    /// Remove the account from its pool and from the allocation table (deletion).
    Release { account_id: Uuid },
    /// Make `version` the current image of an origin type.
    SetCurrentImage { origin_type: String, version: String },
    /// Record that an upgrade to `version` finished on every pool of the type.
    CompleteImage { origin_type: String, version: String },
}

const CLAIM_POSTGRES: &str = "UPDATE allocation_operations SET state = 'running', attempts = attempts + 1,
        lease_owner = $1, lease_until = $2, updated_at = $3
    WHERE id = (
        SELECT o.id FROM allocation_operations o
        WHERE o.state IN ('pending', 'running') AND o.not_before <= $3
          AND (o.lease_until IS NULL OR o.lease_until < $3)
          AND NOT EXISTS (SELECT 1 FROM allocation_operations e
                          WHERE e.account_id = o.account_id AND e.state IN ('pending', 'running') AND e.id < o.id)
          AND NOT EXISTS (SELECT 1 FROM allocation_operations u
                          WHERE o.kind = 'upgrade' AND u.kind = 'upgrade' AND u.origin_type = o.origin_type
                            AND u.state IN ('pending', 'running') AND u.id < o.id)
        ORDER BY o.not_before, o.id LIMIT 1
        FOR UPDATE SKIP LOCKED)
    RETURNING id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
        last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress";

/// SQLite has one writer at a time, so the sub-select and the update are atomic
/// without row locks.
const CLAIM_SQLITE: &str = "UPDATE allocation_operations SET state = 'running', attempts = attempts + 1,
        lease_owner = $1, lease_until = $2, updated_at = $3
    WHERE id = (
        SELECT o.id FROM allocation_operations o
        WHERE o.state IN ('pending', 'running') AND o.not_before <= $3
          AND (o.lease_until IS NULL OR o.lease_until < $3)
          AND NOT EXISTS (SELECT 1 FROM allocation_operations e
                          WHERE e.account_id = o.account_id AND e.state IN ('pending', 'running') AND e.id < o.id)
          AND NOT EXISTS (SELECT 1 FROM allocation_operations u
                          WHERE o.kind = 'upgrade' AND u.kind = 'upgrade' AND u.origin_type = o.origin_type
                            AND u.state IN ('pending', 'running') AND u.id < o.id)
        ORDER BY o.not_before, o.id LIMIT 1)
    RETURNING id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
        last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress";

/// Lets go of the pool an account leaves: a shared pool counts one account less, a
/// dedicated pool is marked for deletion with no nodes desired.
macro_rules! release_pool {
    ($tx:expr, $pool:expr, $kind:expr, $now:expr, $account:expr) => {
        if *$kind == PoolKind::Shared {
            sqlx::query("UPDATE shared_pools SET accounts = accounts - 1 WHERE pool_id = $1 AND accounts > 0")
                .bind($pool)
                .execute(&mut *$tx)
                .await?;
        } else {
            sqlx::query("UPDATE pools SET state = 'deleting', desired_nodes = 0, updated_at = $2 WHERE id = $1")
                .bind($pool)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
            event!(
                $tx,
                $now,
                "pool-manager",
                "pool.released",
                format!("pool:{}", $pool),
                format!("account:{} left it", $account)
            )?;
        }
    };
}

/// The account's own dedicated pool, sized to `nodes`: found, or a warm pool of
/// that size (or the smallest larger one, trimmed) claimed, or created.
macro_rules! owned_pool {
    ($tx:expr, $account:expr, $origin_type:expr, $nodes:expr, $now:expr) => {{
        let mut owned: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM pools WHERE account_id = $1 AND kind = 'dedicated' AND state IN ('creating', 'ready', 'retained')
             ORDER BY id LIMIT 1",
        )
        .bind($account)
        .fetch_optional(&mut *$tx)
        .await?;
        if owned.is_none() {
            let warm: Option<Uuid> = sqlx::query_scalar(
                "SELECT p.id FROM pools p
                 WHERE p.origin_type = $1 AND p.kind = 'dedicated' AND p.account_id IS NULL
                   AND p.state IN ('creating', 'ready') AND p.desired_nodes >= $2
                 ORDER BY p.desired_nodes,
                          (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = p.id AND n.state = 'ready') DESC, p.id
                 LIMIT 1",
            )
            .bind($origin_type)
            .bind($nodes)
            .fetch_optional(&mut *$tx)
            .await?;
            if let Some(pool) = warm {
                // Another sign-up may have claimed it meanwhile: then make a pool.
                let claimed = sqlx::query(
                    "UPDATE pools SET account_id = $2, updated_at = $3 WHERE id = $1 AND account_id IS NULL",
                )
                .bind(pool)
                .bind($account)
                .bind($now)
                .execute(&mut *$tx)
                .await?
                .rows_affected()
                    == 1;
                if claimed {
                    event!($tx, $now, "pool-manager", "pool.claimed", format!("pool:{pool}"),
                        format!("warm pool taken by account:{}", $account))?;
                    owned = Some(pool);
                }
            }
        }
        match owned {
            Some(pool) => {
                sqlx::query("UPDATE pools SET desired_nodes = $2, updated_at = $3 WHERE id = $1 AND desired_nodes <> $2")
                    .bind(pool)
                    .bind($nodes)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                pool
            }
            None => {
                let pool = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO pools (id, origin_type, kind, desired_nodes, state, account_id, image_version, created_at, updated_at)
                     VALUES ($1, $2, 'dedicated', $3, 'creating', $4,
                             (SELECT current_image FROM origin_types WHERE name = $2), $5, $5)",
                )
                .bind(pool)
                .bind($origin_type)
                .bind($nodes)
                .bind($account)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                event!($tx, $now, "pool-manager", "pool.created", format!("pool:{pool}"),
                    format!("dedicated pool of {} nodes for account:{}", $nodes, $account))?;
                pool
            }
        }
    }};
}

/// A shared pool of the type for one more account, chosen by the allocation policy
/// (least loaded with room, preferring one that serves), else a new one. A
/// pool's load counts the accounts staged to it too: a burst of sign-ups is
/// staged before any of them is assigned, and counted by assignments alone it
/// all went to one pool (2,700 accounts in one pool made for 100).
macro_rules! shared_pool {
    ($tx:expr, $origin_type:expr, $now:expr) => {{
        let candidates: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT s.pool_id,
                    CAST(s.accounts AS BIGINT)
                      + (SELECT COUNT(*) FROM accounts a WHERE a.staged_pool_id = s.pool_id
                           AND NOT EXISTS (SELECT 1 FROM account_pool_mappings m
                                           WHERE m.account_id = a.id AND m.pool_id = s.pool_id)),
                    (SELECT COUNT(*) FROM nodes n WHERE n.pool_id = s.pool_id AND n.state = 'ready')
             FROM shared_pools s JOIN pools p ON p.id = s.pool_id
             WHERE s.origin_type = $1 AND p.state IN ('creating', 'ready')",
        )
        .bind($origin_type)
        .fetch_all(&mut *$tx)
        .await?;
        let loads: Vec<headwater_provisioner::SharedPoolLoad> = candidates
            .into_iter()
            .map(|(id, tenants, ready_instances)| headwater_provisioner::SharedPoolLoad {
                id,
                tenants,
                ready_instances,
            })
            .collect();
        let existing = headwater_provisioner::Policy::DEFAULT.pick_shared_pool(&loads);
        match existing {
            Some(p) => p,
            None => {
                let pool = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO pools (id, origin_type, kind, desired_nodes, state, image_version, created_at, updated_at)
                     VALUES ($1, $2, 'shared', $3, 'creating', (SELECT current_image FROM origin_types WHERE name = $2), $4, $4)",
                )
                .bind(pool)
                .bind($origin_type)
                .bind(crate::store::SHARED_POOL_MIN_NODES)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                sqlx::query("INSERT INTO shared_pools (pool_id, origin_type) VALUES ($1, $2)")
                    .bind(pool)
                    .bind($origin_type)
                    .execute(&mut *$tx)
                    .await?;
                event!(
                    $tx,
                    $now,
                    "pool-manager",
                    "pool.created",
                    format!("pool:{pool}"),
                    format!("shared pool of type {}", $origin_type)
                )?;
                pool
            }
        }
    }};
}

/// The pool the account's offer calls for, and the pool it is in now: its own
/// dedicated pool (created or resized) for sla; for trial/payg the shared pool it
/// is in, else the one it was staged to, else the best shared pool of its type.
macro_rules! target_pool {
    ($tx:expr, $account:expr, $dedicated_nodes:expr, $now:expr) => {{
        let (offer, origin_type, staged): (OfferKind, String, Option<Uuid>) = sqlx::query_as(
            "SELECT a.offer, a.origin_type, p.id FROM accounts a
             LEFT JOIN shared_pools s ON s.pool_id = a.staged_pool_id
             LEFT JOIN pools p ON p.id = s.pool_id AND p.state IN ('creating', 'ready')
             WHERE a.id = $1",
        )
        .bind($account)
        .fetch_one(&mut *$tx)
        .await?;
        let current: Option<(Uuid, PoolKind)> = sqlx::query_as(
            "SELECT p.id, p.kind FROM account_pool_mappings m JOIN pools p ON p.id = m.pool_id WHERE m.account_id = $1",
        )
        .bind($account)
        .fetch_optional(&mut *$tx)
        .await?;
        let target = if offer == OfferKind::Sla {
            owned_pool!($tx, $account, &origin_type, $dedicated_nodes, $now)
        } else {
            match (&current, staged) {
                (Some((pool, PoolKind::Shared)), _) => *pool,
                (_, Some(staged)) => staged,
                _ => shared_pool!($tx, &origin_type, $now),
            }
        };
        (target, current)
    }};
}

/// Applies an [`Effect`] inside the caller's transaction.
macro_rules! apply_effect {
    ($tx:expr, $effect:expr, $now:expr) => {
        match $effect {
            Effect::PreparePool { account_id, dedicated_nodes } => {
                // The target pool serves the account from now on (staged), before
                // any router is pointed at it.
                let (target, _) = target_pool!($tx, account_id, *dedicated_nodes, $now);
                // Nodes that fetch their configuration at this generation or later
                // serve the account (see `Store::account_node_configs`).
                let generation: i64 = sqlx::query_scalar(
                    "UPDATE pools SET config_generation = config_generation + 1 WHERE id = $1 RETURNING config_generation",
                )
                .bind(target)
                .fetch_one(&mut *$tx)
                .await?;
                sqlx::query("UPDATE accounts SET staged_pool_id = $2, staged_generation = $3 WHERE id = $1")
                    .bind(account_id)
                    .bind(target)
                    .bind(generation)
                    .execute(&mut *$tx)
                    .await?;
            }
            Effect::AssignPool { account_id, dedicated_nodes } => {
                let (target, current) = target_pool!($tx, account_id, *dedicated_nodes, $now);
                sqlx::query("UPDATE accounts SET staged_pool_id = NULL WHERE id = $1").bind(account_id).execute(&mut *$tx).await?;
                if current.as_ref().map(|c| c.0) != Some(target) {
                    if let Some((old, kind)) = &current {
                        release_pool!($tx, old, kind, $now, account_id);
                    }
                    sqlx::query("UPDATE shared_pools SET accounts = accounts + 1 WHERE pool_id = $1").bind(target).execute(&mut *$tx).await?;
                    // The pool left behind keeps serving the account for a grace
                    // period (see domain::MOVE_GRACE_MS).
                    sqlx::query(
                        "INSERT INTO account_pool_mappings (account_id, pool_id, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (account_id) DO UPDATE SET previous_pool_id = account_pool_mappings.pool_id,
                             moved_at = excluded.updated_at, pool_id = excluded.pool_id, updated_at = excluded.updated_at",
                    )
                    .bind(account_id)
                    .bind(target)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                    event!($tx, $now, "pool-manager", "account.mapped", format!("account:{account_id}"), format!("pool:{target}"))?;
                }
            }
            Effect::RecordAllocation { account_id } => {
                let (state, pool): (AccountState, Option<Uuid>) = sqlx::query_as(
                    "SELECT a.state, m.pool_id FROM accounts a LEFT JOIN account_pool_mappings m ON m.account_id = a.id
                     WHERE a.id = $1",
                )
                .bind(account_id)
                .fetch_one(&mut *$tx)
                .await?;
                let pool = pool.ok_or_else(|| StoreError::Constraint(format!("account {account_id} has no pool")))?;
                if state == AccountState::Provisioning {
                    sqlx::query("UPDATE accounts SET state = 'active', updated_at = $2 WHERE id = $1 AND state = 'provisioning'")
                        .bind(account_id)
                        .bind($now)
                        .execute(&mut *$tx)
                        .await?;
                }
                let live = if state == AccountState::Deactivated { AccountState::Deactivated } else { AccountState::Active };
                sqlx::query(
                    "INSERT INTO global_allocations (account_id, origin_type, offer, sla_mbps, pool_id, locator, state, updated_at)
                     SELECT id, origin_type, offer, sla_mbps, $2, locator, $3, $4 FROM accounts WHERE id = $1
                     ON CONFLICT (account_id) DO UPDATE SET origin_type = excluded.origin_type, offer = excluded.offer,
                         sla_mbps = excluded.sla_mbps, pool_id = excluded.pool_id, locator = excluded.locator,
                         state = excluded.state, updated_at = excluded.updated_at",
                )
                .bind(account_id)
                .bind(pool)
                .bind(live)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                // A deactivated account's dedicated pool is kept (retained) for reactivation.
                let pool_state = if live == AccountState::Deactivated { PoolState::Retained } else { PoolState::Ready };
                sqlx::query(
                    "UPDATE pools SET state = $2, updated_at = $3
                     WHERE id = $1 AND kind = 'dedicated' AND state IN ('creating', 'ready', 'retained')",
                )
                .bind(pool)
                .bind(pool_state)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                if live == AccountState::Deactivated {
                    // Kept small while retained; reactivation sizes it again.
                    sqlx::query(
                        "UPDATE pools SET desired_nodes = 1, updated_at = $2
                         WHERE id = $1 AND kind = 'dedicated' AND state = 'retained' AND desired_nodes > 1",
                    )
                    .bind(pool)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                }
                event!($tx, $now, "pool-manager", "allocation.recorded", format!("account:{account_id}"), live.as_str())?;
            }
            Effect::Release { account_id } => {
                let current: Option<(Uuid, PoolKind)> = sqlx::query_as(
                    "SELECT p.id, p.kind FROM account_pool_mappings m JOIN pools p ON p.id = m.pool_id WHERE m.account_id = $1",
                )
                .bind(account_id)
                .fetch_optional(&mut *$tx)
                .await?;
                sqlx::query("DELETE FROM global_allocations WHERE account_id = $1")
                    .bind(account_id)
                    .execute(&mut *$tx)
                    .await?;
                sqlx::query("DELETE FROM account_pool_mappings WHERE account_id = $1")
                    .bind(account_id)
                    .execute(&mut *$tx)
                    .await?;
                sqlx::query("UPDATE accounts SET staged_pool_id = NULL WHERE id = $1").bind(account_id).execute(&mut *$tx).await?;
                if let Some((old, kind)) = &current {
                    release_pool!($tx, old, kind, $now, account_id);
                }
                event!($tx, $now, "pool-manager", "allocation.released", format!("account:{account_id}"), "account deleted")?;
            }
            Effect::SetCurrentImage { origin_type, version } => {
                sqlx::query("UPDATE origin_types SET current_image = $2, updated_at = $3 WHERE name = $1")
                    .bind(origin_type)
                    .bind(version)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                event!($tx, $now, "pool-manager", "image.current", format!("origin_type:{origin_type}"), version)?;
            }
            Effect::CompleteImage { origin_type, version } => {
                sqlx::query("UPDATE origin_types SET completed_image = $2, updated_at = $3 WHERE name = $1")
                    .bind(origin_type)
                    .bind(version)
                    .bind($now)
                    .execute(&mut *$tx)
                    .await?;
                event!($tx, $now, "upgrader", "image.completed", format!("origin_type:{origin_type}"), version)?;
            }
        }
    };
}

impl Store {
    pub async fn operation(&self, id: Uuid, filter: OperationFilter) -> Result<OperationRow> {
        let customer = match filter {
            OperationFilter::Any => None,
            OperationFilter::Customer(c) => Some(c),
        };
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
                        last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress
                 FROM allocation_operations WHERE id = $1 AND ($2 IS NULL OR customer_id = $2)",
            )
            .bind(id)
            .bind(customer)
            .fetch_one(p)
            .await?)
        })
    }

    /// Operations that `q` keeps, newest first, older than `before` (a cursor).
    pub async fn operations(&self, q: &OperationQuery, before: Option<Uuid>, limit: i64) -> Result<Vec<OperationRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
                        last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress
                 FROM allocation_operations
                 WHERE ($1 IS NULL OR customer_id = $1) AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR kind = $3)
                   AND ($4 IS NULL OR account_id = $4) AND ($5 IS NULL OR origin_type = $5) AND ($6 IS NULL OR id < $6)
                 ORDER BY id DESC LIMIT $7",
            )
            .bind(q.customer)
            .bind(q.state)
            .bind(q.kind)
            .bind(q.account_id)
            .bind(&q.origin_type)
            .bind(before)
            .bind(limit)
            .fetch_all(p)
            .await?)
        })
    }

    /// Claims the runnable operation that has been runnable longest (the oldest
    /// of those since the same time) for `owner` until `now + lease_ms`. In that
    /// order the claim reads only open operations runnable by `now`: operations
    /// waiting (for nodes, for a back-off) sit past it, however many there are.
    pub async fn claim_operation(&self, owner: &str, now: UnixMs, lease_ms: i64) -> Result<Option<OperationRow>> {
        let row = match &self.backend {
            super::Backend::Postgres(p) => {
                sqlx::query_as(CLAIM_POSTGRES).bind(owner).bind(now + lease_ms).bind(now).fetch_optional(p).await?
            }
            super::Backend::Sqlite(p) => {
                sqlx::query_as(CLAIM_SQLITE).bind(owner).bind(now + lease_ms).bind(now).fetch_optional(p).await?
            }
        };
        Ok(row)
    }

    /// Applies `effect` and records `step` as finished, atomically, provided `owner`
    /// still holds the lease. `finish` also marks the operation succeeded.
    /// Returns `NotFound` when the lease was lost (another worker took over).
    pub async fn complete_step(
        &self,
        op: &OperationRow,
        owner: &str,
        step: &str,
        effect: Option<&Effect>,
        finish: bool,
        now: UnixMs,
    ) -> Result<OperationRow> {
        let mut steps = op.steps.0.clone();
        steps.push(StepRecord { step: step.to_owned(), at: now });
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: Option<OperationRow> = sqlx::query_as(
                "UPDATE allocation_operations SET step = $3, steps = $4, updated_at = $5, last_error = NULL,
                     state = CASE WHEN $6 THEN 'succeeded' ELSE state END,
                     lease_owner = CASE WHEN $6 THEN NULL ELSE lease_owner END,
                     lease_until = CASE WHEN $6 THEN NULL ELSE lease_until END
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'
                 RETURNING id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts,
                     last_error, lease_owner, lease_until, not_before, created_at, updated_at, progress",
            )
            .bind(op.id)
            .bind(owner)
            .bind(step)
            .bind(Json(&steps))
            .bind(now)
            .bind(finish)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.ok_or(StoreError::NotFound)?;
            if let Some(effect) = effect {
                apply_effect!(tx, effect, now);
            }
            if finish {
                event!(tx, now, "worker", "operation.succeeded", format!("operation:{}", op.id), op.kind.as_str())?;
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Records a failed attempt: the operation is retried after `retry_at`, or marked
    /// failed when `give_up`.
    pub async fn fail_attempt(
        &self,
        op: &OperationRow,
        owner: &str,
        error: &str,
        retry_at: UnixMs,
        give_up: bool,
        now: UnixMs,
    ) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "UPDATE allocation_operations SET last_error = $3, not_before = $4, updated_at = $5,
                     lease_owner = NULL, lease_until = NULL,
                     state = CASE WHEN $6 THEN 'failed' ELSE state END
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(op.id)
            .bind(owner)
            .bind(error)
            .bind(retry_at)
            .bind(now)
            .bind(give_up)
            .execute(&mut *tx)
            .await?;
            if give_up {
                event!(tx, now, "worker", "operation.failed", format!("operation:{}", op.id), error)?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Puts an operation back to wait for something outside the store (nodes getting
    /// ready): not a failure, so the attempt is not counted.
    pub async fn defer_operation(&self, op: &OperationRow, owner: &str, until: UnixMs, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "UPDATE allocation_operations SET not_before = $3, updated_at = $4, lease_owner = NULL, lease_until = NULL,
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(op.id)
            .bind(owner)
            .bind(until)
            .bind(now)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Whether any operation is waiting to run; used by tests and `operations wait`.
    pub async fn open_operations(&self) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM allocation_operations WHERE state IN ('pending', 'running')")
                .fetch_one(p)
                .await?)
        })
    }
}
