//! Development tasks of egress-redirector, run as `cargo xtask <cmd>`
//! (alias in `.cargo/config.toml`). One module per subcommand; the helpers
//! they share are in [`toolchain`].

pub mod bench;
pub mod build;
pub mod demo;
pub mod fuzz;
pub mod image;
pub mod kind;
pub mod manifests;
pub mod setup;
pub mod soak;
pub mod test;
pub mod toolchain;

pub use toolchain::Paths;
