//! `cargo xtask runtime-e2e`: the product on a real container runtime.
//!
//! A private containerd (CRI plugin, runc with the cgroupfs driver, the CNI
//! bridge and host-local plugins) runs the DaemonSet's pod as rendered from
//! deploy/, translated into CRI calls by a miniature kubelet, beside client
//! pods that are real CRI sandboxes in the kubelet's cgroup layout; the
//! scenarios check the product from inside those pods. The images come
//! from archives written here ([`crate::image`]): no registry is contacted.
//! The node side is shell and Python in tests/runtime (run.sh, node.sh,
//! kubelet.py, admission.py, scenarios.py); see tests/runtime/README.md.
//!
//! The CRI client is Python grpcio with stubs generated at set-up from the
//! vendored CRI api.proto by grpcio-tools (which bundles protoc): Debian has
//! no crictl, and the Rust crates with CRI bindings need protoc at build
//! time and a tonic stack in xtask, minutes of compiling on a 2-core
//! machine for a test harness whose other half is Python already.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::counts::{Counts, parse_plain_result};
use crate::image::{self, ImageSpec};
use crate::toolchain::{self, Paths, run_scanning};
use crate::{build, setup};

/// The sandbox image containerd's CRI plugin is configured with
/// (`sandbox_image`), and the name the uninstall manifest's `done`
/// container asks for: the same local image.
pub const PAUSE_REFERENCES: &[&str] = &[
    "docker.io/library/rde-pause:1",
    "registry.k8s.io/pause:3.10",
];
/// The client pods' image: curl and the libraries it needs.
pub const CLIENT_REFERENCE: &str = "docker.io/library/rde-curl:1";

fn work_dir(paths: &Paths) -> PathBuf {
    paths.root.join("target/runtime-e2e")
}

/// The pause image: coreutils' `sleep` as /pause, run as `/pause infinity`
/// (a sandbox's first process only has to stay alive; runc's init reaps).
fn pause_spec() -> Result<ImageSpec> {
    let sleep = toolchain::find_program("sleep").context("no `sleep` on this machine")?;
    let mut spec = ImageSpec::program(
        &sleep,
        "/pause",
        PAUSE_REFERENCES.iter().map(|r| (*r).to_owned()).collect(),
    )?;
    spec.cmd = vec!["infinity".to_owned()];
    Ok(spec)
}

/// The client image: curl with its libraries, `sleep` to keep the
/// container alive between the scenarios' execs, and the public roots at
/// Debian's path, as a distribution's image has them (what the
/// CA-injection scenarios replace; without them curl would fail for want
/// of a bundle, not on the MITM's certificate).
fn client_spec() -> Result<ImageSpec> {
    let curl = toolchain::find_program("curl").context("no curl on this machine")?;
    let sleep = toolchain::find_program("sleep").context("no `sleep` on this machine")?;
    let mut spec = ImageSpec::program(&curl, "/usr/bin/curl", vec![CLIENT_REFERENCE.to_owned()])?;
    let sleep_spec = ImageSpec::program(&sleep, "/usr/bin/sleep", Vec::new())?;
    for file in sleep_spec.files {
        if !spec.files.iter().any(|(_, d)| *d == file.1) {
            spec.files.push(file);
        }
    }
    let bundle = Path::new(image::CA_BUNDLE);
    anyhow::ensure!(
        bundle.is_file(),
        "no {} on this machine (Debian package ca-certificates)",
        bundle.display()
    );
    spec.files
        .push((bundle.to_path_buf(), image::CA_BUNDLE.to_owned()));
    Ok(spec)
}

/// Writes the three image archives; returns their paths.
pub fn write_images(paths: &Paths, daemon: &Path) -> Result<Vec<PathBuf>> {
    let dir = work_dir(paths);
    let tags = vec![
        image::DEV_TAG.to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    ];
    let specs = [
        (
            "egress-redirector",
            image::daemon_spec(paths, daemon, &tags)?,
        ),
        ("pause", pause_spec()?),
        ("client", client_spec()?),
    ];
    let mut out = Vec::new();
    for (name, spec) in specs {
        let written = image::write_archive(&spec, &dir.join(format!("{name}.oci.tar")))?;
        println!(
            "runtime-e2e: image {} ({:.1} MB)",
            written.archive.display(),
            written.size as f64 / 1e6
        );
        out.push(written.archive);
    }
    Ok(out)
}

/// `cargo xtask runtime-e2e`: set-up (the test command's), build, run.
pub fn runtime_e2e(paths: &Paths) -> Result<()> {
    toolchain::require_root("running containerd and its pods")?;
    setup::setup(paths, setup::Purpose::Test)?;
    let daemon = build::build(paths, true)?;
    let counts = run_harness(paths, &daemon)?;
    println!("runtime-e2e: {counts}");
    Ok(())
}

/// Writes the images and runs tests/runtime/run.sh; returns the scenarios'
/// counts (both passes), failing when one failed or none reported.
pub fn run_harness(paths: &Paths, daemon: &Path) -> Result<Counts> {
    let archives = write_images(paths, daemon)?;
    let kubectl = toolchain::kubectl(paths).context("no kubectl (cargo xtask setup --for test)")?;
    let client = setup::cri_client(paths);
    let list = archives
        .iter()
        .map(|a| a.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("bash");
    cmd.arg(paths.root.join("tests/runtime/run.sh"))
        .env("RT_IMAGES", list)
        .env("CLIENT_REF", CLIENT_REFERENCE)
        .env("KUBECTL", kubectl)
        .env("CRI_PYTHON", &client.python)
        .env("CRI_STUBS", &client.stubs)
        .env("REDIRECTOR_BIN", daemon)
        .env("MITMDUMP", paths.mitmdump());
    let mut total = Counts::default();
    let mut reported = false;
    let result = run_scanning(&mut cmd, |line| {
        if let Some(c) = parse_plain_result(line) {
            total.add(c);
            reported = true;
        }
    });
    if !reported {
        total.failed += 1;
    }
    result.context("tests/runtime/run.sh")?;
    Ok(total)
}
