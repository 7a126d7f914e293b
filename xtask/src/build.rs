//! `cargo xtask build`: the eBPF object, then the daemon that embeds it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::toolchain::{self, EbpfToolchain, Paths, run};

/// Environment variable through which the `redirector` crate's build script
/// learns where the eBPF object is.
pub const EBPF_OBJ_ENV: &str = "REDIRECTOR_EBPF_OBJ";

/// Builds the eBPF object and returns its absolute path.
pub fn build_ebpf(paths: &Paths) -> Result<PathBuf> {
    let toolchain = EbpfToolchain::detect().context(
        "no eBPF toolchain: need a rustup nightly with rust-src, or Debian's \
         rustc-web + libstd-rust-web-dev-bpf; run `cargo xtask setup`",
    )?;
    if toolchain::bpf_linker_version().is_none() {
        bail!("bpf-linker not found (or `bpf-linker --version` fails); run `cargo xtask setup`");
    }
    println!("eBPF toolchain: {}", toolchain.describe());
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
