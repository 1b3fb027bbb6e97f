//! CMAF output (ISO/IEC 23000-19) written with `mp4-atom`: one track per file, an
//! init segment (`ftyp` + `moov` with `mvex`) and media segments (`styp` + `moof`
//! + `mdat`). The same segments serve HLS (fMP4) and DASH.

use mp4_atom::{
    Dinf, Dref, DrefEntry, Encode, FourCC, Ftyp, Hdlr, Header, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mvex, Mvhd, Saio,
    Saiz, Senc, SencBoxVersion, Smhd, Stbl, Stco, Stsd, Styp, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, Url,
    Vmhd,
};

use crate::cenc::{self, SampleInfo};
use crate::index::{Kind, Sample, Track, Unpackable};

/// The track id in every output file.
const TRACK_ID: u32 = 1;

/// Encoding into a Vec fails only on values a box cannot hold (a field past its
/// width): a source file the node must refuse, never panic on.
fn encode(atom: &impl Encode, out: &mut Vec<u8>) -> Result<(), Unpackable> {
    atom.encode(out).map_err(|e| Unpackable(format!("a box could not be written: {e}")))
}

/// The init segment of `track`: its sample entry as the source has it, no samples.
pub fn init_segment(track: &Track) -> Result<Vec<u8>, Unpackable> {
    let (width, height, volume, vmhd, smhd, handler, name) = match track.kind {
        Kind::Video { width, height } => (width, height, 0, Some(Vmhd::default()), None, b"vide", "Headwater video"),
        Kind::Audio { .. } => (0, 0, 1, None, Some(Smhd::default()), b"soun", "Headwater audio"),
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: track.timescale,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: 2,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: vec![Trex { track_id: TRACK_ID, default_sample_description_index: 1, ..Default::default() }],
        }),
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: TRACK_ID,
                enabled: true,
                in_movie: true,
                volume: volume.into(),
                width: width.into(),
                height: height.into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd { timescale: track.timescale, language: track.language.clone(), ..Default::default() },
                hdlr: Hdlr { handler: FourCC::new(handler), name: name.into() },
                minf: Minf {
                    vmhd,
                    smhd,
                    dinf: Dinf { dref: Dref { entries: vec![DrefEntry::Url(Url { location: String::new() })] } },
                    stbl: Stbl {
                        stsd: Stsd { codecs: vec![track.codec.clone()] },
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    encode(&ftyp(), &mut out)?;
    encode(&moov, &mut out)?;
    Ok(out)
}

fn ftyp() -> Ftyp {
    Ftyp {
        major_brand: FourCC::new(b"cmfc"),
        minor_version: 0,
        compatible_brands: vec![FourCC::new(b"iso6"), FourCC::new(b"cmfc"), FourCC::new(b"dash"), FourCC::new(b"mp41")],
    }
}

/// `sample_depends_on` = 2 (an I-frame).
const SYNC: u32 = 0x0200_0000;
/// `sample_depends_on` = 1 and `sample_is_non_sync_sample`.
const NON_SYNC: u32 = 0x0101_0000;

/// Media segment number `sequence` (from 1) of `track`'s `samples`, whose bytes are
/// `data[i]` for `samples[i]`, in decode order.
pub fn media_segment(track: &Track, sequence: u32, samples: &[Sample], data: &[&[u8]]) -> Result<Vec<u8>, Unpackable> {
    segment(track, sequence, samples, data, None)
}

/// A media segment of samples encrypted with Common Encryption: `data` holds
/// their encrypted bytes, `info` each sample's IV and subsamples, which go in
/// the fragment's `senc` (located by `saiz` and `saio`).
pub fn protected_segment(
    track: &Track,
    sequence: u32,
    samples: &[Sample],
    data: &[&[u8]],
    info: &SampleInfo,
) -> Result<Vec<u8>, Unpackable> {
    segment(track, sequence, samples, data, Some(info))
}

fn segment(
    track: &Track,
    sequence: u32,
    samples: &[Sample],
    data: &[&[u8]],
    info: Option<&SampleInfo>,
) -> Result<Vec<u8>, Unpackable> {
    let video = track.is_video();
    let entries: Vec<TrunEntry> = samples
        .iter()
        .map(|s| TrunEntry {
            duration: Some(s.duration),
            size: Some(s.size),
            flags: video.then_some(if s.sync { SYNC } else { NON_SYNC }),
            cts: video.then_some(i64::from(s.cts) - i64::from(track.shift)),
        })
        .collect();
    // A constant IV and no subsamples (cbcs audio) leave nothing to say per sample.
    let info = info.filter(|i| i.entries.iter().any(|e| !e.is_empty()));
    let aux = info.map(|i| {
        let mut data = (i.entries.len() as u32).to_be_bytes().to_vec();
        for e in &i.entries {
            data.extend_from_slice(e);
        }
        let sizes: Vec<u8> = i.entries.iter().map(|e| e.len() as u8).collect();
        let same = sizes.windows(2).all(|w| w[0] == w[1]);
        let saiz = Saiz {
            aux_info: None,
            default_sample_info_size: if same { sizes.first().copied().unwrap_or(0) } else { 0 },
            sample_count: sizes.len() as u32,
            sample_info_size: if same { Vec::new() } else { sizes },
        };
        (Senc { version: SencBoxVersion::V0, use_subsamples: i.subsamples, data }, saiz)
    });
    let moof = |data_offset: i32, aux_offset: u64| Moof {
        mfhd: Mfhd { sequence_number: sequence },
        traf: vec![Traf {
            tfhd: Tfhd { track_id: TRACK_ID, default_base_is_moof: true, ..Default::default() },
            tfdt: Some(Tfdt { base_media_decode_time: samples.first().map_or(0, |s| s.dts) }),
            trun: vec![Trun { data_offset: Some(data_offset), samples: entries.clone().into() }],
            senc: aux.as_ref().map(|(senc, _)| senc.clone()),
            saiz: aux.iter().map(|(_, saiz)| saiz.clone()).collect(),
            saio: aux.iter().map(|_| Saio { aux_info: None, offsets: vec![aux_offset] }).collect(),
            ..Default::default()
        }],
    };
    let body: usize = data.iter().map(|d| d.len()).sum();
    let mut out = Vec::with_capacity(body + 64 + samples.len() * 16);
    let styp = Styp {
        major_brand: FourCC::new(b"msdh"),
        minor_version: 0,
        compatible_brands: vec![FourCC::new(b"msdh"), FourCC::new(b"msix"), FourCC::new(b"cmfs")],
    };
    encode(&styp, &mut out)?;
    // The data offset counts from the moof's start to the first sample: the
    // moof's own length (the same whatever the offsets' values) and mdat's
    // header. The auxiliary information (saio) is the senc's first entry,
    // also counted from the moof's start.
    let mut sized = Vec::new();
    encode(&moof(0, 0), &mut sized)?;
    let aux_offset = match aux {
        None => 0,
        Some(_) => {
            let traf = cenc::child(&sized, 8..sized.len(), b"traf");
            let senc = traf.and_then(|t| cenc::child(&sized, t + 8..sized.len(), b"senc"));
            // senc: its header, version and flags, the sample count.
            senc.map(|s| s as u64 + 16).ok_or_else(|| Unpackable("the fragment lost its senc".into()))?
        }
    };
    let mdat = Header { kind: FourCC::new(b"mdat"), size: Some(body) };
    let mut mdat_header = Vec::with_capacity(16);
    encode(&mdat, &mut mdat_header)?;
    let offset = i32::try_from(sized.len() + mdat_header.len()).unwrap_or(i32::MAX);
    encode(&moof(offset, aux_offset), &mut out)?;
    out.extend_from_slice(&mdat_header);
    for d in data {
        out.extend_from_slice(d);
    }
    Ok(out)
}
