//! `redirector`: the node daemon and its CLI (this library holds all of it;
//! `main.rs` only parses arguments and dispatches).
//!
//! A connection's path through the code, in order:
//! - `hook`: the kernel programs (connect4/6 rewrite, sock_ops re-key), loaded and pinned;
//! - `lookup`: on accept, the original destination by client address;
//! - `classify`: peek at the first bytes for the TLS SNI or HTTP Host;
//! - `policy`: kernel bypass, direct, or which proxy (`noproxy` matches rules);
//! - `dial`: CONNECT tunnel (TLS and auth to the proxy) or direct socket,
//!   with the daemon's SO_MARK;
//! - `relay`: bytes both ways, half-close aware; `http_forward`: plain HTTP
//!   to `httpProxy` in absolute form;
//! - `connection`: ties these together for one connection; `server` accepts;
//! - `exemption`: with `--kube`, pods exempted live from the Kubernetes API;
//! - `metrics`: each connection's decision, outcome and bytes, the kernel
//!   counters, and `/metrics`, `/healthz`, `/readyz` on `--metrics`;
//! - `reload`: `--proxy-config` watched and re-applied (hot reload, SIGHUP).
pub mod ca;
pub mod classify;
pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod dial;
pub mod endpoint;
pub mod exemption;
pub mod explain;
pub mod hook;
pub mod http_forward;
pub mod install_ca;
pub mod limits;
pub mod lookup;
pub mod metrics;
pub mod noproxy;
pub mod policy;
pub mod relay;
pub mod reload;
pub mod server;
pub mod status;
