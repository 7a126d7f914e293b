//! `cargo xtask image`: the node image of `deploy/Dockerfile`, tagged
//! `egress-redirector:dev` and `egress-redirector:<version>`.
//!
//! The binary is built here first (`cargo xtask build`, the project's pinned
//! toolchain), then copied into a context directory that holds nothing else,
//! so `docker build` sends a few MB instead of `target/`.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build;
use crate::toolchain::{self, Paths, find_program, run};

/// Repository of the image; the tags are [`DEV_TAG`] and the crate version.
pub const IMAGE: &str = "egress-redirector";
/// The tag the demo overlay and `kind-e2e` use.
pub const DEV_TAG: &str = "dev";

/// Why there is no usable Docker engine, if there is none: no `docker`
/// program, or `docker info` fails (no daemon, no permission).
pub fn docker_missing() -> Option<String> {
    let Some(docker) = find_program("docker") else {
        return Some("no Docker engine: `docker` not found on PATH".into());
    };
    if !toolchain::succeeds(Command::new(docker).arg("info")) {
        return Some(
            "no Docker engine: `docker info` fails (is the daemon running, and may this user \
             use its socket?)"
                .into(),
        );
    }
    None
}

/// Builds the image; returns its `dev` reference (`egress-redirector:dev`).
pub fn image(paths: &Paths) -> Result<String> {
    if let Some(why) = docker_missing() {
        bail!("{why}; `cargo xtask image` needs a running Docker engine");
    }
    let binary = build::build(paths, true)?;

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
