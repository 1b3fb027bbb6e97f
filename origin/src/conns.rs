//! The node's open connections, bounded: at most `max` at once. A connection is
//! idle while it waits for its next request (HTTP/1.1) or has no stream open
//! (HTTP/2). When a new one arrives at the bound, the connection idle longest is
//! closed to make room, as nginx reuses idle keep-alive connections, so idle
//! sockets never keep a player out; only when every connection is busy is the new
//! one refused (503).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

struct Slot {
    /// Since when it waits for a request; `None` while it serves one.
    idle_since: Option<Instant>,
    close: CancellationToken,
}

/// The open connections of a node.
pub struct Connections {
    max: usize,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Slot>>,
    /// Idle connections closed to make room for new ones.
    pub evicted: prometheus::IntCounter,
    /// Connections refused because every open one was busy.
    pub refused: prometheus::IntCounter,
    pub gauge: prometheus::IntGauge,
}

/// One admitted connection; leaving the registry when dropped.
pub struct Conn {
    id: u64,
    registry: Arc<Connections>,
    /// Cancelled when the registry closes this connection to make room.
    pub close: CancellationToken,
}

impl Connections {
    pub fn new(max: usize, registry: &prometheus::Registry) -> Result<Arc<Self>, prometheus::Error> {
        let evicted =
            prometheus::IntCounter::new("connections_evicted_total", "idle connections closed to admit new ones")?;
        let refused =
            prometheus::IntCounter::new("connections_refused_total", "connections refused with every one busy")?;
        let gauge = prometheus::IntGauge::new("connections_open", "open client connections")?;
        registry.register(Box::new(evicted.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(Arc::new(Self { max: max.max(1), next: AtomicU64::new(0), open: Mutex::default(), evicted, refused, gauge }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection (idle until it sends a request): at the bound,
    /// the connection idle longest is closed for it; `None` when all are busy.
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let oldest = open.iter().filter_map(|(id, s)| s.idle_since.map(|t| (t, *id))).min().map(|(_, id)| id);
            let Some(victim) = oldest else {
                self.refused.inc();
                return None;
            };
            if let Some(slot) = open.remove(&victim) {
                slot.close.cancel();
                self.evicted.inc();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        open.insert(id, Slot { idle_since: Some(Instant::now()), close: close.clone() });
        self.gauge.set(open.len() as i64);
        drop(open);
        Some(Conn { id, registry: self.clone(), close })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Conn {
    /// Waiting for its next request: may be closed to make room.
    pub fn idle(&self) {
        if let Some(s) = self.registry.lock().get_mut(&self.id) {
            s.idle_since.get_or_insert_with(Instant::now);
        }
    }

    /// Serving a request.
    pub fn busy(&self) {
        if let Some(s) = self.registry.lock().get_mut(&self.id) {
            s.idle_since = None;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut open = self.registry.lock();
        open.remove(&self.id);
        self.registry.gauge.set(open.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let conns = Connections::new(2, &prometheus::Registry::new()).unwrap();
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        // Full: the one idle longest (a) is closed for the newcomer.
        let c = conns.admit().unwrap();
        assert!(a.close.is_cancelled() && !b.close.is_cancelled());
        assert_eq!((conns.len(), conns.evicted.get()), (2, 1));
        drop(a);
        assert_eq!(conns.len(), 2, "an evicted connection already left");
        // Busy connections are never closed: with both busy, a new one is refused.
        b.busy();
        c.busy();
        assert!(conns.admit().is_none());
        assert_eq!(conns.refused.get(), 1);
        // Idle again: it may make room once more.
        c.idle();
        let d = conns.admit().unwrap();
        assert!(c.close.is_cancelled() && !b.close.is_cancelled());
        drop((b, c, d));
        assert_eq!(conns.len(), 0);
    }
}
