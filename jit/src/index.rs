//! The index of an MP4 file: where its `moov` box is (read by range, never the
//! whole file), and each usable track's sample table expanded into one row per
//! sample — offset, size, decode time, duration, composition offset, keyframe.
//! A fragmented MP4's samples are in its `moof` boxes: each is read (with the
//! header of the `mdat` after it, in one read), never its media.

use std::ops::Range;

use bytes::Bytes;
use headwater_content::{ContentError, ContentPath, ContentStore};
use std::collections::HashMap;

use mp4_atom::{Codec, Decode, FourCC, Header, Moof, Moov, StszSamples};

/// Why a file cannot be packaged: shown to whoever uploaded it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unpackable(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, Unpackable> {
    Err(Unpackable(why.into()))
}

/// Reading an index failed: the file is not packageable, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Unpackable(#[from] Unpackable),
    #[error(transparent)]
    Store(#[from] ContentError),
}

/// One sample (a video frame, an audio access unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub offset: u64,
    pub size: u32,
    /// Decode time in the track's timescale.
    pub dts: u64,
    pub duration: u32,
    /// Composition (presentation) time minus decode time.
    pub cts: i32,
    /// A keyframe (sync sample).
    pub sync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Video { width: u16, height: u16 },
    Audio { channels: u16, sample_rate: u32 },
}

/// A track the packager can serve.
#[derive(Debug, Clone)]
pub struct Track {
    /// Its id in the file.
    pub id: u32,
    pub kind: Kind,
    /// The sample entry, copied into the init segment as it is.
    pub codec: Codec,
    /// RFC 6381 `CODECS` value (`avc1.64001f`, `hvc1.1.6.L93.B0`, `mp4a.40.2`).
    pub codec_string: String,
    pub timescale: u32,
    /// ISO 639-2 (`und` when the file does not say).
    pub language: String,
    pub samples: Vec<Sample>,
    /// Subtracted from every composition offset: a video track's edit list
    /// start (the decoder delay of B-frames), so its first frame is presented at 0
    /// as in the source. Audio keeps its times (its priming is left to decoders).
    pub shift: i32,
}

impl Track {
    /// Sum of the sample durations, in the timescale.
    pub fn duration(&self) -> u64 {
        self.samples.last().map_or(0, |s| s.dts + u64::from(s.duration))
    }

    pub fn is_video(&self) -> bool {
        matches!(self.kind, Kind::Video { .. })
    }
}

/// The tracks of one MP4 file.
#[derive(Debug, Clone)]
pub struct Mp4Index {
    pub tracks: Vec<Track>,
}

/// The largest `moov` read (an index of about two hours of 60 fps video and audio).
const MOOV_MAX: u64 = 64 << 20;
/// The most samples one track may have.
const SAMPLES_MAX: u64 = 4_000_000;
/// The most top-level boxes looked through (a fragmented file has two per
/// fragment: hours of 1 s fragments).
const BOXES_MAX: usize = 100_000;
/// Bytes read at a box's start: a fragment's `moof` and the header of the
/// `mdat` after it, most often, in one read.
const READ_AHEAD: u64 = 64 * 1024;

/// Reads the index of `path` (`size` bytes) by ranges: the top-level box headers,
/// then the `moov` box (and a fragmented file's `moof` boxes).
pub async fn read_index(store: &ContentStore, path: &ContentPath, size: u64) -> Result<Mp4Index, IndexError> {
    let boxes = find_moov(size, |r| store.read_range(path, r)).await?;
    Ok(parse(&boxes, size)?)
}

/// The boxes an index is read from: `moov`, and each `moof` with its offset.
#[derive(Debug, Default)]
pub struct IndexBoxes {
    pub moov: Bytes,
    pub moofs: Vec<(u64, Bytes)>,
}

