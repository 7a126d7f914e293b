//! The daemon once it serves, until it exits: what ends it, and how it
//! drains on the way out so that no connection is dropped.
//!
//! - **A successor takes over** (hand-over, see `handover`): the accept
//!   loops stop, our copies of the listening sockets close (the successor
//!   holds them now), `/readyz` says not ready, and the connections in
//!   flight are relayed to their end. The daemon then waits for `SIGTERM`
//!   before it exits, not earlier: in Kubernetes a container that exits is
//!   restarted, and the restarted old version would take the listeners
//!   back. The DaemonSet controller sends `SIGTERM` once the new pod is
//!   ready.
//! - **`SIGTERM`**: not ready at once. While the hooks still send pods here
//!   and no successor has taken over, the daemon keeps accepting (a restart
//!   in place: the next process takes over from it), until a successor
//!   takes over, or the hooks are detached (uninstall) and what is in
//!   flight has ended, or `--drain-timeout` passes. After a hand-over it
//!   exits as soon as nothing is in flight. At `--drain-timeout` whatever is
//!   still open is cut.
//! - **`SIGINT`**, or a second `SIGTERM`: stop at once, as after `SIGKILL`
//!   (the hooks stay attached: connects are refused until an instance
//!   listens again, never sent around the proxy).
//! - **A supervised task ends** (`supervise`): not ready, the reason
//!   logged, and an error, so that the process exits non-zero and the
//!   kubelet restarts it. While draining, the drain goes on (exiting would
//!   cut what it keeps alive) and the exit status is non-zero at the end.
use std::{sync::Arc, time::Duration};

use anyhow::{Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use crate::{
    handover::{Event, HeldListener},
    hook::PinDir,
    limits::Limits,
    readiness::Readiness,
    supervise::{Failure, Supervisor, Task},
};

/// How often the drain looks at what is in flight and at the pins.
const TICK: Duration = Duration::from_millis(100);
/// After the hooks are detached, how long connects they redirected just
/// before may still take to reach the accept queue.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts the metrics server's accept loop again (it pauses while a
/// successor holds the listeners, and resumes if that one goes away).
pub type StartMetrics = Box<dyn FnMut(&mut Supervisor) -> Result<Task> + Send>;

/// A request to stop, from a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `SIGTERM`: drain.
    Term,
    /// `SIGINT`: now.
    Int,
}

/// `SIGTERM` and `SIGINT` as [`Stop`]s, from now on.
pub fn stop_signals() -> std::io::Result<mpsc::Receiver<Stop>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                Some(()) = term.recv() => Stop::Term,
                Some(()) = int.recv() => Stop::Int,
                else => return,
            };
            if tx.send(stop).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting, ready.
    Serving,
    /// `SIGTERM` came, nobody has taken over: still accepting.
    Terminating,
    /// A successor accepts; only what is in flight is left.
    HandedOver,
}

pub struct Running {
    pub supervisor: Supervisor,
    pub readiness: Readiness,
    /// Counts the connections in flight.
    pub limits: Arc<Limits>,
    /// Where the hooks are pinned: none left means detached.
    pub pins: PinDir,
    /// `--drain-timeout`.
    pub drain_timeout: Duration,
    /// The redirect listeners' accept loops.
    pub accept_loops: Vec<Task>,
    /// The metrics server's accept loop, and how to start it again.
    pub metrics: Option<(Option<Task>, StartMetrics)>,
    /// Our copies of the listening sockets, closed once handed over.
    pub held: Option<Arc<Vec<HeldListener>>>,
    /// What the hand-over socket reports.
    pub handover: mpsc::Receiver<Event>,
    /// `SIGTERM` and `SIGINT` ([`stop_signals`]).
    pub stops: mpsc::Receiver<Stop>,
}

