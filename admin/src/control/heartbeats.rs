//! Heartbeat fan-in: handlers answer at once and queue the heartbeat; one writer
//! stores everything queued in a single transaction every few milliseconds, so
//! thousands of nodes a second cost a handful of write transactions, not
//! thousands (SQLite has one writer at a time; PostgreSQL is spared the commits).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::UnixMs;
use crate::store::{HeartbeatRecord, Store};

/// Most heartbeats written in one transaction.
const MAX_BATCH: usize = 4096;
/// How long the writer gathers before writing.
const GATHER: Duration = Duration::from_millis(50);

pub type Queued = (Uuid, HeartbeatRecord, UnixMs);

/// Queues heartbeats for the writer; cheap to clone.
#[derive(Clone)]
pub struct HeartbeatQueue(mpsc::Sender<Queued>);

impl HeartbeatQueue {
    /// A queue and its receiving end, for [`write`].
    pub fn new() -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        (Self(tx), rx)
    }

    /// Queues a heartbeat; waits when the writer is behind (back-pressure).
    pub async fn push(&self, item: Queued) -> Result<(), &'static str> {
        self.0.send(item).await.map_err(|_| "the heartbeat writer has stopped")
    }
}

/// Writes queued heartbeats in batches until `shutdown`, then writes what is left.
pub async fn write(store: Store, mut rx: mpsc::Receiver<Queued>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                _ => break,
            }
        }
        if let Err(e) = store.record_heartbeats(&batch).await {
            tracing::warn!(error = %e, heartbeats = batch.len(), "storing heartbeats");
        }
        batch.clear();
    }
}
