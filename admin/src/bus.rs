//! The bus: how admin replicas, and routers, hear what changed. With Redis, a
//! message is a PUBLISH on `{prefix}:{topic}`; every admin subscribes to
//! `{prefix}:operations` on a reconnecting connection manager (RESP3 push messages)
//! that re-subscribes by itself after a reconnect. Admin starts whether or not
//! Redis answers: until it first does, the bus connects in the background,
//! publications wait in the outbox (or report that Redis did not take them), and
//! `/readyz` says so. Without Redis there is one process, and the only listener is
//! the local worker.
//!
//! Topics: [`OPERATIONS`] ("an operation was enqueued": wakes a worker at once
//! instead of at its next poll), [`HEARTBEATS`] (a node's latest heartbeat, for
//! outside listeners) and [`ROUTING`] (the routing table, for routers).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind};
use tokio::sync::{Notify, watch};

pub const OPERATIONS: &str = "operations";
pub const HEARTBEATS: &str = "heartbeats";
/// The routing table, in full, whenever it changes (for routers).
pub const ROUTING: &str = "routing";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: not connected yet")]
    NotConnected,
}

#[derive(Clone)]
pub struct Bus {
    /// Rung when an operation is enqueued here or on another replica: the local
    /// workers' wake-up.
    pub wake: Arc<Notify>,
    /// The Redis connection (`None` until first made) and the channel prefix.
    redis: Option<(watch::Receiver<Option<ConnectionManager>>, String)>,
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
    /// can share one Redis. Waits up to `first_wait` for the first connection, then
    /// goes on connecting in the background; only an invalid URL is an error.
    pub async fn redis(url: &str, prefix: &str, first_wait: Duration) -> Result<Self, BusError> {
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
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let client = redis::Client::open(url.as_str())?;
        let (connected, conn) = watch::channel(None);
        let operations = format!("{prefix}:{OPERATIONS}");
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let attempt = async {
                    let mut conn = client.get_connection_manager_with_config(config.clone()).await?;
                    conn.subscribe(&operations).await?;
                    Ok::<_, redis::RedisError>(conn)
                };
                match attempt.await {
                    Ok(conn) => {
                        tracing::info!("bus connected to Redis");
                        let _ = connected.send(Some(conn));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis(), "Redis not reachable yet");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        let (outbox, mut queued) = tokio::sync::mpsc::channel::<(String, String)>(OUTBOX);
        let mut waiting = conn.clone();
        tokio::spawn(async move {
            let Ok(publisher) = waiting.wait_for(Option::is_some).await.map(|c| c.clone()) else { return };
            let Some(mut publisher) = publisher else { return };
            while let Some((channel, payload)) = queued.recv().await {
                if let Err(e) = publisher.publish::<_, _, i64>(&channel, payload).await {
                    tracing::warn!(error = %e, %channel, "publishing on the bus");
                }
            }
        });
        let mut first = conn.clone();
        if tokio::time::timeout(first_wait, first.wait_for(Option::is_some)).await.is_err() {
            tracing::warn!(url = %redact(url.as_str()), "starting without Redis; connecting in the background");
        }
        Ok(Self { wake, redis: Some((conn, prefix.to_owned())), outbox: Some(outbox) })
    }

    /// The connection, once made.
    fn connection(&self) -> Option<(ConnectionManager, &str)> {
        let (conn, prefix) = self.redis.as_ref()?;
        Some((conn.borrow().clone()?, prefix.as_str()))
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
        let Some((mut conn, prefix)) = self.connection() else { return false };
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
        if self.redis.is_none() {
            return Ok(());
        }
        let (mut conn, _) = self.connection().ok_or(BusError::NotConnected)?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

/// A Redis URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
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

    #[test]
    fn logged_urls_carry_no_password() {
        assert_eq!(redact("redis://:s3cret@cache:6379/0?protocol=resp3"), "redis://…@cache:6379/0?protocol=resp3");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[tokio::test]
    async fn a_bus_starts_without_redis_and_says_it_is_not_ready() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bus = Bus::redis(&format!("redis://127.0.0.1:{port}"), "t", Duration::from_millis(200)).await.unwrap();
        assert!(bus.is_shared());
        assert!(matches!(bus.ready().await, Err(BusError::NotConnected)));
        assert!(!bus.publish(ROUTING, "{}".into()).await, "nothing took it");
        bus.notify(HEARTBEATS, "{}".into()); // queued, never blocks
        assert!(Bus::redis("not a url", "t", Duration::ZERO).await.is_err());
    }
}
