//! Live exemption of Kubernetes pods: follow this node's pods and the
//! cluster's namespaces, decide which pods are exempt (`rules`), find
//! their cgroups (`cgroups`), and keep the kernel's exempt-cgroup map in
//! step (`reconcile`), driven by the API watches (`watcher`) over a client
//! whose sockets carry the daemon's mark (`client`).
//!
//! Fails safe: a pod whose state is unknown (API unreachable, cgroup not
//! there yet) is redirected; a lost watch keeps the last known exemptions
//! rather than dropping them all.
pub mod cgroups;
pub mod client;
pub mod reconcile;
pub mod rules;
pub mod watcher;
