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
//! - `exemption`: with `--kube`, pods exempted live from the Kubernetes API;
//! - `metrics`: each connection's decision, outcome and bytes, the kernel
//!   counters, and `/metrics`, `/healthz`, `/readyz` on `--metrics`;
//! - `reload`: `--proxy-config` watched and re-applied (hot reload, SIGHUP).
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
mod install_ca;
mod lookup;
mod metrics;
mod noproxy;
mod policy;
mod relay;
mod reload;
mod server;
mod status;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
    match dispatch(cli.command) {
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
        Command::Status(args) => status::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::InstallCa(args) => install_ca::run(&args),
        Command::GenCa(args) => {
            let ca = ca::GeneratedCa::generate()?;
            ca.write_to(&args.out_dir)?;
            println!("{}", ca.trusted_ca_base64());
            Ok(())
        }
    }
}
