//! The benchmark's peers, run by tests/e2e/bench.sh in the miniature node's
//! namespaces: `upstream` and `serve` in rde-inet, `load` in the pods.
//!
//! - [`upstream`]: a minimal CONNECT upstream (epoll, `splice`), beside
//!   squid, so the redirector's own cost shows without squid's single
//!   worker in the way;
//! - [`server`]: the far end of every path, speaking the [`protocol`];
//! - [`load`]: one workload of the [`loadgen`] client, its record
//!   appended to raw.jsonl for `cargo xtask bench`.

mod load;
mod loadgen;
mod protocol;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Parser, Subcommand};

use crate::load::Workload;
use crate::loadgen::Target;

/// The benchmark's peers (run by tests/e2e/bench.sh).
#[derive(Parser)]
#[command(name = "peers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The benchmark's minimal CONNECT upstream (in rde-inet)
    Upstream {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The benchmark's server (in rde-inet)
    Serve {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// One benchmark workload (in a pod)
    Load {
        /// Path label written into the record (direct, env-var, ...).
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 1)]
        round: u32,
        /// bulk, rate, latency, iperf3 or idle.
        #[arg(long)]
        workload: String,
        #[arg(long)]
        server: SocketAddr,
        /// Speak CONNECT to this proxy first, as an env-var client does.
        #[arg(long)]
        proxy: Option<SocketAddr>,
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 200)]
        per_second: u32,
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// idle: write the number of open connections here once all are open.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// JSON lines file the record is appended to.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    // Every peer may hold thousands of sockets (the memory workload keeps
    // 9,000 connections open), which the usual soft limit of 1,024 would
    // refuse. Best effort: a failure shows up as refused sockets.
    let _ = redirector::limits::raise_open_files_limit();
    let result = match Cli::parse().command {
        Cmd::Upstream { listen, threads } => upstream::serve(
            &listen,
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        ),
        Cmd::Serve { listen } => server::serve(&listen),
        Cmd::Load {
            label,
            round,
            workload,
            server,
            proxy,
            bytes,
            concurrency,
            seconds,
            per_second,
            count,
            ready_file,
            out,
        } => {
            let workload = match workload.as_str() {
                "bulk" => Ok(Workload::Bulk { bytes }),
                "rate" => Ok(Workload::Rate {
                    concurrency,
                    seconds,
                }),
                "latency" => Ok(Workload::Latency { per_second, count }),
                "iperf3" => Ok(Workload::Iperf3 { bytes }),
                "idle" => ready_file
                    .map(|ready_file| Workload::Idle {
                        count,
                        seconds,
                        ready_file,
                    })
                    .ok_or_else(|| anyhow!("idle needs --ready-file")),
                other => Err(anyhow!("unknown workload {other}")),
            };
            workload.and_then(|w| load::load(&label, round, Target { server, proxy }, w, &out))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
