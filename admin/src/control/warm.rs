//! The warm keeper: keeps, per origin type, the stock of ready unassigned
//! dedicated pools the operator asked for (`warm_pools: {"size": count}`), or with
//! `"auto"` the stock a forecast of SLA sign-ups per size calls for, so an SLA
//! sign-up takes a pool whose nodes are already running. Claiming happens in the
//! store when an account's pool is prepared; this only refills and trims.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, UnixMs};
use crate::store::{OriginTypeRow, Store};

/// The most warm pools of one size `"auto"` keeps.
pub const AUTO_MAX_PER_SIZE: u32 = 4;
/// The most warm pools of one size an operator may ask for, and the largest size.
pub const MAX_PER_SIZE: u32 = 16;
pub const MAX_SIZE: i32 = 64;
/// The forecast looks at sign-ups of the last this many minutes, one bucket each.
const FORECAST_MINUTES: usize = 30;
/// Weight of the newest minute in the moving average.
const FORECAST_ALPHA: f64 = 0.5;

/// What an origin type asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmPolicy {
    /// Pools per size in nodes.
    Fixed(BTreeMap<i32, u32>),
    Auto,
}

impl WarmPolicy {
    /// Reads the stored (or requested) setting; `Err` says what is wrong with it.
    pub fn parse(v: &serde_json::Value) -> Result<Self, String> {
        match v {
            serde_json::Value::String(s) if s == "auto" => Ok(Self::Auto),
            serde_json::Value::Object(m) => {
                let mut sizes = BTreeMap::new();
                for (k, v) in m {
                    let size: i32 = k
                        .parse()
                        .ok()
                        .filter(|s| (1..=MAX_SIZE).contains(s) && crate::rules::IS_WARM_POOL_SIZE.matches(k))
                        .ok_or_else(|| format!("sizes are numbers of nodes from 1 to {MAX_SIZE}; {k:?} is not one"))?;
                    let count = v
                        .as_u64()
                        .and_then(|c| u32::try_from(c).ok())
                        .filter(|c| *c <= MAX_PER_SIZE)
                        .ok_or_else(|| format!("the count for size {k} must be 0 to {MAX_PER_SIZE}"))?;
                    sizes.insert(size, count);
                }
                Ok(Self::Fixed(sizes))
            }
            _ => Err(r#"give {"size in nodes": count, ...} or "auto""#.into()),
        }
    }
}

/// Exponentially weighted moving average of sign-ups per minute, oldest bucket first.
pub fn ewma(per_minute: &[u32], alpha: f64) -> f64 {
    per_minute.iter().fold(0.0, |avg, &n| alpha * f64::from(n) + (1.0 - alpha) * avg)
}

/// The `"auto"` stock per size at `now`: for each size that SLA sign-ups (time,
/// size in nodes) of the last [`FORECAST_MINUTES`] asked for, the moving average
/// of sign-ups per minute, rounded up, at most [`AUTO_MAX_PER_SIZE`]. A burst is
/// met by as many warm pools as it had sign-ups in its minute, up to half of them
/// at once; quiet minutes let the stock decay to none.
pub fn forecast(signups: &[(UnixMs, i32)], now: UnixMs) -> BTreeMap<i32, u32> {
    let mut buckets: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for &(at, size) in signups {
        let age = usize::try_from((now - at).max(0) / 60_000).unwrap_or(usize::MAX);
        if age < FORECAST_MINUTES {
            buckets.entry(size).or_insert_with(|| vec![0; FORECAST_MINUTES])[FORECAST_MINUTES - 1 - age] += 1;
        }
    }
    buckets
        .into_iter()
        .map(|(size, counts)| {
            let avg = ewma(&counts, FORECAST_ALPHA);
            // Below a tenth of a sign-up a minute, none is kept.
            let want = if avg < 0.1 { 0 } else { avg.ceil() as u32 };
            (size, want.min(AUTO_MAX_PER_SIZE))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

pub struct Keeper {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub every: Duration,
}

impl Keeper {
    /// The stock a type should have now.
    async fn wanted(&self, t: &OriginTypeRow) -> anyhow::Result<BTreeMap<i32, u32>> {
        let Some(policy) = t.warm_pools.as_ref().and_then(|v| WarmPolicy::parse(&v.0).ok()) else {
            return Ok(BTreeMap::new());
        };
        Ok(match policy {
            WarmPolicy::Fixed(sizes) => sizes,
            WarmPolicy::Auto => {
                let now = self.clock.now_ms();
                let since = now - FORECAST_MINUTES as i64 * 60_000;
                let cap = u32::try_from(t.node_capacity_mbps).unwrap_or(1);
                let signups: Vec<(UnixMs, i32)> = self
                    .store
                    .sla_signups(&t.name, since)
                    .await?
                    .into_iter()
                    .filter_map(|(at, mbps)| {
                        let sla = crate::domain::Mbps::parse("sla", i64::from(mbps)).ok()?;
                        Some((at, crate::domain::dedicated_pool_nodes(sla, cap)))
                    })
                    .collect();
                forecast(&signups, now)
            }
        })
    }

    /// One pass: for every type, warm pools made or released to match its stock.
    pub async fn keep(&self) -> anyhow::Result<()> {
        for t in self.store.origin_types().await? {
            let wanted = self.wanted(&t).await?;
            let mut have: BTreeMap<i32, Vec<uuid::Uuid>> = BTreeMap::new();
            for p in self.store.warm_pools(&t.name).await? {
                have.entry(p.desired_nodes).or_default().push(p.id);
            }
            let now = self.clock.now_ms();
            for (&size, &count) in &wanted {
                let present = have.get(&size).map_or(0, Vec::len);
                for _ in present..count as usize {
                    let id = self.store.create_warm_pool(&t.name, size, now).await?;
                    tracing::info!(origin_type = %t.name, size, pool = %id, "warm pool made");
                }
            }
            for (size, pools) in &have {
                let keep = wanted.get(size).copied().unwrap_or(0) as usize;
                // The newest go first: the older ones are the likelier to be ready.
                for id in pools.iter().rev().take(pools.len().saturating_sub(keep)) {
                    if self.store.release_warm_pool(*id, now).await? {
                        tracing::info!(origin_type = %t.name, size, pool = %id, "warm pool released");
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the stock every `every` while this replica holds the control lease.
    pub async fn run(self, shutdown: CancellationToken, leader: tokio::sync::watch::Receiver<bool>) {
        let mut every = crate::control::every::Every::new(self.every, &shutdown);
        while every.next().await {
            if !*leader.borrow() {
                continue;
            }
            if let Err(e) = self.keep().await {
                tracing::warn!(error = %e, "warm keeper");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const MIN: i64 = 60_000;

    #[test]
    fn the_setting_is_sizes_and_counts_or_auto() {
        let fixed = WarmPolicy::parse(&serde_json::json!({"1": 2, "3": 1})).unwrap();
        assert_eq!(fixed, WarmPolicy::Fixed(BTreeMap::from([(1, 2), (3, 1)])));
        assert_eq!(WarmPolicy::parse(&serde_json::json!("auto")).unwrap(), WarmPolicy::Auto);
        assert!(WarmPolicy::parse(&serde_json::json!({"0": 1})).is_err());
        assert!(WarmPolicy::parse(&serde_json::json!({"x": 1})).is_err());
        assert!(WarmPolicy::parse(&serde_json::json!({"2": 99})).is_err());
        assert!(WarmPolicy::parse(&serde_json::json!("sometimes")).is_err());
    }

    #[test]
    fn the_forecast_follows_a_burst_then_decays() {
        let clock = ManualClock::new(1_800_000_000_000);
        let mut signups = Vec::new();
        // Quiet: nothing kept.
        assert!(forecast(&signups, clock.now_ms()).is_empty());
        // A burst of six 2-node sign-ups and one 4-node sign-up in one minute.
        for _ in 0..6 {
            signups.push((clock.now_ms(), 2));
        }
        signups.push((clock.now_ms(), 4));
        clock.advance_ms(30_000);
        let now = forecast(&signups, clock.now_ms());
        assert_eq!(now, BTreeMap::from([(2, 3), (4, 1)]), "half the burst's minute, rounded up");
        // More bursts push the stock to its bound, never past it.
        for m in 1..5 {
            clock.set(1_800_000_000_000 + m * MIN);
            for _ in 0..6 {
                signups.push((clock.now_ms(), 2));
            }
        }
        assert_eq!(forecast(&signups, clock.now_ms())[&2], AUTO_MAX_PER_SIZE);
        // Quiet minutes: the stock decays...
        clock.advance_ms(4 * MIN);
        let later = forecast(&signups, clock.now_ms());
        assert!(later[&2] < AUTO_MAX_PER_SIZE && later[&2] >= 1, "{later:?}");
        // ... to nothing once the sign-ups are older than the window.
        clock.advance_ms(FORECAST_MINUTES as i64 * MIN);
        assert!(forecast(&signups, clock.now_ms()).is_empty());
    }
}
