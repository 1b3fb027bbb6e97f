//! The resource manager: runs instances of a service package (a program, its
//! arguments and environment) and tells what runs. The [`Driver`] seam has two
//! implementations: [`ProcessDriver`] (local OS processes, the embedded default)
//! and [`KubernetesDriver`] (one pod per instance). Nothing here knows about HLS,
//! offers or locators (DESIGN.md §6).

pub mod fake;
pub mod kubernetes;
pub mod policy;
mod process;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use fake::FakeDriver;
pub use kubernetes::{KubernetesDriver, PodTemplate};
pub use policy::{Policy, Room, SharedPoolLoad};
pub use process::ProcessDriver;

/// What to run: one instance of a service package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// The instance's identity; the driver's handle carries it back.
    pub id: Uuid,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment (secrets such as tokens go here, not in `args`).
    pub env: Vec<(String, String)>,
    /// Labels for drivers that label what they run (Kubernetes).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the instance needs reserved, for drivers that reserve (Kubernetes).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// The container image, for drivers that run containers (else their own).
    #[serde(default)]
    pub image: Option<String>,
}

/// Resources an instance needs reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_mib: u32,
}

/// A running (or once running) instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub id: Uuid,
    /// Driver-specific reference, e.g. `pid:1234@5678` (pid and start time).
    pub reference: String,
}

/// What the driver sees of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Gone. `detail` says how it ended (`exit status 1`, `killed by signal 9`)
    /// when the driver saw it end.
    Exited {
        detail: Option<String>,
    },
}

impl Status {
    pub fn running(&self) -> bool {
        matches!(self, Status::Running)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("launching {program}: {source}")]
    Launch {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("driver state in {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signalling {reference}: {detail}")]
    Signal { reference: String, detail: String },
    /// The platform under the driver refused or failed (its message, e.g. the
    /// Kubernetes API's `Forbidden (403): …`).
    #[error("{what}: {detail}")]
    Platform { what: String, detail: String },
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs instances somewhere. Every method is idempotent: terminating an exited
/// instance or listing twice is fine.
pub trait Driver: Send + Sync + 'static {
    fn launch<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Handle, DriverError>>;
    /// Asks the instance to drain: stop taking work, finish what is in flight, exit.
    /// Returns at once; `inspect` tells when it has exited.
    fn drain<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Asks the instance to stop gracefully (it drains), then forces it after `grace`.
    fn terminate<'a>(
        &'a self,
        handle: &'a Handle,
        grace: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Status>;
    /// Every instance this driver knows of that still runs, including ones
    /// launched before a restart of the caller.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Handle>, DriverError>>;
}
