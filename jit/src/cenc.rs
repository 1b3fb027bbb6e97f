//! Common Encryption (ISO/IEC 23001-7) of CMAF, for DASH: `cenc` (AES-128-CTR,
//! an 8-byte IV per sample) and `cbcs` (AES-128-CBC from a constant IV per
//! track, video in a 1:9 pattern). Video is encrypted by subsample: every NAL
//! unit's length and header stay clear, and only the bodies of VCL NAL units
//! (slices) are protected; audio samples are encrypted whole. The ciphers are
//! RustCrypto's (`aes`, `ctr`, `cbc`).
//!
//! The boxes `mp4-atom` lacks (`sinf` with `frma`, `schm`, `schi` and `tenc`;
//! `pssh`) are [`mp4_atom::Atom`]s here. `mp4-atom` cannot write a protected
//! sample entry (`encv`/`enca`), so the init segment is the clear one with its
//! sample entry replaced: the clear entry's body under the new name, `sinf`
//! appended, and the sizes of the boxes around it grown to match.

use std::ops::Range;

use aes::cipher::{BlockModeEncrypt, KeyIvInit, StreamCipher};
use mp4_atom::{Atom, Buf, BufMut, Codec, Decode, Encode, FourCC, Header};
use sha2::Digest;

use crate::encrypt::AssetKey;
use crate::index::{Track, Unpackable};

/// The W3C Common PSSH system id (`1077efec-c0b2-4d02-ace3-3c1e52e2fb4b`): its
/// `pssh` lists the key ids, which is what a ClearKey CDM asks licenses for.
pub const COMMON_SYSTEM_ID: [u8; 16] =
    [0x10, 0x77, 0xef, 0xec, 0xc0, 0xb2, 0x4d, 0x02, 0xac, 0xe3, 0x3c, 0x1e, 0x52, 0xe2, 0xfb, 0x4b];

/// DASH-IF's ClearKey system id, as a URN for `ContentProtection`.
pub const CLEARKEY_URN: &str = "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e";

/// AES blocks.
const BLOCK: usize = 16;

/// `cbcs` video: one block encrypted, nine left clear, over each protected range.
const VIDEO_PATTERN: (u8, u8) = (1, 9);

/// A Common Encryption scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// AES-CTR, full subsample encryption.
    Cenc,
    /// AES-CBC with a constant IV, pattern encryption of video.
    Cbcs,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cenc => "cenc",
            Self::Cbcs => "cbcs",
        }
    }

    fn fourcc(self) -> FourCC {
        FourCC::new(match self {
            Self::Cenc => b"cenc",
            Self::Cbcs => b"cbcs",
        })
    }
}

/// What one rendition's samples are encrypted with: the scheme, the asset's
/// key and the IVs, derived from `seed` (the asset's version and the
/// rendition), so every node makes the same bytes and no IV is used twice
/// under one key.
#[derive(Clone)]
pub struct Protection {
    pub scheme: Scheme,
    pub key: AssetKey,
    /// `cenc`: the first sample's IV is its first 8 bytes, the sample's index
    /// added; `cbcs`: the constant IV.
    iv: [u8; 16],
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection").field("scheme", &self.scheme).field("key", &self.key).finish_non_exhaustive()
    }
}

impl Protection {
    pub fn new(scheme: Scheme, key: AssetKey, seed: &[u8]) -> Self {
        let digest = sha2::Sha256::new()
            .chain_update(b"headwater cenc iv v1\0")
            .chain_update(key.kid)
            .chain_update(scheme.as_str())
            .chain_update(seed)
            .finalize();
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&digest[..16]);
        Self { scheme, key, iv }
    }

    /// The 8-byte IV of sample `index` of the track (`cenc`).
    fn sample_iv(&self, index: u64) -> [u8; 8] {
        let mut base = [0u8; 8];
        base.copy_from_slice(&self.iv[..8]);
        u64::from_be_bytes(base).wrapping_add(index).to_be_bytes()
    }
}

// ---- The boxes mp4-atom lacks ----

/// `frma`: the format a protected sample entry had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frma(pub FourCC);

impl Atom for Frma {
    const KIND: FourCC = FourCC::new(b"frma");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        Ok(Self(FourCC::decode(buf)?))
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        self.0.encode(buf)
    }
}

