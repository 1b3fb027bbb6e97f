//! MPEG-TS output for HLS (`hls-ts/`): a segment's video samples and the same
//! segment of the first audio rendition, muxed into one transport stream, as
//! legacy HLS players expect. `mpeg2ts` writes the packets (PAT, PMT, PES
//! headers, adaptation fields, stuffing); this module cuts each access unit
//! into packets, converts H.264/H.265 samples from length-prefixed NAL units
//! to Annex B (an access unit delimiter first and, at keyframes, the parameter
//! sets), and gives each AAC frame its ADTS header.

use mp4_atom::Codec;
use mpeg2ts::es::{StreamId, StreamType};
use mpeg2ts::pes::PesHeader;
use mpeg2ts::time::{ClockReference, Timestamp};
use mpeg2ts::ts::payload::{Bytes, Pat, Pes, Pmt};
use mpeg2ts::ts::{
    AdaptationField, ContinuityCounter, EsInfo, Pid, ProgramAssociation, TransportScramblingControl, TsHeader,
    TsPacket, TsPacketWriter, TsPayload, VersionNumber, WriteTsPacket,
};

use crate::index::{Sample, Track, Unpackable};

const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
/// Presentation times start here (1.4 s, as ffmpeg's muxer does): room below
/// the first frame for the video's decode delay and the clock reference.
const OFFSET: i128 = 126_000;
/// The clock reference runs this far (0.1 s) ahead of the decode times.
const PCR_LEAD: u64 = 9_000;
const PAYLOAD: usize = TsPacket::SIZE - 4;

/// One track's samples in a segment, with their bytes.
pub struct Part<'a> {
    pub track: &'a Track,
    pub samples: &'a [Sample],
    pub data: Vec<&'a [u8]>,
}

fn ts_error(e: mpeg2ts::Error) -> Unpackable {
    Unpackable(format!("a transport stream packet could not be written: {e}"))
}

/// A time in `timescale` ticks in 90 kHz, from [`OFFSET`].
fn at_90k(ticks: i128, timescale: u32) -> u64 {
    let t = OFFSET + ticks * 90_000 / i128::from(timescale.max(1));
    u64::try_from(t.clamp(0, i128::from(Timestamp::MAX))).unwrap_or(0)
}

/// An access unit to mux: PID, times, keyframe, bytes.
struct Unit {
    pid: u16,
    dts: u64,
    pts: u64,
    key: bool,
    bytes: Vec<u8>,
}

/// Segment `sequence` as a transport stream: PAT and PMT, then every access
/// unit in decode order.
pub fn segment(video: Option<&Part<'_>>, audio: Option<&Part<'_>>) -> Result<Vec<u8>, Unpackable> {
    let mut units = Vec::new();
    if let Some(v) = video {
        let params = parameter_sets(v.track)?;
        let shift = i128::from(v.track.shift);
        for (s, d) in v.samples.iter().zip(&v.data) {
            let dts = i128::from(s.dts) - shift;
            let pts = dts + i128::from(s.cts);
            let (dts, pts) = (at_90k(dts, v.track.timescale), at_90k(pts, v.track.timescale));
            let bytes = annex_b(&params, d, s.sync)?;
            units.push(Unit { pid: VIDEO_PID, dts: dts.min(pts), pts, key: s.sync, bytes });
        }
    }
    if let Some(a) = audio {
        let header = adts_fields(a.track)?;
        for (s, d) in a.samples.iter().zip(&a.data) {
            let t = at_90k(i128::from(s.dts), a.track.timescale);
            units.push(Unit { pid: AUDIO_PID, dts: t, pts: t, key: true, bytes: adts(header, d)? });
        }
    }
    // Decode order across both PIDs (stable: video first at equal times).
    units.sort_by_key(|u| u.dts);
    let pcr_pid = if video.is_some() { VIDEO_PID } else { AUDIO_PID };
    let mut w = TsPacketWriter::new(Vec::with_capacity(units.iter().map(|u| u.bytes.len()).sum::<usize>() * 21 / 20));
    let mut counters = [ContinuityCounter::new(); 4];
    write_tables(&mut w, &mut counters, video.map(|v| v.track), audio.is_some(), pcr_pid)?;
    for u in &units {
        let cc = &mut counters[if u.pid == VIDEO_PID { 2 } else { 3 }];
        let pcr = (u.pid == pcr_pid).then(|| u.dts.saturating_sub(PCR_LEAD));
        write_pes(&mut w, cc, u, pcr)?;
    }
    Ok(w.into_stream())
}

