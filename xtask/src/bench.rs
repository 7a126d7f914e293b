//! `cargo xtask bench`: the same workloads over every egress path of the
//! miniature node, interleaved (A B C D A B C D ...) so machine noise hits
//! all paths alike, plus criterion micro-benchmarks of the policy and the
//! classifier, summarised as JSON and a Markdown table under `target/bench/`.
//!
//! `tests/e2e/bench.sh` builds the node (lib.sh: blackhole routes, lock,
//! namespaces), starts squid, our own minimal CONNECT upstream and the
//! benchmark server in rde-inet (the test peers, tests/peers, which this
//! module builds), and runs `peers load` in the pods for each round, path
//! and workload; every run appends one JSON line to
//! `target/bench/raw.jsonl` ([`peers::records`]). This module then takes
//! the medians and ratios. `--quick` only checks that every path moved
//! data: a speed is never asserted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use peers::records::{IdleMemory, Measured, Record, RelayCost, Run};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::toolchain::{self, Paths, e2e_command, require_root, run};
use crate::{build, setup};

/// Paths in the order they run within a round (bench.sh records the ones it
/// ran in a `{"kind":"paths"}` line). The `-fast` ones go through the test
/// peers' minimal CONNECT upstream instead of squid.
pub const PATHS: &[&str] = &[
    "direct",
    "env-var",
    "redirector",
    "redsocks",
    "kernel-bypass",
    "env-var-fast",
    "redirector-fast",
    "redsocks-fast",
];
/// Paths whose relay process bench.sh watches (CPU, RSS).
const RELAYS: &[&str] = &["redirector", "redsocks", "redirector-fast", "redsocks-fast"];
/// Every workload: the network ones bench.sh runs, and `micro` (criterion).
pub const WORKLOADS: &[&str] = &["bulk", "rate", "latency", "iperf3", "memory", "micro"];
/// What `--quick` runs unless `--workloads` says otherwise.
const QUICK_WORKLOADS: &[&str] = &["bulk", "rate", "latency", "memory"];
/// The criterion benches of the redirector crate that `micro` runs.
const MICRO_BENCHES: &[&str] = &["noproxy", "classify"];

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// Small sizes and one round, no iperf3 nor criterion; asserts only that
    /// every path moved data.
    #[arg(long)]
    pub quick: bool,
    /// Only these paths, comma-separated (default: all): direct, env-var,
    /// redirector, redsocks, kernel-bypass, env-var-fast, redirector-fast,
    /// redsocks-fast.
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Only these workloads, comma-separated (default: all; with --quick
    /// bulk,rate,latency,memory): bulk, rate, latency, iperf3, memory, micro.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Interleaved rounds (default 3, 1 with --quick).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Bytes each way of bulk and iperf3, in MiB (default 1024, 64 with --quick).
    #[arg(long)]
    pub bulk_mib: Option<u64>,
    /// Idle connections of the memory workload (default 9000, 200 with --quick;
    /// redsocks is capped at 2000).
    #[arg(long)]
    pub idle_connections: Option<u32>,
    /// Benchmark this daemon binary instead of building one.
    #[arg(long)]
    pub daemon: Option<PathBuf>,
}

impl Options {
    fn workloads(&self) -> Vec<String> {
        if !self.workloads.is_empty() {
            self.workloads.clone()
        } else if self.quick {
            QUICK_WORKLOADS.iter().map(|w| w.to_string()).collect()
        } else {
            WORKLOADS.iter().map(|w| w.to_string()).collect()
        }
    }

    fn check(&self) -> Result<()> {
        for p in &self.paths {
            if !PATHS.contains(&p.as_str()) {
                bail!("unknown path `{p}` (known: {})", PATHS.join(", "));
            }
        }
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                bail!("unknown workload `{w}` (known: {})", WORKLOADS.join(", "));
            }
        }
        Ok(())
    }
}

