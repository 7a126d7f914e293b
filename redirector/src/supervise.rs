//! The daemon's long-lived tasks (the listeners, the config reloader, the
//! Kubernetes watcher, the metrics server, the hand-over socket), run under
//! supervision. Each of them should run for the daemon's whole life: if one
//! ends or panics, the daemon is broken in a way no probe would see (a dead
//! watcher leaves stale exemptions in force behind a ready `/readyz`), so
//! [`Supervisor::failure`] makes the daemon not ready, logs which task and
//! why, and hands the failure to the caller, which exits non-zero so that
//! the kubelet restarts the daemon.
//!
//! Tasks stopped on purpose ([`Supervisor::stop`]: the accept loops when the
//! daemon drains) are not failures.
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

use crate::readiness::Readiness;

/// Test-only: makes one supervised task panic some time after it started,
/// e.g. `kubernetes watcher=2` (the name, or its start, and seconds), so
/// that end-to-end tests can watch the supervision work on a real daemon.
pub const DEBUG_FAIL_TASK_ENV: &str = "REDIRECTOR_DEBUG_FAIL_TASK";

/// What `/readyz` says once a supervised task has ended.
const NOT_READY: &str = "a supervised task ended";

/// A supervised task, to stop it on purpose.
#[derive(Debug, Clone)]
pub struct Task(AbortHandle);

/// A supervised task that ended on its own, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub task: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} task {}", self.task, self.reason)
    }
}

pub struct Supervisor {
    tasks: JoinSet<Result<()>>,
    names: HashMap<Id, String>,
    /// Tasks stopped on purpose, whose end is no failure.
    stopped: HashSet<Id>,
    readiness: Readiness,
    /// [`DEBUG_FAIL_TASK_ENV`], parsed.
    fail_task: Option<(String, Duration)>,
}

impl Supervisor {
    /// A supervisor that makes `readiness` not ready on a failure. Reads
    /// [`DEBUG_FAIL_TASK_ENV`]; a malformed value is an error.
    pub fn new(readiness: Readiness) -> Result<Self> {
        let fail_task = match std::env::var(DEBUG_FAIL_TASK_ENV) {
            Ok(value) => Some(parse_fail_task(&value)?),
            Err(_) => None,
        };
        Ok(Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stopped: HashSet::new(),
            readiness,
            fail_task,
        })
    }

    /// Runs a task that should never end; its end is a failure.
    pub fn spawn_forever<F>(&mut self, name: impl Into<String>, task: F) -> Task
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok(())
        })
    }

    /// Runs a task that should never end; its end, with an error or not,
    /// is a failure.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F) -> Task
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let name = name.into();
        let fail_after = self
            .fail_task
            .as_ref()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, after)| *after);
        let handle = match fail_after {
            Some(after) => {
                tracing::warn!(task = %name, ?after, "test setting {DEBUG_FAIL_TASK_ENV}: this task will panic");
                self.tasks.spawn(async move {
                    tokio::select! {
                        ended = task => ended,
                        () = tokio::time::sleep(after) => {
                            panic!("made to panic by the test setting {DEBUG_FAIL_TASK_ENV}")
                        }
                    }
                })
            }
            None => self.tasks.spawn(task),
        };
        self.names.insert(handle.id(), name);
        Task(handle)
    }

    /// Stops a task on purpose (its end is no failure).
    pub fn stop(&mut self, task: &Task) {
        self.stopped.insert(task.0.id());
        task.0.abort();
    }

    /// Waits for the next task that ends on its own (never resolves while
    /// every task runs); the daemon is then not ready, and the failure is
    /// logged. Cancel-safe, for `select!`.
    pub async fn failure(&mut self) -> Failure {
        loop {
            let Some(joined) = self.tasks.join_next_with_id().await else {
                std::future::pending::<()>().await;
                continue;
            };
            let (id, reason) = match joined {
                Ok((id, Ok(()))) => (id, "ended".to_owned()),
                Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
                Err(e) => (e.id(), join_error(e)),
            };
            let task = self.names.remove(&id).unwrap_or_else(|| "?".to_owned());
            if self.stopped.remove(&id) {
                continue;
            }
            self.readiness.not_ready(NOT_READY);
            let failure = Failure { task, reason };
            tracing::error!(task = %failure.task, reason = %failure.reason, "{failure}: not ready");
            return failure;
        }
    }
}