/// `schm` (a full box): the scheme, version 1.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schm(pub FourCC);

impl Atom for Schm {
    const KIND: FourCC = FourCC::new(b"schm");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        let _version_flags = u32::decode(buf)?;
        let scheme = FourCC::decode(buf)?;
        let _version = u32::decode(buf)?;
        Ok(Self(scheme))
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        0u32.encode(buf)?;
        self.0.encode(buf)?;
        0x0001_0000u32.encode(buf)
    }
}

/// `tenc` (a full box): a track's defaults. Version 1 carries a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenc {
    /// Blocks encrypted and skipped (`cbcs`); `None`: version 0, no pattern.
    pub pattern: Option<(u8, u8)>,
    /// 8 (`cenc`) or 0 (`cbcs`: `constant_iv` instead).
    pub iv_size: u8,
    pub kid: [u8; 16],
    pub constant_iv: Option<[u8; 16]>,
}

impl Atom for Tenc {
    const KIND: FourCC = FourCC::new(b"tenc");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        let version = u32::decode(buf)? >> 24;
        let _reserved = u8::decode(buf)?;
        let pattern = u8::decode(buf)?;
        let _protected = u8::decode(buf)?;
        let iv_size = u8::decode(buf)?;
        let kid = <[u8; 16]>::decode(buf)?;
        let constant_iv = match iv_size {
            0 => {
                let _size = u8::decode(buf)?;
                Some(<[u8; 16]>::decode(buf)?)
            }
            _ => None,
        };
        Ok(Self { pattern: (version >= 1).then_some((pattern >> 4, pattern & 0xf)), iv_size, kid, constant_iv })
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        let version: u32 = if self.pattern.is_some() { 1 } else { 0 };
        (version << 24).encode(buf)?;
        0u8.encode(buf)?;
        self.pattern.map_or(0, |(crypt, skip)| (crypt << 4) | (skip & 0xf)).encode(buf)?;
        1u8.encode(buf)?; // default_isProtected
        self.iv_size.encode(buf)?;
        self.kid.encode(buf)?;
        if self.iv_size == 0 {
            let iv = self.constant_iv.unwrap_or_default();
            (iv.len() as u8).encode(buf)?;
            iv.encode(buf)?;
        }
        Ok(())
    }
}

/// `schi`: the scheme's information, here its `tenc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schi(pub Tenc);

impl Atom for Schi {
    const KIND: FourCC = FourCC::new(b"schi");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        Ok(Self(Tenc::decode(buf)?))
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        self.0.encode(buf)
    }
}

/// `sinf`: what a protected sample entry was and how it is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sinf {
    pub frma: Frma,
    pub schm: Schm,
    pub schi: Schi,
}

impl Atom for Sinf {
    const KIND: FourCC = FourCC::new(b"sinf");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        Ok(Self { frma: Frma::decode(buf)?, schm: Schm::decode(buf)?, schi: Schi::decode(buf)? })
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        self.frma.encode(buf)?;
        self.schm.encode(buf)?;
        self.schi.encode(buf)
    }
}

/// `pssh` version 1 (a full box): a system's key ids, no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pssh {
    pub system_id: [u8; 16],
    pub kids: Vec<[u8; 16]>,
}

impl Atom for Pssh {
    const KIND: FourCC = FourCC::new(b"pssh");

    fn decode_body<B: Buf>(buf: &mut B) -> mp4_atom::Result<Self> {
        let version = u32::decode(buf)? >> 24;
        let system_id = <[u8; 16]>::decode(buf)?;
        let mut kids = Vec::new();
        if version >= 1 {
            for _ in 0..u32::decode(buf)? {
                kids.push(<[u8; 16]>::decode(buf)?);
            }
        }
        let size = u32::decode(buf)? as usize;
        if size > buf.remaining() {
            return Err(mp4_atom::Error::OutOfBounds);
        }
        buf.advance(size);
        Ok(Self { system_id, kids })
    }

    fn encode_body<B: BufMut>(&self, buf: &mut B) -> mp4_atom::Result<()> {
        (1u32 << 24).encode(buf)?;
        self.system_id.encode(buf)?;
        (self.kids.len() as u32).encode(buf)?;
        for kid in &self.kids {
            kid.encode(buf)?;
        }
        0u32.encode(buf) // DataSize
    }
}

