//! `cargo xtask soak [--minutes N]`: a bounded soak of the daemon on the
//! miniature node, run on demand (not part of `test`).
//!
//! `tests/e2e/soak.sh` drives it: mixed traffic (HTTPS through mitmproxy,
//! plain HTTP, raw TCP, a noProxy name dialled directly, a noProxy CIDR
//! bypassed in the kernel), a config reload every 30 s, one SIGKILL and
//! restart half-way. At idle points (traffic paused) it records the
//! daemon's RSS, descriptors, map entries and metrics with the load's
//! counts, one JSON line each, in `target/soak/raw.jsonl`. This module
//! checks them and writes `target/soak/summary.json`:
//!
//! - every request accounted for: sent = ok + errors for each kind, and
//!   errors only around the restart;
//! - no leaked descriptors: sockets at every idle point back to the idle
//!   baseline (± 2); pipes within the relay's pool;
//! - stable memory: RSS grows < 5 % between two idle points of one
//!   instance after its warm-up (A → B, C → D);
//! - the original-destination maps stay bounded: at idle, `DST_BY_CLIENT`
//!   nearly empty and `DST_BY_COOKIE` growing only by failed connects;
//! - the daemon's metrics agree with the load between idle points of one
//!   instance: one decision per connection, of the right kind, and one
//!   outcome per decision, none of them a failure;
//! - every reload written was applied, none refused.
//!
//! The lines are read into the types of `soak/records.rs`.

mod records;

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::toolchain::{Paths, e2e_command, require_root, run};
use crate::{build, setup};
use records::{LoadResult, Logs, Point, Record, Restart};

/// Load kinds that go through the daemon (the others are kernel-bypassed).
const PROXIED: &[&str] = &["https", "http", "tcp"];
const DIRECT: &str = "direct";
const BYPASS: &str = "bypass";
const KINDS: &[&str] = &["https", "http", "tcp", "direct", "bypass"];
/// Idle points that must exist, with the instance of the daemon at each.
const POINTS: &[(&str, u64)] = &[("start", 1), ("A", 1), ("B", 1), ("C", 2), ("D", 2)];
/// Pairs of idle points of one instance, after its warm-up.
const WINDOWS: &[(&str, &str)] = &[("A", "B"), ("C", "D")];
/// Allowed RSS growth within a window.
const RSS_GROWTH_MAX: f64 = 0.05;
/// Sockets at idle may exceed the idle baseline by this many.
const SOCKET_SLACK: i64 = 2;
/// The relay's pool of idle pipes (2 fds each), plus a few.
const PIPE_FDS_MAX: i64 = 2 * 256 + 4;
/// `DST_BY_CLIENT` at idle: entries of connections the daemon never took
/// (those accepted by the kernel as the old instance died).
const DST_BY_CLIENT_IDLE_MAX: i64 = 64;
/// Errors may start this long before the kill and end this long after the
/// new instance is ready (ms).
const ERROR_WINDOW_BEFORE_MS: i64 = 1_000;
const ERROR_WINDOW_AFTER_MS: i64 = 3_000;

