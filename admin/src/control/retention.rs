//! The collector: deletes what deactivation kept once its retention is over. A
//! deactivated account past `retain_until` gets a `delete` operation (which
//! releases its pool and removes its mapping and allocation rows, like
//! `DELETE /v1/accounts/{name}`), and a released pool whose nodes have all stopped
//! is removed with its node rows. Content and usage are kept; the ids of usage
//! reports and access log batches are forgotten after a day, access records
//! after their retention.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::domain::MOVE_GRACE_MS;
use crate::store::{AccountChange, AccountLimits, NewOperation, Store};

/// How long the ids of usage reports are kept to recognise a report sent again.
pub const USAGE_REPORT_IDS_KEPT_MS: i64 = 86_400_000;

pub struct Collector {
    pub store: Store,
    pub bus: Bus,
    /// Real time: the grace of released pools.
    pub clock: Arc<dyn Clock>,
    /// What `retain_until` is compared with (moved forward by tests with `--test-clock`).
    pub retention_clock: Arc<dyn Clock>,
    /// Access records older than this are deleted.
    pub access_log_retention_ms: i64,
    pub every: Duration,
}

impl Collector {
    /// One pass; returns (accounts whose deletion was started, pools removed).
    pub async fn sweep(&self) -> anyhow::Result<(usize, usize)> {
        let expired = self.store.expired_accounts(self.retention_clock.now_ms()).await?;
        let mut started = 0;
        for account in &expired {
            let op = NewOperation {
                account_id: Some(account.id),
                customer_id: Some(account.customer_id),
                origin_type: Some(account.origin_type.clone()),
                ..NewOperation::new(crate::states::OperationKind::Delete)
            };
            match self
                .store
                .change_account(
                    account,
                    // Its retention is over: the name goes with it.
                    &AccountChange::Delete { name_until: self.retention_clock.now_ms() },
                    &op,
                    &AccountLimits::NONE,
                    "collector",
                    self.clock.now_ms(),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(account = %account.name, "retention over; deleting the account's pool and rows");
                    started += 1;
                }
                // Changed meanwhile (reactivated, deleted): nothing to collect.
                Err(e) => tracing::debug!(account = %account.name, error = %e, "not collected"),
            }
        }
        if started > 0 {
            self.bus.operation_enqueued().await;
        }
        for name in self.store.release_names(self.retention_clock.now_ms()).await? {
            tracing::info!(account = %name, "retention over; the name may be taken again");
        }
        let now = self.clock.now_ms();
        let purged = self.store.purge_released_pools(now - MOVE_GRACE_MS, now).await?;
        self.store.forget_usage_reports(now - USAGE_REPORT_IDS_KEPT_MS).await?;
        let old = self.retention_clock.now_ms() - self.access_log_retention_ms;
        self.store.forget_access_logs(old, now - USAGE_REPORT_IDS_KEPT_MS).await?;
        self.store.forget_idempotency_keys(now - crate::store::IDEMPOTENCY_TTL_MS).await?;
        for pool in &purged {
            tracing::info!(%pool, "released pool deleted");
        }
        Ok((started, purged.len()))
    }

    /// Sweeps every `every` while this replica holds the control lease.
    pub async fn run(self, shutdown: CancellationToken, leader: tokio::sync::watch::Receiver<bool>) {
        let mut every = crate::control::every::Every::new(self.every, &shutdown);
        while every.next().await {
            if !*leader.borrow() {
                continue;
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "collector");
            }
        }
    }
}
