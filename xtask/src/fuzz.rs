//! `cargo xtask fuzz`: builds the cargo-fuzz targets of redirector/fuzz
//! (libFuzzer, AddressSanitizer) and runs each for a fixed time.
//!
//! The toolchain is the one running xtask: cargo-fuzz passes `-Z` flags to
//! rustc, which a stable rustc accepts with `RUSTC_BOOTSTRAP=1` (a nightly
//! ignores it). Instrumented builds go to target/fuzz, apart from the normal
//! ones. libFuzzer writes what it learns to target/fuzz/corpus/TARGET (so
//! longer runs build on earlier ones) and reads the committed seeds in
//! redirector/fuzz/corpus/TARGET and redirector/testdata/TARGET (captured
//! inputs the unit tests and benchmarks read too); a crashing input goes to
//! redirector/fuzz/artifacts/TARGET/.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::toolchain::{self, Paths, run};

/// Pinned cargo-fuzz release that `setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds each target runs unless told otherwise (the 60 s).
pub const DEFAULT_SECONDS: u64 = 60;

/// Every fuzz target, with libFuzzer options of its own.
pub const TARGETS: &[(&str, &[&str])] = &[
    ("tls_client_hello", &[]),
    ("http_head", &[]),
    // Room past MAX_HEAD (8 KiB), so that "head too long" is reached.
    ("connect_response", &["-max_len=9216"]),
    ("no_proxy", &[]),
    ("proxy_config", &[]),
    // Room for a pod with a few containers (the decoder caps at 3 MiB).
    ("admission_review", &["-max_len=65536"]),
];

/// A single input taking longer than this is reported as a hang.
const TIMEOUT_SECONDS: u64 = 10;

fn fuzz_dir(paths: &Paths) -> PathBuf {
    paths.root.join("redirector/fuzz")
}

fn target_dir(paths: &Paths) -> PathBuf {
    paths.root.join("target/fuzz")
}

/// `cargo fuzz SUBCOMMAND` with the fuzz directory and target directory set.
fn cargo_fuzz(paths: &Paths, subcommand: &str) -> Command {
    let mut cmd = toolchain::host_cargo();
    cmd.args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir(paths))
        .arg("--target-dir")
        .arg(target_dir(paths))
        .env("RUSTC_BOOTSTRAP", "1")
        .stdin(Stdio::null());
    cmd
}

/// rustfmt and clippy for the fuzz crate, which the workspace's own `cargo
/// fmt --all` and `cargo clippy --workspace` leave out. Its plain (not
/// instrumented) build shares the workspace's target directory.
pub fn lint(paths: &Paths) -> Result<()> {
    let manifest = fuzz_dir(paths).join("Cargo.toml");
    let cargo = |args: &[&str]| {
        let mut cmd = toolchain::host_cargo();
        cmd.args(args).arg("--manifest-path").arg(&manifest);
        cmd
    };
    run(&mut cargo(&["fmt", "--check"]))?;
    run(cargo(&["clippy", "--all-targets"])
        .arg("--target-dir")
        .arg(paths.root.join("target"))
        .args(["--", "-D", "warnings"]))
}

/// How one target's run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    /// Inputs executed (libFuzzer's `number_of_executed_units`).
    pub execs: u64,
    pub seconds: f64,
    /// The input that crashed, panicked or hung, as libFuzzer saved it.
    pub artifact: Option<PathBuf>,
    /// libFuzzer's exit status was not success.
    pub failed: bool,
}

impl Outcome {
    /// A command that runs the target on the saved input once.
    pub fn reproduce(&self, paths: &Paths) -> Option<String> {
        let artifact = self.artifact.as_ref()?;
        let artifact = artifact.strip_prefix(&paths.root).unwrap_or(artifact);
        Some(format!(
            "RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir redirector/fuzz --target-dir target/fuzz {} {}",
            self.target,
            artifact.display()
        ))
    }
}

/// `cargo xtask fuzz`: runs the targets, prints one line per target and
/// fails if any found a crash.
pub fn fuzz(paths: &Paths, seconds: u64, targets: &[String]) -> Result<()> {
    let outcomes = run_targets(paths, seconds, targets)?;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.failed).collect();
    if !failed.is_empty() {
        let names: Vec<_> = failed.iter().map(|o| o.target.as_str()).collect();
        bail!("fuzzing found crashes in {}", names.join(", "));
    }
    Ok(())
}