pub fn soak(paths: &Paths, minutes: f64) -> Result<()> {
    if minutes.is_nan() || minutes < 1.0 {
        bail!("--minutes {minutes}: the soak needs at least 1 minute");
    }
    require_root("the soak")?;
    setup::setup(paths, setup::Purpose::Bench)?;
    let daemon = build::build(paths, true)?;
    let out_dir = paths.root.join("target/soak");
    fs::create_dir_all(&out_dir)?;
    let raw = out_dir.join("raw.jsonl");
    let _ = fs::remove_file(&raw);
    let mut cmd = e2e_command(paths, "soak.sh", &daemon)?;
    cmd.env("SOAK_RAW", &raw)
        .env("SOAK_MINUTES", minutes.to_string());
    // Summarise whatever was recorded, also when the script failed.
    let script = run(&mut cmd);
    let records = read_records(&raw)?;
    let summary = summarise(&records);
    let path = out_dir.join("summary.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
    print!("{}", render(&summary));
    println!("written: {}, {}", path.display(), raw.display());
    script.context("tests/e2e/soak.sh failed")?;
    let failed: Vec<_> = checks(&summary)
        .filter(|c| c["ok"] != true)
        .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
        .collect();
    if !failed.is_empty() {
        bail!("soak checks failed: {}", failed.join(", "));
    }
    println!("soak: every check passed");
    Ok(())
}

fn read_records(raw: &Path) -> Result<Vec<Record>> {
    let text = fs::read_to_string(raw).with_context(|| format!("read {}", raw.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("parse {l}")))
        .collect()
}

fn checks(summary: &Value) -> impl Iterator<Item = &Value> {
    summary["checks"].as_array().into_iter().flatten()
}

/// Checks the records of one soak and summarises it; `checks` in the
/// result holds one `{name, ok, detail}` per property.
pub fn summarise(records: &[Record]) -> Value {
    let config = records.iter().find_map(|r| match r {
        Record::Config(c) => Some(c),
        _ => None,
    });
    let point = |name: &str| {
        records.iter().find_map(|r| match r {
            Record::Point(p) if p.name == name => Some(p),
            _ => None,
        })
    };
    let restart: Option<&Restart> = records.iter().find_map(|r| match r {
        Record::Restart(r) => Some(r),
        _ => None,
    });
    let load: Option<&LoadResult> = records.iter().find_map(|r| match r {
        Record::Load { result } => Some(result),
        _ => None,
    });
    let logs: Option<&Logs> = records.iter().find_map(|r| match r {
        Record::Logs(l) => Some(l),
        _ => None,
    });
    let mut checks = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(json!({"name": name, "ok": ok, "detail": detail}));
    };

    let missing: Vec<_> = POINTS
        .iter()
        .filter(|(name, instance)| point(name).is_none_or(|p| p.instance != *instance))
        .map(|(name, _)| *name)
        .collect();
    check(
        "complete",
        missing.is_empty() && restart.is_some() && load.is_some() && logs.is_some(),
        if missing.is_empty() {
            format!(
                "restart {}, load result {}, logs {}",
                restart.is_some(),
                load.is_some(),
                logs.is_some()
            )
        } else {
            format!("idle points missing: {}", missing.join(", "))
        },
    );

    // Every request accounted for, errors only around the restart.
    let mut requests = serde_json::Map::new();
    let mut total_sent = 0;
    if let Some(load) = load {
        let mut bad = Vec::new();
        for kind in KINDS {
            let c = load.counts.get(*kind).copied().unwrap_or_default();
            let (sent, ok, errors) = (c.sent, c.ok, c.errors);
            if sent == 0 || sent != ok + errors {
                bad.push(format!("{kind}: sent {sent}, ok {ok}, errors {errors}"));
            }
            total_sent += sent;
            requests.insert(
                kind.to_string(),
                json!({"sent": sent, "ok": ok, "errors": errors,
                       "latency_ms": load.latency_ms.get(*kind)}),
            );
        }
        let alive = load.threads_alive;
        if alive != 0 {
            bad.push(format!("{alive} load threads never finished"));
        }
        check(
            "accounted",
            bad.is_empty(),
            if bad.is_empty() {
                "sent = ok + errors for every kind".into()
            } else {
                bad.join("; ")
            },
        );
        let errors = &load.errors_list;
        let (from, to) = restart.map_or((i64::MAX, i64::MIN), |r| {
            (
                r.t_kill - ERROR_WINDOW_BEFORE_MS,
                r.t_ready + ERROR_WINDOW_AFTER_MS,
            )
        });
        let outside: Vec<_> = errors
            .iter()
            .filter(|(t, _, _)| *t < from || *t > to)
            .map(|e| json!(e).to_string())
            .collect();
        check(
            "errors_only_at_restart",
            outside.is_empty(),
            format!(
                "{} errors, {} outside the restart window: {}",
                errors.len(),
                outside.len(),
                outside
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
    }

    // Descriptors: sockets back to the idle baseline, pipes within the pool.
    let mut fds = serde_json::Map::new();
    if let Some(start) = point("start") {
        let base = start.sockets;
        let mut bad = Vec::new();
        for (name, _) in POINTS {
            let Some(p) = point(name) else { continue };
            let (sockets, pipes) = (p.sockets, p.pipes);
            fds.insert(
                name.to_string(),
                json!({"all": p.fds, "sockets": sockets, "pipes": pipes}),
            );
            if sockets > base + SOCKET_SLACK || pipes > PIPE_FDS_MAX {
                bad.push(format!("{name}: {sockets} sockets, {pipes} pipe fds"));
            }
        }
        check(
            "no_fd_leak",
            bad.is_empty(),
            format!(
                "idle baseline {base} sockets (+{SOCKET_SLACK} allowed), pipes <= {PIPE_FDS_MAX}{}",
                if bad.is_empty() {
                    String::new()
                } else {
                    format!("; over: {}", bad.join(", "))
                }
            ),
        );
    }

    // RSS and metrics within each window of one instance.
    let mut rss = serde_json::Map::new();
    for (name, _) in POINTS {
        if let Some(p) = point(name) {
            rss.insert(name.to_string(), json!(p.rss_kb));
        }
    }
    let mut growth = serde_json::Map::new();
    for (a, b) in WINDOWS {
        let (Some(pa), Some(pb)) = (point(a), point(b)) else {
            continue;
        };
        let (ra, rb) = (pa.rss_kb as f64, pb.rss_kb as f64);
        let g = if ra > 0.0 {
            (rb - ra) / ra
        } else {
            f64::INFINITY
        };
        growth.insert(format!("{a}-{b}"), json!((g * 1000.0).round() / 10.0));
        check(
            &format!("rss_stable_{a}{b}"),
            g < RSS_GROWTH_MAX,
            format!(
                "{ra} KiB -> {rb} KiB ({:+.1} %, allowed < {:.0} %)",
                g * 100.0,
                RSS_GROWTH_MAX * 100.0
            ),
        );
        let (ok, detail) = metrics_agree(pa, pb);
        check(&format!("metrics_consistent_{a}{b}"), ok, detail);
        let (ok, detail) = maps_bounded(pa, pb);
        check(&format!("maps_bounded_{a}{b}"), ok, detail);
    }

    if let Some(logs) = logs {
        let (written, applied, refused) = (logs.reloads_written, logs.reloaded, logs.reload_failed);
        check(
            "reloads",
            written > 0 && applied == written && refused == 0,
            format!("{written} written, {applied} applied, {refused} refused"),
        );
        check(
            "daemon_alive",
            logs.daemon_alive,
            format!("{} ERROR lines in the daemon logs", logs.error_lines),
        );
    }

    let maps: serde_json::Map<_, _> = POINTS
        .iter()
        .filter_map(|(name, _)| {
            let p = point(name)?;
            Some((
                name.to_string(),
                json!({"DST_BY_CLIENT": p.map_entries("DST_BY_CLIENT").unwrap_or(0),
                       "DST_BY_COOKIE": p.map_entries("DST_BY_COOKIE").unwrap_or(0)}),
            ))
        })
        .collect();
    let duration_s = match (point("start"), point("D")) {
        (Some(s), Some(d)) => (d.t - s.t) as f64 / 1000.0,
        _ => 0.0,
    };
    let passed = checks.iter().all(|c| c["ok"] == true);
    json!({
        "result": if passed { "pass" } else { "fail" },
        "minutes": config.map(|c| &c.minutes),
        "rate_target": config.map(|c| &c.rate),
        "duration_s": duration_s,
        "requests_total": total_sent,
        "requests": requests,
        "restart": restart.map(|r| json!({
            "ready_after_kill_ms": r.t_ready - r.t_kill,
        })),
        "reloads": logs.map(|l| l.reloaded),
        "rss_kb": rss,
        "rss_growth_pct": growth,
        "fds": fds,
        "map_entries": maps,
        "checks": checks,
    })
}

/// Between two idle points of one instance: every connection of a daemon
/// kind got one decision of the right kind and one outcome, none failed,
/// and nothing was left active.
fn metrics_agree(a: &Point, b: &Point) -> (bool, String) {
    let d = |key: &str| b.metric(key) - a.metric(key);
    let sent = |kinds: &[&str]| -> i64 {
        kinds
            .iter()
            .map(|k| b.counts(k).sent - a.counts(k).sent)
            .sum()
    };
    let ok =
        |kinds: &[&str]| -> i64 { kinds.iter().map(|k| b.counts(k).ok - a.counts(k).ok).sum() };
    let outcome = |o: &str| {
        d(&format!(
            "redirector_connection_outcomes_total{{outcome=\"{o}\"}}"
        ))
    };
    let proxy = d("redirector_connections_total{decision=\"proxy\"}");
    let direct = d("redirector_connections_total{decision=\"direct\"}");
    let bypass = d("redirector_connections_total{decision=\"kernel-bypass\"}");
    let fine = outcome("ok") + outcome("peek_timeout");
    let failed: i64 = [
        "upstream_refused",
        "upstream_unreachable",
        "auth_failed",
        "no_original_destination",
        "broke_off",
        "tls_error",
    ]
    .iter()
    .map(|o| outcome(o))
    .sum();
    let daemon_kinds: Vec<&str> = PROXIED.iter().copied().chain([DIRECT]).collect();
    let mut bad = Vec::new();
    let mut want = |what: &str, got: i64, expected: i64| {
        if got != expected {
            bad.push(format!("{what} {got}, expected {expected}"));
        }
    };
    want("proxy decisions", proxy, sent(PROXIED));
    want("direct decisions", direct, sent(&[DIRECT]));
    want("kernel-bypass", bypass, sent(&[BYPASS]));
    want("outcomes", fine + failed, proxy + direct);
    want("ok outcomes", fine, ok(&daemon_kinds));
    want("failed outcomes", failed, 0);
    want(
        "active connections at idle",
        b.metric("redirector_active_connections"),
        0,
    );
    let detail = format!(
        "{proxy} proxy + {direct} direct decisions, {bypass} kernel-bypass, {fine} ok outcomes{}",
        if bad.is_empty() {
            String::new()
        } else {
            format!("; {}", bad.join("; "))
        }
    );
    (bad.is_empty(), detail)
}

/// At idle the daemon has taken every destination it was given, and
/// `DST_BY_COOKIE` only grows by connects that never completed.
fn maps_bounded(a: &Point, b: &Point) -> (bool, String) {
    let absent: Vec<_> = ["DST_BY_CLIENT", "DST_BY_COOKIE"]
        .into_iter()
        .filter(|m| [a, b].iter().any(|p| p.map_entries(m).is_none()))
        .collect();
    if !absent.is_empty() {
        return (false, format!("no entry count for {}", absent.join(", ")));
    }
    let entries = |p: &Point, m: &str| p.map_entries(m).unwrap_or(0);
    let client = entries(b, "DST_BY_CLIENT");
    let cookie_growth = entries(b, "DST_BY_COOKIE") - entries(a, "DST_BY_COOKIE");
    let failed: i64 = KINDS
        .iter()
        .map(|k| b.counts(k).errors - a.counts(k).errors)
        .sum();
    let max = b.map_max("DST_BY_COOKIE");
    let ok = client <= DST_BY_CLIENT_IDLE_MAX
        && cookie_growth <= failed + 8
        && entries(b, "DST_BY_COOKIE") < max / 2;
    (
        ok,
        format!(
            "DST_BY_CLIENT {client} at idle (<= {DST_BY_CLIENT_IDLE_MAX}); DST_BY_COOKIE +{cookie_growth} \
             with {failed} failed requests, {} of {max}",
            entries(b, "DST_BY_COOKIE")
        ),
    )
}

/// The summary as text for the terminal.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "\nsoak: {} ({} min planned, {:.0} s measured, {} requests)",
        s["result"].as_str().unwrap_or("?").to_uppercase(),
        s["minutes"],
        s["duration_s"].as_f64().unwrap_or(0.0),
        s["requests_total"]
    ));
    line(format!(
        "  {:<7} {:>7} {:>7} {:>6} {:>8} {:>8}",
        "kind", "sent", "ok", "errors", "p50 ms", "p99 ms"
    ));
    for kind in KINDS {
        let r = &s["requests"][kind];
        let cell = |v: &Value| v.to_string();
        line(format!(
            "  {:<7} {:>7} {:>7} {:>6} {:>8} {:>8}",
            kind,
            cell(&r["sent"]),
            cell(&r["ok"]),
            cell(&r["errors"]),
            cell(&r["latency_ms"]["p50"]),
            cell(&r["latency_ms"]["p99"])
        ));
    }
    line(format!(
        "  restart: ready {} ms after SIGKILL; reloads applied: {}",
        s["restart"]["ready_after_kill_ms"], s["reloads"]
    ));
    for (name, _) in POINTS {
        line(format!(
            "  point {:<5} RSS {:>7} KiB  fds {}  maps {}",
            name,
            s["rss_kb"][name].to_string(),
            s["fds"][name],
            s["map_entries"][name]
        ));
    }
    for c in checks(s) {
        line(format!(
            "  [{}] {}: {}",
            if c["ok"] == true { " ok " } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle point with `n` requests of each kind done so far, all ok,
    /// `m` of them seen by this instance of the daemon.
    fn point(name: &str, instance: u64, n: i64, m: i64, rss: i64, sockets: i64) -> Value {
        let counts: serde_json::Map<_, _> = KINDS
            .iter()
            .map(|k| (k.to_string(), json!({"sent": n, "ok": n, "errors": 0})))
            .collect();
        json!({
            "kind": "point", "name": name, "instance": instance, "t": 1000 * n,
            "rss_kb": rss, "fds": sockets + 20, "sockets": sockets, "pipes": 6,
            "maps": {"DST_BY_CLIENT": {"entries": 0, "max": 65536},
                     "DST_BY_COOKIE": {"entries": 3, "max": 65536}},
            "metrics": {
                "redirector_connections_total{decision=\"proxy\"}": 3 * m,
                "redirector_connections_total{decision=\"direct\"}": m,
                "redirector_connections_total{decision=\"kernel-bypass\"}": n,
                "redirector_connection_outcomes_total{outcome=\"ok\"}": 4 * m,
                "redirector_active_connections": 0,
            },
            "client": {"counts": counts},
        })
    }

    /// The fixtures as the lines soak.sh writes, read as the soak reads them.
    fn summarise(lines: &[Value]) -> Value {
        let records: Vec<Record> = lines
            .iter()
            .map(|l| serde_json::from_value(l.clone()).unwrap())
            .collect();
        super::summarise(&records)
    }

    fn soak(points: Vec<Value>, errors: Value) -> Vec<Value> {
        let mut records = vec![json!({"kind": "config", "minutes": 3, "rate": 25})];
        records.extend(points);
        records.push(
            json!({"kind": "restart", "t_kill": 50_000, "t_start": 51_000, "t_ready": 51_500}),
        );
        let counts: serde_json::Map<_, _> = KINDS
            .iter()
            .map(|k| (k.to_string(), json!({"sent": 100, "ok": 98, "errors": 2})))
            .collect();
        records.push(json!({"kind": "load", "result": {
            "counts": counts, "errors_list": errors, "threads_alive": 0, "latency_ms": {}}}));
        records.push(json!({"kind": "logs", "reloads_written": 5, "reloaded": 5,
                            "reload_failed": 0, "error_lines": 0, "daemon_alive": true}));
        records
    }

    /// The instance-2 points count from the restart (at 50 requests of
    /// each kind): its metrics start again at zero, the load's counts and
    /// the kernel's counters do not.
    fn good_points() -> Vec<Value> {
        vec![
            point("start", 1, 0, 0, 9_000, 6),
            point("A", 1, 10, 10, 10_000, 6),
            point("B", 1, 40, 40, 10_300, 7),
            point("C", 2, 60, 10, 10_100, 6),
            point("D", 2, 90, 40, 10_200, 6),
        ]
    }

    fn failed(s: &Value) -> Vec<String> {
        checks(s)
            .filter(|c| c["ok"] != true)
            .map(|c| format!("{}: {}", c["name"], c["detail"]))
            .collect()
    }

    #[test]
    fn a_clean_soak_passes() {
        let errors = json!([
            [50_100, "tcp", "ECONNREFUSED"],
            [52_000, "https", "ECONNRESET"]
        ]);
        let s = summarise(&soak(good_points(), errors));
        assert_eq!(failed(&s), Vec::<String>::new(), "{s:#}");
        assert_eq!(s["result"], "pass");
        assert!(render(&s).contains("[ ok ] reloads"));
    }

    #[test]
    fn each_defect_fails_its_check() {
        let errors = json!([]);
        // an error long after the restart
        let s = summarise(&soak(good_points(), json!([[90_000, "http", "timeout"]])));
        assert_eq!(s["result"], "fail");
        assert!(
            failed(&s)[0].contains("errors_only_at_restart"),
            "{:?}",
            failed(&s)
        );
        // a socket leaked by D
        let mut p = good_points();
        p[4]["sockets"] = json!(9);
        assert!(failed(&summarise(&soak(p, errors.clone())))[0].contains("no_fd_leak"));
        // RSS grows 6 % from C to D
        let mut p = good_points();
        p[4]["rss_kb"] = json!(10_706);
        assert!(failed(&summarise(&soak(p, errors.clone())))[0].contains("rss_stable_CD"));
        // one proxied connection without an outcome
        let mut p = good_points();
        p[2]["metrics"]["redirector_connections_total{decision=\"proxy\"}"] = json!(121);
        assert!(failed(&summarise(&soak(p, errors.clone())))[0].contains("metrics_consistent_AB"));
        // DST_BY_CLIENT not emptied at idle
        let mut p = good_points();
        p[2]["maps"]["DST_BY_CLIENT"]["entries"] = json!(500);
        assert!(failed(&summarise(&soak(p, errors.clone())))[0].contains("maps_bounded_AB"));
        // a map not counted
        let mut p = good_points();
        p[1]["maps"]
            .as_object_mut()
            .unwrap()
            .remove("DST_BY_COOKIE");
        assert!(failed(&summarise(&soak(p, errors.clone())))[0].contains("maps_bounded_AB"));
        // a point missing
        let mut p = good_points();
        p.remove(3);
        assert!(failed(&summarise(&soak(p, errors)))[0].contains("complete"));
    }
}