/// Walks the top-level boxes for `moov` and reads it whole; when it says the
/// file is fragmented (`mvex`), goes on through the file for every `moof`.
async fn find_moov<F, Fut>(size: u64, read: F) -> Result<IndexBoxes, IndexError>
where
    F: Fn(Range<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, ContentError>>,
{
    let mut at = 0u64;
    let mut first = true;
    let mut found: Option<IndexBoxes> = None;
    let mut kept = 0u64;
    // What the last read brought: a box's header is most often in it.
    let mut window: (u64, Bytes) = (0, Bytes::new());
    for _ in 0..BOXES_MAX {
        if at >= size {
            break;
        }
        let covered = |w: &(u64, Bytes), r: &Range<u64>| r.start >= w.0 && r.end <= w.0 + w.1.len() as u64;
        let want = at..(at + 16).min(size);
        if !covered(&window, &want) {
            let ahead = if found.is_some() { READ_AHEAD } else { 16 };
            window = (at, read(at..(at + ahead).min(size)).await?);
        }
        let offset = (at - window.0) as usize;
        let head = window.1.slice(offset..window.1.len().min(offset + 16));
        let (kind, header_len, body) = box_header(&head, size - at)?;
        if first && kind != FourCC::new(b"ftyp") {
            return Err(Unpackable("not an MP4 file: it does not start with an ftyp box".into()).into());
        }
        first = false;
        let end = at.checked_add(header_len).and_then(|e| e.checked_add(body)).unwrap_or(u64::MAX);
        if end > size {
            return Err(Unpackable(format!("truncated: the {kind} box ends past the end of the file")).into());
        }
        let whole = |window: &(u64, Bytes)| covered(window, &(at..end));
        if kind == FourCC::new(b"moof") {
            let Some(boxes) = found.as_mut() else {
                return Err(Unpackable("a moof box comes before the moov box".into()).into());
            };
            kept += end - at;
            if kept > MOOV_MAX {
                return Err(Unpackable(format!("the moov and moof boxes are larger than {MOOV_MAX} bytes")).into());
            }
            let bytes = if whole(&window) {
                window.1.slice((at - window.0) as usize..(end - window.0) as usize)
            } else {
                window = (at, read(at..(end + 16).min(size)).await?);
                if (window.1.len() as u64) < end - at {
                    return Err(Unpackable("the file is shorter than its boxes say".into()).into());
                }
                window.1.slice(0..(end - at) as usize)
            };
            boxes.moofs.push((at, bytes));
        } else if kind == FourCC::new(b"moov") {
            if found.is_some() {
                return Err(Unpackable("two moov boxes".into()).into());
            }
            if end - at > MOOV_MAX {
                return Err(Unpackable(format!("the moov box is larger than {MOOV_MAX} bytes")).into());
            }
            let moov = read(at..end).await?;
            kept = end - at;
            // A progressive file's index is its moov: nothing more to read.
            if !has_child(&moov, b"mvex") {
                return Ok(IndexBoxes { moov, moofs: Vec::new() });
            }
            found = Some(IndexBoxes { moov, moofs: Vec::new() });
        }
        at = end;
    }
    if at < size && found.is_some() {
        return Err(Unpackable(format!("more than {BOXES_MAX} top-level boxes: use longer fragments")).into());
    }
    found.ok_or_else(|| Unpackable("no moov box: the file is truncated or not an MP4 file".into()).into())
}

/// Whether the box `parent` (header included) has a child box of kind `kind`.
fn has_child(parent: &[u8], kind: &[u8; 4]) -> bool {
    let Ok((_, header_len, _)) = box_header(parent, parent.len() as u64) else { return false };
    let mut at = header_len as usize;
    while at + 8 <= parent.len() {
        let Ok((k, h, body)) = box_header(&parent[at..], (parent.len() - at) as u64) else { return false };
        if k == FourCC::new(kind) {
            return true;
        }
        at = at.saturating_add((h + body) as usize);
    }
    false
}

/// A box's kind, header length and body length from the bytes at its start
/// (`left`: bytes from there to the end of the file, for a box "to the end").
fn box_header(head: &[u8], left: u64) -> Result<(FourCC, u64, u64), Unpackable> {
    let mut buf = head;
    let Ok(header) = Header::decode(&mut buf) else {
        return refuse("truncated: a box header is cut off");
    };
    let header_len = (head.len() - buf.len()) as u64;
    let body = match header.size {
        Some(n) => n as u64,
        None => left.saturating_sub(header_len),
    };
    Ok((header.kind, header_len, body))
}

/// The usable tracks of a `moov` box (with its header) of a progressive file of
/// `file_size` bytes.
pub fn parse_moov(moov: &[u8], file_size: u64) -> Result<Mp4Index, Unpackable> {
    parse(&IndexBoxes { moov: Bytes::copy_from_slice(moov), moofs: Vec::new() }, file_size)
}

/// The usable tracks of a file of `file_size` bytes from its `moov` and `moof`s.
pub fn parse(boxes: &IndexBoxes, file_size: u64) -> Result<Mp4Index, Unpackable> {
    let moov = match Moov::decode(&mut &boxes.moov[..]) {
        Ok(m) => m,
        Err(e) => return refuse(format!("the moov box cannot be read: {e}")),
    };
    let mut fragmented = fragment_samples(&moov, &boxes.moofs, file_size)?;
    let mut tracks = Vec::new();
    let mut skipped = Vec::new();
    for trak in &moov.trak {
        let handler = trak.mdia.hdlr.handler;
        if handler != FourCC::new(b"vide") && handler != FourCC::new(b"soun") {
            continue;
        }
        let stbl = &trak.mdia.minf.stbl;
        let [codec] = stbl.stsd.codecs.as_slice() else {
            return refuse(format!("track {}: one sample description is supported", trak.tkhd.track_id));
        };
        let Some((kind, codec_string)) = describe(codec) else {
            skipped.push(format!("track {} ({})", trak.tkhd.track_id, codec_name(codec)));
            continue;
        };
        let timescale = trak.mdia.mdhd.timescale;
        if timescale == 0 {
            return refuse(format!("track {}: its timescale is 0", trak.tkhd.track_id));
        }
        let mut samples = samples(trak.tkhd.track_id, stbl, file_size)?;
        if let Some(more) = fragmented.remove(&trak.tkhd.track_id) {
            let dts = samples.last().map_or(0, |s| s.dts + u64::from(s.duration));
            if more.first().is_some_and(|s| s.dts < dts) {
                return refuse(format!(
                    "track {}: a fragment starts before the samples before it end",
                    trak.tkhd.track_id
                ));
            }
            samples.extend(more);
            if samples.len() as u64 > SAMPLES_MAX {
                return refuse(format!("track {}: too many samples", trak.tkhd.track_id));
            }
        }
        if samples.is_empty() {
            continue;
        }
        if matches!(kind, Kind::Video { .. }) && !samples[0].sync {
            return refuse(format!("track {}: the first video frame is not a keyframe", trak.tkhd.track_id));
        }
        let language = match trak.mdia.mdhd.language.as_str() {
            "" => "und".to_owned(),
            l => l.to_owned(),
        };
        let shift = match kind {
            Kind::Video { .. } => trak
                .edts
                .as_ref()
                .and_then(|e| e.elst.as_ref())
                .and_then(|l| l.entries.iter().find_map(|e| e.media_time))
                .and_then(|m| i32::try_from(m).ok())
                .unwrap_or(0),
            Kind::Audio { .. } => 0,
        };
        tracks.push(Track {
            id: trak.tkhd.track_id,
            shift,
            kind,
            codec: codec.clone(),
            codec_string,
            timescale,
            language,
            samples,
        });
    }
    if tracks.is_empty() {
        let detail = if skipped.is_empty() { String::new() } else { format!(" (found {})", skipped.join(", ")) };
        return refuse(format!("no H.264, H.265 or AAC track{detail}"));
    }
    Ok(Mp4Index { tracks })
}

fn codec_name(codec: &Codec) -> String {
    let debug = format!("{codec:?}");
    debug.split('(').next().unwrap_or("unknown").to_ascii_lowercase()
}

/// The kind and `CODECS` string of a supported sample entry.
fn describe(codec: &Codec) -> Option<(Kind, String)> {
    match codec {
        Codec::Avc1(a) => Some((video(&a.visual), avc(&a.avcc))),
        Codec::Avc3(a) => Some((video(&a.visual), avc(&a.avcc).replacen("avc1", "avc3", 1))),
        Codec::Hvc1(h) => Some((video(&h.visual), hevc("hvc1", &h.hvcc))),
        Codec::Hev1(h) => Some((video(&h.visual), hevc("hev1", &h.hvcc))),
        Codec::Mp4a(m) => {
            let config = &m.esds.es_desc.dec_config;
            // MPEG-4 audio (0x40) is AAC; its object type is in the decoder config.
            if config.object_type_indication != 0x40 {
                return None;
            }
            let aot = config.dec_specific.as_ref().map_or(2, |d| d.profile);
            let kind =
                Kind::Audio { channels: m.audio.channel_count, sample_rate: u32::from(m.audio.sample_rate.integer()) };
            Some((kind, format!("mp4a.40.{aot}")))
        }
        _ => None,
    }
}

fn video(v: &mp4_atom::Visual) -> Kind {
    Kind::Video { width: v.width, height: v.height }
}

fn avc(c: &mp4_atom::Avcc) -> String {
    format!("avc1.{:02x}{:02x}{:02x}", c.avc_profile_indication, c.profile_compatibility, c.avc_level_indication)
}

/// ISO/IEC 14496-15 Annex E: profile space and profile, the compatibility flags
/// in reverse bit order, tier and level, the constraint bytes without trailing zeros.
fn hevc(prefix: &str, c: &mp4_atom::Hvcc) -> String {
    let space = ["", "A", "B", "C"][usize::from(c.general_profile_space & 3)];
    let compat = u32::from_be_bytes(c.general_profile_compatibility_flags).reverse_bits();
    let tier = if c.general_tier_flag { 'H' } else { 'L' };
    let mut s = format!("{prefix}.{space}{}.{compat:x}.{tier}{}", c.general_profile_idc, c.general_level_idc);
    let flags = &c.general_constraint_indicator_flags;
    let used = flags.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    for b in &flags[..used] {
        s.push_str(&format!(".{b:X}"));
    }
    s
}

/// `sample_is_non_sync_sample` in a sample's flags.
const NON_SYNC: u32 = 0x0001_0000;
/// The largest decode time a fragment may start at (far from overflowing
/// with the durations added to it).
const DTS_MAX: u64 = 1 << 52;

/// The samples of each track in the fragments `moofs` (offset, box), in file
/// order, with the defaults of the moov's `trex` boxes.
fn fragment_samples(
    moov: &Moov,
    moofs: &[(u64, Bytes)],
    file_size: u64,
) -> Result<HashMap<u32, Vec<Sample>>, Unpackable> {
    let mut out: HashMap<u32, Vec<Sample>> = HashMap::new();
    if moofs.is_empty() {
        return Ok(out);
    }
    let trex = moov.mvex.as_ref().map(|m| m.trex.as_slice()).unwrap_or_default();
    let mut count = 0u64;
    for (n, (at, bytes)) in moofs.iter().enumerate() {
        let moof = Moof::decode(&mut &bytes[..])
            .map_err(|e| Unpackable(format!("fragment {} (at byte {at}) cannot be read: {e}", n + 1)))?;
        // Without an explicit base, a track fragment's data follows the one before.
        let mut implicit = *at;
        for traf in &moof.traf {
            let track = traf.tfhd.track_id;
            let bad = |what: &str| Unpackable(format!("track {track}, fragment {}: {what}", n + 1));
            let defaults = trex.iter().find(|t| t.track_id == track).ok_or_else(|| bad("no trex defaults"))?;
            if traf.tfhd.sample_description_index.unwrap_or(defaults.default_sample_description_index) > 1 {
                return Err(bad("one sample description is supported"));
            }
            let base = match (traf.tfhd.base_data_offset, traf.tfhd.default_base_is_moof) {
                (Some(b), _) => b,
                (None, true) => *at,
                (None, false) => implicit,
            };
            let samples = out.entry(track).or_default();
            let end = samples.last().map_or(0, |s| s.dts + u64::from(s.duration));
            let mut dts = match &traf.tfdt {
                // Decode times only go forward, and stay far from overflowing.
                Some(t) if t.base_media_decode_time < end => return Err(bad("its decode time goes backwards")),
                Some(t) if t.base_media_decode_time > DTS_MAX => return Err(bad("its decode time is out of range")),
                Some(t) => t.base_media_decode_time,
                None => end,
            };
            let mut pos = base;
            for trun in &traf.trun {
                if let Some(offset) = trun.data_offset {
                    pos = base.checked_add_signed(offset.into()).ok_or_else(|| bad("a data offset before the file"))?;
                }
                count += trun.samples.len() as u64;
                if count > SAMPLES_MAX {
                    return Err(bad("too many samples"));
                }
                for e in trun.samples.iter() {
                    let size = e.size.or(traf.tfhd.default_sample_size).unwrap_or(defaults.default_sample_size);
                    let duration =
                        e.duration.or(traf.tfhd.default_sample_duration).unwrap_or(defaults.default_sample_duration);
                    let flags = e.flags.or(traf.tfhd.default_sample_flags).unwrap_or(defaults.default_sample_flags);
                    let cts =
                        i32::try_from(e.cts.unwrap_or(0)).map_err(|_| bad("a composition offset is out of range"))?;
                    if pos.saturating_add(u64::from(size)) > file_size {
                        return Err(Unpackable(format!(
                            "truncated: track {track}'s samples in fragment {} lie past the end of the file",
                            n + 1
                        )));
                    }
                    samples.push(Sample { offset: pos, size, dts, duration, cts, sync: flags & NON_SYNC == 0 });
                    pos += u64::from(size);
                    dts = dts.saturating_add(u64::from(duration));
                }
            }
            implicit = pos;
        }
    }
    Ok(out)
}

/// One row per sample from the sample table boxes, checked against each other
/// and against the file's size.
fn samples(track: u32, stbl: &mp4_atom::Stbl, file_size: u64) -> Result<Vec<Sample>, Unpackable> {
    let bad = |what: &str| Unpackable(format!("track {track}: {what}"));
    let sizes: Vec<u32> = match &stbl.stsz.samples {
        StszSamples::Identical { count, size } => {
            if u64::from(*count) > SAMPLES_MAX {
                return Err(bad("too many samples"));
            }
            vec![*size; *count as usize]
        }
        StszSamples::Different { sizes } => sizes.clone(),
    };
    let n = sizes.len();
    if n as u64 > SAMPLES_MAX {
        return Err(bad("too many samples"));
    }
    let chunks: Vec<u64> = match (&stbl.stco, &stbl.co64) {
        (Some(stco), _) => stco.entries.iter().map(|&o| u64::from(o)).collect(),
        (None, Some(co64)) => co64.entries.clone(),
        (None, None) => return Err(bad("no chunk offsets (stco or co64)")),
    };
    // Sample offsets: chunk by chunk, as many samples as stsc says.
    let mut offsets = Vec::with_capacity(n);
    let entries = &stbl.stsc.entries;
    for (i, e) in entries.iter().enumerate() {
        if e.first_chunk == 0 || entries.get(i + 1).is_some_and(|next| next.first_chunk <= e.first_chunk) {
            return Err(bad("the sample-to-chunk table is out of order"));
        }
        let last = entries.get(i + 1).map_or(chunks.len() as u64, |next| u64::from(next.first_chunk) - 1);
        for chunk in u64::from(e.first_chunk)..=last.min(chunks.len() as u64) {
            let mut at = chunks[(chunk - 1) as usize];
            for _ in 0..e.samples_per_chunk {
                let Some(&size) = sizes.get(offsets.len()) else { break };
                offsets.push(at);
                at = at.saturating_add(u64::from(size));
            }
        }
    }
    if offsets.len() != n {
        return Err(bad("the chunk tables do not cover every sample"));
    }
    let mut durations = Vec::with_capacity(n);
    for e in &stbl.stts.entries {
        for _ in 0..e.sample_count {
            if durations.len() == n {
                return Err(bad("the time-to-sample table has more samples than the size table"));
            }
            durations.push(e.sample_delta);
        }
    }
    if durations.len() != n {
        return Err(bad("the time-to-sample table does not cover every sample"));
    }
    let mut cts = vec![0i32; n];
    if let Some(ctts) = &stbl.ctts {
        let mut i = 0;
        for e in &ctts.entries {
            let offset = i32::try_from(e.sample_offset).map_err(|_| bad("a composition offset is out of range"))?;
            for _ in 0..e.sample_count {
                let Some(slot) = cts.get_mut(i) else { break };
                *slot = offset;
                i += 1;
            }
        }
    }
    let mut sync = vec![stbl.stss.is_none(); n];
    if let Some(stss) = &stbl.stss {
        for &s in &stss.entries {
            match usize::try_from(s).ok().and_then(|s| s.checked_sub(1)).and_then(|i| sync.get_mut(i)) {
                Some(slot) => *slot = true,
                None => return Err(bad("a keyframe number is past the last sample")),
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut dts = 0u64;
    for i in 0..n {
        let (offset, size) = (offsets[i], sizes[i]);
        if offset.saturating_add(u64::from(size)) > file_size {
            return Err(Unpackable(format!(
                "truncated: track {track}'s sample {} lies past the end of the file",
                i + 1
            )));
        }
        out.push(Sample { offset, size, dts, duration: durations[i], cts: cts[i], sync: sync[i] });
        dts = dts.saturating_add(u64::from(durations[i]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_headers_of_every_size_form() {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_be_bytes());
        b.extend_from_slice(b"ftyp");
        assert_eq!(box_header(&b, 100).unwrap(), (FourCC::new(b"ftyp"), 8, 16));
        let mut large = Vec::new();
        large.extend_from_slice(&1u32.to_be_bytes());
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&(1u64 << 33).to_be_bytes());
        assert_eq!(box_header(&large, 1 << 34).unwrap(), (FourCC::new(b"mdat"), 16, (1 << 33) - 16));
        let mut to_end = Vec::new();
        to_end.extend_from_slice(&0u32.to_be_bytes());
        to_end.extend_from_slice(b"mdat");
        assert_eq!(box_header(&to_end, 1000).unwrap(), (FourCC::new(b"mdat"), 8, 992));
        assert!(box_header(&b[..5], 100).is_err());
    }

    #[tokio::test]
    async fn a_file_that_is_not_an_mp4_is_refused_by_reason() {
        let junk = Bytes::from_static(b"\0\0\0\x10abcdefghijklmnopqrstuvwxyz");
        let read = |r: Range<u64>| {
            let junk = junk.clone();
            async move { Ok(junk.slice(r.start as usize..r.end as usize)) }
        };
        let e = find_moov(junk.len() as u64, read).await.unwrap_err();
        assert!(e.to_string().contains("does not start with an ftyp box"), "{e}");

        // An ftyp box claiming more bytes than the file has.
        let mut cut = Vec::new();
        cut.extend_from_slice(&64u32.to_be_bytes());
        cut.extend_from_slice(b"ftypisom");
        let cut = Bytes::from(cut);
        let read = |r: Range<u64>| {
            let cut = cut.clone();
            async move { Ok(cut.slice(r.start as usize..r.end as usize)) }
        };
        let e = find_moov(cut.len() as u64, read).await.unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
