//! The verdict of a run: per account the delivered bandwidth, errors, latency and
//! rebuffers, each SLA checked over every window, fairness among payg accounts;
//! printed as a table, written as JSON and as an SVG plot.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scenario::{Budgets, Mode};
use crate::stats::{AccountStats, jain, quantile};

/// When each SLA applies to an account: (from second, SLA in Mbit/s or none).
pub type SlaTimeline = Vec<(u64, Option<u32>)>;

#[derive(Debug, Serialize)]
pub struct SlaCheck {
    pub sla_mbps: u32,
    /// The seconds the SLA applied to the account (from its change to the next
    /// or the run's end), settling included.
    pub from_secs: u64,
    pub to_secs: u64,
    /// Share of the checked seconds that delivered at least the SLA.
    pub share_of_seconds_at_sla: f64,
    /// The worst window's mean Mbit/s, and where it starts.
    pub worst_window_mbps: f64,
    pub worst_window_start_secs: u64,
    pub held: bool,
}

#[derive(Debug, Serialize)]
pub struct AccountReport {
    pub name: String,
    pub offer: String,
    pub players: u32,
    pub mode: String,
    pub mean_mbps: f64,
    pub mbps_per_second: Vec<f64>,
    /// (requests, errors, rebuffers) per second.
    pub per_second: Vec<(u64, u64, u64)>,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub rebuffers: u64,
    pub stalled_secs: f64,
    pub segment_ms_p50: f64,
    pub segment_ms_p95: f64,
    pub segment_ms_p99: f64,
    /// Sign-up → first segment, for accounts signed up during the run.
    pub first_segment_ms_p50: Option<f64>,
    pub first_segment_ms_p99: Option<f64>,
    pub sla: Vec<SlaCheck>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub duration_secs: u64,
    pub accounts: Vec<AccountReport>,
    /// (second, what happened).
    pub events: Vec<(u64, String)>,
    pub payg_jain_index: Option<f64>,
    /// The accounts the index is over: payg for the whole run (neither signed
    /// up during it nor moved to an SLA).
    pub payg_fairness_accounts: Vec<String>,
    /// Sign-up (account made, demo asset uploaded) → first segment, over every
    /// account signed up during the run.
    pub signup_to_first_segment_ms_p50: Option<f64>,
    pub signup_to_first_segment_ms_p99: Option<f64>,
    /// Why the run failed; empty when every SLA and budget held.
    pub failures: Vec<String>,
    pub passed: bool,
    /// The rolling upgrades `upload-image` events started, and how they ended.
    pub upgrades: Vec<UpgradeOutcome>,
}

/// How an upgrade an `upload-image` event started ended within the run.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeOutcome {
    pub version: String,
    pub operation: String,
    /// `succeeded`, `failed` (halted), `superseded`, or `unfinished` at the run's end.
    pub outcome: String,
    /// From the upload until it ended (or the run did).
    pub seconds: f64,
    pub pools_upgraded: u64,
    pub pools_total: u64,
    /// Why it halted, when it did.
    pub error: Option<String>,
}

impl Report {
    /// Adds the upgrades the run started; one that did not succeed fails the run.
    pub fn with_upgrades(mut self, upgrades: Vec<UpgradeOutcome>) -> Self {
        for u in &upgrades {
            if u.outcome != "succeeded" {
                let why = u.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                self.failures.push(format!(
                    "upgrade to {} {} after {:.1} s ({}/{} pools){why}",
                    u.version, u.outcome, u.seconds, u.pools_upgraded, u.pools_total
                ));
                self.passed = false;
            }
        }
        self.upgrades = upgrades;
        self
    }
}

/// The account as the report needs it.
pub struct Observed<'a> {
    pub stats: &'a AccountStats,
    pub offer: String,
    pub players: u32,
    pub mode: Mode,
    pub sla: SlaTimeline,
    /// Seconds before this are not checked (sign-up, settling).
    pub checked_from: u64,
}

