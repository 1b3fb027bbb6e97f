//! Access logs, for every server that answers players (the router in proxy
//! mode, the node for players it serves directly): one JSON record per
//! request, kept off the serving path. A request hands a light [`Entry`] to a
//! bounded channel (when it is full the entry is dropped and counted, never
//! waited for); one task turns entries into records (clipped fields, the
//! client formatted or truncated), writes them to a local file rotated every
//! hour (tracing-appender) and sends them in batches to admin through a
//! [`Destination`], which keeps them for the account's owner. A batch whose
//! answer was lost is sent again with its id, and admin keeps it once.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headwater_protocol::{AccessLogBatch, AccessRecord};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_appender::rolling::{RollingFileAppender, Rotation};

/// Entries waiting for the writer; past this a request's entry is dropped.
const QUEUE: usize = 65_536;
/// How often the writer takes what the queue holds (at 100,000 requests a
/// second, some 2,000 entries: far from QUEUE).
const DRAIN: Duration = Duration::from_millis(20);
/// Records kept for admin while it cannot be reached; past this the oldest go.
const UNSENT_MAX: usize = 200_000;
/// Most records in one batch to admin (admin takes 2000).
const BATCH_MAX: usize = 2_000;
/// A batch stops growing past this much JSON (admin's body limit is 1 MiB).
const BATCH_BYTES: usize = 512 * 1024;

/// About how long `r` is as JSON (its strings, escapes aside, and the rest).
fn json_size(r: &AccessRecord) -> usize {
    let strings = [&r.account, &r.path, &r.method, &r.client, &r.source].iter().map(|s| s.len()).sum::<usize>();
    strings + r.user_agent.as_ref().map_or(0, String::len) + 220
}

/// The access log's flags, the same for the router and the node.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessLogArgs {
    /// Write the records to hourly files here too (`access.{date-hour}.jsonl`).
    #[arg(long = "access-log-dir", env = "HEADWATER_ACCESS_LOG_DIR")]
    pub dir: Option<PathBuf>,
    /// Hourly files kept in `--access-log-dir`.
    #[arg(long = "access-log-keep-files", env = "HEADWATER_ACCESS_LOG_KEEP_FILES", default_value_t = 48,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_files: u32,
    /// How often records are sent to admin, in ms; 0: never (no access log
    /// at all without `--access-log-dir` either).
    #[arg(long = "access-log-ship-ms", env = "HEADWATER_ACCESS_LOG_SHIP_MS", default_value_t = 1000)]
    pub ship_ms: u64,
    /// Keep only the client's network: an IPv4 /24, an IPv6 /48 (privacy).
    #[arg(long = "access-log-truncate-clients", env = "HEADWATER_ACCESS_LOG_TRUNCATE_CLIENTS")]
    pub truncate_clients: bool,
}

impl Default for AccessLogArgs {
    fn default() -> Self {
        Self { dir: None, keep_files: 48, ship_ms: 1000, truncate_clients: false }
    }
}

impl AccessLogArgs {
    /// Records are written somewhere: a file, admin, or both.
    pub fn enabled(&self) -> bool {
        self.dir.is_some() || self.ship_ms > 0
    }
}

/// One answered request as the serving path hands it over: what it had at
/// hand, owned cheaply (the method and user agent as they came); the writer
/// makes the record of it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request arrived, Unix milliseconds.
    pub at_ms: i64,
    pub account: Arc<str>,
    /// The path under the account, as in the URL (see [`path_under`]).
    pub path: String,
    pub method: http::Method,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: u64,
    pub client: IpAddr,
    pub user_agent: Option<http::HeaderValue>,
    pub node: Option<uuid::Uuid>,
    pub cache_hit: Option<bool>,
}

/// A request's way into the access log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Queues an entry; never waits (a full queue drops it, counted).
    pub fn record(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.inc();
        }
    }

    /// Records dropped: the queue was full, or admin unreachable too long.
    pub fn dropped(&self) -> IntCounter {
        self.dropped.clone()
    }
}

/// An entry finished when its response is done: the bytes sent counted as
/// they go, the duration taken when it drops (the body's end, or the player
/// leaving).
#[derive(Debug)]
pub struct Pending {
    log: AccessLog,
    entry: Option<Entry>,
    started: Instant,
}

impl Pending {
    pub fn new(log: AccessLog, entry: Entry, started: Instant) -> Self {
        Self { log, entry: Some(entry), started }
    }

    /// Counts `n` body bytes handed to the player.
    pub fn sent(&mut self, n: u64) {
        if let Some(e) = &mut self.entry {
            e.bytes += n;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut e) = self.entry.take() {
            e.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.log.record(e);
        }
    }
}