fn join_error(e: JoinError) -> String {
    if e.is_cancelled() {
        return "was cancelled".to_owned();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {message}")
}

/// Parses [`DEBUG_FAIL_TASK_ENV`]: `NAME=SECONDS`.
fn parse_fail_task(value: &str) -> Result<(String, Duration)> {
    let (name, secs) = value
        .rsplit_once('=')
        .with_context(|| format!("{DEBUG_FAIL_TASK_ENV}: `{value}` is not TASK=SECONDS"))?;
    let secs: f64 = secs
        .trim()
        .parse()
        .with_context(|| format!("{DEBUG_FAIL_TASK_ENV}: `{value}`"))?;
    if name.trim().is_empty() || !(0.0..=3600.0).contains(&secs) {
        bail!("{DEBUG_FAIL_TASK_ENV}: `{value}`: a task name and 0 to 3600 seconds");
    }
    Ok((name.trim().to_owned(), Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> (Supervisor, Readiness) {
        let readiness = Readiness::default();
        let s = Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stopped: HashSet::new(),
            readiness: readiness.clone(),
            fail_task: None,
        };
        (s, readiness)
    }

    async fn within_a_second(s: &mut Supervisor) -> Option<Failure> {
        tokio::time::timeout(Duration::from_secs(1), s.failure())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_task_that_ends_makes_the_daemon_not_ready() {
        let (mut s, readiness) = supervisor();
        s.spawn_forever("listener", std::future::pending());
        s.spawn_forever("kubernetes watcher", async {});
        let failure = within_a_second(&mut s).await.expect("a failure");
        assert_eq!(failure.task, "kubernetes watcher");
        assert_eq!(failure.reason, "ended");
        assert!(!readiness.is_ready());
        assert_eq!(readiness.pending(), [NOT_READY]);
        assert_eq!(
            failure.to_string(),
            "the kubernetes watcher task ended",
            "what the log says"
        );
    }

    #[tokio::test]
    async fn a_panic_or_an_error_is_named() {
        let (mut s, _) = supervisor();
        s.spawn_forever("reloader", async { panic!("boom") });
        let failure = within_a_second(&mut s).await.expect("a failure");
        assert_eq!(
            (failure.task.as_str(), failure.reason.as_str()),
            ("reloader", "panicked: boom")
        );
        s.spawn("metrics server", async { bail!("socket gone") });
        let failure = within_a_second(&mut s).await.expect("a failure");
        assert_eq!(failure.reason, "failed: socket gone");
    }

    #[tokio::test]
    async fn tasks_stopped_on_purpose_are_no_failure() {
        let (mut s, readiness) = supervisor();
        let listener = s.spawn_forever("listener", std::future::pending());
        let done = s.spawn_forever("short", async {
            tokio::time::sleep(Duration::from_millis(10)).await
        });
        s.spawn_forever("watcher", std::future::pending());
        // One stopped while running, one stopped after it had ended anyway.
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.stop(&listener);
        s.stop(&done);
        assert_eq!(within_a_second(&mut s).await, None);
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn the_test_setting_makes_a_named_task_panic() {
        let (mut s, _) = supervisor();
        s.fail_task = Some(("kubernetes".into(), Duration::from_millis(20)));
        s.spawn_forever("listener 10.0.0.4:15001", std::future::pending());
        s.spawn_forever("kubernetes watcher", std::future::pending());
        let failure = within_a_second(&mut s).await.expect("a failure");
        assert_eq!(failure.task, "kubernetes watcher");
        assert!(
            failure.reason.starts_with("panicked: made to panic"),
            "{failure}"
        );
    }

    #[test]
    fn fail_task_setting_parses() {
        assert_eq!(
            parse_fail_task("kubernetes watcher=2").unwrap(),
            ("kubernetes watcher".into(), Duration::from_secs(2))
        );
        for bad in ["watcher", "=2", "watcher=x", "watcher=-1"] {
            assert!(parse_fail_task(bad).is_err(), "{bad}");
        }
    }
}