fn encode_err(e: mp4_atom::Error) -> Unpackable {
    Unpackable(format!("a box could not be written: {e}"))
}

/// The track's `tenc`.
fn tenc(p: &Protection, video: bool) -> Tenc {
    match p.scheme {
        Scheme::Cenc => Tenc { pattern: None, iv_size: 8, kid: p.key.kid, constant_iv: None },
        Scheme::Cbcs => Tenc {
            // Audio is encrypted whole: no pattern (0:0).
            pattern: Some(if video { VIDEO_PATTERN } else { (0, 0) }),
            iv_size: 0,
            kid: p.key.kid,
            constant_iv: Some(p.iv),
        },
    }
}

/// The `pssh` of the asset's key in the W3C Common format.
pub fn common_pssh(kid: [u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    // 52 bytes into a Vec: cannot fail.
    let _ = Pssh { system_id: COMMON_SYSTEM_ID, kids: vec![kid] }.encode(&mut out);
    out
}

/// The protected form of `clear`, an init segment `cmaf::init_segment` made for
/// `track`: its sample entry renamed `encv` or `enca` with `sinf` added, and a
/// Common `pssh` in its `moov`.
pub fn protect_init(clear: &[u8], track: &Track, p: &Protection) -> Result<Vec<u8>, Unpackable> {
    let video = track.is_video();
    let mut entry_clear = Vec::new();
    track.codec.encode(&mut entry_clear).map_err(encode_err)?;
    let original = FourCC::new(entry_clear.get(4..8).and_then(|k| k.try_into().ok()).unwrap_or(b"\0\0\0\0"));
    let sinf = Sinf { frma: Frma(original), schm: Schm(p.scheme.fourcc()), schi: Schi(tenc(p, video)) };
    let mut entry = Vec::with_capacity(entry_clear.len() + 80);
    entry
        .encode_atom(FourCC::new(if video { b"encv" } else { b"enca" }), |b| {
            b.append_slice(&entry_clear[8..]);
            sinf.encode(b)
        })
        .map_err(encode_err)?;
    let moov_at = child(clear, 0..clear.len(), b"moov").ok_or_else(|| Unpackable("no moov to protect".into()))?;
    let mut out = clear[..moov_at].to_vec();
    let moov = &clear[moov_at..];
    out.extend(splice_entry(moov, &entry, &common_pssh(p.key.kid))?);
    Ok(out)
}

/// The size (header included) of the box at `at`, as `mp4-atom` writes it.
fn box_len(bytes: &[u8], at: usize) -> Option<usize> {
    let header = Header::decode(&mut bytes.get(at..)?).ok()?;
    let body = header.size?;
    // A 32-bit size: an 8-byte header (mp4-atom writes no larger ones).
    let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    (len == body + 8).then_some(len)
}

/// The offset of the first child box of kind `kind` among the boxes laid end
/// to end in `within`.
pub(crate) fn child(bytes: &[u8], within: Range<usize>, kind: &[u8; 4]) -> Option<usize> {
    let mut at = within.start;
    while at + 8 <= within.end {
        let len = box_len(bytes, at)?;
        if &bytes[at + 4..at + 8] == kind {
            return Some(at);
        }
        at += len.max(8);
    }
    None
}

/// `moov` (one track) with its first sample entry replaced by `entry` and
/// `extra` appended inside it; every box around the entry grows to match.
fn splice_entry(moov: &[u8], entry: &[u8], extra: &[u8]) -> Result<Vec<u8>, Unpackable> {
    let missing = |what: &str| Unpackable(format!("the init segment has no {what}"));
    let mut path = vec![0usize];
    let mut at = 0;
    for kind in [b"trak", b"mdia", b"minf", b"stbl", b"stsd"] {
        let len = box_len(moov, at).ok_or_else(|| missing("box sizes"))?;
        at = child(moov, at + 8..at + len, kind).ok_or_else(|| missing(std::str::from_utf8(kind).unwrap_or("box")))?;
        path.push(at);
    }
    // stsd: version and flags, the entry count, then the entries.
    let entry_at = at + 16;
    let old = box_len(moov, entry_at).ok_or_else(|| missing("sample entry"))?;
    let grown = entry.len() - old.min(entry.len());
    let mut out = Vec::with_capacity(moov.len() + grown + extra.len());
    out.extend_from_slice(&moov[..entry_at]);
    out.extend_from_slice(entry);
    out.extend_from_slice(&moov[entry_at + old..]);
    out.extend_from_slice(extra);
    let grow = |out: &mut Vec<u8>, at: usize, by: usize| -> Result<(), Unpackable> {
        let len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap_or_default()) as usize + by;
        let len = u32::try_from(len).map_err(|_| Unpackable("the init segment grew past 4 GiB".into()))?;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    };
    for &p in &path {
        grow(&mut out, p, grown)?;
    }
    grow(&mut out, 0, extra.len())?;
    Ok(out)
}