/// Checks each SLA span of `mbps` (from `sla`, skipping `settle` seconds after
/// each change and before `from`) over windows of `window` seconds.
fn check_sla(mbps: &[f64], sla: &SlaTimeline, from: u64, settle: u64, window: u64, fraction: f64) -> Vec<SlaCheck> {
    let end = mbps.len() as u64;
    let mut checks = Vec::new();
    for (i, &(start, target)) in sla.iter().enumerate() {
        let Some(target) = target else { continue };
        let span_start = (start + settle).max(from);
        let span_end = sla.get(i + 1).map_or(end, |n| n.0).min(end);
        if span_start >= span_end {
            continue;
        }
        let secs = &mbps[span_start as usize..span_end as usize];
        let w = (window as usize).min(secs.len()).max(1);
        let (worst_at, worst) = (0..=secs.len() - w)
            .map(|k| (k, secs[k..k + w].iter().sum::<f64>() / w as f64))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let at_sla = secs.iter().filter(|v| **v >= f64::from(target)).count();
        checks.push(SlaCheck {
            sla_mbps: target,
            from_secs: start,
            to_secs: sla.get(i + 1).map_or(end, |n| n.0).min(end),
            share_of_seconds_at_sla: at_sla as f64 / secs.len() as f64,
            worst_window_mbps: worst,
            worst_window_start_secs: span_start + worst_at as u64,
            held: worst >= f64::from(target) * fraction,
        });
    }
    checks
}

