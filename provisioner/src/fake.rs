//! A driver whose instances live in memory and do what a test tells them: launch,
//! fail to launch, exit at start with a status, exit later. For tests of what
//! drives a [`Driver`] (admin's reconciler), where a real process would only add
//! time and flakiness. It is itself tested below.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use crate::{BoxFuture, Driver, DriverError, Handle, InstanceSpec, Status};

#[derive(Debug, Default)]
struct State {
    launched: Vec<InstanceSpec>,
    status: HashMap<Uuid, Status>,
    drained: Vec<Uuid>,
    terminated: Vec<Uuid>,
    /// Launches fail with this message.
    refuse: Option<String>,
    /// Launched instances exit at once, ending like this.
    exit_at_start: Option<String>,
}

/// An in-memory [`Driver`] for tests.
#[derive(Debug, Default)]
pub struct FakeDriver {
    state: Mutex<State>,
}

impl FakeDriver {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// From now on launches fail with `why` (`None`: they succeed again).
    pub fn refuse_launches(&self, why: Option<&str>) {
        self.with(|s| s.refuse = why.map(str::to_owned));
    }

    /// From now on launched instances exit at once, ending as `detail` says
    /// (`None`: they run).
    pub fn exit_at_start(&self, detail: Option<&str>) {
        self.with(|s| s.exit_at_start = detail.map(str::to_owned));
    }

    /// An instance ends on its own.
    pub fn exit(&self, id: Uuid, detail: &str) {
        self.with(|s| s.status.insert(id, Status::Exited { detail: Some(detail.to_owned()) }));
    }

    /// Every spec launched, in order (refused launches too).
    pub fn launched(&self) -> Vec<InstanceSpec> {
        self.with(|s| s.launched.clone())
    }

    /// Instances asked to terminate, in order.
    pub fn terminated(&self) -> Vec<Uuid> {
        self.with(|s| s.terminated.clone())
    }

    /// Instances asked to drain, in order.
    pub fn drained(&self) -> Vec<Uuid> {
        self.with(|s| s.drained.clone())
    }

    /// Instances that run now.
    pub fn running(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> =
            self.with(|s| s.status.iter().filter(|(_, st)| st.running()).map(|(id, _)| *id).collect());
        ids.sort();
        ids
    }
}

fn handle(id: Uuid) -> Handle {
    Handle { id, reference: format!("fake:{id}") }
}

impl Driver for FakeDriver {
    fn launch<'a>(&'a self, spec: &'a InstanceSpec) -> BoxFuture<'a, Result<Handle, DriverError>> {
        Box::pin(async move {
            self.with(|s| {
                s.launched.push(spec.clone());
                if let Some(why) = &s.refuse {
                    return Err(DriverError::Launch {
                        program: spec.program.display().to_string(),
                        source: std::io::Error::other(why.clone()),
                    });
                }
                let status = match &s.exit_at_start {
                    Some(d) => Status::Exited { detail: Some(d.clone()) },
                    None => Status::Running,
                };
                s.status.insert(spec.id, status);
                Ok(handle(spec.id))
            })
        })
    }

    fn drain<'a>(&'a self, h: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.with(|s| {
                s.drained.push(h.id);
                if let Some(st) = s.status.get_mut(&h.id) {
                    *st = Status::Exited { detail: Some("exit status 0".into()) };
                }
            });
            Ok(())
        })
    }

    fn terminate<'a>(&'a self, h: &'a Handle, _grace: Duration) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.with(|s| {
                s.terminated.push(h.id);
                if let Some(st) = s.status.get_mut(&h.id)
                    && st.running()
                {
                    *st = Status::Exited { detail: Some("killed by signal 15".into()) };
                }
            });
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, h: &'a Handle) -> BoxFuture<'a, Status> {
        Box::pin(async move { self.with(|s| s.status.get(&h.id).cloned().unwrap_or(Status::Exited { detail: None })) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Handle>, DriverError>> {
        Box::pin(async move { Ok(self.running().into_iter().map(handle).collect()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec { id: Uuid::now_v7(), program: "node".into(), args: vec![], env: vec![], ..Default::default() }
    }

    #[tokio::test]
    async fn instances_do_what_they_are_told() {
        let d = FakeDriver::new();
        let a = d.launch(&spec()).await.unwrap();
        assert_eq!(d.inspect(&a).await, Status::Running);
        assert_eq!(d.list().await.unwrap(), vec![a.clone()]);

        d.exit_at_start(Some("exit status 1"));
        let b = d.launch(&spec()).await.unwrap();
        assert_eq!(d.inspect(&b).await, Status::Exited { detail: Some("exit status 1".into()) });
        d.exit_at_start(None);

        d.refuse_launches(Some("quota exceeded"));
        let refused = d.launch(&spec()).await.unwrap_err();
        assert!(refused.to_string().contains("quota exceeded"), "{refused}");
        d.refuse_launches(None);
        assert_eq!(d.launched().len(), 3);

        d.exit(a.id, "killed by signal 9");
        assert!(!d.inspect(&a).await.running());
        assert!(d.list().await.unwrap().is_empty());

        let c = d.launch(&spec()).await.unwrap();
        d.terminate(&c, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.terminated(), vec![c.id]);
        assert!(!d.inspect(&c).await.running());
        let unknown = handle(Uuid::now_v7());
        assert_eq!(d.inspect(&unknown).await, Status::Exited { detail: None });
    }
}