// ---- Samples ----

/// How a video codec lays out its samples: length-prefixed NAL units.
#[derive(Debug, Clone, Copy)]
struct Nals {
    length_size: usize,
    header: usize,
    hevc: bool,
}

impl Nals {
    fn of(codec: &Codec) -> Result<Self, Unpackable> {
        Ok(match codec {
            Codec::Avc1(a) => Self { length_size: a.avcc.length_size.into(), header: 1, hevc: false },
            Codec::Avc3(a) => Self { length_size: a.avcc.length_size.into(), header: 1, hevc: false },
            Codec::Hvc1(h) => {
                Self { length_size: usize::from(h.hvcc.length_size_minus_one & 3) + 1, header: 2, hevc: true }
            }
            Codec::Hev1(h) => {
                Self { length_size: usize::from(h.hvcc.length_size_minus_one & 3) + 1, header: 2, hevc: true }
            }
            _ => return Err(Unpackable("only H.264 and H.265 video can be encrypted".into())),
        })
    }

    /// A slice (VCL NAL unit), whose body is protected.
    fn is_slice(self, unit: &[u8]) -> bool {
        match (self.hevc, unit.first()) {
            (false, Some(b)) => matches!(b & 0x1f, 1..=5),
            (true, Some(b)) => (b >> 1) & 0x3f < 32,
            (_, None) => false,
        }
    }

    /// The sample's subsamples: (clear, protected) byte counts in order.
    fn subsamples(self, data: &[u8], scheme: Scheme) -> Result<Vec<(u16, u32)>, Unpackable> {
        let bad = || Unpackable("a video sample's NAL units run past its end".into());
        let mut out = Vec::new();
        let mut clear = 0usize;
        let mut at = 0usize;
        let push = |out: &mut Vec<(u16, u32)>, mut clear: usize, protected: usize| {
            while clear > usize::from(u16::MAX) {
                out.push((u16::MAX, 0));
                clear -= usize::from(u16::MAX);
            }
            out.push((clear as u16, protected as u32));
        };
        while at < data.len() {
            let len_bytes = data.get(at..at + self.length_size).ok_or_else(bad)?;
            let n = len_bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            let end = (at + self.length_size).checked_add(n).filter(|&e| e <= data.len()).ok_or_else(bad)?;
            let unit = &data[at + self.length_size..end];
            let body = unit.len().saturating_sub(self.header);
            // cenc protects whole blocks, the rest of the body stays clear;
            // cbcs protects the body, its pattern leaving a partial block clear.
            let protected = match scheme {
                Scheme::Cenc => body - body % BLOCK,
                Scheme::Cbcs => body,
            };
            if self.is_slice(unit) && protected >= BLOCK {
                push(&mut out, clear + self.length_size + self.header + (body - protected), protected);
                clear = 0;
            } else {
                clear += self.length_size + unit.len();
            }
            at = end;
        }
        if clear > 0 || out.is_empty() {
            push(&mut out, clear, 0);
        }
        Ok(out)
    }
}

/// CBC from `iv` over the whole blocks of `data`, `crypt` of every
/// `crypt + skip` encrypted (all of them when both are 0); a partial block at
/// the end stays clear.
fn cbc_pattern(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8], (crypt, skip): (u8, u8)) {
    let cycle = usize::from(crypt) + usize::from(skip);
    let mut cbc = cbc::Encryptor::<aes::Aes128>::new(&(*key).into(), &(*iv).into());
    for (i, block) in data.chunks_exact_mut(BLOCK).enumerate() {
        if (cycle == 0 || i % cycle < usize::from(crypt))
            && let Ok(block) = <&mut aes::Block>::try_from(block)
        {
            cbc.encrypt_block(block);
        }
    }
}

