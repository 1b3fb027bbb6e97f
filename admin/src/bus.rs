//! The bus: how admin replicas, and routers, hear what changed. With Redis, a
//! message is a PUBLISH on `{prefix}:{topic}`; every admin subscribes to
//! `{prefix}:operations` on a reconnecting connection manager (RESP3 push messages)
//! that re-subscribes by itself after a reconnect. Without Redis there is one
//! process, and the only listener is the local worker.
//!
//! Topics: [`OPERATIONS`] ("an operation was enqueued": wakes a worker at once
//! instead of at its next poll), [`HEARTBEATS`] (a node's latest heartbeat, for
//! outside listeners) and [`ROUTING`] (the routing table, for routers).

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind};
use tokio::sync::Notify;

pub const OPERATIONS: &str = "operations";
pub const HEARTBEATS: &str = "heartbeats";
/// The routing table, in full, whenever it changes (for routers).
pub const ROUTING: &str = "routing";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Bus {
    /// Rung when an operation is enqueued here or on another replica: the local
    /// workers' wake-up.
    pub wake: Arc<Notify>,
    redis: Option<(ConnectionManager, String)>,
    /// Messages sent by [`Bus::notify`], published in order by a task of their own
    /// so a slow or absent Redis never holds up the request that sent them.
    outbox: Option<tokio::sync::mpsc::Sender<(String, String)>>,
}

/// Messages waiting for Redis; past this they are dropped (each says only that
/// something changed, which the store keeps anyway).
const OUTBOX: usize = 4096;

impl Bus {
    /// A bus within this process only.
    pub fn in_process() -> Self {
        Self { wake: Arc::new(Notify::new()), redis: None, outbox: None }
    }

    /// A bus over Redis at `url`; channel names start with `prefix` so deployments
    /// can share one Redis.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, BusError> {
        // Push messages (pub/sub on a multiplexed connection) need RESP3.
        let url = if url.contains("protocol=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&protocol=resp3")
        } else {
            format!("{url}?protocol=resp3")
        };
        let wake = Arc::new(Notify::new());
        let on_push = {
            let wake = wake.clone();
            move |info: redis::PushInfo| {
                if info.kind == PushKind::Message {
                    wake.notify_one();
                }
                Ok::<(), redis::aio::SendError>(())
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection_manager_with_config(config).await?;
        conn.subscribe(format!("{prefix}:{OPERATIONS}")).await?;
        let (outbox, mut queued) = tokio::sync::mpsc::channel::<(String, String)>(OUTBOX);
        let mut publisher = conn.clone();
        tokio::spawn(async move {
            while let Some((channel, payload)) = queued.recv().await {
                if let Err(e) = publisher.publish::<_, _, i64>(&channel, payload).await {
                    tracing::warn!(error = %e, %channel, "publishing on the bus");
                }
            }
        });
        Ok(Self { wake, redis: Some((conn, prefix.to_owned())), outbox: Some(outbox) })
    }

    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() { "redis" } else { "in-process" }
    }

    /// Whether other processes can hear this bus (Redis is configured).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Publishes a message to other processes (nothing to do without Redis). A
    /// lost message is never a lost change (the store has it; workers poll,
    /// routers resync), so errors are logged; the answer says whether Redis took it.
    pub async fn publish(&self, topic: &str, payload: String) -> bool {
        let Some((conn, prefix)) = &self.redis else { return false };
        let mut conn = conn.clone();
        match conn.publish::<_, _, i64>(format!("{prefix}:{topic}"), payload).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, topic, "publishing on the bus");
                false
            }
        }
    }

    /// Publishes a message to other processes without waiting for Redis: queued,
    /// and dropped if Redis has been away long enough to fill the queue.
    pub fn notify(&self, topic: &str, payload: String) {
        if let (Some(outbox), Some((_, prefix))) = (&self.outbox, &self.redis)
            && outbox.try_send((format!("{prefix}:{topic}"), payload)).is_err()
        {
            tracing::debug!(topic, "bus outbox full; message dropped");
        }
    }

    /// Says that an operation was enqueued: wakes a worker here at once, and one on
    /// every replica through Redis.
    pub async fn operation_enqueued(&self) {
        self.wake.notify_one();
        self.notify(OPERATIONS, String::new());
    }

    /// Ready when Redis (if configured) answers.
    pub async fn ready(&self) -> Result<(), BusError> {
        if let Some((conn, _)) = &self.redis {
            let mut conn = conn.clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_enqueued_operation_wakes_a_local_worker() {
        let bus = Bus::in_process();
        let woken = bus.wake.notified();
        bus.operation_enqueued().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), woken).await.expect("a worker is woken");
    }
}
