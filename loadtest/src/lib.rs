//! `headwater loadtest SCENARIO.toml`: proves the bandwidth SLAs. It starts (or
//! connects to) a platform, makes the scenario's accounts with the demo asset,
//! runs HLS and DASH players against their locators through the router while the
//! scenario's events (killed nodes, a killed admin, offer changes, new images,
//! Redis stopped) happen, and checks every SLA and error budget. See DESIGN.md §2
//! (`loadtest/`).

mod platform;
mod player;
mod report;
mod scenario;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use report::Report;
pub use scenario::Scenario;

use crate::platform::Platform;
use crate::report::{Observed, SlaTimeline};
use crate::scenario::Action;
use crate::stats::AccountStats;

/// Flags of `headwater loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// The scenario (TOML; see loadtest/scenarios/).
    pub scenario: PathBuf,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Draw Mbit/s per account over time, SLAs and events, as SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Override the scenario's duration, in seconds.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

struct Account {
    name: String,
    offer: String,
    players: u32,
    mode: scenario::Mode,
    format: scenario::Format,
    realtime_players: u32,
    ramp: Duration,
    signup_at: Option<u64>,
    mbps: Option<u32>,
    key: Option<String>,
    stats: Arc<AccountStats>,
}

/// Runs the scenario; `Ok(report)` whether or not it passed (see `Report::passed`).
/// `demo` is the demo asset's files, uploaded to every account.
pub async fn run(args: &LoadtestArgs, demo: &[(&str, &[u8])]) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(&args.scenario).with_context(|| format!("reading {}", args.scenario.display()))?;
    let mut scenario = Scenario::from_toml(&text).with_context(|| format!("in {}", args.scenario.display()))?;
    if let Some(d) = args.duration_secs {
        scenario.duration_secs = d;
        scenario.events.retain(|e| e.at_secs < d);
    }
    let program = std::env::current_exe()?;
    let platform = Platform::start(&scenario.platform, &program).await?;
    let result = drive(&scenario, &platform, args, demo).await;
    platform.stop().await;
    let report = result?;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &args.plot {
        report.plot(path)?;
    }
    Ok(report)
}

