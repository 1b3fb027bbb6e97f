//! Signed playback tokens. A token rides in a path segment of the locator,
//! right after the account (`/{account}/~{token}/{asset}/…`, or
//! `/~{token}/{asset}/…` with Host locators), so every relative URI a player
//! resolves from a signed playlist carries it with no rewriting: the master
//! playlist's token reaches each child playlist and segment.
//!
//! A token is `hw1.{key id}.{expiry}.{prefix}.{client ip}.{signature}`: the
//! expiry in Unix seconds, the path prefix and client address base64url (either
//! may be empty: any path of the account, any client), and an HMAC-SHA256 by the
//! account's key over the account's name and every other field. Admin signs;
//! routers and origin nodes check with the keys the routing table and the node
//! configuration carry (two during a rotation).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use headwater_protocol::{Playback, PlaybackKey};

/// What starts a token's path segment.
pub const MARK: char = '~';
const VERSION: &str = "hw1";

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Unix seconds after which the token is refused.
    pub expires: u64,
    /// Paths under the account (`{asset}/…`) it is good for; empty: all of them.
    pub prefix: String,
    /// The one client address it is good for; `None`: any.
    pub client_ip: Option<IpAddr>,
}

/// Why a request was refused (answered 403, with this as the detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account requires a token and the URL carries none.
    Missing,
    Malformed,
    /// Signed by a key the account does not have (retired, or another's).
    UnknownKey,
    BadSignature,
    Expired,
    OutsidePrefix,
    WrongClient,
    /// The account is served through its CDN only, and the request did not
    /// carry the CDN's secret.
    NotFromCdn,
}

impl Refusal {
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "this account needs a signed playback URL (a token after the account: /ACCOUNT/~TOKEN/…)"
            }
            Refusal::Malformed => "the playback token is malformed",
            Refusal::UnknownKey => "the playback token is signed with a key this account does not have",
            Refusal::BadSignature => "the playback token's signature does not match",
            Refusal::Expired => "the playback token has expired",
            Refusal::OutsidePrefix => "the playback token is not good for this path",
            Refusal::WrongClient => "the playback token is for another client address",
            Refusal::NotFromCdn => {
                "this account is served through its CDN only: X-Headwater-CDN-Secret is missing or wrong"
            }
        }
    }

    /// The problem type's last segment.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::NotFromCdn => "cdn-authorization",
            _ => "playback-token",
        }
    }
}

fn message(account: &str, key_id: &str, expires: u64, prefix: &str, ip: &str) -> String {
    format!("{VERSION}|{account}|{key_id}|{expires}|{prefix}|{ip}")
}

fn hmac_key(key: &PlaybackKey) -> Option<ring::hmac::Key> {
    let secret = B64.decode(&key.secret).ok()?;
    Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
}

/// The header an account's CDN sends with its secret.
pub const CDN_HEADER: &str = "x-headwater-cdn-secret";

