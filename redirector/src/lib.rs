//! `redirector`: the node daemon and its CLI (this library holds all of it;
//! `main.rs` only parses arguments and dispatches to `cmd`).
//!
//! A connection's path through the code, in order:
//! - `hook`: the kernel programs (connect4/6 rewrite, sock_ops re-key), loaded and pinned;
//! - `lookup`: on accept, the original destination by client address;
//! - `classify`: peek at the first bytes for the TLS SNI or HTTP Host;
//! - `policy`: kernel bypass, direct, or which proxy (`noproxy` matches rules);
//!   a name rule sends a connection direct only to the name's own addresses
//!   (`resolve`: the node's resolver, bounded in time, cached);
//! - `dial`: CONNECT tunnel (TLS and auth to the proxy) or direct socket,
//!   with the daemon's SO_MARK;
//! - `relay`: bytes both ways, half-close aware (`lanes`: wide buffers for
//!   a few bulk connections); `http_forward`: plain HTTP
//!   to `httpProxy` in absolute form;
//! - `connection`: ties these together for one connection; `server` accepts
//!   (within the `limits` caps, derived from `memory_budget`), with
//!   `socket_options` (buffers, keepalive) on both sockets.
//!
//! Around it:
//! - `config`: the proxy configuration file; `reload`: watched and
//!   re-applied (hot reload, SIGHUP), swapping `swappable` values;
//! - `audit`: one JSON line per connection (the `audit` key), bounded;
//! - `exemption`: with `--kube`, pods exempted live from the Kubernetes API;
//!   `caller`: the pod behind a connection (address, namespace, name, the
//!   namespace's profile label) and the identity headers naming it;
//! - `bypass`: the kernel's bypass set by source (configuration, the node's
//!   and the proxies' addresses, pod CIDRs and the API server from the
//!   Kubernetes API), published for `status` and `explain`;
//! - `startup_taint`: with `--remove-taint`, the node's startup taint
//!   removed once the daemon is ready;
//! - `metrics`: each connection's decision, outcome and bytes, the kernel
//!   counters, served on `--metrics` with `/healthz` and `/readyz`
//!   (`readiness`: the conditions the daemon waits for);
//! - `handover`: the listening sockets given to the next instance on the
//!   node; `drain`: how the daemon stops (hand-over, SIGTERM, detach)
//!   without dropping a connection; `supervise`: the long-lived tasks, whose
//!   end makes the daemon not ready and exit;
//! - `cmd`: the subcommands (`run` is `cmd::daemon`), with `cli` their
//!   arguments; nothing on the data path imports them;
//! - `webhook`: the CA-injection admission webhook (`redirector webhook`),
//!   which mounts the trust bundle into opted-in pods;
//! - `endpoint`: socket addresses as the kernel maps hold them; `ca`: CA
//!   generation for tests and `gen-ca`.
pub mod audit;
pub mod caller;
pub mod classify;
pub mod connection;
pub mod dial;
pub mod hook;
pub mod http_forward;
pub mod limits;
pub mod lookup;
pub mod memory_budget;
pub mod noproxy;
pub mod policy;
pub mod ratelog;
pub mod relay;
pub mod resolve;
pub mod server;
pub mod socket_options;

pub mod bypass;
pub mod ca;
pub mod config;
pub mod drain;
pub mod endpoint;
pub mod exemption;
pub mod handover;
pub mod metrics;
pub mod readiness;
pub mod reload;
pub mod startup_taint;
pub mod supervise;
pub mod swappable;
pub mod webhook;

pub mod cli;
pub mod cmd;