/// The path under the account of a URL path without its query and playback
/// token (`/{account}/{asset}/{file}`): `{asset}/{file}`, whatever spelling of
/// the account the first segment has.
pub fn path_under(unsigned: &str) -> &str {
    unsigned.trim_start_matches('/').split_once('/').map_or("", |(_, r)| r)
}

/// `s` cut to at most `max` characters: admin keeps a path of 4096, a user
/// agent of 1024, a method of 16.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

/// `ip` with its host part zeroed: a /24 of IPv4, a /48 of IPv6.
pub fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => ipnet::Ipv4Net::new(a, 24).map_or(ip, |n| IpAddr::V4(n.network())),
        IpAddr::V6(a) => ipnet::Ipv6Net::new(a, 48).map_or(ip, |n| IpAddr::V6(n.network())),
    }
}

/// What a send came to: the status admin answered, or why none came.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<u16, String>> + Send + 'a>>;

/// Where batches go: admin, as the writer's server reaches it (the router
/// with its token, a node with its own credentials and admin replicas).
pub trait Destination: Send + Sync + 'static {
    fn send<'a>(&'a self, batch: &'a AccessLogBatch) -> Sending<'a>;
}

/// Admin at one URL, with a bearer token.
pub struct HttpDestination {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Destination for HttpDestination {
    fn send<'a>(&'a self, batch: &'a AccessLogBatch) -> Sending<'a> {
        Box::pin(async move {
            let res = self.http.post(&self.url).bearer_auth(&self.token).json(batch).send().await;
            res.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        })
    }
}

/// The writer's name in its records (`router:{name}`, `node:{id}`) and how
/// it makes them.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder of the rotating files (`access.{date-hour}.jsonl`); none: no file.
    pub dir: Option<PathBuf>,
    /// Hourly files kept.
    pub keep_files: usize,
    /// How often records go to admin; zero: never.
    pub ship_every: Duration,
    /// Zero the client address's last octet (IPv4) or all but its /48 (IPv6).
    pub truncate_clients: bool,
    /// Who writes the records.
    pub source: String,
}

impl Options {
    pub fn new(args: &AccessLogArgs, source: String) -> Self {
        Self {
            dir: args.dir.clone(),
            keep_files: usize::try_from(args.keep_files).unwrap_or(48),
            ship_every: Duration::from_millis(args.ship_ms),
            truncate_clients: args.truncate_clients,
            source,
        }
    }
}

/// Starts the writer: the handle requests log through, and the task (it
/// flushes the file and sends what is left when `stop` is cancelled).
pub fn start(
    options: Options,
    destination: Arc<dyn Destination>,
    dropped: IntCounter,
    stop: CancellationToken,
) -> std::io::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
    let file = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::HOURLY)
                .filename_prefix("access")
                .filename_suffix("jsonl")
                .max_log_files(options.keep_files.max(1))
                .build(dir)
                .map_err(std::io::Error::other)?;
            Some(std::io::BufWriter::with_capacity(256 * 1024, appender))
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let log = AccessLog { tx, dropped: dropped.clone() };
    let writer = Writer {
        file,
        destination,
        truncate: options.truncate_clients,
        source: options.source,
        unsent: VecDeque::new(),
        in_flight: None,
        dropped,
    };
    let task = tokio::spawn(writer.run(rx, options.ship_every, stop));
    Ok((log, task))
}

/// What admin made of a batch.
enum Shipped {
    Taken,
    /// Never to be taken (400, 413, 415, 422): kept in the file only; this many records.
    Refused(usize),
    /// Admin unreachable, busy or failing: sent again.
    Again(AccessLogBatch),
}

async fn ship(destination: Arc<dyn Destination>, batch: AccessLogBatch) -> Shipped {
    match destination.send(&batch).await {
        Ok(200..=299) => Shipped::Taken,
        // Malformed or too large for admin: it will never take this batch.
        Ok(status @ (400 | 413 | 415 | 422)) => {
            tracing::warn!(status, records = batch.records.len(), "admin refused access records");
            Shipped::Refused(batch.records.len())
        }
        // Busy, failing, not yet upgraded (404), a token being rotated
        // (401): sent again.
        Ok(status) => {
            tracing::warn!(status, "admin did not take access records; sending them again");
            Shipped::Again(batch)
        }
        Err(e) => {
            tracing::debug!(error = %e, "sending access records");
            Shipped::Again(batch)
        }
    }
}

struct Writer {
    file: Option<std::io::BufWriter<RollingFileAppender>>,
    destination: Arc<dyn Destination>,
    truncate: bool,
    source: String,
    /// Records not yet in a batch.
    unsent: VecDeque<AccessRecord>,
    /// A batch admin did not take: sent again as it is (same id).
    in_flight: Option<AccessLogBatch>,
    dropped: IntCounter,
}