/// bench.sh's record of what the run covers.
fn run_record(records: &[Record]) -> Option<&Run> {
    records.iter().find_map(|r| match r {
        Record::Paths(run) => Some(run),
        _ => None,
    })
}

/// The paths of the run: bench.sh's `paths` record, else all of them.
pub fn run_paths(records: &[Record]) -> Vec<String> {
    run_record(records).map_or_else(
        || PATHS.iter().map(|p| p.to_string()).collect(),
        |run| run.paths.clone(),
    )
}

/// The network workloads of the run: bench.sh's record, else bulk, rate
/// and latency.
fn run_workloads(records: &[Record]) -> Vec<String> {
    run_record(records).map_or_else(
        || {
            ["bulk", "rate", "latency"]
                .iter()
                .map(|w| w.to_string())
                .collect()
        },
        |run| run.workloads.clone(),
    )
}

/// Workloads and the figures each one reports.
const FIGURES: &[(&str, &[&str])] = &[
    ("bulk", &["up_gbps", "down_gbps"]),
    ("iperf3", &["up_gbps", "down_gbps"]),
    ("rate", &["conn_per_s", "errors"]),
    ("latency", &["p50_ms", "p99_ms", "errors"]),
];

/// `cargo xtask bench`.
pub fn bench(paths: &Paths, opts: &Options) -> Result<()> {
    opts.check()?;
    let network = opts.workloads().iter().any(|w| w != "micro");
    let daemon = if network {
        require_root("the benchmark")?;
        setup::setup(paths, setup::Purpose::Bench)?;
        Some(match &opts.daemon {
            Some(d) => d
                .canonicalize()
                .with_context(|| format!("--daemon {}", d.display()))?,
            None => build::build(paths, true)?,
        })
    } else {
        None
    };
    run_with(paths, daemon.as_deref(), opts)
}

/// The benchmark with a daemon already built (`test` runs it with `quick`
/// after the end-to-end tests).
pub fn run_bench(paths: &Paths, daemon: &Path, quick: bool) -> Result<()> {
    let opts = Options {
        quick,
        ..Options::default()
    };
    run_with(paths, Some(daemon), &opts)
}

fn run_with(paths: &Paths, daemon: Option<&Path>, opts: &Options) -> Result<()> {
    let out_dir = paths.root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let raw = out_dir.join("raw.jsonl");
    let _ = fs::remove_file(&raw);
    let workloads = opts.workloads();
    let micro = if workloads.iter().any(|w| w == "micro") {
        // First, while nothing else runs.
        Some(run_micro(paths, opts.quick)?)
    } else {
        None
    };
    let network: Vec<&str> = workloads
        .iter()
        .map(String::as_str)
        .filter(|w| *w != "micro")
        .collect();
    let mut records = Vec::new();
    if let (Some(daemon), false) = (daemon, network.is_empty()) {
        // Optimised in every mode: the measuring tools should cost as
        // little CPU as they can, and a release build of the `redirector`
        // library is at hand (the daemon's dependencies are built).
        let peers = build::build_peers(paths, true)?;
        let mut cmd = e2e_command(paths, "bench.sh", daemon)?;
        cmd.env("BENCH_PEERS", peers)
            .env("BENCH_RAW", &raw)
            .env("BENCH_QUICK", if opts.quick { "1" } else { "0" })
            .env("BENCH_PATHS", opts.paths.join(" "))
            .env("BENCH_WORKLOADS", network.join(" "));
        for (var, value) in [
            ("BENCH_ROUNDS", opts.rounds.map(u64::from)),
            ("BENCH_BULK_MIB", opts.bulk_mib),
            ("BENCH_IDLE_CONNS", opts.idle_connections.map(u64::from)),
        ] {
            if let Some(v) = value {
                cmd.env(var, v.to_string());
            }
        }
        run(&mut cmd).context("tests/e2e/bench.sh failed")?;
        let text = fs::read_to_string(&raw).with_context(|| format!("read {}", raw.display()))?;
        records = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("parse raw.jsonl")?;
    }
    let summary = summarise(&records, opts.quick, &machine(), micro.as_ref());
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let md = markdown(&summary);
    fs::write(out_dir.join("results.md"), &md)?;
    println!("{md}");
    println!("written: target/bench/results.json, target/bench/results.md");
    if opts.quick && !records.is_empty() {
        check_moved_data(&records)?;
        println!("bench --quick: every path moved data");
    }
    Ok(())
}

