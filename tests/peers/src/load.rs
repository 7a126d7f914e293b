//! `peers load`: one workload over one path, its [`Load`] record printed
//! and appended to raw.jsonl.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use peers::records::{Load, Measured, Record, Throughput};
use serde::Deserialize;

use crate::loadgen::{self, Target};

/// Which workload `peers load` runs, with its size.
#[derive(Debug, Clone)]
pub enum Workload {
    Bulk {
        bytes: u64,
    },
    Rate {
        concurrency: usize,
        seconds: f64,
    },
    Latency {
        per_second: u32,
        count: u32,
    },
    /// iperf3 to `server` (an iperf3 server), `bytes` each way, one stream.
    Iperf3 {
        bytes: u64,
    },
    /// Open `count` idle connections, write their number to `ready_file`,
    /// hold them for `seconds`.
    Idle {
        count: u32,
        seconds: f64,
        ready_file: PathBuf,
    },
}

/// Runs one workload and appends its record (with the path label and
/// round) to `out`.
pub fn load(label: &str, round: u32, target: Target, workload: Workload, out: &Path) -> Result<()> {
    let measured = match workload {
        Workload::Bulk { bytes } => Measured::Bulk(loadgen::bulk(target, bytes)?),
        Workload::Iperf3 { bytes } => {
            if target.proxy.is_some() {
                bail!("iperf3 cannot speak CONNECT to a proxy");
            }
            Measured::Iperf3(Throughput {
                bytes,
                up_gbps: iperf3(target.server, bytes, false)?,
                down_gbps: iperf3(target.server, bytes, true)?,
            })
        }
        Workload::Rate {
            concurrency,
            seconds,
        } => Measured::Rate(loadgen::rate(
            target,
            concurrency,
            Duration::from_secs_f64(seconds),
        )),
        Workload::Latency { per_second, count } => {
            Measured::Latency(loadgen::latency(target, per_second, count))
        }
        Workload::Idle {
            count,
            seconds,
            ready_file,
        } => {
            let mut written = Ok(());
            let idle = loadgen::idle(target, count, Duration::from_secs_f64(seconds), |n| {
                written = fs::write(&ready_file, format!("{n}\n"));
            });
            written.with_context(|| format!("write {}", ready_file.display()))?;
            Measured::Idle(idle)
        }
    };
    let record = Record::Load(Load {
        path: label.to_string(),
        round,
        server: target.server,
        proxy: target.proxy,
        measured,
    });
    let line = serde_json::to_string(&record)?;
    println!("{line}");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// The part of iperf3's `--json` report that is read.
#[derive(Deserialize)]
struct IperfReport {
    error: Option<String>,
    end: Option<IperfEnd>,
}

#[derive(Deserialize)]
struct IperfEnd {
    sum_received: Option<IperfSum>,
}

#[derive(Deserialize)]
struct IperfSum {
    bits_per_second: f64,
}

/// One iperf3 run (`-R`: the server sends); the receiver's Gbit/s.
fn iperf3(server: SocketAddr, bytes: u64, reverse: bool) -> Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["--client", &server.ip().to_string()])
        .args(["--port", &server.port().to_string()])
        .args(["--bytes", &bytes.to_string()])
        .args(["--connect-timeout", "10000", "--json"]);
    if reverse {
        cmd.arg("--reverse");
    }
    let out = cmd
        .output()
        .context("run iperf3 (cargo xtask setup installs it)")?;
    let report: IperfReport = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON ({})", out.status))?;
    if let Some(e) = report.error {
        bail!("iperf3: {e}");
    }
    let bps = report
        .end
        .and_then(|end| end.sum_received)
        .map(|sum| sum.bits_per_second)
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}