impl Writer {
    /// Takes entries as they come and writes their records to the file;
    /// sends batches one at a time in a task of their own (one a tick, the
    /// next full one as soon as one is taken, a failed one again at the next
    /// tick), so a slow admin never holds up the queue.
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>, ship_every: Duration, stop: CancellationToken) {
        let shipping = !ship_every.is_zero();
        let mut tick = tokio::time::interval(if shipping { ship_every } else { Duration::from_secs(1) });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Entries are taken every DRAIN, never awaited one by one: a writer
        // waiting on the channel would be woken by every request (a wake,
        // often a thread unparked, per entry); one not waiting costs a send
        // nothing but the push.
        let mut drain = tokio::time::interval(DRAIN);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut got = Vec::with_capacity(1024);
        let mut sending: Option<tokio::task::JoinHandle<Shipped>> = None;
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    let open = loop {
                        match rx.try_recv() {
                            Ok(e) => got.push(e),
                            Err(mpsc::error::TryRecvError::Empty) => break true,
                            Err(mpsc::error::TryRecvError::Disconnected) => break false,
                        }
                        if got.len() >= 4096 {
                            self.take(&mut got, shipping);
                        }
                    };
                    self.take(&mut got, shipping);
                    if !open {
                        break;
                    }
                }
                _ = tick.tick() => {
                    self.flush();
                    if shipping && sending.is_none() {
                        sending = self.next_batch().map(|b| tokio::spawn(ship(self.destination.clone(), b)));
                    }
                }
                done = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                    sending = None;
                    match done {
                        // A full batch waiting goes at once (a backlog drains
                        // as fast as admin takes it); a partial one at the next
                        // tick, so a quiet server sends one request a tick.
                        Ok(Shipped::Taken) if self.unsent.len() >= BATCH_MAX => {
                            sending = self.next_batch().map(|b| tokio::spawn(ship(self.destination.clone(), b)));
                        }
                        Ok(Shipped::Taken) => {}
                        Ok(Shipped::Again(b)) => self.in_flight = Some(b),
                        Ok(Shipped::Refused(n)) => self.dropped.inc_by(n as u64),
                        Err(_) => {}
                    }
                }
                _ = stop.cancelled() => {
                    // What was queued before the stop.
                    while let Ok(e) = rx.try_recv() {
                        got.push(e);
                    }
                    self.take(&mut got, shipping);
                    break;
                }
            }
        }
        self.flush();
        // The batch on its way, then what is left, while admin takes them.
        if let Some(h) = sending
            && let Ok(Shipped::Again(b)) = h.await
        {
            self.in_flight = Some(b);
        }
        while shipping && let Some(b) = self.next_batch() {
            if !matches!(ship(self.destination.clone(), b).await, Shipped::Taken) {
                break;
            }
        }
    }

    /// The record of an entry, as admin and the file keep it.
    fn record(&self, e: Entry) -> AccessRecord {
        let client = if self.truncate { truncate(e.client) } else { e.client };
        AccessRecord {
            at_ms: e.at_ms,
            account: e.account.to_string(),
            path: clip(&e.path, 4096),
            method: clip(e.method.as_str(), 16),
            status: e.status,
            bytes: e.bytes,
            duration_ms: e.duration_ms,
            client: client.to_string(),
            user_agent: e.user_agent.as_ref().and_then(|v| v.to_str().ok()).map(|ua| clip(ua, 1024)),
            node: e.node,
            cache_hit: e.cache_hit,
            source: self.source.clone(),
        }
    }

    /// Writes the records of `got` to the file and keeps them for admin.
    fn take(&mut self, got: &mut Vec<Entry>, keep: bool) {
        let records: Vec<AccessRecord> = got.drain(..).map(|e| self.record(e)).collect();
        if let Some(f) = &mut self.file {
            for r in &records {
                let line = serde_json::to_writer(&mut *f, r).map_err(std::io::Error::from);
                if line.and_then(|()| f.write_all(b"\n")).is_err() {
                    tracing::warn!("the access log file cannot be written");
                    break;
                }
            }
        }
        if keep {
            self.unsent.extend(records);
            while self.unsent.len() > UNSENT_MAX {
                self.unsent.pop_front();
                self.dropped.inc();
            }
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file
            && let Err(e) = f.flush()
        {
            tracing::warn!(error = %e, "the access log file cannot be written");
        }
    }

    /// The batch to send next: the one admin did not take, else up to
    /// BATCH_MAX records and about BATCH_BYTES of JSON.
    fn next_batch(&mut self) -> Option<AccessLogBatch> {
        if let Some(b) = self.in_flight.take() {
            return Some(b);
        }
        if self.unsent.is_empty() {
            return None;
        }
        let (mut n, mut size) = (0, 0);
        while n < self.unsent.len().min(BATCH_MAX) && (n == 0 || size < BATCH_BYTES) {
            size += json_size(&self.unsent[n]);
            n += 1;
        }
        Some(AccessLogBatch { id: uuid::Uuid::now_v7(), records: self.unsent.drain(..n).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Admin as a list of what it was sent: the first send fails (503).
    #[derive(Default)]
    struct Flaky(Mutex<Vec<(u16, AccessLogBatch)>>);

    impl Destination for Flaky {
        fn send<'a>(&'a self, batch: &'a AccessLogBatch) -> Sending<'a> {
            Box::pin(async move {
                // A round trip to admin.
                tokio::task::yield_now().await;
                let mut seen = self.0.lock().unwrap();
                let status = if seen.is_empty() { 503 } else { 200 };
                seen.push((status, batch.clone()));
                Ok(status)
            })
        }
    }

    fn entry(path: &str, ua: Option<&'static str>) -> Entry {
        Entry {
            at_ms: 1,
            account: "ana".into(),
            path: path.into(),
            method: http::Method::GET,
            status: 200,
            bytes: 3,
            duration_ms: 1,
            client: "192.0.2.77".parse().unwrap(),
            user_agent: ua.map(http::HeaderValue::from_static),
            node: None,
            cache_hit: None,
        }
    }

    fn options(dir: Option<PathBuf>, truncate_clients: bool) -> Options {
        Options {
            dir,
            keep_files: 1,
            ship_every: Duration::from_millis(20),
            truncate_clients,
            source: "router:t".into(),
        }
    }

    /// A batch admin did not take goes again, with its id, so admin keeps it
    /// once; the writer meanwhile keeps taking entries.
    #[tokio::test]
    async fn a_batch_admin_did_not_take_is_sent_again_as_it_was() {
        let admin = Arc::new(Flaky::default());
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let stop = CancellationToken::new();
        let (log, task) = start(options(None, false), admin.clone(), dropped.clone(), stop.clone()).unwrap();
        log.record(entry("a.ts", None));
        log.record(entry("b.ts", None));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !admin.0.lock().unwrap().iter().any(|(s, _)| *s == 200) {
            assert!(tokio::time::Instant::now() < deadline, "never sent again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        let seen = admin.0.lock().unwrap();
        assert_eq!(seen.len(), 2, "one refusal, one resend, nothing else");
        assert_eq!(seen[0].1, seen[1].1, "the same batch, id and records");
        let paths: Vec<&str> = seen[1].1.records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["a.ts", "b.ts"]);
        assert_eq!(seen[1].1.records[0].source, "router:t");
        assert_eq!(dropped.get(), 0);
    }

    /// The file's records are the entries made whole: clipped fields, the
    /// client truncated when asked, the writer's name; written by the stop.
    #[tokio::test]
    async fn records_in_the_file_are_clipped_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let stop = CancellationToken::new();
        let mut opts = options(Some(dir.path().to_path_buf()), true);
        opts.ship_every = Duration::ZERO;
        let (log, task) = start(opts, Arc::new(Flaky::default()), dropped, stop.clone()).unwrap();
        let long = "é".repeat(5000);
        log.record(entry(&long, Some("player/1")));
        stop.cancel();
        task.await.unwrap();
        let file = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(file).unwrap();
        let r: AccessRecord = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(r.path.chars().count(), 4096);
        assert_eq!(
            (r.client.as_str(), r.user_agent.as_deref(), r.source.as_str()),
            ("192.0.2.0", Some("player/1"), "router:t")
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn clipped_fields_end_on_a_character() {
        assert_eq!(clip("abcdef", 4), "abcd");
        assert_eq!(clip("ééé", 2), "éé");
        assert_eq!(clip("ab", 4), "ab");
    }

    #[test]
    fn truncated_clients_keep_their_network_only() {
        assert_eq!(truncate("192.0.2.77".parse().unwrap()).to_string(), "192.0.2.0");
        assert_eq!(truncate("2001:db8:1234:5678::9".parse().unwrap()).to_string(), "2001:db8:1234::");
    }

    #[test]
    fn the_path_under_the_account() {
        assert_eq!(path_under("/ana/demo/hls/master.m3u8"), "demo/hls/master.m3u8");
        assert_eq!(path_under("/ana/~asset/a.ts"), "~asset/a.ts");
        assert_eq!(path_under("/%61na/a.ts"), "a.ts");
        assert_eq!(path_under("/ana"), "");
    }
}
