//! The subcommands, apart from the data path they drive or inspect: each
//! module is one `redirector` command and is reached only from `main`.
//! Nothing outside `cmd` imports it.
//!
//! - `daemon`: `run`, the node daemon (hooks, listeners, reload, API watch);
//! - `detach`: remove an instance's pinned hooks and maps;
//! - `status`: what is attached, read from the pins;
//! - `explain`: how a connection would be routed, and why;
//! - `gen_ca`: a MITM CA for the upstream proxy;
//! - `install_ca`: `trustedCA` into a host's trust store;
//! - `webhook`: the CA-injection admission webhook.
pub mod daemon;
pub mod detach;
pub mod explain;
pub mod gen_ca;
pub mod install_ca;
pub mod status;
pub mod webhook;

use crate::cli::Command;

/// Runs one command to its end.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(daemon::run(*args)),
        Command::Detach(args) => detach::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::InstallCa(args) => install_ca::run(&args),
        Command::GenCa(args) => gen_ca::run(&args),
        Command::Webhook(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(webhook::run(args)),
    }
}
