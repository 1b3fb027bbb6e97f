//! Instances as local OS processes. Each runs in its own process group, detached
//! from the caller, so it keeps serving while admin restarts; a small state file
//! per instance (`{dir}/{id}.json`) lets a restarted admin find and adopt it. A
//! process is named by its pid and its start time, so a recycled pid is never
//! taken for an instance, and an instance is known from the moment it is forked
//! (before it has exec'd and its command line names it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BoxFuture, Driver, DriverError, Handle, InstanceSpec, Status};

/// What a node must not take from the environment of the admin that launches
/// it: admin's own TLS listener and certificates (the same address would not
/// bind twice), and the access log's settings (a router's beside admin would
/// have every node write its files: one folder for many writers). A node gets
/// these only from its launch spec.
const NOT_INHERITED: [&str; 7] = [
    "HEADWATER_TLS_LISTEN",
    "HEADWATER_TLS_CERT",
    "HEADWATER_TLS_KEY",
    "HEADWATER_ACCESS_LOG_DIR",
    "HEADWATER_ACCESS_LOG_KEEP_FILES",
    "HEADWATER_ACCESS_LOG_SHIP_MS",
    "HEADWATER_ACCESS_LOG_TRUNCATE_CLIENTS",
];

/// What a state file records.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: Uuid,
    pid: u32,
    /// The process's start time (`/proc/PID/stat`, clock ticks since boot); absent
    /// in records written before it was kept.
    #[serde(default)]
    start: Option<u64>,
    program: PathBuf,
}

/// Runs instances as processes; logs go to `{dir}/{id}.log`.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    dir: PathBuf,
    /// How instances launched by this driver ended, as their reaper saw it.
    exits: Arc<Mutex<HashMap<Uuid, String>>>,
}

impl ProcessDriver {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, DriverError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|source| DriverError::State { path: dir.display().to_string(), source })?;
        Ok(Self { dir, exits: Arc::default() })
    }

    fn record_path(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The pid and (when the handle has it) start time a handle names.
    fn process_of(handle: &Handle) -> Option<(u32, Option<u64>)> {
        let rest = handle.reference.strip_prefix("pid:")?;
        match rest.split_once('@') {
            Some((pid, start)) => Some((pid.parse().ok()?, Some(start.parse().ok()?))),
            None => Some((rest.parse().ok()?, None)),
        }
    }

    fn pid_of(handle: &Handle) -> Option<u32> {
        Self::process_of(handle).map(|(pid, _)| pid)
    }

    /// Whether the process a handle names still runs.
    fn handle_alive(handle: &Handle) -> bool {
        Self::process_of(handle).is_some_and(|(pid, start)| alive(pid, start, handle.id))
    }
}

fn reference(pid: u32, start: Option<u64>) -> String {
    match start {
        Some(t) => format!("pid:{pid}@{t}"),
        None => format!("pid:{pid}"),
    }
}

