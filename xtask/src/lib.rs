//! Development tasks of egress-redirector, run as `cargo xtask <cmd>`
//! (alias in `.cargo/config.toml`); `main.rs` is the command line.
//!
//! The modules form a one-way graph, shared pieces at the bottom:
//!
//! - shared, importing no subcommand: [`toolchain`] (pinned versions,
//!   paths, running commands, finding tools, the eBPF toolchain),
//!   [`build`] (the eBPF object, the daemon, the test peers, the node
//!   image with Docker), [`image`] (the node image as an OCI archive,
//!   without Docker) and [`counts`] (test counts);
//! - one module per subcommand: [`fuzz`], [`manifests`], [`kind`] and the
//!   ones below. A subcommand imports another only to run it as a step:
//!   [`setup`] installs cargo-fuzz through [`fuzz`]; [`bench`](mod@bench),
//!   [`soak`] and [`demo`] run [`setup`] first; [`test`](mod@test) runs
//!   [`setup`], [`fuzz`], [`manifests`], [`runtime_e2e`] and
//!   [`bench`](mod@bench) as stages; [`runtime_e2e`] runs [`setup`].
//!
//! Programs that the tests run live in crates of their own: the
//! benchmark's peers in `tests/peers`, whose records `bench` reads.

pub mod bench;
pub mod build;
pub mod counts;
pub mod demo;
pub mod fuzz;
pub mod image;
pub mod kind;
pub mod manifests;
pub mod runtime_e2e;
pub mod setup;
pub mod soak;
pub mod test;
pub mod toolchain;

pub use toolchain::Paths;