fn pid(n: u16) -> Result<Pid, Unpackable> {
    Pid::new(n).map_err(ts_error)
}

fn packet(pid: Pid, cc: &mut ContinuityCounter, af: Option<AdaptationField>, payload: TsPayload) -> TsPacket {
    let header = TsHeader {
        transport_error_indicator: false,
        transport_priority: false,
        pid,
        transport_scrambling_control: TransportScramblingControl::NotScrambled,
        continuity_counter: *cc,
    };
    cc.increment();
    TsPacket { header, adaptation_field: af, payload: Some(payload) }
}

fn write_tables(
    w: &mut TsPacketWriter<Vec<u8>>,
    counters: &mut [ContinuityCounter; 4],
    video: Option<&Track>,
    audio: bool,
    pcr_pid: u16,
) -> Result<(), Unpackable> {
    let pat = Pat {
        transport_stream_id: 1,
        version_number: VersionNumber::new(),
        table: vec![ProgramAssociation { program_num: 1, program_map_pid: pid(PMT_PID)? }],
    };
    w.write_ts_packet(&packet(pid(0)?, &mut counters[0], None, TsPayload::Pat(pat))).map_err(ts_error)?;
    let mut es_info = Vec::new();
    if let Some(v) = video {
        let stream_type = match v.codec {
            Codec::Hvc1(_) | Codec::Hev1(_) => StreamType::H265,
            _ => StreamType::H264,
        };
        es_info.push(EsInfo { stream_type, elementary_pid: pid(VIDEO_PID)?, descriptors: Vec::new() });
    }
    if audio {
        es_info.push(EsInfo {
            stream_type: StreamType::AdtsAac,
            elementary_pid: pid(AUDIO_PID)?,
            descriptors: Vec::new(),
        });
    }
    let pmt = Pmt {
        program_num: 1,
        pcr_pid: Some(pid(pcr_pid)?),
        version_number: VersionNumber::new(),
        program_info: Vec::new(),
        es_info,
    };
    w.write_ts_packet(&packet(pid(PMT_PID)?, &mut counters[1], None, TsPayload::Pmt(pmt))).map_err(ts_error)
}