async fn drive(
    scenario: &Scenario,
    platform: &Platform,
    args: &LoadtestArgs,
    demo: &[(&str, &[u8])],
) -> anyhow::Result<Report> {
    platform.configure(&scenario.platform).await?;
    let duration = scenario.duration_secs;
    // Set again once the accounts made before the run serve.
    let mut start = Instant::now();
    let mut accounts = Vec::new();
    for spec in &scenario.accounts {
        for name in spec.names() {
            accounts.push(Account {
                stats: Arc::new(AccountStats::new(name.clone(), start, duration as usize)),
                name,
                offer: spec.offer.clone(),
                players: spec.players,
                mode: spec.mode,
                format: spec.format,
                realtime_players: spec.realtime_players,
                ramp: Duration::from_secs(spec.ramp_secs),
                signup_at: spec.signup_at_secs,
                mbps: spec.mbps,
                key: None,
            });
        }
    }
    // Accounts signed up before the run, in parallel.
    let made = futures_util::future::join_all(
        accounts.iter().filter(|a| a.signup_at.is_none()).map(|a| platform.account(&a.name, &a.offer, a.mbps, demo)),
    )
    .await;
    let mut made = made.into_iter();
    for a in accounts.iter_mut().filter(|a| a.signup_at.is_none()) {
        a.key = Some(made.next().context("account")?.with_context(|| format!("making account {}", a.name))?);
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).timeout(Duration::from_secs(30)).build()?;
    // The run starts when every account made before it serves through the router
    // (a router learns of a new account within a moment, not at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in accounts.iter().filter(|a| a.signup_at.is_none()) {
        let url = platform.locator(&a.name, a.format);
        while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(Instant::now() < deadline, "{} never served through the router", a.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    start = Instant::now() + Duration::from_millis(200);
    for a in &mut accounts {
        a.stats = Arc::new(AccountStats::new(a.name.clone(), start, duration as usize));
    }
    let stop = CancellationToken::new();
    let mut players = Vec::new();
    let platform_ref = platform;
    tokio::time::sleep_until(start.into()).await;
    let mut late = Vec::new();
    for a in &accounts {
        match a.signup_at {
            None => {
                let all = a.players + a.realtime_players;
                for i in 0..all {
                    let delay = a.ramp.mul_f64(f64::from(i) / f64::from(all.max(1)));
                    let (http, url, stats, stop) =
                        (http.clone(), platform_ref.locator(&a.name, a.format), a.stats.clone(), stop.clone());
                    let mode = if i < a.players { a.mode } else { scenario::Mode::Realtime };
                    players.push(tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        player::play(http, url, mode, stats, None, stop).await;
                    }));
                }
            }
            Some(at) => late.push((at, a)),
        }
    }
    // Sign-ups during the run: made at their time, their players start at once.
    let signups = futures_util::future::join_all(late.into_iter().map(|(at, a)| {
        let (http, stop, platform) = (http.clone(), stop.clone(), platform_ref);
        async move {
            tokio::time::sleep_until((start + Duration::from_secs(at)).into()).await;
            let signed_up = Instant::now();
            let made = platform.account(&a.name, &a.offer, a.mbps, demo).await;
            let mut handles = Vec::new();
            if made.is_ok() {
                for i in 0..a.players + a.realtime_players {
                    let (http, url, stats, stop) =
                        (http.clone(), platform.locator(&a.name, a.format), a.stats.clone(), stop.clone());
                    let mode = if i < a.players { a.mode } else { scenario::Mode::Realtime };
                    handles.push(tokio::spawn(player::play(http, url, mode, stats, Some(signed_up), stop)));
                }
            }
            (a.name.clone(), made, handles)
        }
    }));
    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(duration);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(scenario.name.clone());
        bar
    });
    let mut sla: Vec<SlaTimeline> = accounts.iter().map(|a| vec![(0, a.mbps)]).collect();
    // Each event at its own time, concurrently (a killed admin's downtime must not
    // delay the next event).
    let key_of = |name: &str| accounts.iter().find(|a| a.name == name).and_then(|a| a.key.clone());
    let events = futures_util::future::join_all(scenario.events.iter().map(|e| async move {
        tokio::time::sleep_until((start + Duration::from_secs(e.at_secs)).into()).await;
        let label = e.action.label();
        tracing::info!(at = e.at_secs, %label, "event");
        let mut sla_change = None;
        let mut upgrade = None;
        let done = match &e.action {
            Action::KillNode { account } => match key_of(account) {
                Some(key) => platform_ref.kill_node(account, &key).await.map(|node| format!("{label} ({node})")),
                None => Err(anyhow::anyhow!("unknown account {account}")),
            },
            Action::ChangeOffer { account, offer, mbps } => match key_of(account) {
                Some(key) => {
                    let body = match mbps {
                        Some(m) => serde_json::json!({"offer": {"kind": offer, "mbps": m}}),
                        None => serde_json::json!({"offer": {"kind": offer}}),
                    };
                    let path = format!("/v1/accounts/{account}");
                    sla_change = Some((account.clone(), if offer == "sla" { *mbps } else { None }));
                    platform_ref.call(reqwest::Method::PATCH, &path, &key, Some(body)).await.map(|_| label.clone())
                }
                None => Err(anyhow::anyhow!("unknown account {account}")),
            },
            Action::UploadImage { version } => {
                let path = format!("/v1/origin-types/{}/images", platform_ref.origin_type);
                let body = serde_json::json!({"version": version, "command": "headwater", "args": ["origin"]});
                let token = platform_ref.operator_token.clone();
                match platform_ref.call(reqwest::Method::POST, &path, &token, Some(body)).await {
                    Ok(op) => {
                        // Followed until it ends or the run does.
                        let end = start + Duration::from_secs(duration);
                        upgrade = Some(follow_upgrade(platform_ref, &token, version, &op, end).await);
                        Ok(label.clone())
                    }
                    Err(e) => Err(e),
                }
            }
            Action::SetCapacity { mbps } => {
                let path = format!("/v1/origin-types/{}", platform_ref.origin_type);
                let body = serde_json::json!({"node_capacity_mbps": mbps});
                let token = platform_ref.operator_token.clone();
                platform_ref.call(reqwest::Method::PATCH, &path, &token, Some(body)).await.map(|_| label.clone())
            }
            Action::KillAdmin { down_secs } => {
                platform_ref.kill_admin(Duration::from_secs(*down_secs)).await.map(|()| label.clone())
            }
            Action::StopRedis => platform_ref.stop_redis().await.map(|()| label.clone()),
        };
        (e.at_secs, done.with_context(|| format!("event at {} s: {label}", e.at_secs)), sla_change, upgrade)
    }));
    let ticker = async {
        for s in 1..=duration {
            tokio::time::sleep_until((start + Duration::from_secs(s)).into()).await;
            if let Some(bar) = &progress {
                let mbps: f64 =
                    accounts.iter().map(|a| a.stats.mbps_per_second(s as usize).last().copied().unwrap_or(0.0)).sum();
                bar.set_position(s);
                bar.set_message(format!("{mbps:.0} Mbit/s"));
            }
        }
    };
    let (events_result, signed, ()) = tokio::join!(events, signups, ticker);
    let mut events_done = Vec::new();
    let mut event_failure = None;
    let mut upgrades = Vec::new();
    for (at, done, sla_change, upgrade) in events_result {
        upgrades.extend(upgrade);
        match done {
            Ok(label) => events_done.push((at, label)),
            Err(e) => event_failure = event_failure.or(Some(e)),
        }
        if let Some((account, mbps)) = sla_change
            && let Some(i) = accounts.iter().position(|a| a.name == account)
        {
            sla[i].push((at, mbps));
        }
    }
    events_done.sort_by_key(|e| e.0);
    for timeline in &mut sla {
        timeline.sort_by_key(|t| t.0);
    }
    stop.cancel();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    for p in players {
        let _ = p.await;
    }
    let mut signup_failures = Vec::new();
    for (name, made, handles) in signed {
        for h in handles {
            let _ = h.await;
        }
        if let Err(e) = made {
            signup_failures.push(format!("{name}: sign-up failed: {e:#}"));
        }
    }
    if let Some(e) = event_failure {
        return Err(e);
    }
    let observed: Vec<Observed<'_>> = accounts
        .iter()
        .zip(sla)
        .map(|(a, sla)| Observed {
            stats: &a.stats,
            offer: a.offer.clone(),
            players: a.players + a.realtime_players,
            mode: a.mode,
            sla,
            checked_from: a.signup_at.map_or(0, |s| s + scenario.settle_secs),
        })
        .collect();
    let mut report =
        report::evaluate(&scenario.name, duration, scenario.settle_secs, &scenario.budgets, &observed, events_done)
            .with_upgrades(upgrades);
    if !signup_failures.is_empty() {
        report.failures.extend(signup_failures);
        report.passed = false;
    }
    Ok(report)
}

/// Polls the upgrade operation `op` until it ends or `end` passes; how it went.
async fn follow_upgrade(
    platform: &platform::Platform,
    token: &str,
    version: &str,
    op: &serde_json::Value,
    end: Instant,
) -> report::UpgradeOutcome {
    let id = op["id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    let mut last = op.clone();
    loop {
        let state = last["state"].as_str().unwrap_or_default().to_owned();
        let ended = matches!(state.as_str(), "succeeded" | "failed" | "superseded");
        if ended || Instant::now() >= end {
            let progress = &last["progress"];
            return report::UpgradeOutcome {
                version: version.to_owned(),
                operation: id,
                outcome: if ended { state } else { "unfinished".to_owned() },
                seconds: started.elapsed().as_secs_f64(),
                pools_upgraded: progress["pools_done"].as_u64().unwrap_or(0),
                pools_total: progress["pools_total"].as_u64().unwrap_or(0),
                error: last["last_error"].as_str().map(str::to_owned),
            };
        }
        tokio::time::sleep(Duration::from_millis(250).min(end.saturating_duration_since(Instant::now()))).await;
        if let Ok(v) = platform.call(reqwest::Method::GET, &format!("/v1/operations/{id}"), token, None).await {
            last = v;
        }
    }
}
