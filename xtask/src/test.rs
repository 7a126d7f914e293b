//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failing stage: setup, build, fmt, clippy, unit tests, fuzzing (each
//! cargo-fuzz target for 60 s), manifest validation, end-to-end tests,
//! `bench --quick` (every benchmark path moves data; no speed is asserted).
//! Ends with a summary of the stages and one `N passed, M failed` line that
//! adds up the unit, fuzz-target, manifest and end-to-end test counts.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::build::{self, EBPF_OBJ_ENV};
use crate::counts::{Counts, parse_plain_result};
use crate::toolchain::{self, Paths, e2e_command, require_root, run, run_scanning};
use crate::{bench, fuzz, manifests, runtime_e2e, setup};

const STAGES: &[&str] = &[
    "setup",
    "build",
    "fmt",
    "clippy",
    "unit tests",
    "fuzz",
    "manifests",
    "e2e tests",
    "runtime e2e",
    "bench --quick",
];

/// Parses libtest's `test result: ok. 5 passed; 0 failed; 1 ignored; ...`.
pub fn parse_libtest_result(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, rest) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    let (mut passed, mut failed) = (false, false);
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "passed" => (counts.passed, passed) = (n, true),
            "failed" => (counts.failed, failed) = (n, true),
            "ignored" => counts.skipped = n,
            _ => {}
        }
    }
    (passed && failed).then_some(counts)
}

/// Stages run so far, with their durations.
#[derive(Default)]
struct Report {
    stages: Vec<(&'static str, Duration, bool)>,
    unit: Option<Counts>,
    fuzz: Option<Counts>,
    manifests: Option<Counts>,
    e2e: Option<Counts>,
    runtime: Option<Counts>,
}

impl Report {
    fn stage<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("\n==> {name}");
        let start = Instant::now();
        let result = f();
        self.stages.push((name, start.elapsed(), result.is_ok()));
        result.with_context(|| format!("stage `{name}` failed"))
    }

    fn print(&self) {
        println!("\n==> summary");
        for name in STAGES {
            match self.stages.iter().find(|(n, _, _)| n == name) {
                Some((_, time, ok)) => {
                    let result = if *ok { "ok" } else { "FAILED" };
                    println!("  {name:<13} {result:<8} {:>7.1}s", time.as_secs_f64());
                }
                None => println!("  {name:<13} not run"),
            }
        }
        if let Some(unit) = self.unit {
            println!("  unit tests: {unit}");
        }
        if let Some(fuzz) = self.fuzz {
            println!("  fuzz targets: {fuzz}");
        }
        if let Some(manifests) = self.manifests {
            println!("  manifests: {manifests}");
        }
        if let Some(e2e) = self.e2e {
            println!("  e2e tests: {e2e}");
        }
        if let Some(runtime) = self.runtime {
            println!("  runtime e2e: {runtime}");
        }
        if self.unit.is_some() || self.manifests.is_some() || self.e2e.is_some() {
            let mut total = Counts::default();
            total.add(self.unit.unwrap_or_default());
            total.add(self.fuzz.unwrap_or_default());
            total.add(self.manifests.unwrap_or_default());
            total.add(self.e2e.unwrap_or_default());
            total.add(self.runtime.unwrap_or_default());
            println!("{total}");
        }
    }
}

pub fn test(paths: &Paths) -> Result<()> {
    require_root("`cargo xtask test` (its end-to-end tests)")?;
    let mut report = Report::default();
    let result = run_stages(paths, &mut report);
    report.print();
    result
}