/// One PES packet (one access unit) across as many TS packets as it takes; the
/// first carries the clock reference (`pcr`, 90 kHz) and marks a keyframe.
fn write_pes(
    w: &mut TsPacketWriter<Vec<u8>>,
    cc: &mut ContinuityCounter,
    u: &Unit,
    pcr: Option<u64>,
) -> Result<(), Unpackable> {
    let video = u.pid == VIDEO_PID;
    let pts = Timestamp::new(u.pts).map_err(ts_error)?;
    let dts = (u.dts != u.pts).then(|| Timestamp::new(u.dts)).transpose().map_err(ts_error)?;
    let header = PesHeader {
        stream_id: StreamId::new(if video { 0xE0 } else { 0xC0 }),
        priority: false,
        data_alignment_indicator: true,
        copyright: false,
        original_or_copy: false,
        pts: Some(pts),
        dts,
        escr: None,
    };
    // The PES header: start code, stream id and length (6), flags (3), times.
    let optional = 3 + 5 + if dts.is_some() { 5 } else { 0 };
    let pes_len = optional + u.bytes.len();
    // Video PES packets may be unbounded (0); audio ones always fit.
    let pes_packet_len = u16::try_from(pes_len).ok().filter(|_| !video || pes_len <= 0xFFFF).unwrap_or(0);
    let af = (pcr.is_some() || (video && u.key)).then(|| AdaptationField {
        discontinuity_indicator: false,
        random_access_indicator: u.key,
        es_priority_indicator: false,
        pcr: pcr.and_then(|p| ClockReference::new(p * 300).ok()),
        opcr: None,
        splice_countdown: None,
        transport_private_data: Vec::new(),
        extension: None,
    });
    let af_len = af.as_ref().map_or(0, |a| 2 + if a.pcr.is_some() { 6 } else { 0 });
    let first = (PAYLOAD - af_len - 6 - optional).min(u.bytes.len());
    let (head, mut rest) = u.bytes.split_at(first);
    let pes = Pes { header, pes_packet_len, data: Bytes::new(head).map_err(ts_error)? };
    let p = pid(u.pid)?;
    w.write_ts_packet(&packet(p, cc, af, TsPayload::PesStart(pes))).map_err(ts_error)?;
    while !rest.is_empty() {
        let (chunk, more) = rest.split_at(rest.len().min(PAYLOAD));
        let payload = TsPayload::PesContinuation(Bytes::new(chunk).map_err(ts_error)?);
        w.write_ts_packet(&packet(p, cc, None, payload)).map_err(ts_error)?;
        rest = more;
    }
    Ok(())
}

/// A video track's NAL length size, parameter sets and access unit delimiter.
struct Params {
    length_size: usize,
    sets: Vec<Vec<u8>>,
    aud: &'static [u8],
    /// The NAL unit type of an access unit delimiter, and how to read a type.
    aud_type: u8,
    hevc: bool,
}

fn parameter_sets(track: &Track) -> Result<Params, Unpackable> {
    let avc = |a: &mp4_atom::Avcc| Params {
        length_size: usize::from(a.length_size),
        sets: a.sequence_parameter_sets.iter().chain(&a.picture_parameter_sets).cloned().collect(),
        aud: &[0, 0, 0, 1, 0x09, 0xF0],
        aud_type: 9,
        hevc: false,
    };
    let hevc = |h: &mp4_atom::Hvcc| Params {
        length_size: usize::from(h.length_size_minus_one) + 1,
        // VPS, SPS and PPS, in that order.
        sets: [32u8, 33, 34]
            .iter()
            .flat_map(|t| h.arrays.iter().filter(move |a| a.nal_unit_type == *t))
            .flat_map(|a| a.nalus.iter().cloned())
            .collect(),
        aud: &[0, 0, 0, 1, 0x46, 0x01, 0x50],
        aud_type: 35,
        hevc: true,
    };
    match &track.codec {
        Codec::Avc1(a) => Ok(avc(&a.avcc)),
        Codec::Avc3(a) => Ok(avc(&a.avcc)),
        Codec::Hvc1(h) => Ok(hevc(&h.hvcc)),
        Codec::Hev1(h) => Ok(hevc(&h.hvcc)),
        _ => Err(Unpackable("only H.264 and H.265 video is muxed into MPEG-TS".into())),
    }
}

/// A video sample in Annex B: an access unit delimiter, the parameter sets on
/// a keyframe, then its NAL units (the source's own delimiters dropped).
fn annex_b(p: &Params, sample: &[u8], key: bool) -> Result<Vec<u8>, Unpackable> {
    const START: [u8; 4] = [0, 0, 0, 1];
    let mut out = Vec::with_capacity(sample.len() + 64);
    out.extend_from_slice(p.aud);
    if key {
        for set in &p.sets {
            out.extend_from_slice(&START);
            out.extend_from_slice(set);
        }
    }
    if !(1..=4).contains(&p.length_size) {
        return Err(Unpackable(format!("a NAL length of {} bytes", p.length_size)));
    }
    let mut at = 0;
    while at < sample.len() {
        let Some(len) = sample.get(at..at + p.length_size) else {
            return Err(Unpackable("a sample's NAL units run past it".into()));
        };
        let n = len.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        let Some(nal) = sample.get(at + p.length_size..at + p.length_size + n) else {
            return Err(Unpackable("a sample's NAL units run past it".into()));
        };
        at += p.length_size + n;
        let kind = match (p.hevc, nal.first()) {
            (false, Some(b)) => b & 0x1F,
            (true, Some(b)) => (b >> 1) & 0x3F,
            (_, None) => continue,
        };
        if kind == p.aud_type {
            continue;
        }
        out.extend_from_slice(&START);
        out.extend_from_slice(nal);
    }
    Ok(out)
}

