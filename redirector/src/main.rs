//! The `redirector` binary: parses the command line and runs the command.
use std::process::ExitCode;

use clap::Parser;
use redirector::{
    ca, cli,
    cli::{Cli, Command},
    daemon, explain, hook, install_ca, status,
};
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