/// One segment's samples encrypted in place, and what the `senc` box says of
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleInfo {
    /// Each sample's auxiliary information (its IV, then its subsamples).
    pub entries: Vec<Vec<u8>>,
    pub subsamples: bool,
}

/// Encrypts `samples` (the track's samples from index `first`, their bytes in
/// decode order) with `p`.
pub fn encrypt_samples(
    p: &Protection,
    track: &Track,
    first: usize,
    samples: &mut [Vec<u8>],
) -> Result<SampleInfo, Unpackable> {
    let nals = if track.is_video() { Some(Nals::of(&track.codec)?) } else { None };
    let mut entries = Vec::with_capacity(samples.len());
    for (i, data) in samples.iter_mut().enumerate() {
        let mut entry = Vec::new();
        let subsamples = match nals {
            Some(n) => n.subsamples(data, p.scheme)?,
            None => vec![(0, data.len() as u32)],
        };
        match p.scheme {
            Scheme::Cenc => {
                let iv = p.sample_iv((first + i) as u64);
                entry.extend_from_slice(&iv);
                let mut counter = [0u8; 16];
                counter[..8].copy_from_slice(&iv);
                // One key stream across the sample's protected ranges.
                let mut ctr = ctr::Ctr64BE::<aes::Aes128>::new(&p.key.key.into(), &counter.into());
                let mut at = 0usize;
                for &(clear, protected) in &subsamples {
                    at += usize::from(clear);
                    ctr.apply_keystream(&mut data[at..at + protected as usize]);
                    at += protected as usize;
                }
            }
            Scheme::Cbcs => {
                // The chain starts again from the constant IV at each subsample.
                let pattern = if nals.is_some() { VIDEO_PATTERN } else { (0, 0) };
                let mut at = 0usize;
                for &(clear, protected) in &subsamples {
                    at += usize::from(clear);
                    cbc_pattern(&p.key.key, &p.iv, &mut data[at..at + protected as usize], pattern);
                    at += protected as usize;
                }
            }
        }
        if nals.is_some() {
            entry.extend_from_slice(&(subsamples.len() as u16).to_be_bytes());
            for (clear, protected) in subsamples {
                entry.extend_from_slice(&clear.to_be_bytes());
                entry.extend_from_slice(&protected.to_be_bytes());
            }
        }
        if entry.len() > usize::from(u8::MAX) {
            return Err(Unpackable(
                "a video frame has too many slices to encrypt (its subsample map passes the 255 bytes saiz allows)"
                    .into(),
            ));
        }
        entries.push(entry);
    }
    Ok(SampleInfo { entries, subsamples: nals.is_some() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AssetKey {
        AssetKey::derive(b"secret", "movie")
    }

    #[test]
    fn the_boxes_round_trip_through_mp4_atom() {
        let p = Protection::new(Scheme::Cbcs, key(), b"v1/360p");
        let sinf =
            Sinf { frma: Frma(FourCC::new(b"avc1")), schm: Schm(FourCC::new(b"cbcs")), schi: Schi(tenc(&p, true)) };
        let mut bytes = Vec::new();
        sinf.encode(&mut bytes).unwrap();
        assert_eq!(Sinf::decode(&mut bytes.as_slice()).unwrap(), sinf);
        let t = &sinf.schi.0;
        assert_eq!((t.pattern, t.iv_size, t.constant_iv), (Some((1, 9)), 0, Some(p.iv)));
        let pssh = common_pssh(p.key.kid);
        assert_eq!(pssh.len(), 52);
        let back = Pssh::decode(&mut pssh.as_slice()).unwrap();
        assert_eq!(back, Pssh { system_id: COMMON_SYSTEM_ID, kids: vec![p.key.kid] });
        let cenc = tenc(&Protection::new(Scheme::Cenc, key(), b"v1/360p"), false);
        let mut bytes = Vec::new();
        cenc.encode(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 32, "a version 0 tenc");
        assert_eq!(Tenc::decode(&mut bytes.as_slice()).unwrap(), cenc);
    }

    /// An AVC sample: an AUD, an SEI and a slice of `slice` body bytes.
    fn avc_sample(slice: usize) -> Vec<u8> {
        let mut s = Vec::new();
        for unit in [vec![0x09, 0xf0], vec![0x06; 40], [vec![0x65], vec![0xab; slice]].concat()] {
            s.extend_from_slice(&(unit.len() as u32).to_be_bytes());
            s.extend_from_slice(&unit);
        }
        s
    }

    #[test]
    fn slices_alone_are_protected_their_headers_clear() {
        let nals = Nals { length_size: 4, header: 1, hevc: false };
        // 4+2, 4+40, then 4+1 and 100 bytes of body: cenc protects 96 of them.
        let s = avc_sample(100);
        assert_eq!(nals.subsamples(&s, Scheme::Cenc).unwrap(), vec![(6 + 44 + 5 + 4, 96)]);
        assert_eq!(nals.subsamples(&s, Scheme::Cbcs).unwrap(), vec![(6 + 44 + 5, 100)]);
        // A slice too short to hold a block is left clear.
        assert_eq!(nals.subsamples(&avc_sample(10), Scheme::Cenc).unwrap(), vec![(6 + 44 + 15, 0)]);
        // Truncated: refused, no panic.
        assert!(nals.subsamples(&s[..s.len() - 1], Scheme::Cenc).is_err());
        // A long clear run is split at 65535.
        let big = [(70_000u32).to_be_bytes().to_vec(), vec![0x06; 70_000]].concat();
        assert_eq!(nals.subsamples(&big, Scheme::Cenc).unwrap(), vec![(65535, 0), (4469, 0)]);
        // HEVC: two header bytes, types 0..31 are slices (19: IDR_W_RADL).
        let hevc = Nals { length_size: 4, header: 2, hevc: true };
        let unit = [vec![19 << 1, 1], vec![0; 32]].concat();
        let s = [(unit.len() as u32).to_be_bytes().to_vec(), unit].concat();
        assert_eq!(hevc.subsamples(&s, Scheme::Cenc).unwrap(), vec![(6, 32)]);
        let vps = [vec![32 << 1, 1], vec![0; 32]].concat();
        let s = [(vps.len() as u32).to_be_bytes().to_vec(), vps].concat();
        assert_eq!(hevc.subsamples(&s, Scheme::Cenc).unwrap(), vec![(38, 0)]);
    }

    #[test]
    fn cbcs_encrypts_one_block_in_ten_and_leaves_a_partial_block_clear() {
        let key = key();
        let iv = [7u8; 16];
        let plain: Vec<u8> = (0..(BLOCK * 21 + 5)).map(|i| i as u8).collect();
        let mut data = plain.clone();
        cbc_pattern(&key.key, &iv, &mut data, (1, 9));
        let changed: Vec<usize> = (0..22)
            .filter(|&b| {
                data[b * BLOCK..(b * BLOCK + BLOCK).min(data.len())]
                    != plain[b * BLOCK..(b * BLOCK + BLOCK).min(plain.len())]
            })
            .collect();
        assert_eq!(changed, vec![0, 10, 20], "blocks 0, 10 and 20 encrypted, the tail clear");
        // The encrypted blocks form one chain: block 10 is CBC's second block.
        let mut chain = [&plain[..BLOCK], &plain[10 * BLOCK..11 * BLOCK]].concat();
        cbc_pattern(&key.key, &iv, &mut chain, (0, 0));
        assert_eq!(&chain[BLOCK..], &data[10 * BLOCK..11 * BLOCK]);
    }

    #[test]
    fn ivs_differ_per_sample_rendition_and_version() {
        let a = Protection::new(Scheme::Cenc, key(), b"v1/360p");
        let b = Protection::new(Scheme::Cenc, key(), b"v1/720p");
        let c = Protection::new(Scheme::Cenc, key(), b"v2/360p");
        assert_ne!(a.sample_iv(0), a.sample_iv(1));
        assert_ne!(a.sample_iv(0), b.sample_iv(0));
        assert_ne!(a.sample_iv(0), c.sample_iv(0));
        assert_eq!(
            a.sample_iv(5),
            Protection::new(Scheme::Cenc, key(), b"v1/360p").sample_iv(5),
            "the same on every node"
        );
    }
}