/// The state and start time of `pid` from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: state is the 3rd field of
    // the line, the start time the 22nd.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_owned();
    let start = rest.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` runs (not a zombie) and is the instance: the process that started
/// at `start`, or (for records without a start time) the one whose command line
/// names `id`, so a recycled pid is never mistaken for an instance.
fn alive(pid: u32, start: Option<u64>, id: Uuid) -> bool {
    let Some((state, started)) = stat(pid) else { return false };
    if state == "Z" || state == "X" {
        return false;
    }
    match start {
        Some(s) => s == started,
        None => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&id.to_string())
        }
    }
}

/// The running process whose command line names instance `id`.
fn find_by_id(id: Uuid) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| alive(*pid, None, id))
}

/// How a process ended, in words.
fn ended(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".to_owned(),
    }
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl Driver for ProcessDriver {
    fn launch<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Handle, DriverError>> {
        Box::pin(async move {
            let launch_err = |source| DriverError::Launch { program: spec.program.display().to_string(), source };
            let log = std::fs::File::create(self.dir.join(format!("{}.log", spec.id))).map_err(launch_err)?;
            let mut cmd = tokio::process::Command::new(&spec.program);
            cmd.args(&spec.args);
            for name in NOT_INHERITED {
                cmd.env_remove(name);
            }
            cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().map_err(launch_err)?)
                .stderr(log)
                // Its own process group: a Ctrl-C to admin does not reach it.
                .process_group(0)
                .kill_on_drop(false);
            // The record exists before the process does: if the caller dies between
            // the two, `list` still finds the process (by its id) and adopts it.
            let path = self.record_path(spec.id);
            let pending = Record { id: spec.id, pid: 0, start: None, program: spec.program.clone() };
            std::fs::write(&path, serde_json::to_vec(&pending).unwrap_or_default())
                .map_err(|source| DriverError::State { path: path.display().to_string(), source })?;
            let mut child = cmd.spawn().map_err(launch_err)?;
            let pid = child.id().unwrap_or_default();
            // Read before the reaper can run: the process exists (if only as a
            // zombie) until it is waited for.
            let start = stat(pid).map(|(_, start)| start);
            // Reap it when it exits, so it never lingers as a zombie of ours, and
            // remember how it ended.
            let (exits, id) = (self.exits.clone(), spec.id);
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    exits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, ended(status));
                }
            });
            let record = Record { id: spec.id, pid, start, program: spec.program.clone() };
            std::fs::write(&path, serde_json::to_vec(&record).unwrap_or_default())
                .map_err(|source| DriverError::State { path: path.display().to_string(), source })?;
            tracing::info!(instance = %spec.id, pid, "launched");
            Ok(Handle { id: spec.id, reference: reference(pid, start) })
        })
    }

    fn drain<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match Self::pid_of(handle) {
                // SIGTERM is the drain signal of the node contract.
                Some(pid) if Self::handle_alive(handle) => kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
                    .map_err(|e| DriverError::Signal { reference: handle.reference.clone(), detail: e.to_string() }),
                _ => Ok(()),
            }
        })
    }

    fn terminate<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let Some(pid) = Self::pid_of(handle) else {
                return Ok(());
            };
            if Self::handle_alive(handle) {
                let signal = |sig| {
                    kill(Pid::from_raw(pid as i32), sig)
                        .map_err(|e| DriverError::Signal { reference: handle.reference.clone(), detail: e.to_string() })
                };
                signal(Signal::SIGTERM)?;
                let deadline = tokio::time::Instant::now() + grace;
                while Self::handle_alive(handle) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if Self::handle_alive(handle) {
                    tracing::warn!(instance = %handle.id, pid, "did not stop in time; killing it");
                    signal(Signal::SIGKILL)?;
                }
            }
            let _ = std::fs::remove_file(self.record_path(handle.id));
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Status> {
        Box::pin(async move {
            if Self::handle_alive(handle) {
                return Status::Running;
            }
            let detail = self.exits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&handle.id).cloned();
            Status::Exited { detail }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(async move {
            let entries = std::fs::read_dir(&self.dir)
                .map_err(|source| DriverError::State { path: self.dir.display().to_string(), source })?;
            let mut out = Vec::new();
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let record = read_record(&path).map(|mut r| {
                    if r.pid == 0 {
                        // Launched, but the caller died before recording the pid.
                        r.pid = find_by_id(r.id).unwrap_or(0);
                        let _ = std::fs::write(&path, serde_json::to_vec(&r).unwrap_or_default());
                    }
                    r
                });
                match record {
                    Some(r) if r.pid != 0 && alive(r.pid, r.start, r.id) => {
                        out.push(Handle { id: r.id, reference: reference(r.pid, r.start) })
                    }
                    // Exited while nobody watched: forget it.
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            out.sort_by_key(|h| h.id);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(id: Uuid) -> InstanceSpec {
        // The id rides along as `$0` of `sh -c`, so the command line names the instance.
        InstanceSpec {
            id,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30".into(), id.to_string()],
            env: vec![],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn launch_list_inspect_terminate_and_adopt_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(dir.path()).unwrap();
        let a = driver.launch(&sleeper(Uuid::now_v7())).await.unwrap();
        let b = driver.launch(&sleeper(Uuid::now_v7())).await.unwrap();
        assert_eq!(driver.inspect(&a).await, Status::Running);
        // A new driver on the same directory (an admin restart) finds both.
        let again = ProcessDriver::new(dir.path()).unwrap();
        let mut listed = again.list().await.unwrap();
        listed.sort_by_key(|h| h.id);
        let mut want = vec![a.clone(), b.clone()];
        want.sort_by_key(|h| h.id);
        assert_eq!(listed, want);
        again.terminate(&a, Duration::from_secs(5)).await.unwrap();
        assert!(!again.inspect(&a).await.running());
        assert_eq!(again.list().await.unwrap(), vec![b.clone()]);
        // Terminating twice is fine.
        again.terminate(&a, Duration::from_secs(1)).await.unwrap();
        // A drain asks the process to exit by itself.
        let c = again.launch(&sleeper(Uuid::now_v7())).await.unwrap();
        again.drain(&c).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while again.inspect(&c).await.running() {
            assert!(tokio::time::Instant::now() < deadline, "a drained process kept running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A process that dies on its own is not listed.
        kill(Pid::from_raw(ProcessDriver::pid_of(&b).unwrap() as i32), Signal::SIGKILL).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while again.inspect(&b).await.running() {
            assert!(tokio::time::Instant::now() < deadline, "killed process still listed as running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(again.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_instance_runs_from_its_launch_and_its_end_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let driver = ProcessDriver::new(dir.path()).unwrap();
        // Inspected at once, before it has exec'd: still the instance.
        for _ in 0..20 {
            let h = driver.launch(&sleeper(Uuid::now_v7())).await.unwrap();
            assert_eq!(driver.inspect(&h).await, Status::Running, "{h:?}");
            driver.terminate(&h, Duration::from_secs(5)).await.unwrap();
        }
        let id = Uuid::now_v7();
        let failing = InstanceSpec {
            id,
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 3".into(), id.to_string()],
            env: vec![],
            ..Default::default()
        };
        let h = driver.launch(&failing).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match driver.inspect(&h).await {
                Status::Exited { detail: Some(d) } => {
                    assert_eq!(d, "exit status 3");
                    break;
                }
                other => assert!(tokio::time::Instant::now() < deadline, "still {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A handle from before start times were kept is checked by its command line.
        let old = driver.launch(&sleeper(Uuid::now_v7())).await.unwrap();
        let legacy = Handle { id: old.id, reference: format!("pid:{}", ProcessDriver::pid_of(&old).unwrap()) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !driver.inspect(&legacy).await.running() {
            assert!(tokio::time::Instant::now() < deadline, "never exec'd");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stranger = Handle { id: Uuid::now_v7(), reference: legacy.reference.clone() };
        assert!(!driver.inspect(&stranger).await.running(), "another instance's process");
        driver.terminate(&old, Duration::from_secs(5)).await.unwrap();
    }
}
