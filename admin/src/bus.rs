//! The bus: how admin replicas (and, later, routers) hear what changed. Messages
//! are `(topic, payload)`; every process subscribed sees every message, its own
//! included. In-process without Redis; with Redis, PUBLISH on `{prefix}:{topic}`
//! and a subscription to `{prefix}:*` on a reconnecting connection manager (RESP3
//! push messages) that re-subscribes by itself after a reconnect.
//!
//! Topics: [`OPERATIONS`] ("an operation was enqueued": wakes a worker at once
//! instead of at its next poll), [`HEARTBEATS`] (a node's latest heartbeat) and
//! [`ROUTING`] (the routing table, for routers).

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind, Value};
use tokio::sync::{Notify, broadcast};

pub const OPERATIONS: &str = "operations";
pub const HEARTBEATS: &str = "heartbeats";
/// The routing table, in full, whenever it changes (for routers).
pub const ROUTING: &str = "routing";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
}

#[derive(Clone)]
pub struct Bus {
    /// Rung for every [`OPERATIONS`] message: the local workers' wake-up.
    pub wake: Arc<Notify>,
    messages: broadcast::Sender<Message>,
    redis: Option<(ConnectionManager, String)>,
}

/// Delivers a message to local subscribers and, for operations, the workers.
fn deliver(wake: &Notify, messages: &broadcast::Sender<Message>, m: Message) {
    if m.topic == OPERATIONS {
        wake.notify_one();
    }
    // No subscriber is fine: nobody is listening for that topic here.
    let _ = messages.send(m);
}

impl Bus {
    /// A bus within this process only.
    pub fn in_process() -> Self {
        Self { wake: Arc::new(Notify::new()), messages: broadcast::channel(1024).0, redis: None }
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
        let messages = broadcast::channel(1024).0;
        let strip = format!("{prefix}:");
        let on_push = {
            let wake = wake.clone();
            let messages = messages.clone();
            move |info: redis::PushInfo| {
                // A pattern message is [pattern, channel, payload].
                if let (PushKind::PMessage, [_, Value::BulkString(channel), Value::BulkString(payload)]) =
                    (&info.kind, info.data.as_slice())
                {
                    let channel = String::from_utf8_lossy(channel);
                    if let Some(topic) = channel.strip_prefix(&strip) {
                        let payload = String::from_utf8_lossy(payload).into_owned();
                        deliver(&wake, &messages, Message { topic: topic.to_owned(), payload });
                    }
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
        conn.psubscribe(format!("{prefix}:*")).await?;
        Ok(Self { wake, messages, redis: Some((conn, prefix.to_owned())) })
    }

    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() { "redis" } else { "in-process" }
    }

    /// Publishes a message. A lost message is never a lost change (the store has
    /// it; workers poll, routers resync), so errors are logged, not returned.
    pub async fn publish(&self, topic: &str, payload: String) {
        match &self.redis {
            None => deliver(&self.wake, &self.messages, Message { topic: topic.to_owned(), payload }),
            Some((conn, prefix)) => {
                let mut conn = conn.clone();
                if let Err(e) = conn.publish::<_, _, i64>(format!("{prefix}:{topic}"), payload).await {
                    tracing::warn!(error = %e, topic, "publishing on the bus");
                }
            }
        }
    }

    /// Says that an operation was enqueued: wakes a worker here at once, and one on
    /// every replica through Redis.
    pub async fn operation_enqueued(&self) {
        self.wake.notify_one();
        if self.redis.is_some() {
            self.publish(OPERATIONS, String::new()).await;
        }
    }

    /// Every message from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.messages.subscribe()
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
    async fn in_process_messages_reach_subscribers_and_operations_wake_workers() {
        let bus = Bus::in_process();
        let mut rx = bus.subscribe();
        bus.publish(HEARTBEATS, "{\"node\":1}".into()).await;
        assert_eq!(rx.recv().await.unwrap(), Message { topic: HEARTBEATS.into(), payload: "{\"node\":1}".into() });
        let woken = bus.wake.notified();
        bus.operation_enqueued().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), woken).await.expect("a worker is woken");
    }
}
