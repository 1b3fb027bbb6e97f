//! The periodic loop of admin's background tasks (reconciler, prober, collector,
//! warm keeper, routing publisher, rate-limit sweeper):
//! `while every.next().await { … }` runs one pass per period until shutdown; a slow
//! pass delays the next one rather than piling passes up.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub struct Every {
    tick: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Every {
    pub fn new(period: Duration, shutdown: &CancellationToken) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, shutdown: shutdown.clone() }
    }

    /// Waits for the next pass; `false` once shutdown is asked for.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }

    /// Puts the next pass off until `extra` past the period from now: a pass that
    /// cost much leaves room before the next one.
    pub fn delay(&mut self, extra: Duration) {
        self.tick.reset_after(self.tick.period() + extra);
    }
}