/// The part of criterion's `benchmark.json` that is read.
#[derive(Deserialize)]
struct CriterionBenchmark {
    full_id: Option<String>,
}

/// The part of criterion's `estimates.json` that is read (nanoseconds).
#[derive(Deserialize)]
struct CriterionEstimates {
    median: Option<CriterionEstimate>,
}

#[derive(Deserialize)]
struct CriterionEstimate {
    point_estimate: f64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    Ok(serde_json::from_str(&fs::read_to_string(path)?)?)
}

/// Runs the criterion benches of the redirector crate (briefly with
/// `quick`) and returns the median of each benchmark in nanoseconds, by id.
fn run_micro(paths: &Paths, quick: bool) -> Result<Value> {
    let started = SystemTime::now();
    let mut cmd = toolchain::host_cargo();
    // The release build's eBPF object: the lib is then the same build as
    // the daemon's and not rebuilt twice.
    cmd.env(build::EBPF_OBJ_ENV, paths.ebpf_object())
        .args(["bench", "--package", "redirector"]);
    for b in MICRO_BENCHES {
        cmd.args(["--bench", b]);
    }
    cmd.arg("--");
    if quick {
        cmd.arg("--quick");
    } else {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    run(&mut cmd).context("criterion benches")?;
    let mut out = serde_json::Map::new();
    let dir = paths.root.join("target/criterion");
    for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let new = entry?.path().join("new");
        let fresh = fs::metadata(new.join("estimates.json"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= started);
        if !fresh {
            continue;
        }
        let id: CriterionBenchmark = read_json(&new.join("benchmark.json"))?;
        let estimates: CriterionEstimates = read_json(&new.join("estimates.json"))?;
        if let (Some(id), Some(ns)) = (id.full_id, estimates.median.map(|m| m.point_estimate)) {
            out.insert(id, json!(ns));
        }
    }
    if out.is_empty() {
        bail!(
            "criterion ran but wrote no estimates under {}",
            dir.display()
        );
    }
    Ok(Value::Object(out))
}

/// `--quick`'s only assertion: each path completed each workload of the
/// run at least once with data through it.
pub fn check_moved_data(records: &[Record]) -> Result<()> {
    let mut missing = Vec::new();
    let workloads = run_workloads(records);
    for path in &run_paths(records) {
        for workload in &workloads {
            let workload = workload.as_str();
            // iperf3 cannot speak CONNECT; memory is a relay's figure.
            if (workload == "iperf3" && path.starts_with("env-var"))
                || (workload == "memory" && !RELAYS.contains(&path.as_str()))
            {
                continue;
            }
            if !records.iter().any(|r| moved_data(r, path, workload)) {
                missing.push(format!("{path}/{workload}"));
            }
        }
    }
    if !missing.is_empty() {
        bail!("no data moved on: {}", missing.join(", "));
    }
    Ok(())
}

/// Whether `record` shows `workload` moving data over `path`.
fn moved_data(record: &Record, path: &str, workload: &str) -> bool {
    match record {
        Record::Load(l) if l.path == path && l.measured.workload() == workload => {
            match &l.measured {
                Measured::Bulk(t) | Measured::Iperf3(t) => t.bytes > 0,
                Measured::Rate(r) => r.ok > 0,
                Measured::Latency(l) => l.samples > 0,
                Measured::Idle(i) => i.opened > 0,
            }
        }
        Record::Memory(m) => workload == "memory" && m.path == path && m.connections > 0,
        _ => false,
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Ratios reported for each pair, and the two sets they come in: through
/// squid, and through the fast upstream.
const RATIO_PAIRS: &[(&str, &str)] = &[
    ("redirector", "env-var"),
    ("redirector", "redsocks"),
    ("redsocks", "env-var"),
    ("kernel-bypass", "direct"),
    ("redirector-fast", "env-var-fast"),
    ("redirector-fast", "redsocks-fast"),
    ("redsocks-fast", "env-var-fast"),
];
const RATIO_KEYS: &[&str] = &[
    "bulk.up_gbps",
    "bulk.down_gbps",
    "iperf3.up_gbps",
    "iperf3.down_gbps",
    "rate.conn_per_s",
    "latency.p50_ms",
];

/// A figure of [`FIGURES`] that a workload run measured.
fn figure(measured: &Measured, name: &str) -> Option<f64> {
    match (measured, name) {
        (Measured::Bulk(t) | Measured::Iperf3(t), "up_gbps") => Some(t.up_gbps),
        (Measured::Bulk(t) | Measured::Iperf3(t), "down_gbps") => Some(t.down_gbps),
        (Measured::Rate(r), "conn_per_s") => Some(r.conn_per_s),
        (Measured::Rate(r), "errors") => Some(r.errors as f64),
        (Measured::Latency(l), "p50_ms") => Some(l.p50_ms),
        (Measured::Latency(l), "p99_ms") => Some(l.p99_ms),
        (Measured::Latency(l), "errors") => Some(l.errors as f64),
        _ => None,
    }
}

/// Medians over the rounds of every path × workload figure, the relay
/// figures, the ratios and the micro-benchmarks.
pub fn summarise(records: &[Record], quick: bool, machine: &Value, micro: Option<&Value>) -> Value {
    let paths = run_paths(records);
    let mut figures = BTreeMap::new();
    for path in &paths {
        let mut per_path = serde_json::Map::new();
        for (workload, names) in FIGURES {
            let runs: Vec<&Measured> = records
                .iter()
                .filter_map(|r| match r {
                    Record::Load(l) if l.path == *path && l.measured.workload() == *workload => {
                        Some(&l.measured)
                    }
                    _ => None,
                })
                .collect();
            for name in *names {
                let vals: Vec<f64> = runs.iter().filter_map(|m| figure(m, name)).collect();
                let key = format!("{workload}.{name}");
                let v = if *name == "errors" {
                    (!vals.is_empty()).then(|| vals.iter().sum())
                } else {
                    median(vals)
                };
                per_path.insert(key, v.map_or(Value::Null, Value::from));
            }
            per_path.insert(format!("{workload}.runs"), json!(runs.len()));
        }
        figures.insert(path.clone(), Value::Object(per_path));
    }
    let fig = |path: &str, key: &str| figures.get(path).and_then(|p| p[key].as_f64());
    let mut ratios = serde_json::Map::new();
    for (a, b) in RATIO_PAIRS {
        for key in RATIO_KEYS {
            if let (Some(x), Some(y)) = (fig(a, key), fig(b, key))
                && y > 0.0
            {
                ratios.insert(format!("{a}/{b} {key}"), json!(x / y));
            }
        }
    }
    for (a, b) in [
        ("redirector", "env-var"),
        ("redirector-fast", "env-var-fast"),
    ] {
        if let (Some(x), Some(y)) = (fig(a, "latency.p50_ms"), fig(b, "latency.p50_ms")) {
            ratios.insert(
                format!("{a}-{b} latency.p50 added µs"),
                json!((x - y) * 1000.0),
            );
        }
    }

    let mut relays = serde_json::Map::new();
    let gib = (1u64 << 30) as f64;
    for relay in RELAYS {
        if !paths.iter().any(|p| p == relay) {
            continue;
        }
        let runs: Vec<&RelayCost> = records
            .iter()
            .filter_map(|r| match r {
                Record::Daemon(d) if d.path == *relay => Some(d),
                _ => None,
            })
            .collect();
        let per_gib = |cpu_s: fn(&RelayCost) -> Option<f64>| {
            median(
                runs.iter()
                    .filter_map(|r| Some(cpu_s(r)? / (r.bytes as f64 / gib)))
                    .collect(),
            )
        };
        let rss_idle = runs
            .iter()
            .map(|r| r.rss_kib_before as f64)
            .reduce(f64::min);
        let rss_max = runs.iter().map(|r| r.rss_kib_after as f64).reduce(f64::max);
        let memory: Vec<&IdleMemory> = records
            .iter()
            .filter_map(|r| match r {
                Record::Memory(m) if m.path == *relay => Some(m),
                _ => None,
            })
            .collect();
        let kib_per_conn = median(
            memory
                .iter()
                .filter(|m| m.connections > 0)
                .map(|m| (m.rss_kib_held as f64 - m.rss_kib_before as f64) / m.connections as f64)
                .collect(),
        );
        relays.insert(
            relay.to_string(),
            json!({
                "cpu_s_per_gib_relayed": per_gib(|r| Some(r.cpu_s)),
                "upstream_cpu_s_per_gib": per_gib(|r| r.upstream_cpu_s),
                "rss_kib_idle": rss_idle,
                "rss_kib_after_bulk_max": rss_max,
                "idle_connections": memory.iter().map(|m| m.connections).max(),
                "idle_connections_requested": memory.iter().map(|m| m.requested).max(),
                "rss_kib_before_idle": memory.first().map(|m| m.rss_kib_before as f64),
                "rss_kib_with_idle": memory.first().map(|m| m.rss_kib_held as f64),
                "kib_per_idle_connection": kib_per_conn,
            }),
        );
    }
    let run = run_record(records);
    json!({
        "mode": if quick { "quick" } else { "full" },
        "machine": machine,
        "paths": paths,
        "workloads": run.map(|r| &r.workloads),
        "sizes": {
            "bulk_bytes": run.map(|r| r.bulk_bytes),
            "idle_connections": run.map(|r| r.idle_connections),
        },
        "figures": figures,
        "ratios": ratios,
        "relays": relays,
        "micro_ns": micro.cloned().unwrap_or(Value::Null),
        "rounds": records.iter().filter_map(Record::round).max(),
    })
}

/// Cores, kernel and the versions of the tools in the run.
fn machine() -> Value {
    let out = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_default()
    };
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": out("uname", &["-r"]),
        "cpu": fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())),
        "squid": out("squid", &["-v"]),
        "redsocks": out("redsocks", &["-v"]),
        "iperf3": out("iperf3", &["--version"]),
        "redirector": env!("CARGO_PKG_VERSION"),
    })
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

