//! Bandwidth shaping: the node's egress is held to its capacity by one token
//! bucket, each capped account (shared pools) by its own bucket, and when the node
//! is saturated the accounts waiting for it are served round-robin, so one greedy
//! account (many connections, or one fast one) cannot starve the others.
//!
//! Bodies ask for tokens chunk by chunk, just before the chunk is handed to the
//! connection, so the limit holds for the bytes written, across any number of
//! connections and for range requests alike.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Largest piece a body sends per grant. Small enough for fair interleaving and
/// exact caps, large enough that granting costs little.
pub const CHUNK: usize = 32 * 1024;

/// A token bucket in bytes.
#[derive(Debug, Clone)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(kbps: u64, now: Instant) -> Self {
        let rate = kbps as f64 * 1_000.0 / 8.0;
        // 20 ms of traffic, at least two chunks: bursts small enough that the rate
        // holds over short windows.
        let burst = (rate * 0.02).max(2.0 * CHUNK as f64);
        Self { rate, burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until `n` tokens are there.
    fn wait_for(&self, n: f64) -> Duration {
        if self.tokens >= n { Duration::ZERO } else { Duration::from_secs_f64((n - self.tokens) / self.rate) }
    }

    fn set_rate(&mut self, kbps: u64, now: Instant) {
        self.refill(now);
        let fresh = Bucket::new(kbps, now);
        self.rate = fresh.rate;
        self.burst = fresh.burst;
        self.tokens = self.tokens.min(self.burst);
    }
}

struct Waiter {
    bytes: f64,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct AccountQueue {
    /// `None`: no per-account cap (dedicated pools, test content).
    bucket: Option<Bucket>,
    waiters: VecDeque<Waiter>,
}

struct State {
    node: Bucket,
    accounts: HashMap<Arc<str>, AccountQueue>,
    /// Accounts with waiters, in round-robin order.
    ready: VecDeque<Arc<str>>,
}

/// The node's shaper. Cheap to clone.
#[derive(Clone)]
pub struct Shaper {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl Shaper {
    /// A shaper for a node of `capacity_mbps`, with its scheduler task.
    pub fn new(capacity_mbps: u32) -> Self {
        let state = State {
            node: Bucket::new(u64::from(capacity_mbps) * 1000, Instant::now()),
            accounts: HashMap::new(),
            ready: VecDeque::new(),
        };
        let shaper = Self { state: Arc::new(Mutex::new(state)), wake: Arc::new(Notify::new()) };
        let weak = Arc::downgrade(&shaper.state);
        let wake = shaper.wake.clone();
        tokio::spawn(async move {
            loop {
                let Some(state) = weak.upgrade() else { return };
                let sleep = schedule(&state);
                drop(state);
                match sleep {
                    Some(d) => {
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = wake.notified() => {}
                        }
                    }
                    None => wake.notified().await,
                }
            }
        });
        shaper
    }

    /// Changes the node's capacity.
    pub fn set_capacity(&self, mbps: u32) {
        let mut s = lock(&self.state);
        s.node.set_rate(u64::from(mbps) * 1000, Instant::now());
        drop(s);
        self.wake.notify_one();
    }

