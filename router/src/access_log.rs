//! Access logs: one JSON record per player request the router answered, kept
//! off the serving path. A request hands its record to a bounded channel (when
//! it is full the record is dropped and counted, never waited for); one task
//! writes the records to a local file rotated every hour (tracing-appender)
//! and sends them in batches to admin (`POST /v1/routing/access-logs`), which
//! keeps them for the account's owner. A batch whose answer was lost is sent
//! again with its id, and admin keeps it once.

use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use headwater_protocol::{AccessLogBatch, AccessRecord};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::table::AdminApi;

/// Records waiting for the writer; past this a request's record is dropped.
const QUEUE: usize = 65_536;
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

/// Where and how the router writes its access log.
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
}

/// A request's way into the access log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessRecord>,
    dropped: IntCounter,
    truncate: bool,
    source: std::sync::Arc<str>,
}

impl AccessLog {
    /// Queues a record; never waits (a full queue drops it, counted).
    pub fn record(&self, r: AccessRecord) {
        if self.tx.try_send(r).is_err() {
            self.dropped.inc();
        }
    }

    /// The client address as the log keeps it.
    pub fn client(&self, ip: IpAddr) -> String {
        if self.truncate { truncate(ip).to_string() } else { ip.to_string() }
    }

    /// Records dropped: the queue was full, or admin unreachable too long.
    pub fn dropped(&self) -> IntCounter {
        self.dropped.clone()
    }

    /// Who writes the records (`router:{name}`).
    pub fn source(&self) -> String {
        self.source.to_string()
    }
}

/// `s` cut to at most `max` characters: admin keeps a path of 4096, a user
/// agent of 1024, a method of 16.
pub fn clip(s: &str, max: usize) -> String {
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

/// Starts the writer: the handle requests log through, and the task (it
/// flushes the file and sends what is left when `stop` is cancelled).
pub fn start(
    options: Options,
    admin: AdminApi,
    name: &str,
    dropped: IntCounter,
    stop: CancellationToken,
) -> anyhow::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
    let file = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::HOURLY)
                .filename_prefix("access")
                .filename_suffix("jsonl")
                .max_log_files(options.keep_files.max(1))
                .build(dir)?;
            Some(std::io::BufWriter::with_capacity(256 * 1024, appender))
        }
        None => None,
    };
    let http = admin.client(|b| b.timeout(Duration::from_secs(10)))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let log = AccessLog {
        tx,
        dropped: dropped.clone(),
        truncate: options.truncate_clients,
        source: format!("router:{name}").into(),
    };
    let writer = Writer {
        file,
        shipper: Shipper { http, url: admin.url("/v1/routing/access-logs"), token: admin.token },
        unsent: VecDeque::new(),
        in_flight: None,
        dropped,
    };
    let task = tokio::spawn(writer.run(rx, options.ship_every, stop));
    Ok((log, task))
}

