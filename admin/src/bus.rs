//! The bus: how one admin replica tells the others that something changed. Today it
//! carries "an operation was enqueued", so a worker on any replica starts at once
//! instead of at its next poll. In-process without Redis; with Redis, a PUBLISH on
//! [`OPERATIONS_CHANNEL`] that every replica is subscribed to (RESP3 push messages
//! on a reconnecting connection manager that re-subscribes by itself).

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind};
use tokio::sync::Notify;

/// The channel, under the deployment's prefix, that announces new operations.
pub const OPERATIONS_CHANNEL: &str = "operations";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Wakes workers in this process, and through Redis in every other replica.
#[derive(Clone)]
pub struct Bus {
    /// The local workers' wake-up.
    pub wake: Arc<Notify>,
    redis: Option<ConnectionManager>,
    /// `{prefix}:operations`: the prefix keeps deployments that share a Redis apart.
    channel: String,
}

impl Bus {
    /// A bus within this process only.
    pub fn in_process() -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            redis: None,
            channel: String::new(),
        }
    }

    /// A bus over Redis at `url`; messages from other replicas wake the local workers.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, BusError> {
        let channel = format!("{prefix}:{OPERATIONS_CHANNEL}");
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
        conn.subscribe(&channel).await?;
        Ok(Self {
            wake,
            redis: Some(conn),
            channel,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "in-process"
        }
    }

    /// Says that an operation was enqueued. A lost message only delays the work
    /// until the next poll (the operation itself is durable), so errors are logged.
    pub async fn operation_enqueued(&self) {
        self.wake.notify_one();
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            if let Err(e) = conn.publish::<_, _, i64>(&self.channel, "enqueued").await {
                tracing::warn!(error = %e, "publishing on the bus");
            }
        }
    }

    /// Ready when Redis (if configured) answers.
    pub async fn ready(&self) -> Result<(), BusError> {
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
        }
        Ok(())
    }
}