impl Running {
    /// Runs until the daemon should exit; an error for a non-zero exit.
    pub async fn run(mut self) -> Result<()> {
        let mut phase = Phase::Serving;
        let mut deadline: Option<Instant> = None;
        let mut failed: Option<Failure> = None;
        let mut detached_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                failure = self.supervisor.failure() => {
                    if phase == Phase::Serving {
                        bail!("{failure}; exiting so that it is restarted");
                    }
                    tracing::error!("{failure} while draining: the drain goes on, the exit status will say so");
                    failed.get_or_insert(failure);
                }
                Some(stop) = self.stops.recv() => {
                    if self.on_stop(stop, &mut phase, &mut deadline) {
                        break;
                    }
                }
                Some(event) = self.handover.recv() => {
                    self.on_handover(event, &mut phase)?;
                }
                () = sleep_until(deadline) => {
                    tracing::warn!(
                        cut = self.limits.active(), drain_timeout = ?self.drain_timeout,
                        "drain timeout: cutting the connections still in flight"
                    );
                    break;
                }
                _ = tick.tick() => {
                    if self.drained(phase, deadline.is_some(), &mut detached_since) {
                        tracing::info!("drained: no connection in flight");
                        break;
                    }
                }
            }
        }
        match failed {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }

    /// Handles a signal; true: stop now.
    fn on_stop(&mut self, stop: Stop, phase: &mut Phase, deadline: &mut Option<Instant>) -> bool {
        let in_flight = self.limits.active();
        if stop == Stop::Int {
            tracing::info!(in_flight, "SIGINT: stopping now");
            return true;
        }
        if deadline.is_some() {
            tracing::info!(in_flight, "second SIGTERM: stopping now");
            return true;
        }
        *deadline = Some(Instant::now() + self.drain_timeout);
        self.readiness.not_ready("draining");
        let drain_timeout = self.drain_timeout;
        if *phase == Phase::Serving {
            *phase = Phase::Terminating;
            tracing::info!(
                in_flight,
                ?drain_timeout,
                "SIGTERM: not ready; still accepting until a new instance takes over, the hooks \
                 are detached, or the drain timeout"
            );
        } else {
            tracing::info!(
                in_flight,
                ?drain_timeout,
                "SIGTERM: exiting once the connections in flight have ended"
            );
        }
        false
    }

    fn on_handover(&mut self, event: Event, phase: &mut Phase) -> Result<()> {
        match event {
            // The successor answers on the metrics address from now on: its
            // probes must not be answered by us.
            Event::Offered => {
                if let Some((task, _)) = &mut self.metrics
                    && let Some(task) = task.take()
                {
                    self.supervisor.stop(&task);
                }
            }
            Event::Aborted(why) => {
                tracing::warn!(%why, "hand-over aborted: serving on as before");
                if let Some((task @ None, start)) = &mut self.metrics {
                    *task = Some(start(&mut self.supervisor)?);
                }
            }
            Event::Completed => {
                for task in self.accept_loops.drain(..) {
                    self.supervisor.stop(&task);
                }
                // Our copies close; the successor's keep the sockets open.
                self.held = None;
                self.metrics = None;
                self.readiness.not_ready("handed over to a new instance");
                *phase = Phase::HandedOver;
                tracing::info!(
                    in_flight = self.limits.active(),
                    "handed over: a new instance accepts; no longer accepting, draining the \
                     connections in flight (exiting on SIGTERM once they have ended)"
                );
            }
        }
        Ok(())
    }

    /// Whether the daemon may exit now (looked at on every tick).
    fn drained(
        &mut self,
        phase: Phase,
        terminating: bool,
        detached_since: &mut Option<Instant>,
    ) -> bool {
        match phase {
            Phase::Serving => false,
            Phase::HandedOver => terminating && self.limits.active() == 0,
            Phase::Terminating => {
                // Still accepting: only once nothing sends pods here.
                if !self.pins.pinned_links().is_empty() {
                    *detached_since = None;
                    return false;
                }
                let since = *detached_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SETTLE {
                    return false;
                }
                if !self.accept_loops.is_empty() {
                    tracing::info!("the hooks are detached: no longer accepting");
                    for task in self.accept_loops.drain(..) {
                        self.supervisor.stop(&task);
                    }
                }
                self.limits.active() == 0
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));

    struct Harness {
        running: Running,
        readiness: Readiness,
        limits: Arc<Limits>,
        stops: mpsc::Sender<Stop>,
        handover: mpsc::Sender<Event>,
        _pins: tempfile::TempDir,
    }

    /// A daemon that serves: one accept loop, hooks pinned (unless
    /// `detached`).
    fn harness(detached: bool) -> Harness {
        let readiness = Readiness::default();
        let limits = Limits::new(10, 10);
        let pins_dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(pins_dir.path());
        if !detached {
            std::fs::create_dir_all(pins.link("x").parent().unwrap()).unwrap();
            std::fs::write(pins.link("connect4"), b"").unwrap();
        }
        let mut supervisor = Supervisor::new(readiness.clone()).unwrap();
        let accept = supervisor.spawn_forever("listener", std::future::pending());
        let (stops, stops_rx) = mpsc::channel(4);
        let (handover, handover_rx) = mpsc::channel(4);
        Harness {
            running: Running {
                supervisor,
                readiness: readiness.clone(),
                limits: limits.clone(),
                pins,
                drain_timeout: Duration::from_secs(30),
                accept_loops: vec![accept],
                metrics: None,
                held: None,
                handover: handover_rx,
                stops: stops_rx,
            },
            readiness,
            limits,
            stops,
            handover,
            _pins: pins_dir,
        }
    }

    /// Whether `run` has returned after `secs` (paused clock).
    async fn ended_within(task: &tokio::task::JoinHandle<Result<()>>, secs: u64) -> bool {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        task.is_finished()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_hand_over_it_drains_and_waits_for_sigterm() {
        let h = harness(false);
        let permit = h.limits.admit(POD).unwrap();
        let task = tokio::spawn(h.running.run());
        h.handover.send(Event::Offered).await.unwrap();
        h.handover.send(Event::Completed).await.unwrap();
        assert!(!ended_within(&task, 1).await);
        assert!(!h.readiness.is_ready(), "not ready once handed over");
        drop(permit);
        assert!(
            !ended_within(&task, 60).await,
            "no exit without SIGTERM (the kubelet would restart it)"
        );
        h.stops.send(Stop::Term).await.unwrap();
        assert!(ended_within(&task, 1).await);
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn sigterm_keeps_serving_until_a_successor_then_drains() {
        let h = harness(false);
        let task = tokio::spawn(h.running.run());
        h.stops.send(Stop::Term).await.unwrap();
        assert!(
            !ended_within(&task, 10).await,
            "hooks attached, nobody took over: still serving"
        );
        assert_eq!(h.readiness.pending(), ["draining"]);
        let permit = h.limits.admit(POD).unwrap();
        h.handover.send(Event::Completed).await.unwrap();
        assert!(!ended_within(&task, 5).await, "a connection in flight");
        drop(permit);
        assert!(ended_within(&task, 1).await);
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_timeout_ends_it_and_sigint_is_at_once() {
        let h = harness(false);
        let _permit = h.limits.admit(POD).unwrap();
        let task = tokio::spawn(h.running.run());
        h.stops.send(Stop::Term).await.unwrap();
        assert!(!ended_within(&task, 29).await);
        assert!(ended_within(&task, 2).await, "30 s drain timeout");
        task.await.unwrap().unwrap();

        let h = harness(false);
        let task = tokio::spawn(h.running.run());
        h.stops.send(Stop::Int).await.unwrap();
        assert!(ended_within(&task, 1).await);
    }

    #[tokio::test(start_paused = true)]
    async fn once_detached_it_exits_when_nothing_is_in_flight() {
        let h = harness(true);
        let permit = h.limits.admit(POD).unwrap();
        let task = tokio::spawn(h.running.run());
        assert!(
            !ended_within(&task, 5).await,
            "detached but no SIGTERM: running on"
        );
        h.stops.send(Stop::Term).await.unwrap();
        assert!(!ended_within(&task, 5).await, "a connection in flight");
        drop(permit);
        assert!(ended_within(&task, 1).await);
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_failure_exits_non_zero_but_never_cuts_a_drain() {
        let mut h = harness(false);
        h.running
            .supervisor
            .spawn_forever("kubernetes watcher", async {
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        let task = tokio::spawn(h.running.run());
        assert!(ended_within(&task, 4).await);
        let err = task.await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("kubernetes watcher task ended"),
            "{err}"
        );
        assert!(!h.readiness.is_ready());

        let mut h = harness(false);
        h.running
            .supervisor
            .spawn_forever("kubernetes watcher", async {
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        let permit = h.limits.admit(POD).unwrap();
        let task = tokio::spawn(h.running.run());
        h.handover.send(Event::Completed).await.unwrap();
        h.stops.send(Stop::Term).await.unwrap();
        assert!(!ended_within(&task, 10).await, "draining a connection");
        drop(permit);
        assert!(ended_within(&task, 1).await);
        assert!(task.await.unwrap().is_err(), "non-zero at the end");
    }

    #[tokio::test(start_paused = true)]
    async fn the_metrics_server_pauses_while_offered_and_resumes_if_aborted() {
        let mut h = harness(false);
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = starts.clone();
        let mut start: StartMetrics = Box::new(move |s: &mut Supervisor| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(s.spawn_forever("metrics server", std::future::pending()))
        });
        let first = start(&mut h.running.supervisor).unwrap();
        h.running.metrics = Some((Some(first), start));
        let task = tokio::spawn(h.running.run());
        h.handover.send(Event::Offered).await.unwrap();
        h.handover
            .send(Event::Aborted("gone".into()))
            .await
            .unwrap();
        assert!(
            !ended_within(&task, 1).await,
            "a stopped metrics loop is no failure"
        );
        assert_eq!(
            starts.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "started again"
        );
        assert!(
            h.readiness.is_ready(),
            "an aborted hand-over changes nothing"
        );
    }
}
