//! The `redirector` binary: parses the command line, sets up logging, and
//! runs the command (`redirector::cmd`).
use std::process::ExitCode;

use clap::Parser;
use redirector::{
    cli::{Cli, LogFormat},
    cmd,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cmd::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // With JSON logs the last word is a JSON line too, so that a
            // log collector keeps why the daemon stopped.
            match cli.log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
