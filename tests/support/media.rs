//! Media made with ffmpeg for the tests of `tests/` and `jit/tests/` (which
//! include this file by path).

use std::path::{Path, PathBuf};

/// Runs ffmpeg quietly; its errors fail the test.
pub fn ffmpeg(args: &[&str]) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `secs` seconds of H.264 (`size`, 25 fps, B-frames, a keyframe every `gop`
/// frames) and 48 kHz AAC at `out`, as an encoder for VOD would make it.
pub fn h264_aac(out: &Path, size: &str, secs: u32, gop: u32) {
    let (secs, gop) = (secs.to_string(), gop.to_string());
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate=25"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-bf",
        "2",
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        out.to_str().unwrap(),
    ]);
}

/// Two renditions of 9 s with the same keyframes (every 2 s), B-frames and AAC
/// audio.
pub fn renditions(dir: &Path) -> Vec<(String, PathBuf)> {
    [("180p", "320x180"), ("360p", "640x360")]
        .into_iter()
        .map(|(name, size)| {
            let out = dir.join(format!("{name}.mp4"));
            h264_aac(&out, size, 9, 50);
            (format!("{name}.mp4"), out)
        })
        .collect()
}