/// The Markdown tables of a summary.
pub fn markdown(s: &Value) -> String {
    let mut md = String::new();
    let m = &s["machine"];
    let bulk_mib = s["sizes"]["bulk_bytes"].as_u64().map(|b| b >> 20);
    md += &format!(
        "# egress-redirector benchmark ({} mode)\n\nMachine: {} cores, kernel {}, {}. \
         Upstreams: {} (one worker), and the test peers' minimal CONNECT upstream (the `-fast` paths: \
         one epoll thread per core, splice). Medians over {} interleaved rounds; bulk {} MiB each way.\n\n",
        s["mode"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["squid"].as_str().unwrap_or("?"),
        s["rounds"],
        bulk_mib.map_or_else(|| "?".to_string(), |b| b.to_string()),
    );
    let paths: Vec<&str> = s["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !paths.is_empty() {
        md += "| path | bulk up Gbit/s | bulk down Gbit/s | iperf3 up Gbit/s | iperf3 down Gbit/s | \
               conn/s (c=32) | conn errors | connect→first byte p50 ms | p99 ms | latency errors |\n";
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for path in &paths {
            let f = &s["figures"][path];
            // A run of memory or micro alone has no figure here.
            if f.as_object()
                .is_none_or(|f| f.iter().all(|(k, v)| k.ends_with(".runs") || v.is_null()))
            {
                continue;
            }
            md += &format!(
                "| {path} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(&f["bulk.up_gbps"], 2),
                fmt(&f["bulk.down_gbps"], 2),
                fmt(&f["iperf3.up_gbps"], 2),
                fmt(&f["iperf3.down_gbps"], 2),
                fmt(&f["rate.conn_per_s"], 0),
                fmt(&f["rate.errors"], 0),
                fmt(&f["latency.p50_ms"], 3),
                fmt(&f["latency.p99_ms"], 3),
                fmt(&f["latency.errors"], 0),
            );
        }
    }
    md += &ratio_table(&s["ratios"]);
    md += &relay_table(&s["relays"]);
    md += &micro_table(&s["micro_ns"]);
    md
}

/// Ratios side by side: through squid, and through the fast upstream.
fn ratio_table(r: &Value) -> String {
    let Some(r) = r.as_object().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let rows: &[(&str, &str, Option<&str>)] = &[
        (
            "redirector / env-var",
            "redirector/env-var",
            Some("redirector-fast/env-var-fast"),
        ),
        (
            "redirector / redsocks",
            "redirector/redsocks",
            Some("redirector-fast/redsocks-fast"),
        ),
        (
            "redsocks / env-var",
            "redsocks/env-var",
            Some("redsocks-fast/env-var-fast"),
        ),
        ("kernel-bypass / direct", "kernel-bypass/direct", None),
    ];
    let keys = [
        ("bulk up", "bulk.up_gbps"),
        ("bulk down", "bulk.down_gbps"),
        ("iperf3 up", "iperf3.up_gbps"),
        ("iperf3 down", "iperf3.down_gbps"),
        ("conn/s", "rate.conn_per_s"),
        ("latency p50", "latency.p50_ms"),
    ];
    let mut md = "\n| ratio | via squid | via fast upstream |\n|---|---:|---:|\n".to_string();
    for (label, squid, fast) in rows {
        for (what, key) in keys {
            let a = r.get(&format!("{squid} {key}"));
            let b = fast.and_then(|f| r.get(&format!("{f} {key}")));
            if a.is_none() && b.is_none() {
                continue;
            }
            md += &format!(
                "| {label}: {what} | {} | {} |\n",
                fmt(a.unwrap_or(&Value::Null), 3),
                fmt(b.unwrap_or(&Value::Null), 3)
            );
        }
    }
    let a = r.get("redirector-env-var latency.p50 added µs");
    let b = r.get("redirector-fast-env-var-fast latency.p50 added µs");
    if a.is_some() || b.is_some() {
        md += &format!(
            "| redirector − env-var: latency p50, µs added | {} | {} |\n",
            fmt(a.unwrap_or(&Value::Null), 0),
            fmt(b.unwrap_or(&Value::Null), 0)
        );
    }
    md
}

fn relay_table(r: &Value) -> String {
    let Some(r) = r.as_object().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut md =
        "\n| relay process (path) | CPU s per GiB relayed | its upstream's CPU s per GiB | \
                  RSS KiB idle | RSS KiB max after bulk | idle connections held / asked | \
                  RSS KiB before → with them | KiB RSS per idle connection |\n\
                  |---|---:|---:|---:|---:|---:|---:|---:|\n"
            .to_string();
    for (relay, d) in r {
        md += &format!(
            "| {relay} | {} | {} | {} | {} | {} / {} | {} → {} | {} |\n",
            fmt(&d["cpu_s_per_gib_relayed"], 2),
            fmt(&d["upstream_cpu_s_per_gib"], 2),
            fmt(&d["rss_kib_idle"], 0),
            fmt(&d["rss_kib_after_bulk_max"], 0),
            fmt(&d["idle_connections"], 0),
            fmt(&d["idle_connections_requested"], 0),
            fmt(&d["rss_kib_before_idle"], 0),
            fmt(&d["rss_kib_with_idle"], 0),
            fmt(&d["kib_per_idle_connection"], 2),
        );
    }
    md
}

/// The criterion medians: NO_PROXY decisions (index, the linear scan it
/// replaced, and the whole `Policy::decide`), then the classifier.
fn micro_table(m: &Value) -> String {
    let Some(m) = m.as_object().filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let ns = |id: String| fmt(m.get(&id).unwrap_or(&Value::Null), 1);
    let mut md = "\n| NO_PROXY decision (criterion, median ns) | NoProxy::find | the index | \
                  linear scan | Policy::decide |\n|---|---:|---:|---:|---:|\n"
        .to_string();
    let mut cases: Vec<(u64, &str)> = m
        .keys()
        .filter_map(|k| {
            let mut parts = k.split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("find"), Some(n), Some(q)) => Some((n.parse().ok()?, q)),
                _ => None,
            }
        })
        .collect();
    cases.sort();
    for (n, q) in cases {
        md += &format!(
            "| {n} rules, {q} | {} | {} | {} | {} |\n",
            ns(format!("find/{n}/{q}")),
            ns(format!("index/{n}/{q}")),
            ns(format!("scan/{n}/{q}")),
            ns(format!("decide/{n}/{q}")),
        );
    }
    md += "\n| classify (SNI / Host peek) | median ns |\n|---|---:|\n";
    for (id, v) in m.iter().filter(|(k, _)| k.starts_with("classify/")) {
        md += &format!("| {} | {} |\n", &id["classify/".len()..], fmt(v, 1));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load line of `peers load`, as JSON.
    fn rec(path: &str, workload: &str, v: Value) -> Value {
        let mut r = json!({"kind": "load", "path": path, "workload": workload, "round": 1,
            "server": "10.249.0.2:7100", "proxy": null});
        r.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        r
    }

    /// bench.sh's line of what the run covers.
    fn run_line(paths: &[&str], workloads: &[&str]) -> Value {
        json!({"kind": "paths", "paths": paths, "workloads": workloads, "rounds": 1,
            "bulk_bytes": 5, "idle_connections": 9, "quick": true})
    }

    /// The lines, read as `cargo xtask bench` reads raw.jsonl.
    fn records(lines: &[Value]) -> Vec<Record> {
        lines
            .iter()
            .map(|l| serde_json::from_value(l.clone()).unwrap())
            .collect()
    }

    fn all_paths(ok: u64) -> Vec<Value> {
        let mut v = Vec::new();
        for (i, p) in PATHS.iter().enumerate() {
            let x = (i + 1) as f64;
            v.push(rec(
                p,
                "bulk",
                json!({"bytes": ok, "up_gbps": x, "down_gbps": x}),
            ));
            v.push(rec(
                p,
                "rate",
                json!({"concurrency": 32, "ok": ok, "errors": 0, "conn_per_s": 100.0 * x}),
            ));
            v.push(rec(
                p,
                "latency",
                json!({"per_second": 100, "samples": ok, "errors": 0, "p50_ms": x,
                    "p99_ms": 2.0 * x}),
            ));
        }
        v
    }

    #[test]
    fn quick_check_needs_every_path() {
        let check = |lines: &[Value]| check_moved_data(&records(lines));
        assert!(check(&all_paths(5)).is_ok());
        let err = check(&all_paths(0)).unwrap_err().to_string();
        assert!(err.contains("redirector/rate"), "{err}");
        let mut some = all_paths(5);
        some.retain(|r| r["path"] != "kernel-bypass");
        assert!(check(&some).is_err());
        // a run without redsocks says so, and is complete without it
        let mut no_redsocks = all_paths(5);
        no_redsocks.retain(|r| r["path"] != "redsocks");
        no_redsocks.push(run_line(
            &["direct", "env-var", "redirector", "kernel-bypass"],
            &["bulk", "rate", "latency"],
        ));
        assert!(check(&no_redsocks).is_ok());
        // memory is asked of the relays only, iperf3 of all but env-var
        let mut more = all_paths(5);
        more.push(run_line(
            &["env-var", "redirector"],
            &["bulk", "memory", "iperf3"],
        ));
        let err = check(&more).unwrap_err().to_string();
        assert_eq!(
            err,
            "no data moved on: redirector/memory, redirector/iperf3"
        );
        more.push(
            json!({"kind": "memory", "path": "redirector", "requested": 9,
            "connections": 9, "rss_kib_before": 4000, "rss_kib_held": 4100}),
        );
        more.push(rec(
            "redirector",
            "iperf3",
            json!({"bytes": 1, "up_gbps": 1.0, "down_gbps": 1.0}),
        ));
        assert!(check(&more).is_ok());
    }

    #[test]
    fn summary_has_medians_and_ratios() {
        let mut recs = all_paths(5);
        recs.push(rec(
            "direct",
            "bulk",
            json!({"bytes": 5, "up_gbps": 3.0, "down_gbps": 3.0}),
        ));
        recs.push(
            json!({"kind": "daemon", "path": "redirector", "round": 1, "cpu_s": 0.5,
            "bytes": 1u64 << 31, "upstream_cpu_s": 2.0, "rss_kib_before": 4000,
            "rss_kib_after": 5000}),
        );
        recs.push(
            json!({"kind": "memory", "path": "redirector", "requested": 100, "connections": 100,
            "rss_kib_before": 4000, "rss_kib_held": 4300}),
        );
        let micro = json!({"find/10000/name-miss": 30.0, "scan/10000/name-miss": 56000.0,
            "decide/10000/name-miss": 80.0, "find/10/name-miss": 20.0,
            "classify/tls13-openssl": 100.0});
        let s = summarise(&records(&recs), true, &json!({"cores": 2}), Some(&micro));
        assert_eq!(s["figures"]["direct"]["bulk.up_gbps"], 2.0);
        assert_eq!(s["ratios"]["redirector/env-var rate.conn_per_s"], 1.5);
        assert_eq!(s["relays"]["redirector"]["cpu_s_per_gib_relayed"], 0.25);
        assert_eq!(s["relays"]["redirector"]["upstream_cpu_s_per_gib"], 1.0);
        assert_eq!(s["relays"]["redirector"]["kib_per_idle_connection"], 3.0);
        // no iperf3 figures: no iperf3 ratios
        assert!(
            s["ratios"]
                .get("redirector/env-var iperf3.up_gbps")
                .is_none()
        );
        let md = markdown(&s);
        assert!(md.contains("| kernel-bypass |"), "{md}");
        assert!(md.contains("| redirector-fast |"), "{md}");
        assert!(md.contains("2 cores"), "{md}");
        // paths 3 and 2 through squid, 7 and 6 through the fast upstream
        assert!(
            md.contains("| redirector / env-var: conn/s | 1.500 | 1.167 |"),
            "{md}"
        );
        assert!(
            md.contains("| kernel-bypass / direct: conn/s | 5.000 | – |"),
            "{md}"
        );
        let (ten, many) = (
            md.find("| 10 rules, name-miss | 20.0 | – | – | – |"),
            md.find("| 10000 rules, name-miss | 30.0 | – | 56000.0 | 80.0 |"),
        );
        assert!(ten.is_some() && many.is_some() && ten < many, "{md}");
        assert!(md.contains("| tls13-openssl | 100.0 |"), "{md}");
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