pub fn evaluate(
    scenario: &str,
    duration: u64,
    settle: u64,
    budgets: &Budgets,
    observed: &[Observed<'_>],
    events: Vec<(u64, String)>,
) -> Report {
    let seconds = duration as usize;
    let mut failures = Vec::new();
    let mut accounts = Vec::new();
    for o in observed {
        let mbps = o.stats.mbps_per_second(seconds);
        let (bytes, requests, errors, rebuffers) = o.stats.totals();
        let mut lat = o.stats.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut first = o.stats.first_segment.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let sla = check_sla(&mbps, &o.sla, o.checked_from, settle, budgets.window_secs, budgets.sla_fraction);
        for c in sla.iter().filter(|c| !c.held) {
            failures.push(format!(
                "{}: SLA {} Mbit/s missed: {:.1} Mbit/s in the {} s from second {} (needs {:.1})",
                o.stats.name,
                c.sla_mbps,
                c.worst_window_mbps,
                budgets.window_secs,
                c.worst_window_start_secs,
                f64::from(c.sla_mbps) * budgets.sla_fraction
            ));
        }
        accounts.push(AccountReport {
            name: o.stats.name.clone(),
            offer: o.offer.clone(),
            players: o.players,
            mode: format!("{:?}", o.mode).to_lowercase(),
            mean_mbps: bytes as f64 * 8.0 / 1e6 / duration.max(1) as f64,
            per_second: o.stats.per_second(seconds),
            mbps_per_second: mbps,
            requests,
            errors,
            errors_by_kind: o.stats.error_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            rebuffers,
            stalled_secs: o.stats.stalled_ms.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0,
            segment_ms_p50: quantile(&mut lat, 0.50) * 1000.0,
            segment_ms_p95: quantile(&mut lat, 0.95) * 1000.0,
            segment_ms_p99: quantile(&mut lat, 0.99) * 1000.0,
            first_segment_ms_p50: (!first.is_empty()).then(|| quantile(&mut first, 0.50) * 1000.0),
            first_segment_ms_p99: (!first.is_empty()).then(|| quantile(&mut first, 0.99) * 1000.0),
            sla,
        });
    }
    let errors: u64 = accounts.iter().map(|a| a.errors).sum();
    if errors > budgets.max_errors {
        let by: Vec<String> = accounts
            .iter()
            .filter(|a| a.errors > 0)
            .map(|a| format!("{} {} ({:?})", a.name, a.errors, a.errors_by_kind))
            .collect();
        failures.push(format!("{errors} failed requests (budget {}): {}", budgets.max_errors, by.join(", ")));
    }
    let rebuffers: u64 = accounts.iter().map(|a| a.rebuffers).sum();
    if rebuffers > budgets.max_rebuffers {
        failures.push(format!("{rebuffers} rebuffers (budget {})", budgets.max_rebuffers));
    }
    // Fairness among the accounts that were payg over the whole run: one that
    // signed up late or bought an SLA mid-run had other rights for a while.
    let whole_run_payg: Vec<&AccountReport> = accounts
        .iter()
        .zip(observed)
        .filter(|(a, o)| a.offer == "payg" && o.checked_from == 0 && o.sla.iter().all(|(_, sla)| sla.is_none()))
        .map(|(a, _)| a)
        .collect();
    let payg: Vec<f64> = whole_run_payg.iter().map(|a| a.mean_mbps).collect();
    let payg_fairness_accounts = whole_run_payg.iter().map(|a| a.name.clone()).collect();
    let payg_jain_index = (payg.len() > 1).then(|| jain(&payg));
    if let (Some(min), Some(j)) = (budgets.jain_min, payg_jain_index)
        && j < min
    {
        failures.push(format!("payg fairness: Jain's index {j:.3} below {min}"));
    }
    let mut firsts: Vec<f64> = observed
        .iter()
        .flat_map(|o| o.stats.first_segment.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
        .collect();
    let signup_to_first_segment_ms_p50 = (!firsts.is_empty()).then(|| quantile(&mut firsts, 0.50) * 1000.0);
    let signup_to_first_segment_ms_p99 = (!firsts.is_empty()).then(|| quantile(&mut firsts, 0.99) * 1000.0);
    Report {
        signup_to_first_segment_ms_p50,
        signup_to_first_segment_ms_p99,
        scenario: scenario.to_owned(),
        duration_secs: duration,
        passed: failures.is_empty(),
        upgrades: Vec::new(),
        accounts,
        events,
        payg_jain_index,
        payg_fairness_accounts,
        failures,
    }
}

impl Report {
    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\n{:<14} {:>5} {:>7} {:>9} {:>8} {:>7} {:>6} {:>8} {:>8} {:>8} {:>9} {:>10}\n",
            "account",
            "offer",
            "players",
            "Mbit/s",
            "requests",
            "errors",
            "rebuf",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "SLA",
            "worst 10s"
        );
        for a in &self.accounts {
            let (sla, worst) = match a.sla.last() {
                Some(c) => (
                    format!("{}{}", c.sla_mbps, if a.sla.iter().all(|c| c.held) { " ok" } else { " MISS" }),
                    format!("{:.1}", a.sla.iter().map(|c| c.worst_window_mbps).fold(f64::INFINITY, f64::min)),
                ),
                None => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{:<14} {:>5} {:>7} {:>9.1} {:>8} {:>7} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>10}\n",
                a.name,
                a.offer,
                a.players,
                a.mean_mbps,
                a.requests,
                a.errors,
                a.rebuffers,
                a.segment_ms_p50,
                a.segment_ms_p95,
                a.segment_ms_p99,
                sla,
                worst
            ));
        }
        if let (Some(p50), Some(p99)) = (self.signup_to_first_segment_ms_p50, self.signup_to_first_segment_ms_p99) {
            out.push_str(&format!("sign-up → first segment: p50 {p50:.0} ms, p99 {p99:.0} ms\n"));
        }
        if let Some(j) = self.payg_jain_index {
            out.push_str(&format!(
                "payg fairness (Jain's index over the {} accounts payg for the whole run): {j:.3}\n",
                self.payg_fairness_accounts.len()
            ));
        }
        for (at, what) in &self.events {
            out.push_str(&format!("event at {at} s: {what}\n"));
        }
        for u in &self.upgrades {
            out.push_str(&format!(
                "upgrade to {}: {} in {:.1} s, {}/{} pools\n",
                u.version, u.outcome, u.seconds, u.pools_upgraded, u.pools_total
            ));
        }
        if self.passed {
            out.push_str("every SLA and budget held\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("FAILED: {f}\n"));
            }
        }
        out
    }

    /// Mbit/s per account over time; each SLA a dashed line of its account's
    /// colour over the seconds it applied, in the legend; each event a numbered
    /// marker (numbers close together staggered), listed under the plot.
    pub fn plot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use plotters::prelude::*;
        const CHART_HEIGHT: u32 = 620;
        const EVENT_ROW: u32 = 20;
        let list_height = if self.events.is_empty() { 0 } else { 16 + EVENT_ROW * self.events.len() as u32 };
        let root = SVGBackend::new(path, (1100, CHART_HEIGHT + list_height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (upper, lower) = root.split_vertically(CHART_HEIGHT);
        let duration = self.duration_secs.max(1) as f64;
        let top = self
            .accounts
            .iter()
            .flat_map(|a| a.mbps_per_second.iter().copied().chain(a.sla.iter().map(|c| f64::from(c.sla_mbps))))
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&upper)
            .caption(format!("{}: delivered Mbit/s per account", self.scenario), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..duration, 0f64..top)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart.configure_mesh().x_desc("seconds").y_desc("Mbit/s").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, a) in self.accounts.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = a.mbps_per_second.iter().enumerate().map(|(s, v)| (s as f64 + 0.5, *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(a.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            for c in &a.sla {
                let y = f64::from(c.sla_mbps);
                let span = [(c.from_secs as f64, y), (c.to_secs as f64, y)];
                chart
                    .draw_series(DashedLineSeries::new(span, 8, 5, color.stroke_width(1)))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(format!("{} SLA {} Mbit/s", a.name, c.sla_mbps))
                    .legend(move |(x, y)| {
                        plotters::element::DashedPathElement::new(
                            vec![(x, y), (x + 16, y)],
                            4,
                            3,
                            color.stroke_width(1),
                        )
                    });
            }
        }
        // Markers within 3 % of the run of each other go one row lower each.
        let mut last_x = f64::NEG_INFINITY;
        let mut row = 0;
        for (n, (at, _)) in self.events.iter().enumerate() {
            let x = *at as f64;
            row = if x - last_x < duration * 0.03 { (row + 1) % 4 } else { 0 };
            last_x = x;
            chart
                .draw_series(LineSeries::new([(x, 0.0), (x, top)], BLACK.mix(0.6)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let y = top * (0.97 - 0.05 * f64::from(row));
            chart
                .draw_series(std::iter::once(Text::new(format!("{}", n + 1), (x + 0.3, y), ("sans-serif", 14))))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (n, (at, what)) in self.events.iter().enumerate() {
            let y = 8 + EVENT_ROW as i32 * n as i32;
            lower
                .draw(&Text::new(format!("{}. at {at} s: {what}", n + 1), (68, y), ("sans-serif", 14)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sla_is_checked_over_every_window_after_settling() {
        let mut mbps = vec![0.0, 0.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0];
        let sla = vec![(0, Some(100))];
        let c = &check_sla(&mbps, &sla, 0, 2, 5, 0.99)[0];
        assert!(c.held, "the settling seconds are not held against it");
        assert_eq!(c.share_of_seconds_at_sla, 1.0);
        mbps[8] = 60.0;
        let c = &check_sla(&mbps, &sla, 0, 2, 5, 0.99)[0];
        assert!(!c.held);
        assert!((c.worst_window_mbps - 92.0).abs() < 1e-9, "{}", c.worst_window_mbps);
        // An offer change: none before, the SLA after it (and its settling).
        let changed = vec![(0, None), (6, Some(100))];
        let checks = check_sla(&mbps, &changed, 0, 1, 5, 0.99);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].worst_window_start_secs, 7);
    }

    #[test]
    fn fairness_counts_only_accounts_payg_for_the_whole_run() {
        let start = std::time::Instant::now();
        let stats: Vec<AccountStats> =
            ["ana", "bo", "moved", "late"].iter().map(|n| AccountStats::new((*n).to_owned(), start, 10)).collect();
        for (s, bytes) in stats.iter().zip([10_000_000, 10_000_000, 1_000_000, 500_000]) {
            s.bytes(bytes);
        }
        let observed = |i: usize, sla: SlaTimeline, checked_from: u64| Observed {
            stats: &stats[i],
            offer: "payg".into(),
            players: 1,
            mode: Mode::Saturate,
            sla,
            checked_from,
        };
        let all = [
            observed(0, vec![(0, None)], 0),
            observed(1, vec![(0, None)], 0),
            // Bought an SLA at second 4, signed up at second 5: not payg all along.
            observed(2, vec![(0, None), (4, Some(100))], 0),
            observed(3, vec![(0, None)], 5),
        ];
        let r = evaluate("t", 10, 0, &Budgets::default(), &all, vec![]);
        assert_eq!(r.payg_fairness_accounts, ["ana", "bo"]);
        assert!((r.payg_jain_index.unwrap() - 1.0).abs() < 1e-9, "{:?}", r.payg_jain_index);
        let sla = &r.accounts[2].sla[0];
        assert_eq!((sla.sla_mbps, sla.from_secs, sla.to_secs), (100, 4, 10));
    }

    #[test]
    fn the_plot_numbers_events_and_lists_each_on_a_line_of_its_own() {
        let start = std::time::Instant::now();
        let stats = AccountStats::new("ana".into(), start, 75);
        let observed = [Observed {
            stats: &stats,
            offer: "payg".into(),
            players: 1,
            mode: Mode::Saturate,
            sla: vec![(0, None), (30, Some(40))],
            checked_from: 0,
        }];
        // Seven events a few seconds apart, as the report that ran together had.
        let events: Vec<(u64, String)> =
            [10, 12, 14, 30, 31, 50, 52].iter().map(|&at| (at, format!("kill node (node-{at})"))).collect();
        let r = evaluate("faults", 75, 0, &Budgets::default(), &observed, events);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        r.plot(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Each event's line in the list under the plot, at a height of its own.
        let mut heights = Vec::new();
        for (n, (at, what)) in r.events.iter().enumerate() {
            let line = format!("{}. at {at} s: {what}", n + 1);
            let text = svg.split("<text").find(|t| t.contains(&line)).unwrap_or_else(|| panic!("{line} in the plot"));
            let y = text.split("y=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
            heights.push(y);
        }
        let distinct: std::collections::BTreeSet<&String> = heights.iter().collect();
        assert_eq!(distinct.len(), r.events.len(), "{heights:?}");
        // The markers are numbers, not the labels; the SLA is in the legend.
        for n in 1..=r.events.len() {
            assert!(svg.contains(&format!(">\n{n}\n</text>")), "marker {n}");
        }
        assert!(svg.contains("ana SLA 40 Mbit/s"));
    }

    #[test]
    fn an_upgrade_that_did_not_finish_fails_the_run() {
        let report = |outcome: &str| {
            let r = evaluate("t", 10, 0, &Budgets::default(), &[], vec![]);
            r.with_upgrades(vec![UpgradeOutcome {
                version: "2".into(),
                operation: "op".into(),
                outcome: outcome.into(),
                seconds: 9.0,
                pools_upgraded: 1,
                pools_total: 2,
                error: None,
            }])
        };
        assert!(report("succeeded").passed);
        for bad in ["unfinished", "failed", "superseded"] {
            let r = report(bad);
            assert!(!r.passed, "{bad}");
            assert!(
                r.failures.iter().any(|f| f.contains(&format!("upgrade to 2 {bad}")) && f.contains("1/2 pools")),
                "{:?}",
                r.failures
            );
            assert!(r.table().contains(&format!("upgrade to 2: {bad}")));
        }
    }
}
