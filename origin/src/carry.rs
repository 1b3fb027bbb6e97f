//! Carrying a signed playback token into a playlist's absolute URIs.
//!
//! A token sits in a path segment right after the account
//! (`/ACCOUNT/~hw1.…/ASSET/FILE`), so a playlist's relative URIs carry it to
//! every child playlist and segment with no rewriting. Absolute ones do not: a
//! root-relative `/ACCOUNT/ASSET/FILE`, or `https://host/ACCOUNT/ASSET/FILE`,
//! drops it, and the player gets 403 on what follows a valid master (what
//! nginx-secure-token users report most). Those URIs get the token inserted
//! after the account; URIs elsewhere (another account, another path) are left as
//! they are. Playlists are parsed and written back by m3u8-rs, MPDs by dash-mpd;
//! a playlist with no such URI is served byte for byte as stored.

/// Whether `path` names an HLS playlist or a DASH MPD, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    Hls,
    Dash,
}

impl Manifest {
    pub fn of(path: &str) -> Option<Self> {
        if path.ends_with(".m3u8") {
            Some(Manifest::Hls)
        } else if path.ends_with(".mpd") {
            Some(Manifest::Dash)
        } else {
            None
        }
    }
}

/// `uri` with `token` (the segment, `~hw1.…`) inserted after `/{account}/` when it is a
/// root-relative or absolute URI into the account that has no token yet.
fn carried(uri: &str, account: &str, token: &str) -> Option<String> {
    // Where the path starts: at 0 for `/…`, after the authority for `scheme://authority/…`.
    let path_at = if uri.starts_with('/') && !uri.starts_with("//") {
        0
    } else {
        let (scheme, rest) = uri.split_once("://")?;
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) {
            return None;
        }
        scheme.len() + 3 + rest.find('/')?
    };
    let path = &uri[path_at..];
    let rest = path.strip_prefix('/')?.strip_prefix(account)?.strip_prefix('/')?;
    // A token there already (an asset may itself be named `~x`).
    if rest.starts_with("~hw1.") {
        return None;
    }
    let head = path_at + 1 + account.len() + 1;
    Some(format!("{}{token}/{rest}", &uri[..head]))
}

fn carry(uri: &mut String, account: &str, token: &str) -> bool {
    match carried(uri, account, token) {
        Some(u) => {
            *uri = u;
            true
        }
        None => false,
    }
}

fn carry_opt(uri: &mut Option<String>, account: &str, token: &str) -> bool {
    uri.as_mut().is_some_and(|u| carry(u, account, token))
}

/// The manifest with `token` carried into its absolute URIs into `account`;
/// `None` when it has none (or does not parse: served as stored).
pub fn carry_token(body: &[u8], kind: Manifest, account: &str, token: &str) -> Option<Vec<u8>> {
    // Most manifests hold only relative URIs: one scan, no parse.
    let needle = format!("/{account}/");
    if !body.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        return None;
    }
    match kind {
        Manifest::Hls => hls(body, account, token),
        Manifest::Dash => dash(body, account, token),
    }
}

fn hls(body: &[u8], account: &str, token: &str) -> Option<Vec<u8>> {
    let mut changed = false;
    let mut out = Vec::with_capacity(body.len() + 256);
    match m3u8_rs::parse_playlist_res(body).ok()? {
        m3u8_rs::Playlist::MasterPlaylist(mut m) => {
            for v in &mut m.variants {
                changed |= carry(&mut v.uri, account, token);
            }
            for a in &mut m.alternatives {
                changed |= carry_opt(&mut a.uri, account, token);
            }
            for d in &mut m.session_data {
                if let m3u8_rs::SessionDataField::Uri(u) = &mut d.field {
                    changed |= carry(u, account, token);
                }
            }
            for k in &mut m.session_key {
                changed |= carry_opt(&mut k.0.uri, account, token);
            }
            m.write_to(&mut out).ok()?;
        }
        m3u8_rs::Playlist::MediaPlaylist(mut p) => {
            for s in &mut p.segments {
                changed |= carry(&mut s.uri, account, token);
                if let Some(map) = &mut s.map {
                    changed |= carry(&mut map.uri, account, token);
                }
                if let Some(key) = &mut s.key {
                    changed |= carry_opt(&mut key.uri, account, token);
                }
            }
            p.write_to(&mut out).ok()?;
        }
    }
    changed.then_some(out)
}

