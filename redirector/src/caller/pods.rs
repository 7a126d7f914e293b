//! This node's pods by address, and each namespace's profile label: what
//! a connection's source address says about its caller. Filled by the
//! Kubernetes watcher (`exemption::watcher`), read by every connection.
//!
//! A snapshot replaced whole after each API event, so a connection reads
//! without a lock held across anything. Without `--kube` it stays empty:
//! no pod is known and every namespace is unlabelled.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::swappable::Swappable;

/// The namespace label that selects a profile.
pub const PROFILE_LABEL: &str = "egress-redirector/profile";

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// One snapshot of what the API said.
#[derive(Debug, Default)]
pub struct PodIndex {
    /// Pods with their own addresses (not hostNetwork), by address.
    pub by_addr: HashMap<IpAddr, PodRef>,
    /// `egress-redirector/profile` of each labelled namespace.
    pub profiles: HashMap<String, String>,
}

/// The current [`PodIndex`], shared by the watcher and the connections.
#[derive(Clone)]
pub struct PodDirectory(Swappable<PodIndex>);

impl Default for PodDirectory {
    fn default() -> Self {
        Self(Swappable::new(PodIndex::default()))
    }
}

impl PodDirectory {
    /// The pod with source address `addr`, if one on this node has it.
    pub fn pod(&self, addr: IpAddr) -> Option<PodRef> {
        self.0.load().by_addr.get(&addr.to_canonical()).cloned()
    }

    /// The profile label of `namespace`, if it has one.
    pub fn profile_of(&self, namespace: &str) -> Option<String> {
        self.0.load().profiles.get(namespace).cloned()
    }

    /// The profile label of the namespace of the pod with address `addr`:
    /// `None` for an unlabelled namespace and for an address no known pod
    /// has (both decide on the top level).
    pub fn profile_label(&self, addr: IpAddr) -> Option<String> {
        let index = self.0.load();
        let pod = index.by_addr.get(&addr.to_canonical())?;
        index.profiles.get(&pod.namespace).cloned()
    }

    /// The whole snapshot, for a caller that asks several things at once.
    pub fn snapshot(&self) -> Arc<PodIndex> {
        self.0.load()
    }

    /// Replaces the snapshot (the watcher, after an event).
    pub fn publish(&self, index: PodIndex) {
        self.0.store(Arc::new(index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_by_canonical_address() {
        let directory = PodDirectory::default();
        assert!(directory.pod("10.0.0.5".parse().unwrap()).is_none());
        let mut index = PodIndex::default();
        let web = PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
        };
        index
            .by_addr
            .insert("10.0.0.5".parse().unwrap(), web.clone());
        index.profiles.insert("shop".into(), "team-a".into());
        let reader = directory.clone();
        directory.publish(index);
        assert_eq!(reader.pod("10.0.0.5".parse().unwrap()), Some(web.clone()));
        assert_eq!(reader.pod("::ffff:10.0.0.5".parse().unwrap()), Some(web));
        assert_eq!(reader.profile_of("shop").as_deref(), Some("team-a"));
        assert_eq!(reader.profile_of("other"), None);
        assert_eq!(
            reader.profile_label("10.0.0.5".parse().unwrap()).as_deref(),
            Some("team-a")
        );
        assert_eq!(reader.profile_label("10.0.0.6".parse().unwrap()), None);
    }
}
