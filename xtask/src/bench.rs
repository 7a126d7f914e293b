//! `cargo xtask bench [--quick]`: the same workloads over every egress path
//! of the miniature node, interleaved (A B C D A B C D ...) so machine noise
//! hits all paths alike, summarised as JSON and a Markdown table under
//! `target/bench/`.
//!
//! `tests/e2e/bench.sh` builds the node (lib.sh: blackhole routes, lock,
//! namespaces), starts squid as the upstream and our server in rde-inet, and
//! runs `cargo xtask bench-load` in the pods for each round, path and
//! workload; every run appends one JSON line to `target/bench/raw.jsonl`.
//! This module then takes the medians and ratios. `--quick` only checks
//! that every path moved data: a speed is never asserted.

pub mod loadgen;

use std::collections::BTreeMap;
use std::fs;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::toolchain::{Paths, run};
use crate::{build, setup, test};

/// Paths in the order they run within a round (bench.sh records the ones it
/// ran in a `{"kind":"paths"}` line; redsocks can be left out).
pub const PATHS: &[&str] = &[
    "direct",
    "env-var",
    "redirector",
    "redsocks",
    "kernel-bypass",
];
/// Paths whose relay process bench.sh watches (CPU, RSS).
const RELAYS: &[&str] = &["redirector", "redsocks"];