/// Builds the instrumented targets once, then runs each of `targets` (all
/// when empty) for `seconds`. A crash does not stop the others.
pub fn run_targets(paths: &Paths, seconds: u64, targets: &[String]) -> Result<Vec<Outcome>> {
    let selected = select(targets)?;
    require_cargo_fuzz()?;
    let started = Instant::now();
    println!("fuzz: the instrumented build of the targets (about 6 min on a cold 2-core machine)");
    run(&mut cargo_fuzz(paths, "build"))?;
    println!(
        "fuzz: instrumented build took {:.0}s",
        started.elapsed().as_secs_f64()
    );

    let mut outcomes = Vec::new();
    for (target, options) in selected {
        let outcome = run_one(paths, target, options, seconds)?;
        outcomes.push(outcome);
    }

    println!("\nfuzz summary ({seconds}s per target):");
    for o in &outcomes {
        let result = if o.failed { "CRASH" } else { "ok" };
        println!(
            "  {:<18} {result:<6} {:>11} execs in {:>4.0}s",
            o.target, o.execs, o.seconds
        );
        if let Some(artifact) = &o.artifact {
            println!("    input:     {}", artifact.display());
        }
        if let Some(cmd) = o.reproduce(paths) {
            println!("    reproduce: {cmd}");
        }
    }
    Ok(outcomes)
}