fn dash(body: &[u8], account: &str, token: &str) -> Option<Vec<u8>> {
    let mut mpd = dash_mpd::parse(std::str::from_utf8(body).ok()?).ok()?;
    let mut changed = false;
    let bases = |b: &mut Vec<dash_mpd::BaseURL>| {
        let mut c = false;
        for u in b {
            c |= carry(&mut u.base, account, token);
        }
        c
    };
    fn template(t: &mut Option<dash_mpd::SegmentTemplate>, account: &str, token: &str) -> bool {
        let Some(t) = t else { return false };
        let mut c = carry_opt(&mut t.media, account, token);
        c |= carry_opt(&mut t.initialization, account, token);
        if let Some(i) = &mut t.Initialization {
            c |= carry_opt(&mut i.sourceURL, account, token);
        }
        c
    }
    fn list(l: &mut Option<dash_mpd::SegmentList>, account: &str, token: &str) -> bool {
        let Some(l) = l else { return false };
        let mut c = false;
        if let Some(i) = &mut l.Initialization {
            c |= carry_opt(&mut i.sourceURL, account, token);
        }
        for s in &mut l.segment_urls {
            c |= carry_opt(&mut s.media, account, token);
        }
        c
    }
    changed |= bases(&mut mpd.base_url);
    for p in &mut mpd.periods {
        changed |= bases(&mut p.BaseURL);
        changed |= template(&mut p.SegmentTemplate, account, token);
        changed |= list(&mut p.SegmentList, account, token);
        for a in &mut p.adaptations {
            changed |= bases(&mut a.BaseURL);
            changed |= template(&mut a.SegmentTemplate, account, token);
            changed |= list(&mut a.SegmentList, account, token);
            for r in &mut a.representations {
                changed |= bases(&mut r.BaseURL);
                changed |= template(&mut r.SegmentTemplate, account, token);
                changed |= list(&mut r.SegmentList, account, token);
                if let Some(b) = &mut r.SegmentBase
                    && let Some(i) = &mut b.Initialization
                {
                    changed |= carry_opt(&mut i.sourceURL, account, token);
                }
            }
        }
    }
    changed.then(|| mpd.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "~hw1.k1.1900000000.a.-.sig";

    #[test]
    fn only_absolute_uris_into_the_account_get_the_token() {
        let c = |u: &str| carried(u, "ana-vod", TOKEN);
        assert_eq!(
            c("/ana-vod/demo/hls/360p/index.m3u8").unwrap(),
            format!("/ana-vod/{TOKEN}/demo/hls/360p/index.m3u8")
        );
        assert_eq!(
            c("https://vod.example.com/ana-vod/demo/a.ts").unwrap(),
            format!("https://vod.example.com/ana-vod/{TOKEN}/demo/a.ts")
        );
        assert_eq!(
            c("http://127.0.0.1:7401/ana-vod/x/y.m4s?v=1").unwrap(),
            format!("http://127.0.0.1:7401/ana-vod/{TOKEN}/x/y.m4s?v=1")
        );
        for untouched in [
            "360p/index.m3u8", // relative: carries it already
            "../720p/index.m3u8",
            "/ana-vod/~hw1.other/demo/a.ts",          // has a token
            "/bob-vod/demo/a.ts",                     // another account
            "/ana-vod-2/demo/a.ts",                   // a longer name
            "https://cdn.example.com/elsewhere/a.ts", // elsewhere
            "//ana-vod/demo/a.ts",                    // network-path reference: a host
            "data:text/plain,/ana-vod/x",
        ] {
            assert_eq!(c(untouched), None, "{untouched}");
        }
    }

    #[test]
    fn a_master_and_a_media_playlist_carry_it_into_every_kind_of_uri() {
        let master = b"#EXTM3U\n#EXT-X-VERSION:6\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"/ana-vod/demo/audio.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO=\"a\"\n/ana-vod/demo/360p.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1600000\n720p.m3u8\n";
        let out = String::from_utf8(carry_token(master, Manifest::Hls, "ana-vod", TOKEN).unwrap()).unwrap();
        assert!(out.contains(&format!("URI=\"/ana-vod/{TOKEN}/demo/audio.m3u8\"")), "{out}");
        assert!(out.contains(&format!("\n/ana-vod/{TOKEN}/demo/360p.m3u8\n")), "{out}");
        assert!(out.contains("\n720p.m3u8\n"), "{out}");
        let parsed = m3u8_rs::parse_playlist_res(out.as_bytes()).unwrap();
        assert!(matches!(parsed, m3u8_rs::Playlist::MasterPlaylist(m) if m.variants.len() == 2));

        let media = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:6\n\
            #EXT-X-MAP:URI=\"https://v.example.com/ana-vod/demo/init.mp4\"\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"/ana-vod/keys/k1\"\n\
            #EXTINF:6.0,\nhttps://v.example.com/ana-vod/demo/seg1.m4s\n#EXTINF:6.0,\nseg2.m4s\n#EXT-X-ENDLIST\n";
        let out = String::from_utf8(carry_token(media, Manifest::Hls, "ana-vod", TOKEN).unwrap()).unwrap();
        for want in [
            format!("https://v.example.com/ana-vod/{TOKEN}/demo/init.mp4"),
            format!("/ana-vod/{TOKEN}/keys/k1"),
            format!("https://v.example.com/ana-vod/{TOKEN}/demo/seg1.m4s"),
        ] {
            assert!(out.contains(&want), "{want} in {out}");
        }
        assert!(out.contains("\nseg2.m4s\n") && out.contains("#EXT-X-ENDLIST"), "{out}");
    }

    #[test]
    fn relative_manifests_are_not_rewritten_and_an_mpd_carries_it_into_base_urls_and_templates() {
        let demo = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/demo/hls/master.m3u8")).unwrap();
        assert_eq!(carry_token(&demo, Manifest::Hls, "ana-vod", TOKEN), None);
        let mpd =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/demo/dash/manifest.mpd")).unwrap();
        assert_eq!(carry_token(mpd.as_bytes(), Manifest::Dash, "ana-vod", TOKEN), None);
        let absolute = mpd.replacen("<Period", "<BaseURL>https://v.example.com/ana-vod/demo/dash/</BaseURL><Period", 1);
        let out =
            String::from_utf8(carry_token(absolute.as_bytes(), Manifest::Dash, "ana-vod", TOKEN).unwrap()).unwrap();
        assert!(out.contains(&format!("https://v.example.com/ana-vod/{TOKEN}/demo/dash/")), "{out}");
        let again = dash_mpd::parse(&out).unwrap();
        assert_eq!(again.periods.len(), dash_mpd::parse(&mpd).unwrap().periods.len());
    }
}