/// The paths of the run: bench.sh's `paths` record, else all of them.
pub fn run_paths(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .find(|r| r["kind"] == "paths")
        .and_then(|r| r["paths"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_else(|| PATHS.iter().map(|p| p.to_string()).collect())
}
/// Workloads and the figures each one reports.
const FIGURES: &[(&str, &[&str])] = &[
    ("bulk", &["up_gbps", "down_gbps"]),
    ("rate", &["conn_per_s", "errors"]),
    ("latency", &["p50_ms", "p99_ms", "errors"]),
];

pub fn bench(paths: &Paths, quick: bool) -> Result<()> {
    test::require_root("the benchmark")?;
    setup::setup(paths)?;
    let daemon = build::build(paths, true)?;
    run_bench(paths, &daemon, quick)
}

/// The benchmark itself, with a daemon already built (`test` runs it with
/// `quick` after the end-to-end tests).
pub fn run_bench(paths: &Paths, daemon: &Path, quick: bool) -> Result<()> {
    let out_dir = paths.root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let raw = out_dir.join("raw.jsonl");
    let _ = fs::remove_file(&raw);
    let xtask = std::env::current_exe().context("path of xtask itself")?;
    let mut cmd = test::e2e_command(paths, "bench.sh", daemon)?;
    cmd.env("BENCH_XTASK", &xtask)
        .env("BENCH_RAW", &raw)
        .env("BENCH_QUICK", if quick { "1" } else { "0" });
    run(&mut cmd).context("tests/e2e/bench.sh failed")?;

    let text = fs::read_to_string(&raw).with_context(|| format!("read {}", raw.display()))?;
    let records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parse raw.jsonl")?;
    let summary = summarise(&records, quick, &machine());
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let md = markdown(&summary);
    fs::write(out_dir.join("results.md"), &md)?;
    println!("{md}");
    println!("written: target/bench/results.json, target/bench/results.md");
    if quick {
        check_moved_data(&records)?;
        println!("bench --quick: every path moved data");
    }
    Ok(())
}

/// `--quick`'s only assertion: each path completed each workload at least
/// once with data through it.
pub fn check_moved_data(records: &[Value]) -> Result<()> {
    let mut missing = Vec::new();
    for path in &run_paths(records) {
        for (workload, _) in FIGURES {
            let moved = records.iter().any(|r| {
                r["path"] == path.as_str()
                    && r["workload"] == *workload
                    && match *workload {
                        "bulk" => r["bytes"].as_u64().unwrap_or(0) > 0,
                        "rate" => r["ok"].as_u64().unwrap_or(0) > 0,
                        _ => r["samples"].as_u64().unwrap_or(0) > 0,
                    }
            });
            if !moved {
                missing.push(format!("{path}/{workload}"));
            }
        }
    }
    if !missing.is_empty() {
        bail!("no data moved on: {}", missing.join(", "));
    }
    Ok(())
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

/// Medians over the rounds of every path × workload figure, the daemon
/// figures, and the ratios.
pub fn summarise(records: &[Value], quick: bool, machine: &Value) -> Value {
    let paths = run_paths(records);
    let mut figures = BTreeMap::new();
    for path in &paths {
        let mut per_path = serde_json::Map::new();
        for (workload, names) in FIGURES {
            let runs: Vec<&Value> = records
                .iter()
                .filter(|r| r["path"] == path.as_str() && r["workload"] == *workload)
                .collect();
            for name in *names {
                let vals: Vec<f64> = runs.iter().filter_map(|r| r[*name].as_f64()).collect();
                let key = format!("{workload}.{name}");
                let v = if *name == "errors" {
                    Some(vals.iter().sum())
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
    let ratio = |a: &str, b: &str, key: &str| match (fig(a, key), fig(b, key)) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    };
    let mut ratios = serde_json::Map::new();
    for (a, b) in [
        ("redirector", "env-var"),
        ("redirector", "redsocks"),
        ("redsocks", "env-var"),
        ("kernel-bypass", "direct"),
    ] {
        for key in [
            "bulk.up_gbps",
            "bulk.down_gbps",
            "rate.conn_per_s",
            "latency.p50_ms",
        ] {
            ratios.insert(format!("{a}/{b} {key}"), ratio(a, b, key));
        }
    }
    let added = match (
        fig("redirector", "latency.p50_ms"),
        fig("env-var", "latency.p50_ms"),
    ) {
        (Some(x), Some(y)) => json!((x - y) * 1000.0),
        _ => Value::Null,
    };
    ratios.insert("redirector-env-var latency.p50 added µs".into(), added);

    let mut relays = serde_json::Map::new();
    for relay in RELAYS {
        let runs: Vec<&Value> = records
            .iter()
            .filter(|r| r["kind"] == "daemon" && r["path"] == *relay)
            .collect();
        if runs.is_empty() && !records.iter().any(|r| r["path"] == *relay) {
            continue;
        }
        let gib = (1u64 << 30) as f64;
        let cpu_per_gib = median(
            runs.iter()
                .filter_map(|r| Some(r["cpu_s"].as_f64()? / (r["bytes"].as_f64()? / gib)))
                .collect(),
        );
        let rss_idle = runs
            .iter()
            .filter_map(|r| r["rss_kib_before"].as_f64())
            .reduce(f64::min);
        let rss_max = runs
            .iter()
            .filter_map(|r| r["rss_kib_after"].as_f64())
            .reduce(f64::max);
        let memory: Vec<&Value> = records
            .iter()
            .filter(|r| r["kind"] == "memory" && r["path"] == *relay)
            .collect();
        let kib_per_conn = median(
            memory
                .iter()
                .filter_map(|r| {
                    let n = r["connections"].as_f64().filter(|n| *n > 0.0)?;
                    Some((r["rss_kib_held"].as_f64()? - r["rss_kib_before"].as_f64()?) / n)
                })
                .collect(),
        );
        let idle_conns = memory
            .iter()
            .filter_map(|r| r["connections"].as_u64())
            .max();
        relays.insert(
            relay.to_string(),
            json!({
                "cpu_s_per_gib_relayed": cpu_per_gib,
                "rss_kib_idle": rss_idle,
                "rss_kib_after_bulk_max": rss_max,
                "idle_connections": idle_conns,
                "kib_per_idle_connection": kib_per_conn,
            }),
        );
    }
    json!({
        "mode": if quick { "quick" } else { "full" },
        "machine": machine,
        "paths": paths,
        "figures": figures,
        "ratios": ratios,
        "relays": relays,
        "rounds": records.iter().filter_map(|r| r["round"].as_u64()).max(),
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
        "redirector": env!("CARGO_PKG_VERSION"),
    })
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

/// The Markdown table of a summary.
pub fn markdown(s: &Value) -> String {
    let mut md = String::new();
    let m = &s["machine"];
    md += &format!(
        "# egress-redirector benchmark ({} mode)\n\nMachine: {} cores, kernel {}, {}. Upstream: {}. \
         Medians over {} interleaved rounds.\n\n",
        s["mode"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        m["squid"].as_str().unwrap_or("?"),
        s["rounds"],
    );
    md += "| path | bulk up Gbit/s | bulk down Gbit/s | conn/s (c=32) | conn errors | \
           connect→first byte p50 ms | p99 ms | latency errors |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for path in s["paths"].as_array().into_iter().flatten() {
        let path = path.as_str().unwrap_or("?");
        let f = &s["figures"][path];
        md += &format!(
            "| {path} | {} | {} | {} | {} | {} | {} | {} |\n",
            fmt(&f["bulk.up_gbps"], 2),
            fmt(&f["bulk.down_gbps"], 2),
            fmt(&f["rate.conn_per_s"], 0),
            fmt(&f["rate.errors"], 0),
            fmt(&f["latency.p50_ms"], 3),
            fmt(&f["latency.p99_ms"], 3),
            fmt(&f["latency.errors"], 0),
        );
    }
    md += "\n| ratio | value |\n|---|---:|\n";
    if let Some(r) = s["ratios"].as_object() {
        for (k, v) in r {
            md += &format!("| {k} | {} |\n", fmt(v, 3));
        }
    }
    md += "\n| relay process | CPU s per GiB relayed | RSS KiB idle | RSS KiB max after bulk | \
           idle connections held | KiB RSS per idle connection |\n\
           |---|---:|---:|---:|---:|---:|\n";
    if let Some(r) = s["relays"].as_object() {
        for (relay, d) in r {
            md += &format!(
                "| {relay} | {} | {} | {} | {} | {} |\n",
                fmt(&d["cpu_s_per_gib_relayed"], 2),
                fmt(&d["rss_kib_idle"], 0),
                fmt(&d["rss_kib_after_bulk_max"], 0),
                fmt(&d["idle_connections"], 0),
                fmt(&d["kib_per_idle_connection"], 2),
            );
        }
    }
    md
}

/// Which workload `bench-load` runs, with its size.
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
    /// Open `count` idle connections, write their number to `ready_file`,
    /// hold them for `seconds`.
    Idle {
        count: u32,
        seconds: f64,
        ready_file: PathBuf,
    },
}

/// `cargo xtask bench-load`: run one workload and append its JSON line
/// (with the path label and round) to `out`.
pub fn load(
    label: &str,
    round: u32,
    target: loadgen::Target,
    workload: Workload,
    out: &Path,
) -> Result<()> {
    let mut rec = json!({"kind": "load", "path": label, "round": round,
        "server": target.server.to_string(),
        "proxy": target.proxy.map(|p| p.to_string())});
    let extra = match workload {
        Workload::Bulk { bytes } => {
            let b = loadgen::bulk(target, bytes)?;
            json!({"workload": "bulk", "bytes": b.bytes, "up_gbps": b.up_gbps, "down_gbps": b.down_gbps})
        }
        Workload::Rate {
            concurrency,
            seconds,
        } => {
            let r = loadgen::rate(target, concurrency, Duration::from_secs_f64(seconds));
            json!({"workload": "rate", "concurrency": concurrency, "ok": r.ok, "errors": r.errors,
                "conn_per_s": r.conn_per_s})
        }
        Workload::Latency { per_second, count } => {
            let l = loadgen::latency(target, per_second, count);
            json!({"workload": "latency", "per_second": per_second, "samples": l.samples,
                "errors": l.errors, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms})
        }
        Workload::Idle {
            count,
            seconds,
            ready_file,
        } => {
            let mut written = Ok(());
            let (opened, errors) =
                loadgen::idle(target, count, Duration::from_secs_f64(seconds), |n| {
                    written = fs::write(&ready_file, format!("{n}\n"));
                });
            written.with_context(|| format!("write {}", ready_file.display()))?;
            json!({"workload": "idle", "requested": count, "opened": opened, "errors": errors})
        }
    };
    if let (Some(r), Some(e)) = (rec.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let line = rec.to_string();
    println!("{line}");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, workload: &str, v: Value) -> Value {
        let mut r = json!({"kind": "load", "path": path, "workload": workload, "round": 1});
        r.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        r
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
                json!({"ok": ok, "errors": 0, "conn_per_s": 100.0 * x}),
            ));
            v.push(rec(
                p,
                "latency",
                json!({"samples": ok, "errors": 0, "p50_ms": x, "p99_ms": 2.0 * x}),
            ));
        }
        v
    }

    #[test]
    fn quick_check_needs_every_path() {
        assert!(check_moved_data(&all_paths(5)).is_ok());
        let err = check_moved_data(&all_paths(0)).unwrap_err().to_string();
        assert!(err.contains("redirector/rate"), "{err}");
        let mut some = all_paths(5);
        some.retain(|r| r["path"] != "kernel-bypass");
        assert!(check_moved_data(&some).is_err());
        // a run without redsocks says so, and is complete without it
        let mut no_redsocks = all_paths(5);
        no_redsocks.retain(|r| r["path"] != "redsocks");
        no_redsocks.push(json!({"kind": "paths",
            "paths": ["direct", "env-var", "redirector", "kernel-bypass"]}));
        assert!(check_moved_data(&no_redsocks).is_ok());
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
            json!({"kind": "daemon", "path": "redirector", "cpu_s": 0.5, "bytes": 1u64 << 31,
            "rss_kib_before": 4000, "rss_kib_after": 5000}),
        );
        recs.push(
            json!({"kind": "memory", "path": "redirector", "connections": 100,
            "rss_kib_before": 4000, "rss_kib_held": 4300}),
        );
        let s = summarise(&recs, true, &json!({"cores": 2}));
        assert_eq!(s["figures"]["direct"]["bulk.up_gbps"], 2.0);
        assert_eq!(s["ratios"]["redirector/env-var rate.conn_per_s"], 1.5);
        assert_eq!(s["relays"]["redirector"]["cpu_s_per_gib_relayed"], 0.25);
        assert_eq!(s["relays"]["redirector"]["kib_per_idle_connection"], 3.0);
        let md = markdown(&s);
        assert!(md.contains("| kernel-bypass |"), "{md}");
        assert!(md.contains("2 cores"), "{md}");
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