/// Sends one batch to admin.
#[derive(Clone)]
struct Shipper {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// What admin made of a batch.
enum Shipped {
    Taken,
    /// Never to be taken (400, 422): kept in the file only; this many records.
    Refused(usize),
    /// Admin unreachable, busy or failing: sent again.
    Again(AccessLogBatch),
}

impl Shipper {
    async fn send(self, batch: AccessLogBatch) -> Shipped {
        match self.http.post(&self.url).bearer_auth(&self.token).json(&batch).send().await {
            Ok(r) if r.status().is_success() => Shipped::Taken,
            // Malformed for admin: it will never take this batch.
            Ok(r)
                if matches!(
                    r.status(),
                    reqwest::StatusCode::BAD_REQUEST | reqwest::StatusCode::UNPROCESSABLE_ENTITY
                ) =>
            {
                tracing::warn!(status = %r.status(), records = batch.records.len(), "admin refused access records");
                Shipped::Refused(batch.records.len())
            }
            // Busy, failing, not yet upgraded (404), a token being rotated
            // (401): sent again.
            Ok(r) => {
                tracing::warn!(status = %r.status(), "admin did not take access records; sending them again");
                Shipped::Again(batch)
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending access records");
                Shipped::Again(batch)
            }
        }
    }
}

struct Writer {
    file: Option<std::io::BufWriter<RollingFileAppender>>,
    shipper: Shipper,
    /// Records not yet in a batch.
    unsent: VecDeque<AccessRecord>,
    /// A batch admin did not take: sent again as it is (same id).
    in_flight: Option<AccessLogBatch>,
    dropped: IntCounter,
}

impl Writer {
    /// Takes records as they come and writes them to the file; sends batches
    /// one at a time in a task of their own (one a tick, the next full one as
    /// soon as one is taken, a failed one again at the next tick), so a slow
    /// admin never holds up the queue.
    async fn run(mut self, mut rx: mpsc::Receiver<AccessRecord>, ship_every: Duration, stop: CancellationToken) {
        let ship = !ship_every.is_zero();
        let mut tick = tokio::time::interval(if ship { ship_every } else { Duration::from_secs(1) });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut got = Vec::with_capacity(1024);
        let mut sending: Option<tokio::task::JoinHandle<Shipped>> = None;
        loop {
            tokio::select! {
                n = rx.recv_many(&mut got, 1024) => {
                    if n == 0 {
                        break;
                    }
                    self.take(&mut got, ship);
                }
                _ = tick.tick() => {
                    self.flush();
                    if ship && sending.is_none() {
                        sending = self.next_batch().map(|b| tokio::spawn(self.shipper.clone().send(b)));
                    }
                }
                done = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                    sending = None;
                    match done {
                        // A full batch waiting goes at once (a backlog drains
                        // as fast as admin takes it); a partial one at the next
                        // tick, so a quiet router sends one request a tick.
                        Ok(Shipped::Taken) if self.unsent.len() >= BATCH_MAX => {
                            sending = self.next_batch().map(|b| tokio::spawn(self.shipper.clone().send(b)));
                        }
                        Ok(Shipped::Taken) => {}
                        Ok(Shipped::Again(b)) => self.in_flight = Some(b),
                        Ok(Shipped::Refused(n)) => self.dropped.inc_by(n as u64),
                        Err(_) => {}
                    }
                }
                _ = stop.cancelled() => {
                    // What was queued before the stop.
                    while let Ok(r) = rx.try_recv() {
                        got.push(r);
                    }
                    self.take(&mut got, ship);
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
        while ship && let Some(b) = self.next_batch() {
            if !matches!(self.shipper.clone().send(b).await, Shipped::Taken) {
                break;
            }
        }
    }

    /// Writes `got` to the file and keeps it for admin.
    fn take(&mut self, got: &mut Vec<AccessRecord>, keep: bool) {
        if let Some(f) = &mut self.file {
            for r in got.iter() {
                let line = serde_json::to_writer(&mut *f, r).map_err(std::io::Error::from);
                if line.and_then(|()| f.write_all(b"\n")).is_err() {
                    tracing::warn!("the access log file cannot be written");
                    break;
                }
            }
        }
        if keep {
            self.unsent.extend(got.drain(..));
            while self.unsent.len() > UNSENT_MAX {
                self.unsent.pop_front();
                self.dropped.inc();
            }
        } else {
            got.clear();
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

    /// A batch admin did not take goes again, with its id, so admin keeps it
    /// once; the writer meanwhile keeps taking records.
    #[tokio::test]
    async fn a_batch_admin_did_not_take_is_sent_again_as_it_was() {
        use http_body_util::{BodyExt, Full};
        use std::sync::{Arc, Mutex};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(u16, AccessLogBatch)>>> = Arc::default();
        let server_seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = server_seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let batch: AccessLogBatch = serde_json::from_slice(&body).unwrap();
                            let mut seen = seen.lock().unwrap();
                            // The first answer is lost to a failing admin.
                            let status = if seen.is_empty() { 503 } else { 200 };
                            seen.push((status, batch));
                            let res = http::Response::builder().status(status).body(Full::new(bytes::Bytes::new()));
                            Ok::<_, std::convert::Infallible>(res.unwrap())
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        let admin = AdminApi { base: format!("http://{addr}"), ca: None, token: "t".into() };
        let options =
            Options { dir: None, keep_files: 1, ship_every: Duration::from_millis(20), truncate_clients: false };
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let stop = CancellationToken::new();
        let (log, task) = start(options, admin, "test", dropped.clone(), stop.clone()).unwrap();
        let record = |path: &str| AccessRecord {
            at_ms: 1,
            account: "ana".into(),
            path: path.into(),
            method: "GET".into(),
            status: 200,
            bytes: 3,
            duration_ms: 1,
            client: log.client("192.0.2.7".parse().unwrap()),
            user_agent: None,
            node: None,
            cache_hit: None,
            source: log.source(),
        };
        log.record(record("a.ts"));
        log.record(record("b.ts"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen.lock().unwrap().iter().any(|(s, _)| *s == 200) {
            assert!(tokio::time::Instant::now() < deadline, "never sent again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one refusal, one resend, nothing else");
        assert_eq!(seen[0].1, seen[1].1, "the same batch, id and records");
        let paths: Vec<&str> = seen[1].1.records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["a.ts", "b.ts"]);
        assert_eq!(seen[1].1.records[0].source, "router:test");
        assert_eq!(dropped.get(), 0);
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
}
