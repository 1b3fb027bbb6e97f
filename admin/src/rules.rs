//! The shapes of the API's text values, written once: each is a regular
//! expression that the validators in [`crate::domain`] match input against and
//! that the OpenAPI document publishes as the field's `pattern`, so what the
//! schema admits and what the API accepts are the same set. The expressions use
//! only what Rust's `regex` and the JSON Schema (ECMA-262) and Python engines
//! read alike: anchors, classes, alternation, bounded repeats.
//!
//! Free text (a customer's name, an e-mail's local part, an image's command) is
//! any character shown as itself: no control, format (bidi overrides,
//! zero-width), line or paragraph separator, or private-use character, and no
//! whitespace at either end. Those classes are built from the Unicode general
//! categories ([`unicode_properties`]) into the pattern, character by character.

use std::sync::LazyLock;

use regex::Regex;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub const ACCOUNT_NAME: &str = r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$";
pub const ORIGIN_TYPE: &str = r"^[a-z][a-z0-9-]{1,30}$";
pub const IMAGE_VERSION: &str = r"^[A-Za-z0-9._+-]{1,64}$";
pub const IDEMPOTENCY_KEY: &str = r"^[!-~]{1,255}$";
/// An argument of an image's command: anything but NUL.
pub const NO_NUL: &str = "^[^\u{0}]*$";
/// A target's name: a DNS label (it names Kubernetes objects and labels).
pub const TARGET_NAME: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A container image reference: `[registry/]path[:tag][@sha256:digest]`.
pub const CONTAINER_IMAGE: &str = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$";
/// An absolute path: `/` and no NUL.
pub const ABSOLUTE_PATH: &str = "^/[^\u{0}]*$";
/// A zone or region: a Kubernetes label value.
pub const ZONE: &str = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";
/// A warm pool size in nodes, as a key of `warm_pools`: 1 to 64, no leading zero.
pub const WARM_POOL_SIZE: &str = r"^([1-9]|[1-5][0-9]|6[0-4])$";

const OCTET: &str = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const H16: &str = r"[0-9A-Fa-f]{1,4}";

fn ipv4() -> String {
    format!(r"({OCTET}\.){{3}}{OCTET}")
}

/// IPv6 in its RFC 4291 text forms (compressed, and with an IPv4 tail after `::`
/// or a few groups).
fn ipv6() -> String {
    let v4 = ipv4();
    let forms = [
        format!("({H16}:){{7}}{H16}"),
        format!("({H16}:){{1,7}}:"),
        format!("({H16}:){{1,6}}:{H16}"),
        format!("({H16}:){{1,5}}(:{H16}){{1,2}}"),
        format!("({H16}:){{1,4}}(:{H16}){{1,3}}"),
        format!("({H16}:){{1,3}}(:{H16}){{1,4}}"),
        format!("({H16}:){{1,2}}(:{H16}){{1,5}}"),
        format!("{H16}:(:{H16}){{1,6}}"),
        format!(":((:{H16}){{1,7}}|:)"),
        format!("::([Ff]{{4}}(:0{{1,4}})?:)?{v4}"),
        format!("({H16}:){{1,4}}:{v4}"),
    ];
    format!("({})", forms.join("|"))
}

/// An IP network of an allow-list: an address, or an address and a prefix
/// length (IPv4 up to 32, IPv6 up to 128), no leading zeros.
pub static IP_NETWORK: LazyLock<String> = LazyLock::new(|| {
    format!(r"^({v4}(/(3[0-2]|[12]?[0-9]))?|{v6}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$", v4 = ipv4(), v6 = ipv6())
});

/// An account's own domain: a lower-case DNS name of two labels at least, at
/// most 253 characters.
pub const DOMAIN: &str = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$";
pub const DOMAIN_MAX: usize = 253;

/// One IP address (IPv4, or IPv6 in its text forms).
pub static IP_ADDRESS: LazyLock<String> = LazyLock::new(|| format!(r"^({}|{})$", ipv4(), ipv6()));

