//! Manifest filters by query, as MediaPackage's `aws.manifestfilter` and
//! start/end do: video renditions by bitrate and codec, and a time window that
//! clips the presentation to the segments it overlaps.
//!
//! - `min_bitrate`, `max_bitrate`: bits per second; a video rendition is kept
//!   when its peak (the playlist's `BANDWIDTH`, video alone) is within them
//! - `codecs`: comma-separated codec prefixes (`avc1`, `hvc1`, `mp4a`); a
//!   rendition is kept when its codec string starts with one
//! - `start`, `end`: seconds of the presentation; the segments overlapping
//!   `[start, end)` are kept, with their own numbers (the same segment URLs)
//!
//! Other parameters are ignored (players and CDNs add their own).

use std::ops::Range;

use crate::package::{Asset, Rendition};

/// A query that names a filter wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {detail}")]
pub struct BadFilter {
    pub param: &'static str,
    pub detail: String,
}

/// What a manifest request keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub min_bps: Option<u64>,
    pub max_bps: Option<u64>,
    pub codecs: Vec<String>,
    pub start: Option<f64>,
    pub end: Option<f64>,
}

fn bad(param: &'static str, detail: impl Into<String>) -> BadFilter {
    BadFilter { param, detail: detail.into() }
}

impl Filter {
    /// The filter of a request's query (none: keep everything).
    pub fn parse(query: Option<&str>) -> Result<Self, BadFilter> {
        let mut f = Filter::default();
        let Some(query) = query else { return Ok(f) };
        let bps = |param: &'static str, v: &str| {
            v.parse::<u64>().map_err(|_| bad(param, "a whole number of bits per second"))
        };
        let secs = |param: &'static str, v: &str| match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
            _ => Err(bad(param, "seconds of the presentation, 0 or more")),
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "min_bitrate" => f.min_bps = Some(bps("min_bitrate", &v)?),
                "max_bitrate" => f.max_bps = Some(bps("max_bitrate", &v)?),
                "codecs" => {
                    f.codecs = v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
                    if f.codecs.is_empty()
                        || f.codecs.iter().any(|c| !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
                    {
                        return Err(bad("codecs", "codec prefixes separated by commas, e.g. avc1,mp4a"));
                    }
                }
                "start" => f.start = Some(secs("start", &v)?),
                "end" => f.end = Some(secs("end", &v)?),
                _ => {}
            }
        }
        if let (Some(lo), Some(hi)) = (f.min_bps, f.max_bps)
            && lo > hi
        {
            return Err(bad("min_bitrate", "above max_bitrate"));
        }
        if let (Some(s), Some(e)) = (f.start, f.end)
            && s >= e
        {
            return Err(bad("end", "not after start"));
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// The filter as a query, in one spelling (for cache keys and the URIs of
    /// child playlists, which carry the time window): empty for none.
    pub fn canonical(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(v) = self.min_bps {
            q.append_pair("min_bitrate", &v.to_string());
        }
        if let Some(v) = self.max_bps {
            q.append_pair("max_bitrate", &v.to_string());
        }
        if !self.codecs.is_empty() {
            q.append_pair("codecs", &self.codecs.join(","));
        }
        self.append_window(&mut q);
        q.finish()
    }

    /// `?start=…&end=…` for a child playlist's URI, or nothing.
    pub fn window_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        self.append_window(&mut q);
        let q = q.finish();
        if q.is_empty() { q } else { format!("?{q}") }
    }

    fn append_window(&self, q: &mut form_urlencoded::Serializer<'_, String>) {
        if let Some(v) = self.start {
            q.append_pair("start", &v.to_string());
        }
        if let Some(v) = self.end {
            q.append_pair("end", &v.to_string());
        }
    }

    /// Whether `r` stays: audio always does; video by its bitrate and codec.
    pub fn keeps(&self, r: &Rendition) -> bool {
        let codec = self.codecs.is_empty() || self.codecs.iter().any(|c| r.track.codec_string.starts_with(c.as_str()));
        if !r.track.is_video() {
            // A codec filter naming audio codecs narrows audio too.
            let names_audio = self.codecs.iter().any(|c| c.starts_with("mp4a") || c.starts_with("ac-3"));
            return !names_audio || codec;
        }
        let names_video = self.codecs.iter().any(|c| !(c.starts_with("mp4a") || c.starts_with("ac-3")));
        (!names_video || codec)
            && self.min_bps.is_none_or(|lo| r.peak_bps >= lo)
            && self.max_bps.is_none_or(|hi| r.peak_bps <= hi)
    }

    /// The asset's segments (by index: the cuts are its first rendition's, the
    /// same for every rendition; one that ends early has fewer, and callers
    /// clamp to its own) that overlap the time window; all without one.
    pub fn segments(&self, asset: &Asset) -> Range<usize> {
        let Some(reference) = asset.renditions.first() else { return 0..0 };
        let count = reference.segments.len();
        if count == 0 {
            return 0..0;
        }
        if self.start.is_none() && self.end.is_none() {
            return 0..count;
        }
        let timescale = f64::from(reference.track.timescale);
        let zero = reference.segment_start(0);
        let at = |i: usize| (reference.segment_start(i) - zero) as f64 / timescale;
        let (start, end) = (self.start.unwrap_or(0.0), self.end.unwrap_or(f64::INFINITY));
        let first = (0..count).find(|&i| at(i) + reference.segment_secs(i) > start).unwrap_or(count);
        let last = (first..count).take_while(|&i| at(i) < end).last().map_or(first, |i| i + 1);
        first..last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_strictly_and_ignore_what_is_not_theirs() {
        let f = Filter::parse(Some("max_bitrate=800000&start=6&codecs=avc1,mp4a&_=123")).unwrap();
        assert_eq!(f.max_bps, Some(800_000));
        assert_eq!(f.start, Some(6.0));
        assert_eq!(f.codecs, ["avc1", "mp4a"]);
        assert_eq!(f.canonical(), "max_bitrate=800000&codecs=avc1%2Cmp4a&start=6");
        assert_eq!(f.window_query(), "?start=6");
        assert!(Filter::parse(None).unwrap().is_empty());
        assert!(Filter::parse(Some("cachebuster=1")).unwrap().is_empty());
        assert_eq!(Filter::parse(Some("start=abc")).unwrap_err().param, "start");
        assert_eq!(Filter::parse(Some("start=-1")).unwrap_err().param, "start");
        assert_eq!(Filter::parse(Some("start=5&end=5")).unwrap_err().param, "end");
        assert_eq!(Filter::parse(Some("min_bitrate=9&max_bitrate=8")).unwrap_err().param, "min_bitrate");
        assert_eq!(Filter::parse(Some("max_bitrate=1.5")).unwrap_err().param, "max_bitrate");
        assert_eq!(Filter::parse(Some("codecs=%3Cscript%3E")).unwrap_err().param, "codecs");
        assert_eq!(Filter::parse(Some("start=NaN")).unwrap_err().param, "start");
    }
}