    /// Sets (or, with `None`, removes) the cap of one account, in kbit/s.
    pub fn set_account_cap(&self, account: &str, cap_kbps: Option<u32>) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        let q = s.accounts.entry(Arc::from(account)).or_default();
        match (cap_kbps.map(u64::from), q.bucket.as_mut()) {
            (Some(k), Some(b)) => b.set_rate(k, now),
            (Some(k), None) => q.bucket = Some(Bucket::new(k, now)),
            (None, _) => q.bucket = None,
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Takes the tokens for `bytes` if they are there and nobody waits; `false`
    /// means call [`Shaper::acquire`].
    pub fn try_acquire(&self, account: &Arc<str>, bytes: usize) -> bool {
        let n = bytes as f64;
        let now = Instant::now();
        let mut s = lock(&self.state);
        let State { node, accounts, ready } = &mut *s;
        if !ready.is_empty() {
            return false;
        }
        node.refill(now);
        if node.tokens < n {
            return false;
        }
        if let Some(b) = accounts.get_mut(account).and_then(|q| q.bucket.as_mut()) {
            b.refill(now);
            if b.tokens < n {
                return false;
            }
            b.tokens -= n;
        }
        node.tokens -= n;
        true
    }

    /// Waits until `bytes` may be sent for `account`.
    pub async fn acquire(&self, account: &Arc<str>, bytes: usize) {
        let n = bytes as f64;
        let rx = {
            let now = Instant::now();
            let mut s = lock(&self.state);
            let State { node, accounts, ready } = &mut *s;
            let q = accounts.entry(account.clone()).or_default();
            node.refill(now);
            if let Some(b) = q.bucket.as_mut() {
                b.refill(now);
            }
            // Fast path: nobody is waiting and both buckets have the tokens.
            let account_ok = q.bucket.as_ref().is_none_or(|b| b.tokens >= n);
            if ready.is_empty() && q.waiters.is_empty() && node.tokens >= n && account_ok {
                node.tokens -= n;
                if let Some(b) = q.bucket.as_mut() {
                    b.tokens -= n;
                }
                return;
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.push_back(Waiter { bytes: n, grant: tx });
            if q.waiters.len() == 1 {
                ready.push_back(account.clone());
            }
            rx
        };
        self.wake.notify_one();
        // The scheduler never drops a waiter without granting it.
        let _ = rx.await;
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Grants what can be granted now, round-robin over waiting accounts; returns how
/// long to sleep before more can be (`None`: nobody waits).
fn schedule(state: &Mutex<State>) -> Option<Duration> {
    let now = Instant::now();
    let mut s = lock(state);
    let State { node, accounts, ready } = &mut *s;
    node.refill(now);
    for q in accounts.values_mut() {
        if let Some(b) = q.bucket.as_mut() {
            b.refill(now);
        }
    }
    // Accounts passed over in this round because of their own cap.
    let mut skipped = 0;
    let mut soonest: Option<Duration> = None;
    while let Some(name) = ready.pop_front() {
        let Some(q) = accounts.get_mut(&name) else {
            continue;
        };
        let Some(w) = q.waiters.front() else { continue };
        let n = w.bytes;
        let own_wait = q.bucket.as_ref().map_or(Duration::ZERO, |b| b.wait_for(n));
        if own_wait > Duration::ZERO {
            // Limited by its own cap: let the others go first.
            soonest = Some(soonest.map_or(own_wait, |s| s.min(own_wait)));
            ready.push_back(name);
            skipped += 1;
            if skipped >= ready.len() {
                break;
            }
            continue;
        }
        let node_wait = node.wait_for(n);
        if node_wait > Duration::ZERO {
            // The node is saturated: this account is next when tokens come.
            ready.push_front(name);
            soonest = Some(soonest.map_or(node_wait, |s| s.min(node_wait)));
            break;
        }
        node.tokens -= n;
        if let Some(b) = q.bucket.as_mut() {
            b.tokens -= n;
        }
        if let Some(w) = q.waiters.pop_front() {
            // A waiter whose body was dropped no longer needs the tokens.
            if w.grant.send(()).is_err() {
                node.tokens += n;
                if let Some(b) = q.bucket.as_mut() {
                    b.tokens += n;
                }
            }
        }
        skipped = 0;
        if !q.waiters.is_empty() {
            ready.push_back(name);
        }
    }
    if ready.is_empty() {
        None
    } else {
        Some(soonest.unwrap_or(Duration::from_millis(1)).max(Duration::from_micros(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `clients` per account, each sending as fast as the shaper allows, for
    /// `secs` of (paused, simulated) time; returns bytes per account.
    async fn run(shaper: &Shaper, clients: &[(&str, usize)], secs: u64) -> HashMap<String, u64> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for (account, n) in clients {
            for _ in 0..*n {
                let shaper = shaper.clone();
                let account: Arc<str> = Arc::from(*account);
                tasks.push(tokio::spawn(async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        shaper.acquire(&account, CHUNK).await;
                        sent += CHUNK as u64;
                    }
                    (account.to_string(), sent)
                }));
            }
        }
        let mut out = HashMap::new();
        for t in tasks {
            let (a, n) = t.await.unwrap();
            *out.entry(a).or_default() += n;
        }
        out
    }

    fn mbps(bytes: u64, secs: u64) -> f64 {
        bytes as f64 * 8.0 / 1e6 / secs as f64
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_is_held_to_its_capacity() {
        let shaper = Shaper::new(100);
        let got = run(&shaper, &[("a", 8)], 10).await;
        let rate = mbps(got["a"], 10);
        assert!((99.0..=101.5).contains(&rate), "{rate} Mbit/s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_is_held_to_its_cap_and_others_get_the_rest() {
        let shaper = Shaper::new(100);
        shaper.set_account_cap("capped", Some(20_000));
        let got = run(&shaper, &[("capped", 4), ("free", 1)], 10).await;
        let capped = mbps(got["capped"], 10);
        let free = mbps(got["free"], 10);
        assert!((19.5..=20.5).contains(&capped), "capped {capped}");
        assert!((78.0..=81.5).contains(&free), "free {free}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_greedy_account_does_not_starve_the_others() {
        let shaper = Shaper::new(90);
        // 30 connections against 1 and 1: round-robin gives each account a third.
        let got = run(&shaper, &[("greedy", 30), ("b", 1), ("c", 1)], 10).await;
        for a in ["greedy", "b", "c"] {
            let r = mbps(got[a], 10);
            assert!((29.0..=31.0).contains(&r), "{a}: {r} Mbit/s of 90");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caps_change_without_a_restart() {
        let shaper = Shaper::new(1000);
        shaper.set_account_cap("a", Some(10_000));
        let before = mbps(run(&shaper, &[("a", 2)], 5).await["a"], 5);
        shaper.set_account_cap("a", Some(40_000));
        let after = mbps(run(&shaper, &[("a", 2)], 5).await["a"], 5);
        assert!((9.5..=10.6).contains(&before), "{before}");
        assert!((39.0..=40.8).contains(&after), "{after}");
        shaper.set_account_cap("a", None);
        shaper.set_capacity(200);
        let uncapped = mbps(run(&shaper, &[("a", 2)], 5).await["a"], 5);
        assert!((195.0..=202.0).contains(&uncapped), "{uncapped}");
    }
}