/// A web origin allowed to read an account's content: `http(s)://host[:port]`,
/// the host a DNS name, an IPv4 address or a bracketed IPv6 one, the port 1 to
/// 65535; a trailing `/` is allowed.
pub static WEB_ORIGIN: LazyLock<String> = LazyLock::new(|| {
    let label = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let port = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    format!(r"^https?://({label}(\.{label})*|{}|\[{}\])(:{port})?/?$", ipv4(), ipv6())
});

/// The address a node listens on: an IPv4 address or a bracketed IPv6 one, and a
/// port (0: any free one).
pub static LISTEN_ADDRESS: LazyLock<String> = LazyLock::new(|| {
    let port = "(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    format!(r"^({}|\[{}\]):{port}$", ipv4(), ipv6())
});

/// A segment of an uploaded file's path: printable ASCII but `/` and `\`, not
/// `.` or `..`, at most `max` characters.
fn segment(max: usize) -> String {
    // '.' is 0x2E, '/' 0x2F, '\' 0x5C.
    let any = r"[ -.0-\[\]-~]";
    // `\-` is the hyphen itself (Rust's regex reads `--` in a class as a difference).
    let not_dot = r"[ -\-0-\[\]-~]";
    format!(r"({not_dot}{any}{{0,{}}}|\.{not_dot}{any}{{0,{}}}|\.\.{any}{{1,{}}})", max - 1, max - 2, max - 2)
}

/// An asset's name: one path segment of at most 100 characters.
pub static ASSET: LazyLock<String> = LazyLock::new(|| format!("^{}$", segment(100)));
/// The path of a file in an asset: segments of at most 255 characters, at most
/// [`FILE_PATH_MAX`] in all.
pub static FILE_PATH: LazyLock<String> = LazyLock::new(|| format!("^{s}(/{s})*$", s = segment(255)));
pub const FILE_PATH_MAX: usize = 800;
/// A file of an asset: the asset, then the file's path in it (two segments at least).
pub static ASSET_FILE: LazyLock<String> = LazyLock::new(|| format!("^{s}(/{s})+$", s = segment(255)));

/// Whether a character is not shown as itself.
pub fn hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
    )
}

/// Whether a character is a control character (general category Cc).
pub fn control(c: char) -> bool {
    c.general_category() == GeneralCategory::Control
}