fn select(targets: &[String]) -> Result<Vec<(&'static str, &'static [&'static str])>> {
    if targets.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    targets
        .iter()
        .map(|name| {
            TARGETS
                .iter()
                .find(|(t, _)| t == name)
                .copied()
                .with_context(|| {
                    let known: Vec<_> = TARGETS.iter().map(|(t, _)| *t).collect();
                    format!("no fuzz target `{name}` (known: {})", known.join(", "))
                })
        })
        .collect()
}

/// Runs one target for `seconds`; its whole output goes to
/// target/fuzz/logs/TARGET.log, the last lines of it to the console on a
/// crash.
fn run_one(paths: &Paths, target: &str, options: &[&str], seconds: u64) -> Result<Outcome> {
    let corpus = target_dir(paths).join("corpus").join(target);
    let seeds = fuzz_dir(paths).join("corpus").join(target);
    let testdata = paths.root.join("redirector/testdata").join(target);
    let logs = target_dir(paths).join("logs");
    for dir in [&corpus, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = cargo_fuzz(paths, "run");
    // New inputs go to the first corpus directory; the seeds stay as
    // committed.
    cmd.arg(target).arg(&corpus);
    for dir in [&seeds, &testdata] {
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .args(options)
        // cargo-fuzz's own report (the failing input's Debug form can be
        // large) goes straight to the log; libFuzzer's stderr is scanned.
        .stdout(log.try_clone()?)
        .stderr(Stdio::piped());
    println!("\n$ {}", toolchain::describe(&cmd));
    println!(
        "fuzz: {target} for {seconds}s (log: {})",
        log_path.display()
    );

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        writeln!(log, "{line}")?;
        lines.push(line);
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    let elapsed = started.elapsed().as_secs_f64();

    let parsed = parse_output(&lines);
    let outcome = Outcome {
        target: target.to_string(),
        execs: parsed.execs.unwrap_or(0),
        seconds: elapsed,
        artifact: parsed.artifact.map(|a| absolute(&paths.root, &a)),
        failed: !status.success(),
    };
    if outcome.failed {
        println!("fuzz: {target} FAILED ({status}):");
        for line in failure_excerpt(&lines) {
            println!("  | {line}");
        }
        println!("  (whole output: {})", log_path.display());
    } else {
        println!(
            "fuzz: {target} ok, {} execs in {elapsed:.0}s",
            outcome.execs
        );
    }
    Ok(outcome)
}

/// The lines that say what went wrong: the panic (or sanitizer error) and
/// the next few, and libFuzzer's summary; the last lines if neither is there.
fn failure_excerpt(lines: &[String]) -> Vec<&str> {
    const CONTEXT: usize = 8;
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: "));
    let mut excerpt: Vec<&str> = match start {
        Some(i) => lines[i..]
            .iter()
            .take(CONTEXT)
            .map(String::as_str)
            .collect(),
        None => {
            let tail = lines.len().saturating_sub(2 * CONTEXT);
            return lines[tail..].iter().map(String::as_str).collect();
        }
    };
    excerpt.extend(
        lines
            .iter()
            .filter(|l| l.starts_with("SUMMARY: ") || l.contains("Test unit written to"))
            .map(String::as_str),
    );
    excerpt
}

/// Resolves a path libFuzzer printed relative to where it ran (the root).
fn absolute(root: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

/// What the runner needs from libFuzzer's output.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    execs: Option<u64>,
    artifact: Option<PathBuf>,
}

/// Picks `stat::number_of_executed_units: N` (with `-print_final_stats=1`)
/// or `Done N runs in S second(s)`, and `Test unit written to PATH`.
fn parse_output<S: AsRef<str>>(lines: &[S]) -> Parsed {
    let mut parsed = Parsed::default();
    for line in lines {
        let line = line.as_ref().trim();
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            parsed.execs = n.trim().parse().ok().or(parsed.execs);
        } else if let Some(rest) = line.strip_prefix("Done ")
            && let Some((n, _)) = rest.split_once(" runs")
            && parsed.execs.is_none()
        {
            parsed.execs = n.parse().ok();
        } else if let Some(path) = line
            .split_once("Test unit written to ")
            .map(|(_, path)| path.trim())
        {
            parsed.artifact = Some(PathBuf::from(path));
        }
    }
    parsed
}

/// `cargo fuzz --version`, if cargo-fuzz is installed.
pub fn cargo_fuzz_version() -> Option<String> {
    toolchain::output(toolchain::host_cargo().args(["fuzz", "--version"]))
}

fn require_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_version().is_none() {
        bail!("cargo-fuzz is not installed; `cargo xtask setup` installs it");
    }
    if find_cxx().is_none() {
        bail!("no C++ compiler (libFuzzer is C++); `cargo xtask setup` installs g++");
    }
    Ok(())
}

fn find_cxx() -> Option<PathBuf> {
    ["c++", "g++", "clang++"]
        .into_iter()
        .find_map(toolchain::find_program)
}

/// For `setup`: installs the pinned cargo-fuzz unless one is installed, and
/// g++ (libfuzzer-sys compiles libFuzzer) when there is no C++ compiler.
/// Returns a line for the summary.
pub fn install_cargo_fuzz() -> Result<String> {
    let mut done = Vec::new();
    if find_cxx().is_none() {
        if !toolchain::is_root() {
            bail!("no C++ compiler for libFuzzer; install g++ (needs root)");
        }
        for args in [&["update"][..], &["install", "-y", "g++"]] {
            run(Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()))?;
        }
        done.push("installed g++".to_string());
    }
    match cargo_fuzz_version() {
        Some(version) => done.push(format!("found {version}")),
        None => {
            let started = Instant::now();
            run(toolchain::host_cargo()
                .args(["install", "--locked"])
                .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"))
                .stdin(Stdio::null()))
            .context("installing cargo-fuzz")?;
            let version = cargo_fuzz_version()
                .context("cargo-fuzz was installed but `cargo fuzz --version` fails")?;
            done.push(format!(
                "installed {version} in {:.0}s",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(done.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_clean_run() {
        let lines = [
            "#2097152\tpulse  cov: 212 ft: 901 corp: 160/9Kb exec/s: 69905 rss: 60Mb",
            "Done 2406289 runs in 61 second(s)",
            "stat::number_of_executed_units: 2406290",
            "stat::average_exec_per_sec:     39447",
        ];
        assert_eq!(
            parse_output(&lines),
            Parsed {
                execs: Some(2406290),
                artifact: None
            }
        );
        assert_eq!(
            parse_output(&["Done 17 runs in 1 second(s)"]).execs,
            Some(17)
        );
    }

    #[test]
    fn parses_a_crash() {
        let lines = [
            "thread '<unnamed>' panicked at fuzz_targets/no_proxy.rs:50:9:",
            "==1234== ERROR: libFuzzer: deadly signal",
            "MS: 1 ChangeByte-; base unit: 0123",
            "artifact_prefix='/w/redirector/fuzz/artifacts/no_proxy/'; \
             Test unit written to /w/redirector/fuzz/artifacts/no_proxy/crash-abc",
            "stat::number_of_executed_units: 5150",
        ];
        let parsed = parse_output(&lines);
        assert_eq!(parsed.execs, Some(5150));
        assert_eq!(
            parsed.artifact,
            Some(PathBuf::from(
                "/w/redirector/fuzz/artifacts/no_proxy/crash-abc"
            ))
        );
        let outcome = Outcome {
            target: "no_proxy".into(),
            execs: 5150,
            seconds: 1.0,
            artifact: parsed.artifact,
            failed: true,
        };
        let paths = Paths {
            root: PathBuf::from("/w"),
        };
        assert_eq!(
            outcome.reproduce(&paths).as_deref(),
            Some(
                "RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir redirector/fuzz \
                 --target-dir target/fuzz no_proxy redirector/fuzz/artifacts/no_proxy/crash-abc"
            )
        );
    }

    #[test]
    fn excerpt_starts_at_the_panic() {
        let mut lines: Vec<String> = (0..100).map(|i| format!("#{i} NEW")).collect();
        lines.push("thread '<unnamed>' panicked at fuzz_targets/x.rs:1:1:".into());
        lines.push("the message".into());
        lines.extend((0..50).map(|i| format!("    #{i} 0x55 in frame")));
        lines.push("SUMMARY: libFuzzer: deadly signal".into());
        let excerpt = failure_excerpt(&lines);
        assert_eq!(excerpt[..2], lines[100..102]);
        assert_eq!(excerpt.len(), 9);
        assert_eq!(excerpt[8], "SUMMARY: libFuzzer: deadly signal");
        // Nothing recognisable: the last lines.
        assert_eq!(failure_excerpt(&lines[..100]).len(), 16);
    }

    #[test]
    fn selects_known_targets_only() {
        assert_eq!(select(&[]).unwrap().len(), TARGETS.len());
        let one = select(&["no_proxy".to_string()]).unwrap();
        assert_eq!(
            one.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            ["no_proxy"]
        );
        let err = select(&["nope".to_string()]).unwrap_err().to_string();
        assert!(err.contains("known: tls_client_hello"), "{err}");
    }
}
