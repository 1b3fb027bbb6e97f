//! Domain values, validated once at the edge. Inner code takes these types, never a
//! raw `String`, so a value that reached the store has already been checked.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use crate::rules;

/// How long the pool an account moved out of keeps serving it, so routers that
/// have not yet heard of the move never send a player to a node that refuses it.
/// Routers follow changes within a second (stream or Redis, or their 250 ms poll).
pub const MOVE_GRACE_MS: i64 = 10_000;

/// How long after an account's move the nodes of the pool it left may still
/// report its usage and access records (what they served in the grace above,
/// sent late while admin was away): past this, such a node speaks for it no
/// more.
pub const REPORT_GRACE_MS: i64 = 600_000;

/// A value that failed validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), detail: detail.into() }
    }
}

/// An account name: a DNS label of 3–40 characters of `[a-z0-9-]`, not starting or
/// ending with `-`. It is the first path segment (or the subdomain) of the locator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AccountName(String);

impl AccountName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |d: &str| Err(Invalid::new("name", d));
        if s.starts_with('_') {
            return bad("names starting with '_' are reserved");
        }
        if !(3..=40).contains(&s.len()) {
            return bad("must be 3 to 40 characters long");
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return bad("may contain only lowercase letters, digits and '-'");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return bad("must not start or end with '-'");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of an origin type (`hls`, `dash`, …): 2–31 of `[a-z0-9-]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct OriginTypeName(String);

impl OriginTypeName {
    pub fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
        let ok = (2..=31).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::new(field, "must be 2 to 31 of [a-z0-9-], starting with a letter"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A bandwidth in Mbit/s, strictly positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Mbps(u32);

impl Mbps {
    pub fn parse(field: &str, v: i64) -> Result<Self, Invalid> {
        match u32::try_from(v) {
            Ok(m) if m > 0 && m <= 1_000_000 => Ok(Self(m)),
            _ => Err(Invalid::new(field, "must be a whole number of Mbit/s between 1 and 1000000")),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

crate::states::text_enum! {
    /// The kind of offer an account is on.
    pub enum OfferKind ("offer kind") {
        Trial = "trial",
        Payg = "payg",
        Sla = "sla",
    }
}

/// An offer: trial and payg share pools; sla guarantees `mbps` from a dedicated pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Trial,
    Payg,
    Sla(Mbps),
}

impl Offer {
    /// Validates an offer against the SLA increment of its origin type.
    pub fn parse(kind: OfferKind, mbps: Option<i64>, increment: u32) -> Result<Self, Invalid> {
        match (kind, mbps) {
            (OfferKind::Trial, None) => Ok(Offer::Trial),
            (OfferKind::Payg, None) => Ok(Offer::Payg),
            (OfferKind::Trial | OfferKind::Payg, Some(_)) => {
                Err(Invalid::new("offer.mbps", "only an sla offer takes mbps"))
            }
            (OfferKind::Sla, None) => Err(Invalid::new("offer.mbps", "an sla offer needs mbps")),
            (OfferKind::Sla, Some(v)) => {
                let m = Mbps::parse("offer.mbps", v)?;
                if m.get() % increment != 0 {
                    return Err(Invalid::new(
                        "offer.mbps",
                        format!("must be a multiple of {increment} Mbit/s for this origin type"),
                    ));
                }
                Ok(Offer::Sla(m))
            }
        }
    }

    pub fn kind(self) -> OfferKind {
        match self {
            Offer::Trial => OfferKind::Trial,
            Offer::Payg => OfferKind::Payg,
            Offer::Sla(_) => OfferKind::Sla,
        }
    }

    pub fn sla_mbps(self) -> Option<i32> {
        match self {
            Offer::Sla(m) => i32::try_from(m.get()).ok(),
            _ => None,
        }
    }

    /// Reads an offer back from its two store columns; `None` when they disagree
    /// (an sla offer without a positive rate), which the schema refuses.
    pub fn from_db(kind: OfferKind, sla_mbps: Option<i32>) -> Option<Self> {
        match (kind, sla_mbps) {
            (OfferKind::Trial, _) => Some(Offer::Trial),
            (OfferKind::Payg, _) => Some(Offer::Payg),
            (OfferKind::Sla, Some(m)) => Some(Offer::Sla(Mbps(u32::try_from(m).ok().filter(|m| *m > 0)?))),
            (OfferKind::Sla, None) => None,
        }
    }
}

/// The nodes a dedicated pool holds for an SLA: enough to carry it plus one spare,
/// so one failure never drops the account below its guarantee (the provisioner's
/// allocation policy).
pub fn dedicated_pool_nodes(sla: Mbps, node_capacity_mbps: u32) -> i32 {
    let n = headwater_provisioner::Policy::DEFAULT.instances_for(sla.get(), node_capacity_mbps);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The web origins (`scheme://host[:port]`) whose pages may read an account's
/// content across origins (CORS); empty means any origin (`*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowOrigins(Vec<String>);

impl AllowOrigins {
    pub fn parse(items: &[String]) -> Result<Self, Invalid> {
        if items.len() > 20 {
            return Err(Invalid::new("allow_origins", "at most 20 origins"));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if !rules::IS_WEB_ORIGIN.matches(item) {
                let why = if item.contains('*') {
                    "an origin is one exact http(s)://host[:port]: no wildcard hosts"
                } else {
                    "an origin is http(s)://host[:port] with a DNS or IP host, a port from 1 to 65535, no path"
                };
                return Err(Invalid::new(format!("allow_origins[{i}]"), why));
            }
            out.push(item.trim_end_matches('/').to_ascii_lowercase());
        }
        out.sort();
        out.dedup();
        Ok(Self(out))
    }

    pub fn into_strings(self) -> Vec<String> {
        self.0
    }
}

/// An IP allow-list: the networks whose clients may fetch an account's content.
/// Empty means everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAllow(Vec<IpNet>);

impl IpAllow {
    pub fn parse(items: &[String]) -> Result<Self, Invalid> {
        if items.len() > 100 {
            return Err(Invalid::new("ip_allow", "at most 100 networks"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let bad =
                    || Invalid::new(format!("ip_allow[{i}]"), format!("'{s}' is not an IP address or network (CIDR)"));
                if !rules::IS_IP_NETWORK.matches(s) {
                    return Err(bad());
                }
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }
}

/// A customer's display name: 1–200 characters shown as themselves (no
/// control, format, separator or private-use character: no bidi override, no
/// zero-width character), no whitespace at either end ([`rules::CUSTOMER_NAME`]).
pub fn parse_customer_name(s: &str) -> Result<String, Invalid> {
    if rules::IS_CUSTOMER_NAME.matches(s) {
        return Ok(s.to_owned());
    }
    Err(Invalid::new(
        "name",
        match s.chars().find(|c| rules::hidden(*c)) {
            Some(c) => {
                format!("U+{:04X} is not shown as itself (a control, format or invisible character)", u32::from(c))
            }
            None => "must be 1 to 200 printable characters, with no whitespace at either end".to_owned(),
        },
    ))
}

/// An e-mail address, checked for shape only ([`rules::EMAIL`]); it is
/// normalised to lower case so that one mailbox cannot sign up twice.
pub fn parse_email(s: &str) -> Result<String, Invalid> {
    if s.chars().count() > rules::EMAIL_MAX || !rules::IS_EMAIL.matches(s) {
        return Err(Invalid::new("email", "must be an e-mail address like name@example.com"));
    }
    Ok(s.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_follow_dns_label_rules() {
        for ok in ["abc", "my-origin-1", "a1b", &"a".repeat(40)] {
            assert!(AccountName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b", "_probe", "a.bc", &"a".repeat(41), "ümlaut"] {
            let e = AccountName::parse(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
        assert!(AccountName::parse("_probe").unwrap_err().detail.contains("reserved"));
    }

    #[test]
    fn offers_check_increments_and_mbps_presence() {
        assert_eq!(Offer::parse(OfferKind::Trial, None, 100), Ok(Offer::Trial));
        assert_eq!(Offer::parse(OfferKind::Sla, Some(300), 100).map(Offer::sla_mbps), Ok(Some(300)));
        assert_eq!(Offer::parse(OfferKind::Sla, Some(250), 100).unwrap_err().field, "offer.mbps");
        assert!(Offer::parse(OfferKind::Sla, Some(0), 100).is_err());
        assert!(Offer::parse(OfferKind::Sla, Some(-100), 100).is_err());
        assert!(Offer::parse(OfferKind::Sla, None, 100).is_err());
        assert!(Offer::parse(OfferKind::Payg, Some(100), 100).is_err());
        assert_eq!(Offer::from_db(OfferKind::Sla, Some(200)), Some(Offer::Sla(Mbps(200))));
        assert_eq!(Offer::from_db(OfferKind::Sla, None), None);
        assert_eq!(Offer::from_db(OfferKind::Sla, Some(0)), None);
    }

    #[test]
    fn dedicated_pools_carry_the_sla_plus_one_spare() {
        assert_eq!(dedicated_pool_nodes(Mbps(300), 100), 4);
        assert_eq!(dedicated_pool_nodes(Mbps(250), 100), 4);
        assert_eq!(dedicated_pool_nodes(Mbps(100), 1000), 2);
    }

    #[test]
    fn ip_allow_parses_cidrs_and_bare_addresses() {
        let a = IpAllow::parse(&["10.0.0.0/8".into(), "192.0.2.7".into(), "2001:db8::/32".into()]).unwrap();
        assert_eq!(a.to_strings(), ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(a.allows("10.1.2.3".parse().unwrap()));
        assert!(!a.allows("11.0.0.1".parse().unwrap()));
        assert!(IpAllow::default().allows("203.0.113.9".parse().unwrap()));
        let e = IpAllow::parse(&["10.0.0.0/8".into(), "10.0.0.0/33".into()]).unwrap_err();
        assert_eq!(e.field, "ip_allow[1]");
    }

    #[test]
    fn origins_are_exact_origins() {
        let ok = AllowOrigins::parse(&[
            "https://Player.Example.com:8443".into(),
            "http://192.0.2.1".into(),
            "http://[::1]:80".into(),
        ])
        .unwrap();
        assert_eq!(ok.into_strings(), ["http://192.0.2.1", "http://[::1]:80", "https://player.example.com:8443"]);
        let slash = AllowOrigins::parse(&["https://a.example/".into()]).unwrap();
        assert_eq!(slash.into_strings(), ["https://a.example"]);
        for bad in [
            "https://*.example.com",
            "https://example.com:99999",
            "https://example.com:0",
            "https://exa_mple.com",
            "https://-x.com",
            "ftp://example.com",
            "https://example.com/path",
        ] {
            assert_eq!(AllowOrigins::parse(&[bad.into()]).unwrap_err().field, "allow_origins[0]", "{bad}");
        }
    }

    #[test]
    fn names_show_as_what_they_are() {
        assert_eq!(parse_customer_name("Ana Müller").unwrap(), "Ana Müller");
        assert!(parse_customer_name(" Ana").is_err(), "no spaces around");
        assert_eq!(parse_customer_name("李雷").unwrap(), "李雷");
        for bad in
            ["ana\u{202E}txt.exe", "a\u{200B}b", "a\u{2066}b", "a\u{FEFF}", "a\u{0007}", "a\u{2028}b", "a\u{E000}", ""]
        {
            assert!(parse_customer_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_customer_name("x\u{202E}").unwrap_err().detail.contains("U+202E"));
    }

    #[test]
    fn emails_are_shape_checked_and_lowercased() {
        assert_eq!(parse_email("Ana@Example.COM").unwrap(), "ana@example.com");
        assert!(parse_email(" ana@example.com").is_err(), "no spaces around");
        for bad in ["", "ana", "ana@", "@x.com", "a@b", "a@b@c.com", "a b@c.com", "a@.com"] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }
}
