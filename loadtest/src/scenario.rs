//! A scenario file (TOML): the platform to test, the accounts and their players,
//! the events during the run, and the budgets that decide pass or fail.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub duration_secs: u64,
    /// Seconds at the start (and after an offer change) not held against an SLA:
    /// players ramping up, caches warming.
    #[serde(default = "default_settle")]
    pub settle_secs: u64,
    #[serde(default)]
    pub platform: Platform,
    pub accounts: Vec<AccountSpec>,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub budgets: Budgets,
}

fn default_settle() -> u64 {
    3
}

/// The platform under test: started here (the default) or one already running.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// A running admin (with `router_url` and `operator_token`); without it, an
    /// admin and a router are started in a temporary data directory.
    pub admin_url: Option<String>,
    pub router_url: Option<String>,
    pub operator_token: Option<String>,
    /// Start a Redis of its own for the admin and router (needed by `stop-redis`).
    #[serde(default)]
    pub redis: bool,
    #[serde(default = "default_type")]
    pub origin_type: String,
    /// Settings of the origin type, applied before the accounts are made.
    pub node_capacity_mbps: Option<u32>,
    pub payg_cap_mbps: Option<u32>,
    pub trial_cap_mbps: Option<u32>,
}

fn default_type() -> String {
    "hls".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Fetch segments as fast as the platform allows: measures delivered bandwidth.
    #[default]
    Saturate,
    /// Play in real time with a buffer and a simple ABR: counts rebuffers.
    Realtime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Hls,
    Dash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    pub name: String,
    /// Accounts made from this spec: `name-1` … `name-N` when more than one.
    #[serde(default = "one")]
    pub count: u32,
    /// `trial`, `payg` or `sla`.
    pub offer: String,
    /// The SLA in Mbit/s (offer `sla`).
    pub mbps: Option<u32>,
    /// Players per account.
    pub players: u32,
    #[serde(default)]
    pub mode: Mode,
    /// What the players play: the demo asset as HLS (the default) or as DASH.
    #[serde(default)]
    pub format: Format,
    /// Real-time players beside them (counting rebuffers while the others measure
    /// bandwidth).
    #[serde(default)]
    pub realtime_players: u32,
    /// Players join evenly over this many seconds.
    #[serde(default)]
    pub ramp_secs: u64,
    /// Sign the account up this many seconds into the run instead of before it
    /// (its players then report sign-up → first segment).
    pub signup_at_secs: Option<u64>,
}

fn one() -> u32 {
    1
}

impl AccountSpec {
    pub fn names(&self) -> Vec<String> {
        if self.count <= 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count).map(|i| format!("{}-{i}", self.name)).collect()
        }
    }
}

/// Something done to the platform during the run. (`deny_unknown_fields` does
/// not work with a flattened tagged enum in serde; the action's own fields are
/// still checked by their types.)
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub at_secs: u64,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `kill -9` a ready node serving the account.
    KillNode { account: String },
    /// `kill -9` admin, started again after `down_secs` (own platform only).
    KillAdmin {
        #[serde(default = "default_down")]
        down_secs: u64,
    },
    /// Change an account's offer (`mbps` for sla).
    ChangeOffer { account: String, offer: String, mbps: Option<u32> },
    /// Upload a new image of the origin type (the headwater binary): a rolling upgrade.
    UploadImage { version: String },
    /// Set the origin type's node capacity (nodes apply it at once).
    SetCapacity { mbps: u32 },
    /// Stop the scenario's own Redis.
    StopRedis,
}

fn default_down() -> u64 {
    5
}

impl Action {
    pub fn label(&self) -> String {
        match self {
            Action::KillNode { account } => format!("kill -9 a node of {account}"),
            Action::KillAdmin { down_secs } => format!("kill -9 admin for {down_secs} s"),
            Action::ChangeOffer { account, offer, mbps } => match mbps {
                Some(m) => format!("{account} → {offer} {m}"),
                None => format!("{account} → {offer}"),
            },
            Action::UploadImage { version } => format!("image {version}"),
            Action::SetCapacity { mbps } => format!("node capacity {mbps} Mbit/s"),
            Action::StopRedis => "stop Redis".into(),
        }
    }
}

/// What must hold for the run to pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Failed player requests allowed, over all accounts.
    #[serde(default)]
    pub max_errors: u64,
    /// Rebuffer events allowed, over all accounts.
    #[serde(default)]
    pub max_rebuffers: u64,
    /// Every window of `window_secs` must deliver at least this share of the SLA.
    #[serde(default = "default_fraction")]
    pub sla_fraction: f64,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Jain's fairness index over the payg accounts must reach this.
    pub jain_min: Option<f64>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_errors: 0,
            max_rebuffers: 0,
            sla_fraction: default_fraction(),
            window_secs: default_window(),
            jain_min: None,
        }
    }
}

fn default_fraction() -> f64 {
    0.99
}

fn default_window() -> u64 {
    10
}

impl Scenario {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.duration_secs > 0, "duration_secs must be positive");
        anyhow::ensure!(!self.accounts.is_empty(), "a scenario needs accounts");
        for a in &self.accounts {
            anyhow::ensure!(
                matches!(a.offer.as_str(), "trial" | "payg" | "sla"),
                "{}: offer is trial, payg or sla",
                a.name
            );
            anyhow::ensure!((a.offer == "sla") == a.mbps.is_some(), "{}: mbps goes with (and only with) sla", a.name);
        }
        let p = &self.platform;
        anyhow::ensure!(
            p.admin_url.is_some() == p.router_url.is_some() && p.admin_url.is_some() == p.operator_token.is_some(),
            "a running platform needs admin_url, router_url and operator_token together"
        );
        for e in &self.events {
            anyhow::ensure!(e.at_secs < self.duration_secs, "an event at {} s is after the end", e.at_secs);
            if matches!(e.action, Action::KillAdmin { .. } | Action::StopRedis) {
                anyhow::ensure!(p.admin_url.is_none(), "{} needs the scenario's own platform", e.action.label());
            }
            if matches!(e.action, Action::StopRedis) {
                anyhow::ensure!(p.redis, "stop-redis needs platform.redis = true");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_reads_and_bad_ones_are_refused() {
        let s = Scenario::from_toml(
            r#"
            name = "t"
            duration_secs = 10
            [[accounts]]
            name = "a"
            offer = "sla"
            mbps = 100
            players = 2
            [[events]]
            at_secs = 5
            action = "kill-node"
            account = "a"
            "#,
        )
        .unwrap();
        assert_eq!(s.accounts[0].mode, Mode::Saturate);
        assert!(matches!(&s.events[0].action, Action::KillNode { account } if account == "a"));
        assert!(Scenario::from_toml("name = 't'\nduration_secs = 1\naccounts = []").is_err());
        let no_mbps = "name='t'\nduration_secs=1\n[[accounts]]\nname='a'\noffer='sla'\nplayers=1";
        assert!(Scenario::from_toml(no_mbps).is_err());
    }
}
