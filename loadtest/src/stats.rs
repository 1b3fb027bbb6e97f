//! What players record, per account and per second of the run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One account's counters, one slot per second of the run.
pub struct AccountStats {
    pub name: String,
    start: Instant,
    bytes: Vec<AtomicU64>,
    requests: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    rebuffers: Vec<AtomicU64>,
    /// Failed requests by kind (status or transport error).
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    /// Segment fetch times, in seconds.
    pub latencies: Mutex<Vec<f64>>,
    /// Seconds the players stalled.
    pub stalled_ms: AtomicU64,
    /// From sign-up to each player's first segment, in seconds.
    pub first_segment: Mutex<Vec<f64>>,
}

impl AccountStats {
    pub fn new(name: String, start: Instant, seconds: usize) -> Self {
        let slots = || (0..seconds + 1).map(|_| AtomicU64::new(0)).collect();
        Self {
            name,
            start,
            bytes: slots(),
            requests: slots(),
            errors: slots(),
            rebuffers: slots(),
            error_kinds: Mutex::default(),
            latencies: Mutex::default(),
            stalled_ms: AtomicU64::new(0),
            first_segment: Mutex::default(),
        }
    }

    fn slot(&self) -> usize {
        (self.start.elapsed().as_secs() as usize).min(self.bytes.len() - 1)
    }

    pub fn bytes(&self, n: u64) {
        self.bytes[self.slot()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn request(&self) {
        self.requests[self.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, kind: String) {
        self.errors[self.slot()].fetch_add(1, Ordering::Relaxed);
        *self.error_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(kind).or_default() += 1;
    }

    pub fn rebuffer(&self) {
        self.rebuffers[self.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, secs: f64) {
        self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(secs);
    }

    /// Delivered Mbit/s in each whole second of the run.
    pub fn mbps_per_second(&self, seconds: usize) -> Vec<f64> {
        self.bytes.iter().take(seconds).map(|b| b.load(Ordering::Relaxed) as f64 * 8.0 / 1e6).collect()
    }

    pub fn total(counter: &[AtomicU64]) -> u64 {
        counter.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (Self::total(&self.bytes), Self::total(&self.requests), Self::total(&self.errors), Self::total(&self.rebuffers))
    }

    pub fn per_second(&self, seconds: usize) -> Vec<(u64, u64, u64)> {
        (0..seconds)
            .map(|s| {
                (
                    self.requests[s].load(Ordering::Relaxed),
                    self.errors[s].load(Ordering::Relaxed),
                    self.rebuffers[s].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// The value at quantile `q` (0–1) of `values`, by nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Jain's fairness index of `x`: 1 when all are equal, 1/n when one takes all.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 { 1.0 } else { sum * sum / (x.len() as f64 * squares) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_fairness() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        assert!((jain(&[10.0, 10.0, 10.0]) - 1.0).abs() < 1e-9);
        assert!((jain(&[30.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-9);
    }
}
