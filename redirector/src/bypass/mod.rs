//! The kernel's bypass set: the destinations pods reach directly, which
//! the connect hooks never redirect.
//!
//! One owner, [`BypassSet`], holds them by *source*: where each prefix came
//! from (the built-ins and `--cluster-cidr`, the configuration's
//! `serviceCidrs` and `noProxy`, the node's own addresses, the cluster's
//! pod CIDRs, the `kubernetes` Service and its endpoints, the upstream
//! proxies' addresses). A source is replaced as a whole when it changes,
//! and the union, aggregated, is synced to the kernel's LPM tries (new
//! prefixes in before stale ones out, so nothing both sets share is ever
//! redirected meanwhile). The sources are published to a file for
//! `redirector status` and `redirector explain`.
//!
//! Every source comes from the operator (flags, the configuration file)
//! or from the cluster's control plane and the node (Node objects, the
//! API server's own `default/kubernetes`, the node's interfaces), never
//! from a pod or an object a tenant can create: a bypassed prefix is a
//! direct path for every pod on the node.
//!
//! - `sources`: the sources' names and what each holds;
//! - `set`: the owner, and the sync to the kernel;
//! - `from_config`: built-in, `--cluster-cidr`, `serviceCidrs`, `noProxy`;
//! - `node`: the node's interface addresses;
//! - `proxies`: the upstream proxies' addresses;
//! - `cluster`: pod CIDRs, this Node's addresses, the `kubernetes` Service
//!   and its endpoints, from the API;
//! - `published`: the file `status` and `explain` read.
pub mod cluster;
pub mod from_config;
pub mod node;
pub mod proxies;
pub mod published;
mod set;
mod sources;

#[cfg(test)]
pub use set::fake;
pub use set::{BypassSet, Update};
pub use sources::{Automatic, Entry, Source, Sources};
