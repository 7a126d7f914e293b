//! [`BypassSet`]: the one owner of the kernel's bypass tries.
use std::sync::Mutex;

use anyhow::{Context, Result};
use ipnet::IpNet;

use super::{Sources, published::Publisher};
use crate::hook::BypassTries;

/// The sources, and the kernel tries that hold their union. Every change
/// goes through [`BypassSet::update`], so the reload, the node's refresh,
/// the proxies' lookups and the API watch never undo one another's work.
pub struct BypassSet {
    state: Mutex<State>,
}

struct State {
    sources: Sources,
    /// What the kernel holds: `sources`, aggregated.
    kernel: Vec<IpNet>,
    tries: Box<dyn BypassTries>,
    publisher: Option<Publisher>,
}

impl State {
    fn publish(&mut self) {
        if let Some(publisher) = &mut self.publisher {
            publisher.write(&self.sources, &self.kernel);
        }
    }
}

/// What one update changed in the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Update {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

impl BypassSet {
    /// Takes over `tries` (usually filled with `sources` at load already)
    /// and makes them hold exactly `sources`.
    pub fn new(
        tries: Box<dyn BypassTries>,
        sources: Sources,
        publisher: Option<Publisher>,
    ) -> Result<Self> {
        let kernel = sources.kernel_prefixes();
        tries
            .sync(&kernel)
            .context("filling the kernel bypass tries")?;
        let mut state = State {
            sources,
            kernel,
            tries,
            publisher,
        };
        state.publish();
        Ok(Self {
            state: Mutex::new(state),
        })
    }

    /// Applies `change` to the sources and brings the kernel up to date,
    /// as one step: if the kernel refuses (a trie full), what was inserted
    /// is taken out again, the sources stay as they were and the error
    /// says why. `what` names the change in logs.
    pub fn update(&self, what: &str, change: impl FnOnce(&mut Sources)) -> Result<Update> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.sources.clone();
        change(&mut next);
        if next == state.sources {
            return Ok(Update::default());
        }
        let kernel = next.kernel_prefixes();
        let (added, removed) = match state.tries.sync(&kernel) {
            Ok(diff) => diff,
            Err(e) => {
                // Back to what the sources say: no prefix of the refused
                // change may stay direct.
                if let Err(undo) = state.tries.sync(&state.kernel) {
                    tracing::error!(error = %format!("{undo:#}"), "cannot restore the kernel bypass tries");
                }
                return Err(e)
                    .with_context(|| format!("updating the kernel bypass tries ({what})"));
            }
        };
        state.sources = next;
        state.kernel = kernel;
        state.publish();
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(change = what, ?added, ?removed, "kernel bypass updated");
        }
        Ok(Update { added, removed })
    }

    /// The sources in force.
    pub fn sources(&self) -> Sources {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sources
            .clone()
    }
}

/// Bypass tries in memory, changed the way the kernel's are, for tests.
#[cfg(test)]
pub mod fake {
    use std::sync::{Arc, Mutex};

    use anyhow::Result;
    use ipnet::IpNet;

    use crate::hook::{BypassTries, bypass_diff};

    /// Clones share the tries. `capacity` refuses inserts beyond it, as a
    /// full trie does.
    #[derive(Clone, Default)]
    pub struct FakeTries {
        pub nets: Arc<Mutex<Vec<IpNet>>>,
        pub capacity: Option<usize>,
    }

    impl FakeTries {
        pub fn nets(&self) -> Vec<String> {
            let mut nets: Vec<String> = self
                .nets
                .lock()
                .unwrap()
                .iter()
                .map(|n| n.to_string())
                .collect();
            nets.sort();
            nets
        }
    }

    impl BypassTries for FakeTries {
        fn sync(&self, wanted: &[IpNet]) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
            let mut nets = self.nets.lock().unwrap();
            let (add, remove) = bypass_diff(&nets, wanted);
            for net in &add {
                if self.capacity.is_some_and(|c| nets.len() >= c) {
                    anyhow::bail!("adding bypass {net}: map full");
                }
                nets.push(*net);
            }
            nets.retain(|n| !remove.contains(n));
            Ok((add, remove))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeTries, *};
    use crate::bypass::{Entry, Source};

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter()
            .map(|n| Entry::new(n.parse().unwrap(), ""))
            .collect()
    }

    #[test]
    fn each_source_is_replaced_alone_and_the_union_reaches_the_kernel() {
        let tries = FakeTries::default();
        let mut sources = Sources::default();
        sources.set(Source::NoProxy, entries(&["10.249.3.0/24"]));
        let set = BypassSet::new(Box::new(tries.clone()), sources, None).unwrap();
        assert_eq!(tries.nets(), ["10.249.3.0/24"]);

        let up = set
            .update("pod CIDRs", |s| {
                s.set(
                    Source::PodCidrs,
                    entries(&["10.250.0.0/24", "10.249.3.0/24"]),
                )
            })
            .unwrap();
        assert_eq!(up.added, ["10.250.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(tries.nets(), ["10.249.3.0/24", "10.250.0.0/24"]);

        // noProxy drops the CIDR: the pod CIDRs still hold it.
        set.update("config", |s| s.set(Source::NoProxy, vec![]))
            .unwrap();
        assert_eq!(tries.nets(), ["10.249.3.0/24", "10.250.0.0/24"]);
        set.update("pod CIDRs", |s| s.set(Source::PodCidrs, vec![]))
            .unwrap();
        assert!(tries.nets().is_empty());
        // Unchanged: nothing happens.
        assert_eq!(
            set.update("pod CIDRs", |s| s.set(Source::PodCidrs, vec![]))
                .unwrap(),
            Update::default()
        );
    }

    /// A trie that refuses: nothing of the change stays in the kernel, and
    /// the sources keep what they had.
    #[test]
    fn a_refused_change_is_taken_back_whole() {
        let tries = FakeTries {
            capacity: Some(2),
            ..FakeTries::default()
        };
        let mut sources = Sources::default();
        sources.set(Source::NoProxy, entries(&["10.1.0.0/16"]));
        let set = BypassSet::new(Box::new(tries.clone()), sources.clone(), None).unwrap();
        let err = set
            .update("pod CIDRs", |s| {
                s.set(
                    Source::PodCidrs,
                    entries(&["10.2.0.0/16", "10.4.0.0/16", "10.6.0.0/16"]),
                )
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("map full"), "{err:#}");
        assert_eq!(tries.nets(), ["10.1.0.0/16"]);
        assert_eq!(set.sources(), sources);
    }
}
