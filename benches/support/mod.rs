//! What the control-plane benches share: a real `headwater admin` process, its
//! CPU from /proc, and percentiles.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_headwater");

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 0; utime and stime are fields 11 and 12.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A running `headwater admin`: killed when dropped.
pub struct Admin {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
}

/// Starts `headwater admin` on `database` with its data in `dir`, errors only in
/// its log, and `args` besides; returns once it listens.
pub async fn start_admin(dir: &Path, database: &str, args: &[&str]) -> Admin {
    let mut child = tokio::process::Command::new(BIN)
        .args(["admin", "--listen", "127.0.0.1:0", "--database-url", database])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .arg("--content")
        .arg(dir.join("content"))
        .env("HEADWATER_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start admin");
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next_line().await.unwrap().expect("admin exited");
        if let Some(u) = line.strip_prefix("headwater admin listening on ") {
            break u.to_owned();
        }
    };
    Admin { child, pid, url }
}

/// Whether `cargo bench` runs this (it passes `--bench`); under `cargo test
/// --all-targets` a bench makes a small run instead, so the test suite keeps it
/// working without measuring anything.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `name` from the environment, else `full` when measuring, else `smoke`.
pub fn size(name: &str, full: u64, smoke: u64) -> u64 {
    env_num(name, if measuring() { full } else { smoke })
}
