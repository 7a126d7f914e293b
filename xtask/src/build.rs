//! What xtask builds, for whichever subcommand needs it: the eBPF object
//! and the daemon that embeds it (`cargo xtask build`), the benchmark's
//! peers, and the node image (`cargo xtask image`). Shared: imports no
//! subcommand.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::toolchain::{self, EbpfToolchain, Paths, docker_missing, run};

/// Environment variable through which the `redirector` crate's build script
/// learns where the eBPF object is.
pub const EBPF_OBJ_ENV: &str = "REDIRECTOR_EBPF_OBJ";

/// Repository of the node image; the tags are [`DEV_TAG`] and the crate
/// version.
pub const IMAGE: &str = "egress-redirector";
/// The tag the demo overlay and `kind-e2e` use.
pub const DEV_TAG: &str = "dev";

/// Builds the eBPF object and returns its absolute path.
pub fn build_ebpf(paths: &Paths) -> Result<PathBuf> {
    let toolchain = EbpfToolchain::detect().context(
        "no eBPF toolchain: need a rustup nightly with rust-src, or Debian's \
         rustc-web + libstd-rust-web-dev-bpf; run `cargo xtask setup`",
    )?;
    if toolchain::bpf_linker_version().is_none() {
        bail!("bpf-linker not found (or `bpf-linker --version` fails); run `cargo xtask setup`");
    }
    println!(
        "build: the eBPF programs with {} (about 1 min on a cold 2-core machine)",
        toolchain.describe()
    );
    run(&mut toolchain.build_command(paths)).context("building the eBPF programs")?;
    let object = paths.ebpf_object();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    println!("eBPF object: {}", object.display());
    Ok(object)
}

/// Builds the daemon with the eBPF object embedded; returns its path.
pub fn build_daemon(paths: &Paths, release: bool) -> Result<PathBuf> {
    let object = paths.ebpf_object();
    let mut cmd = toolchain::host_cargo();
    cmd.env(EBPF_OBJ_ENV, &object)
        .args(["build", "--package", "redirector"]);
    if release {
        cmd.arg("--release");
    }
    println!("build: the redirector daemon (about 3 min on a cold 2-core machine)");
    run(&mut cmd).context("building the redirector daemon")?;
    let binary = paths.daemon_binary(release);
    if !binary.is_file() {
        bail!(
            "the daemon build succeeded but {} is missing",
            binary.display()
        );
    }
    Ok(binary)
}

/// `cargo xtask build [--debug]`.
pub fn build(paths: &Paths, release: bool) -> Result<PathBuf> {
    build_ebpf(paths)?;
    let binary = build_daemon(paths, release)?;
    println!("redirector: {}", binary.display());
    Ok(binary)
}

/// Builds the benchmark's peers (tests/peers); returns the binary. The
/// eBPF object goes into the environment as for the daemon, when there is
/// one: the `redirector` library both link is then one build, not rebuilt
/// back and forth by its build script.
pub fn build_peers(paths: &Paths, release: bool) -> Result<PathBuf> {
    let object = paths.ebpf_object();
    let mut cmd = toolchain::host_cargo();
    if object.is_file() {
        cmd.env(EBPF_OBJ_ENV, &object);
    }
    cmd.args(["build", "--package", "peers", "--bin", "peers"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building the benchmark's peers")?;
    let binary = paths.peers_binary(release);
    if !binary.is_file() {
        bail!(
            "the peers build succeeded but {} is missing",
            binary.display()
        );
    }
    Ok(binary)
}

/// `cargo xtask image`: the node image of `deploy/Dockerfile`, tagged
/// `egress-redirector:dev` and `egress-redirector:<version>`; returns the
/// `dev` reference.
///
/// The binary is built here first (`cargo xtask build`, the project's
/// pinned toolchain), then copied into a context directory that holds
/// nothing else, so `docker build` sends a few MB instead of `target/`.
pub fn image(paths: &Paths) -> Result<String> {
    if let Some(why) = docker_missing() {
        bail!("{why}; `cargo xtask image` needs a running Docker engine");
    }
    let binary = build(paths, true)?;

    let context = paths.root.join("target/image-context");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    fs::copy(&binary, context.join("redirector"))
        .with_context(|| format!("copying {} into the image context", binary.display()))?;

    let dev = format!("{IMAGE}:{DEV_TAG}");
    let versioned = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    run(Command::new("docker")
        .arg("build")
        .arg("--file")
        .arg(paths.root.join("deploy/Dockerfile"))
        .args(["--tag", &dev, "--tag", &versioned])
        .arg(&context))
    .context("docker build of deploy/Dockerfile")?;
    println!("image: {dev} ({versioned})");
    Ok(dev)
}
