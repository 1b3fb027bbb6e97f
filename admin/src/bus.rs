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
}

impl Bus {
    /// A bus within this process only.
    pub fn in_process() -> Self {
        Self { wake: Arc::new(Notify::new()), redis: None }
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
        Ok(Self { wake, redis: Some((conn, prefix.to_owned())) })
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
    /// routers resync), so errors are logged, not returned.
    pub async fn publish(&self, topic: &str, payload: String) {
        if let Some((conn, prefix)) = &self.redis {
            let mut conn = conn.clone();
            if let Err(e) = conn.publish::<_, _, i64>(format!("{prefix}:{topic}"), payload).await {
                tracing::warn!(error = %e, topic, "publishing on the bus");
            }
        }
    }

    /// Says that an operation was enqueued: wakes a worker here at once, and one on
    /// every replica through Redis.
    pub async fn operation_enqueued(&self) {
        self.wake.notify_one();
        self.publish(OPERATIONS, String::new()).await;
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
