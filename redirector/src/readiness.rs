//! Readiness, as `/readyz` reports it: each part of the start that must be
//! done before pods are served registers a condition, and marks it ready
//! when it is done. The daemon is ready when every registered condition is.
//!
//! Conditions are registered before `/readyz` is served, so it never says
//! ready early; one that is never marked keeps the daemon not ready. Once
//! ready, the daemon can go back to not ready for good
//! ([`not_ready`](Readiness::not_ready)): when it drains, or when a task it
//! cannot work without has ended.
use std::sync::{Arc, Mutex};

/// The conditions still pending, shared by whoever registers or asks.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<Vec<&'static str>>>);

impl Readiness {
    /// Adds a condition the daemon waits for, pending until marked ready.
    pub fn register(&self, name: &'static str) -> Condition {
        self.pending_mut().push(name);
        Condition {
            readiness: self.clone(),
            name,
        }
    }

    /// Makes the daemon not ready from now on, for `reason` (`/readyz` names
    /// it). There is no way back: a draining or broken daemon is replaced,
    /// never revived.
    pub fn not_ready(&self, reason: &'static str) {
        let mut pending = self.pending_mut();
        if !pending.contains(&reason) {
            pending.push(reason);
        }
    }

    /// Whether every registered condition has been marked ready.
    pub fn is_ready(&self) -> bool {
        self.pending_mut().is_empty()
    }

    /// The conditions not yet marked ready, in the order registered.
    pub fn pending(&self) -> Vec<&'static str> {
        self.pending_mut().clone()
    }

    fn pending_mut(&self) -> std::sync::MutexGuard<'_, Vec<&'static str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One registered condition; pending until [`mark_ready`](Self::mark_ready).
#[derive(Debug)]
#[must_use = "a condition never marked ready keeps the daemon not ready"]
pub struct Condition {
    readiness: Readiness,
    name: &'static str,
}

impl Condition {
    pub fn mark_ready(self) {
        let mut pending = self.readiness.pending_mut();
        if let Some(i) = pending.iter().position(|n| *n == self.name) {
            pending.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_everything_is_up() {
        let r = Readiness::default();
        let programs = r.register("programs attached");
        let listeners = r.register("listeners up");
        let config = r.register("config loaded");
        assert!(!r.is_ready());
        programs.mark_ready();
        listeners.mark_ready();
        assert!(!r.is_ready());
        assert_eq!(r.pending(), ["config loaded"]);
        config.mark_ready();
        assert!(r.is_ready());
        let api = r.register("api synced");
        assert!(!r.is_ready());
        api.mark_ready();
        assert!(r.is_ready());
    }

    #[test]
    fn not_ready_for_good() {
        let r = Readiness::default();
        r.register("listeners up").mark_ready();
        assert!(r.is_ready());
        r.not_ready("draining");
        r.not_ready("draining");
        assert!(!r.is_ready());
        assert_eq!(r.pending(), ["draining"], "named once");
        r.register("late").mark_ready();
        assert!(!r.is_ready(), "nothing marks it ready again");
    }

    #[test]
    fn a_condition_dropped_unmarked_stays_pending() {
        let r = Readiness::default();
        let first = r.register("same");
        drop(r.register("same"));
        first.mark_ready();
        assert!(
            !r.is_ready(),
            "one of two conditions of the same name is pending"
        );
        assert_eq!(r.pending(), ["same"]);
    }
}