/// ADTS profile, sampling frequency index and channel configuration.
#[derive(Clone, Copy)]
struct AdtsFields {
    profile: u8,
    freq_index: u8,
    channels: u8,
}

fn adts_fields(track: &Track) -> Result<AdtsFields, Unpackable> {
    let Codec::Mp4a(m) = &track.codec else { return Err(Unpackable("only AAC audio is muxed into MPEG-TS".into())) };
    let d = m
        .esds
        .es_desc
        .dec_config
        .dec_specific
        .as_ref()
        .ok_or_else(|| Unpackable("the AAC track has no decoder configuration".into()))?;
    if d.freq_index > 12 || d.chan_conf > 7 || d.profile == 0 {
        return Err(Unpackable("an AAC configuration ADTS cannot carry".into()));
    }
    // ADTS carries the object types 1 to 4; HE-AAC (5, 29) plays as its LC core.
    Ok(AdtsFields { profile: d.profile.min(4) - 1, freq_index: d.freq_index, channels: d.chan_conf })
}

/// An AAC frame with its 7-byte ADTS header (MPEG-4, no CRC).
fn adts(f: AdtsFields, frame: &[u8]) -> Result<Vec<u8>, Unpackable> {
    let len = frame.len() + 7;
    if len >= 1 << 13 {
        return Err(Unpackable("an AAC frame too large for ADTS".into()));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[
        0xFF,
        0xF1,
        (f.profile << 6) | (f.freq_index << 2) | (f.channels >> 2),
        ((f.channels & 3) << 6) | (len >> 11) as u8,
        (len >> 3) as u8,
        (((len & 7) as u8) << 5) | 0x1F,
        0xFC,
    ]);
    out.extend_from_slice(frame);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nal_units_become_annex_b_with_a_delimiter_and_parameter_sets_on_keyframes() {
        let p = Params {
            length_size: 4,
            sets: vec![vec![0x67, 1], vec![0x68, 2]],
            aud: &[0, 0, 0, 1, 0x09, 0xF0],
            aud_type: 9,
            hevc: false,
        };
        // A source delimiter (dropped) and one slice.
        let sample = [0, 0, 0, 2, 0x09, 0xF0, 0, 0, 0, 3, 0x65, 0xAA, 0xBB];
        let key = annex_b(&p, &sample, true).unwrap();
        assert_eq!(key, [0, 0, 0, 1, 9, 0xF0, 0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 0xAA, 0xBB]);
        let other = annex_b(&p, &sample, false).unwrap();
        assert_eq!(other, [0, 0, 0, 1, 9, 0xF0, 0, 0, 0, 1, 0x65, 0xAA, 0xBB]);
        assert!(annex_b(&p, &[0, 0, 0, 9, 0x65], false).is_err(), "a NAL past the sample");
        assert!(annex_b(&p, &[0, 0], false).is_err(), "a cut length");
    }

    #[test]
    fn adts_headers_carry_the_frame_length() {
        let f = AdtsFields { profile: 1, freq_index: 3, channels: 2 };
        let out = adts(f, &[0u8; 100]).unwrap();
        assert_eq!(&out[..7], &[0xFF, 0xF1, 0x4C, 0x80, 0x0D, 0x7F, 0xFC]);
        assert_eq!(out.len(), 107);
        assert!(adts(f, &vec![0u8; 9000]).is_err());
    }
}
