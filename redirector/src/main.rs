//! `redirector`: the node daemon and its CLI.
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
//! - `exemption`: with `--kube`, pods exempted live from the Kubernetes API.
mod ca;
mod classify;
mod cli;
mod config;
mod connection;
mod daemon;
mod dial;
mod endpoint;
mod exemption;
mod explain;
mod hook;
mod http_forward;
mod lookup;
mod noproxy;
mod policy;
mod relay;
mod server;
mod status;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(daemon::run(args)),
        Command::Detach(args) => {
            let removed = hook::detach(&hook::PinDir::new(&args.bpffs))?;
            println!(
                "removed {} pins under {}",
                removed.len(),
                args.bpffs.display()
            );
            Ok(())
        }
        Command::Status(args) => status::print(&hook::PinDir::new(&args.pins.bpffs), args.check),
        Command::Explain(args) => explain::run(&args),
        Command::GenCa(args) => {
            let ca = ca::GeneratedCa::generate()?;
            ca.write_to(&args.out_dir)?;
            println!("{}", ca.trusted_ca_base64());
            Ok(())
        }
    }
}