fn run_stages(paths: &Paths, report: &mut Report) -> Result<()> {
    let obj = paths.ebpf_object();
    let cargo = |args: &[&str]| {
        let mut cmd = toolchain::host_cargo();
        cmd.env(EBPF_OBJ_ENV, &obj).args(args);
        cmd
    };

    report.stage("setup", || setup::setup(paths, setup::Purpose::Test))?;
    let daemon = report.stage("build", || build::build(paths, true))?;
    report.stage("fmt", || run(&mut cargo(&["fmt", "--all", "--check"])))?;
    report.stage("clippy", || {
        run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;

    let mut unit = Counts::default();
    let result = report.stage("unit tests", || {
        run_scanning(&mut cargo(&["test", "--workspace"]), |line| {
            if let Some(c) = parse_libtest_result(line) {
                unit.add(c);
            }
        })
    });
    report.unit = Some(unit);
    result?;

    // Each fuzz target counts as one test: it passes if its run (the
    // issue's 60 s) finds no crash. A failed lint or build counts as one
    // failure.
    let mut counts = None;
    let result = report.stage("fuzz", || {
        fuzz::lint(paths)?;
        let outcomes = fuzz::run_targets(paths, fuzz::DEFAULT_SECONDS, &[])?;
        let failed = outcomes.iter().filter(|o| o.failed).count();
        let c = Counts {
            passed: (outcomes.len() - failed) as u64,
            failed: failed as u64,
            skipped: 0,
        };
        counts = Some(c);
        if failed > 0 {
            bail!("{failed} fuzz target(s) crashed; see the inputs and commands above");
        }
        Ok(())
    });
    report.fuzz = Some(counts.unwrap_or(Counts {
        passed: 0,
        failed: 1,
        skipped: 0,
    }));
    result?;

    // deploy/: every kustomization renders and validates strictly, offline.
    let mut counts = None;
    let result = report.stage("manifests", || {
        let c = manifests::check(paths)?;
        counts = Some(c);
        manifests::fail_on(c)
    });
    // Tools missing (nothing counted): one failure, so that the total line
    // never looks clean.
    report.manifests = Some(counts.unwrap_or(Counts {
        passed: 0,
        failed: 1,
        skipped: 0,
    }));
    result?;

    let mut e2e = None;
    let result = report.stage("e2e tests", || {
        let mut cmd = e2e_command(paths, "run.sh", &daemon)?;
        run_scanning(&mut cmd, |line| {
            if let Some(c) = parse_plain_result(line) {
                e2e = Some(c);
            }
        })
    });
    if e2e.is_none() {
        println!("warning: tests/e2e/run.sh printed no `N passed, M failed` line");
    }
    report.e2e = e2e;
    result?;

    // deploy/ on containerd, runc and CNI (tests/runtime): the scenarios
    // of both cgroup-root passes count as tests.
    let mut runtime = None;
    let result = report.stage("runtime e2e", || {
        let c = runtime_e2e::run_harness(paths, &daemon)?;
        runtime = Some(c);
        Ok(())
    });
    report.runtime = Some(runtime.unwrap_or(Counts {
        passed: 0,
        failed: 1,
        skipped: 0,
    }));
    result?;

    // Proves the benchmark harness works (every path moves data); it never
    // asserts a speed.
    report.stage("bench --quick", || bench::run_bench(paths, &daemon, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines() {
        let c = parse_libtest_result(
            "test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!(
            c,
            Some(Counts {
                passed: 12,
                failed: 0,
                skipped: 2
            })
        );
        let c = parse_libtest_result("test result: FAILED. 3 passed; 1 failed; 0 ignored");
        assert_eq!(c.map(|c| (c.passed, c.failed)), Some((3, 1)));
        assert_eq!(parse_libtest_result("running 3 tests"), None);
    }

    #[test]
    fn plain_lines() {
        let c = |p, f, s| {
            Some(Counts {
                passed: p,
                failed: f,
                skipped: s,
            })
        };
        assert_eq!(parse_plain_result("7 passed, 1 failed"), c(7, 1, 0));
        assert_eq!(parse_plain_result("e2e: 7 passed, 0 failed"), c(7, 0, 0));
        assert_eq!(
            parse_plain_result("7 passed, 0 failed, 2 skipped"),
            c(7, 0, 2)
        );
        assert_eq!(parse_plain_result("ok 3 - 7 passed, 0 failed"), None);
        assert_eq!(parse_plain_result("passed, failed"), None);
    }
}