/// A regex class of the characters `pick` says no to: `[^...]`, with the ranges
/// written as the characters themselves (JSON carries them as escapes).
fn class_without(pick: impl Fn(char) -> bool, extra: &str) -> String {
    let mut out = String::from("[^");
    out.push_str(extra);
    let mut run: Option<(char, char)> = None;
    let flush = |out: &mut String, (a, b): (char, char)| {
        out.push(a);
        if b != a {
            out.push('-');
            out.push(b);
        }
    };
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        if pick(c) {
            run = match run {
                Some((a, b)) if u32::from(b) + 1 == u32::from(c) => Some((a, c)),
                Some(r) => {
                    flush(&mut out, r);
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out.push(']');
    out
}

/// Text shown as itself (see the module), not empty, with no whitespace at either
/// end. Its length is a separate bound: a counted repetition of these classes
/// compiles past the regex crate's size limit.
fn shown_text() -> String {
    let inner = class_without(hidden, "");
    let edge = class_without(|c| hidden(c) || c.is_whitespace(), "");
    format!("^{edge}({inner}*{edge})?$")
}

/// A customer's display name, at most [`CUSTOMER_NAME_MAX`] characters.
pub static CUSTOMER_NAME: LazyLock<String> = LazyLock::new(shown_text);
pub const CUSTOMER_NAME_MAX: usize = 200;
/// An image's command: a program, run without a shell; at most [`COMMAND_MAX`]
/// characters.
pub static COMMAND: LazyLock<String> = LazyLock::new(shown_text);
pub const COMMAND_MAX: usize = 4096;
/// An e-mail address, by its shape: a local part without `@`, whitespace or
/// control characters, `@`, a dotted domain of ASCII letters, digits and `-`.
pub static EMAIL: LazyLock<String> = LazyLock::new(|| {
    let local = class_without(|c| control(c) || c.is_whitespace(), "@");
    format!(r"^{local}+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
});
pub const EMAIL_MAX: usize = 254;

/// The compiled form of one of the patterns above, with its length bound in
/// characters (JSON Schema's `maxLength`), if it has one apart from the pattern.
pub struct Rule {
    regex: LazyLock<Regex>,
    max_chars: usize,
}

impl Rule {
    pub const fn new(f: fn() -> Regex) -> Self {
        Self { regex: LazyLock::new(f), max_chars: usize::MAX }
    }

    pub const fn at_most(max_chars: usize, f: fn() -> Regex) -> Self {
        Self { regex: LazyLock::new(f), max_chars }
    }

    pub fn matches(&self, s: &str) -> bool {
        (self.max_chars == usize::MAX || s.chars().count() <= self.max_chars) && self.regex.is_match(s)
    }
}

fn compile(p: &str) -> Regex {
    // The patterns are constants of this module, tested to compile.
    Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"))
}

pub static IS_IP_NETWORK: Rule = Rule::new(|| compile(&IP_NETWORK));
pub static IS_IP_ADDRESS: Rule = Rule::new(|| compile(&IP_ADDRESS));
pub static IS_DOMAIN: Rule = Rule::at_most(DOMAIN_MAX, || compile(DOMAIN));
pub static IS_ASSET_FILE: Rule = Rule::new(|| compile(&ASSET_FILE));
pub static IS_WEB_ORIGIN: Rule = Rule::new(|| compile(&WEB_ORIGIN));
pub static IS_ASSET: Rule = Rule::new(|| compile(&ASSET));
pub static IS_FILE_PATH: Rule = Rule::new(|| compile(&FILE_PATH));
pub static IS_CUSTOMER_NAME: Rule = Rule::at_most(CUSTOMER_NAME_MAX, || compile(&CUSTOMER_NAME));
pub static IS_COMMAND: Rule = Rule::at_most(COMMAND_MAX, || compile(&COMMAND));
pub static IS_EMAIL: Rule = Rule::new(|| compile(&EMAIL));
pub static IS_IMAGE_VERSION: Rule = Rule::new(|| compile(IMAGE_VERSION));
pub static IS_WARM_POOL_SIZE: Rule = Rule::new(|| compile(WARM_POOL_SIZE));
pub static IS_TARGET_NAME: Rule = Rule::new(|| compile(TARGET_NAME));
pub static IS_ZONE: Rule = Rule::new(|| compile(ZONE));
pub static IS_LISTEN_ADDRESS: Rule = Rule::new(|| compile(&LISTEN_ADDRESS));
pub static IS_ABSOLUTE_PATH: Rule = Rule::at_most(4096, || compile(ABSOLUTE_PATH));
pub static IS_CONTAINER_IMAGE: Rule = Rule::at_most(255, || compile(CONTAINER_IMAGE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        for rule in [
            &IS_IP_NETWORK,
            &IS_IP_ADDRESS,
            &IS_DOMAIN,
            &IS_WEB_ORIGIN,
            &IS_ASSET,
            &IS_FILE_PATH,
            &IS_ASSET_FILE,
            &IS_CUSTOMER_NAME,
            &IS_COMMAND,
            &IS_EMAIL,
            &IS_IMAGE_VERSION,
            &IS_WARM_POOL_SIZE,
            &IS_TARGET_NAME,
            &IS_ZONE,
            &IS_LISTEN_ADDRESS,
            &IS_CONTAINER_IMAGE,
            &IS_ABSOLUTE_PATH,
        ] {
            assert!(!rule.matches(""));
        }
    }

    #[test]
    fn listen_addresses_are_what_a_socket_address_parses() {
        for ok in ["0.0.0.0:8080", "127.0.0.1:0", "[::]:80", "[::1]:65535", "[fe80::1:2]:443", "10.1.2.3:9"] {
            assert!(IS_LISTEN_ADDRESS.matches(ok), "{ok}");
            assert!(ok.parse::<std::net::SocketAddr>().is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0", ":80", "localhost:80", "1.2.3.4:65536", "01.2.3.4:80", "::1:80", "1.2.3.4:080"] {
            assert!(!IS_LISTEN_ADDRESS.matches(bad), "{bad}");
        }
        for ok in ["local", "eu-west-1a", "a", "zone.b_2"] {
            assert!(IS_ZONE.matches(ok), "{ok}");
        }
        for bad in ["-a", "a-", "a b", &"z".repeat(64)] {
            assert!(!IS_ZONE.matches(bad), "{bad}");
        }
        for bad in ["Local", "a_b", "-a", &"t".repeat(64)] {
            assert!(!IS_TARGET_NAME.matches(bad), "{bad}");
        }
    }

    #[test]
    fn networks_parse_as_rust_reads_them() {
        for ok in [
            "10.0.0.0/8",
            "192.0.2.7",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1",
            "::",
            "fe80::1:2/64",
            "::ffff:10.1.2.3",
            "1:2:3:4:5:6:7:8/128",
        ] {
            assert!(IS_IP_NETWORK.matches(ok), "{ok}");
            let addr = ok.split('/').next().unwrap();
            assert!(addr.parse::<std::net::IpAddr>().is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/08",
            "01.2.3.4",
            "256.1.1.1",
            "::1/129",
            "1.2.3.4/",
            "x",
            "1:2:3:4:5:6:7:8:9",
            " 10.0.0.1",
            "::g",
        ] {
            assert!(!IS_IP_NETWORK.matches(bad), "{bad}");
        }
    }

    #[test]
    fn origins_and_paths() {
        for ok in [
            "https://player.example.com",
            "http://a.b:8443/",
            "http://192.0.2.1",
            "http://[::1]:80",
            "https://X-1.example",
        ] {
            assert!(IS_WEB_ORIGIN.matches(ok), "{ok}");
        }
        for bad in [
            "https://*.example.com",
            "https://x:99999",
            "https://x:0",
            "ftp://x",
            "https://x/p",
            "https://-x.com",
            "https://x_y.com",
            "https://x:65536",
        ] {
            assert!(!IS_WEB_ORIGIN.matches(bad), "{bad}");
        }
        for ok in ["hls/720p/seg_001.ts", "my video/seg 1.ts", "...", "..x/.y", "a"] {
            assert!(IS_FILE_PATH.matches(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", ".", "..", "a/../b", "a\\b", "é.ts", "a/\tb", &"x".repeat(256)] {
            assert!(!IS_FILE_PATH.matches(bad), "{bad:?}");
        }
        assert!(IS_ASSET.matches(&"x".repeat(100)) && !IS_ASSET.matches(&"x".repeat(101)) && !IS_ASSET.matches("a/b"));
    }

    #[test]
    fn shown_text_refuses_hidden_characters_and_edge_spaces() {
        for ok in ["Ana", "Ana Müller", "李雷", "a", "x y"] {
            assert!(IS_CUSTOMER_NAME.matches(ok), "{ok}");
        }
        for bad in ["", " Ana", "Ana ", "a\u{202E}b", "a\u{200B}b", "a\u{0007}", "a\u{2028}b", "\u{E000}", "a\u{FEFF}"]
        {
            assert!(!IS_CUSTOMER_NAME.matches(bad), "{bad:?}");
        }
        assert!(IS_CUSTOMER_NAME.matches(&"x".repeat(200)) && !IS_CUSTOMER_NAME.matches(&"x".repeat(201)));
        assert!(IS_COMMAND.matches(&"é".repeat(4096)) && !IS_COMMAND.matches(&"é".repeat(4097)));
        assert!(IS_COMMAND.matches("/usr/bin/headwater") && !IS_COMMAND.matches("run\u{0}"));
        // Every hidden character is outside the class, every other one inside.
        let inner = Regex::new(&format!("^{}$", class_without(hidden, ""))).unwrap();
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32).step_by(7) {
            assert_eq!(inner.is_match(&c.to_string()), !hidden(c), "U+{:04X}", u32::from(c));
        }
        assert!(IS_EMAIL.matches("ana.m+tag@example.co.uk") && IS_EMAIL.matches("müller@example.com"));
        for bad in ["ana", "a@b", "a b@x.com", "a@@x.com", "@x.com", "a@x..com", "a@x_y.com"] {
            assert!(!IS_EMAIL.matches(bad), "{bad}");
        }
    }
}