/// The SHA-256 (hex) a CDN secret is kept as.
pub fn cdn_hash(secret: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request may be served given the account's CDN secrets (their
/// hashes) and the `X-Headwater-CDN-Secret` it carried: `Ok(true)` when it came
/// from the CDN (it then needs no playback token: the CDN checks its viewers),
/// `Ok(false)` when the account has no CDN secret, `Err` otherwise.
pub fn check_cdn(hashes: &[String], presented: Option<&[u8]>) -> Result<bool, Refusal> {
    if hashes.is_empty() {
        return Ok(false);
    }
    let Some(presented) = presented else { return Err(Refusal::NotFromCdn) };
    let hash = cdn_hash(presented);
    // Every hash compared, in constant time each: nothing about which matched shows.
    let matched =
        hashes.iter().fold(false, |m, h| m | bool::from(subtle::ConstantTimeEq::ct_eq(h.as_bytes(), hash.as_bytes())));
    if matched { Ok(true) } else { Err(Refusal::NotFromCdn) }
}

/// The token for `grant` on `account`, signed with `key`. `None` when the key's
/// secret is not base64url.
pub fn sign(account: &str, key: &PlaybackKey, grant: &Grant) -> Option<String> {
    let prefix = B64.encode(grant.prefix.as_bytes());
    let ip = grant.client_ip.map(|ip| B64.encode(ip.to_string())).unwrap_or_default();
    let msg = message(account, &key.id, grant.expires, &prefix, &ip);
    let tag = ring::hmac::sign(&hmac_key(key)?, msg.as_bytes());
    Some(format!("{VERSION}.{}.{}.{prefix}.{ip}.{}", key.id, grant.expires, B64.encode(tag.as_ref())))
}

/// Splits a request path into its token and the path without it:
/// `/{account}/~{token}/{rest}` gives `(Some(token), "/{account}/{rest}")`.
/// A path without a token segment comes back whole.
pub fn split(path: &str) -> (Option<&str>, std::borrow::Cow<'_, str>) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let Some((account, after)) = trimmed.split_once('/') else { return (None, path.into()) };
    // `~hw1.` only: an asset may be named `~x`.
    let Some(segment) =
        after.strip_prefix(MARK).filter(|s| s.starts_with(VERSION) && s[VERSION.len()..].starts_with('.'))
    else {
        return (None, path.into());
    };
    let (token, rest) = segment.split_once('/').unwrap_or((segment, ""));
    (Some(token), format!("/{account}/{rest}").into())
}

/// Whether a request for `rest` (the path under the account, `{asset}/…`) from
/// `client` at `now` (Unix seconds) may be served, given the account's rule and
/// the token its URL carried. A token is checked whenever one is given; none is
/// needed unless the account requires it.
pub fn check(
    account: &str,
    rule: Option<&Playback>,
    token: Option<&str>,
    rest: &str,
    client: IpAddr,
    now: u64,
) -> Result<(), Refusal> {
    let Some(token) = token else {
        return if rule.is_some_and(|r| r.required) { Err(Refusal::Missing) } else { Ok(()) };
    };
    let keys = rule.map_or(&[][..], |r| r.keys.as_slice());
    let mut fields = token.split('.');
    let (Some(VERSION), Some(key_id), Some(expires), Some(prefix), Some(ip), Some(sig), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Refusal::Malformed);
    };
    // Digits only, as `sign` writes them: one token has one spelling (one CDN cache key).
    if expires.is_empty()
        || !expires.bytes().all(|b| b.is_ascii_digit())
        || (expires.len() > 1 && expires.starts_with('0'))
    {
        return Err(Refusal::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| Refusal::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| Refusal::Malformed)?;
    let key = keys.iter().find(|k| k.id == key_id).ok_or(Refusal::UnknownKey)?;
    let hmac = hmac_key(key).ok_or(Refusal::UnknownKey)?;
    // Constant time: ring compares the tags without an early exit.
    ring::hmac::verify(&hmac, message(account, key_id, expires, prefix, ip).as_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature)?;
    // Signed, so the fields are admin's: what they say is now checked.
    if now > expires {
        return Err(Refusal::Expired);
    }
    let prefix = B64.decode(prefix).ok().and_then(|p| String::from_utf8(p).ok()).ok_or(Refusal::Malformed)?;
    if !rest.trim_start_matches('/').starts_with(prefix.as_str()) {
        return Err(Refusal::OutsidePrefix);
    }
    if !ip.is_empty() {
        let bound: IpAddr = B64
            .decode(ip)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .ok_or(Refusal::Malformed)?;
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        if bound.to_canonical() != client.to_canonical() {
            return Err(Refusal::WrongClient);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> PlaybackKey {
        PlaybackKey { id: id.into(), secret: B64.encode([byte; 32]) }
    }

    fn rule(keys: Vec<PlaybackKey>) -> Playback {
        Playback { required: true, keys }
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn a_signed_token_is_good_for_its_prefix_until_it_expires() {
        let k = key("k1", 1);
        let g = Grant { expires: 1_000, prefix: "demo/".into(), client_ip: None };
        let t = sign("ana", &k, &g).unwrap();
        assert!(!t.contains('/') && !t.contains('~'), "{t} must fit in one path segment");
        let r = rule(vec![k]);
        assert_eq!(check("ana", Some(&r), Some(&t), "demo/hls/master.m3u8", HERE, 999), Ok(()));
        assert_eq!(check("ana", Some(&r), Some(&t), "/demo/hls/720p/seg_001.ts", HERE, 1_000), Ok(()));
        assert_eq!(check("ana", Some(&r), Some(&t), "demo/hls/master.m3u8", HERE, 1_001), Err(Refusal::Expired));
        assert_eq!(check("ana", Some(&r), Some(&t), "other/hls/master.m3u8", HERE, 1), Err(Refusal::OutsidePrefix));
        // Another account's request with this account's token.
        assert_eq!(check("bob", Some(&r), Some(&t), "demo/x", HERE, 1), Err(Refusal::BadSignature));
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let k = key("k1", 1);
        let g = Grant { expires: 1_000, prefix: "demo/".into(), client_ip: Some(HERE) };
        let t = sign("ana", &k, &g).unwrap();
        let r = rule(vec![k.clone()]);
        let fields: Vec<&str> = t.split('.').collect();
        let later = sign("ana", &k, &Grant { expires: 9_999, ..g.clone() }).unwrap();
        let wider = sign("ana", &k, &Grant { prefix: String::new(), ..g.clone() }).unwrap();
        let anyone = sign("ana", &k, &Grant { client_ip: None, ..g.clone() }).unwrap();
        // Each field of another genuine token, spliced into this one.
        for (i, other) in [(2, &later), (3, &wider), (4, &anyone)] {
            let mut f = fields.clone();
            let theirs: Vec<&str> = other.split('.').collect();
            f[i] = theirs[i];
            let forged = f.join(".");
            assert_eq!(check("ana", Some(&r), Some(&forged), "demo/a", HERE, 1), Err(Refusal::BadSignature), "{i}");
        }
        let other_key = sign("ana", &key("k1", 2), &g).unwrap();
        assert_eq!(check("ana", Some(&r), Some(&other_key), "demo/a", HERE, 1), Err(Refusal::BadSignature));
        let respelled = t.replacen(".1000.", ".01000.", 1);
        for bad in ["", "hw1", "hw1.k1.x.a.b.c", "hw2.k1.1.a..c", &format!("{t}.extra"), "hw1.k1.5...%%%", &respelled] {
            assert_eq!(check("ana", Some(&r), Some(bad), "demo/a", HERE, 1), Err(Refusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_client_bound_token_serves_that_address_only() {
        let k = key("k1", 1);
        let t = sign("ana", &k, &Grant { expires: 10, prefix: String::new(), client_ip: Some(HERE) }).unwrap();
        let r = rule(vec![k]);
        assert_eq!(check("ana", Some(&r), Some(&t), "any/thing", HERE, 1), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(check("ana", Some(&r), Some(&t), "any/thing", mapped, 1), Ok(()));
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(check("ana", Some(&r), Some(&t), "any/thing", elsewhere, 1), Err(Refusal::WrongClient));
    }

    #[test]
    fn two_keys_are_good_during_a_rotation_and_a_retired_one_is_not() {
        let (old, new) = (key("old", 1), key("new", 2));
        let g = Grant { expires: 10, prefix: String::new(), client_ip: None };
        let (by_old, by_new) = (sign("ana", &old, &g).unwrap(), sign("ana", &new, &g).unwrap());
        let both = rule(vec![old, new.clone()]);
        assert_eq!(check("ana", Some(&both), Some(&by_old), "a/b", HERE, 1), Ok(()));
        assert_eq!(check("ana", Some(&both), Some(&by_new), "a/b", HERE, 1), Ok(()));
        let retired = rule(vec![new]);
        assert_eq!(check("ana", Some(&retired), Some(&by_old), "a/b", HERE, 1), Err(Refusal::UnknownKey));
    }

    #[test]
    fn a_token_is_needed_only_when_required_and_checked_whenever_given() {
        let open = Playback { required: false, keys: vec![key("k", 1)] };
        assert_eq!(check("ana", None, None, "a/b", HERE, 1), Ok(()));
        assert_eq!(check("ana", Some(&open), None, "a/b", HERE, 1), Ok(()));
        assert_eq!(check("ana", Some(&rule(vec![])), None, "a/b", HERE, 1), Err(Refusal::Missing));
        assert_eq!(check("ana", Some(&open), Some("hw1.k.1.x.y.AAAA"), "a/b", HERE, 1), Err(Refusal::BadSignature));
        assert_eq!(check("ana", None, Some("hw1.k"), "a/b", HERE, 1), Err(Refusal::Malformed));
        assert_eq!(check("ana", None, Some("hw1.k.1..."), "a/b", HERE, 1), Err(Refusal::UnknownKey));
    }

    #[test]
    fn only_the_cdn_secrets_of_the_account_pass() {
        let (a, b) = (cdn_hash(b"secret-a"), cdn_hash(b"secret-b"));
        assert_eq!(a.len(), 64);
        assert_eq!(check_cdn(&[], None), Ok(false));
        assert_eq!(check_cdn(&[], Some(b"anything")), Ok(false));
        let both = [a.clone(), b];
        assert_eq!(check_cdn(&both, Some(b"secret-a")), Ok(true));
        assert_eq!(check_cdn(&both, Some(b"secret-b")), Ok(true));
        assert_eq!(check_cdn(&both, Some(b"secret-c")), Err(Refusal::NotFromCdn));
        assert_eq!(check_cdn(&both, None), Err(Refusal::NotFromCdn));
        // The hash itself is no secret to present.
        assert_eq!(check_cdn(&both, Some(a.as_bytes())), Err(Refusal::NotFromCdn));
    }

    #[test]
    fn the_token_segment_is_split_from_the_path() {
        assert_eq!(split("/ana/~hw1.t/demo/hls/master.m3u8"), (Some("hw1.t"), "/ana/demo/hls/master.m3u8".into()));
        assert_eq!(split("/ana/demo/hls/master.m3u8"), (None, "/ana/demo/hls/master.m3u8".into()));
        assert_eq!(split("/ana/~hw1.t"), (Some("hw1.t"), "/ana/".into()));
        assert_eq!(split("/ana"), (None, "/ana".into()));
        // Only right after the account, and only a token: an asset may be named `~x`.
        assert_eq!(split("/ana/demo/~hw1.t/x"), (None, "/ana/demo/~hw1.t/x".into()));
        assert_eq!(split("/ana/~x/file"), (None, "/ana/~x/file".into()));
        assert_eq!(split("/ana/~hw1x/file"), (None, "/ana/~hw1x/file".into()));
    }
}
