//! `cargo xtask kind-e2e`: the demo overlay on a real (kind) cluster.
//!
//! Creates the cluster `egress-redirector-e2e` (its kubeconfig stays in
//! target/kind-e2e, the user's ~/.kube/config is not touched), builds and
//! loads the image, generates mitmproxy's CA with `redirector gen-ca`,
//! deploys `deploy/overlays/demo`, and then curls the demo origin from pods
//! without any proxy settings:
//!
//! - from `egress-demo`: the response carries mitmproxy's `X-Egress-Proxy`
//!   header and mitmproxy logged the request;
//! - from `egress-demo-exempt` (labelled exempt): neither;
//! - `egress-demo` labelled exempt: direct, within a few seconds, no restart;
//!   label removed: through the proxy again;
//! - the curl pod annotated `egress-redirector/exempt: "true"`: direct;
//!   annotation removed: through the proxy again.
//!
//! Ends with `kind-e2e: N passed, M failed` and deletes the cluster, also on
//! failure (`KIND_E2E_KEEP=1` keeps it for inspection).
//!
//! Needs Docker and kind, and the internet for the demo's public images
//! (mitmproxy, nginx, curl, distroless). Without a Docker engine or kind it
//! prints `kind-e2e: SKIPPED (...)` and exits with [`SKIPPED_EXIT_CODE`]:
//! never a pass. It is not part of `cargo xtask test`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::build::{self, DEV_TAG, IMAGE};
use crate::counts::Counts;
use crate::toolchain::{self, Paths, describe, docker_missing, find_program, run};

/// Exit code of a skipped run (automake's "skipped"): distinct from success
/// and from failure.
pub const SKIPPED_EXIT_CODE: u8 = 77;

/// The fixed cluster name; a leftover cluster of that name is replaced.
pub const CLUSTER: &str = "egress-redirector-e2e";

/// How long an exemption toggle may take to show in the next connection.
/// The target is 2 s; a real cluster's watch delivery gets a little slack.
const TOGGLE_DEADLINE: Duration = Duration::from_secs(5);

/// A run that could not happen here; main prints it and exits 77.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kind-e2e: SKIPPED ({})", self.0)
    }
}

impl std::error::Error for Skipped {}

const KIND_CONFIG: &str = "\
# Written by `cargo xtask kind-e2e`. kind's default ranges, spelled out
# because deploy/overlays/demo passes them as --cluster-cidr.
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
nodes:
  - role: control-plane
";

struct Kind {
    paths: Paths,
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

pub fn kind_e2e(paths: &Paths) -> Result<()> {
    if let Some(why) = docker_missing() {
        return Err(Skipped(why).into());
    }
    if find_program("kind").is_none() {
        return Err(Skipped("kind not found on PATH".into()).into());
    }
    let kubectl = toolchain::kubectl(paths)
        .context("no working kubectl; run `cargo xtask setup` (it installs one if missing)")?;
    let dir = paths.root.join("target/kind-e2e");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kind = Kind {
        paths: paths.clone(),
        kubeconfig: dir.join("kubeconfig"),
        dir,
        kubectl,
    };

    // Build first: a compile error should not cost a cluster.
    let image_ref = build::image(paths)?;

    let _ = kind.delete_cluster();
    let result = kind.create_and_test(&image_ref);
    if result.is_err() {
        kind.diagnostics();
    }
    if std::env::var_os("KIND_E2E_KEEP").is_some() {
        println!(
            "KIND_E2E_KEEP set: cluster {CLUSTER} kept; KUBECONFIG={}",
            kind.kubeconfig.display()
        );
    } else if let Err(e) = kind.delete_cluster() {
        println!("warning: deleting the cluster failed: {e:#}");
    }
    let counts = result?;
    if counts.failed > 0 {
        bail!("{} kind end-to-end check(s) failed", counts.failed);
    }
    Ok(())
}

impl Kind {
    fn kind(&self) -> Command {
        let mut cmd = Command::new("kind");
        cmd.stdin(Stdio::null());
        cmd
    }

    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl with `args` and returns stdout, failing with stderr.
    fn kubectl_output(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.kubectl();
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn delete_cluster(&self) -> Result<()> {
        run(self.kind().args(["delete", "cluster", "--name", CLUSTER]))
    }

    fn create_and_test(&self, image_ref: &str) -> Result<Counts> {
        let config = self.dir.join("kind.yaml");
        fs::write(&config, KIND_CONFIG).with_context(|| format!("writing {}", config.display()))?;
        run(self
            .kind()
            .args(["create", "cluster", "--name", CLUSTER, "--wait", "180s"])
            .arg("--config")
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig))?;

        // The daemon pins into the node's bpffs; kind's node image normally
        // has one (systemd mounts it), mount it if not.
        let node = format!("{CLUSTER}-control-plane");
        run(Command::new("docker").args([
            "exec",
            &node,
            "sh",
            "-c",
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf",
        ]))?;
        run(self
            .kind()
            .args(["load", "docker-image", image_ref, "--name", CLUSTER]))?;

        // mitmproxy's CA, as a Secret (the demo overlay mounts it).
        let ca = self.dir.join("ca");
        let daemon = self.paths.daemon_binary(true);
        run(Command::new(&daemon)
            .arg("gen-ca")
            .arg("--out-dir")
            .arg(&ca))?;
        run(self
            .kubectl()
            .args(["create", "namespace", "egress-demo-proxy"]))?;
        run(self
            .kubectl()
            .args([
                "-n",
                "egress-demo-proxy",
                "create",
                "secret",
                "generic",
                "mitmproxy-ca",
            ])
            .arg(format!(
                "--from-file=mitmproxy-ca.pem={}",
                ca.join("mitmproxy-ca.pem").display()
            )))?;

        let overlay = self.paths.root.join("deploy/overlays/demo");
        debug_assert_eq!(image_ref, format!("{IMAGE}:{DEV_TAG}"));
        run(self.kubectl().arg("apply").arg("-k").arg(&overlay))?;
        for (ns, what) in [
            ("egress-redirector", "daemonset/egress-redirector"),
            ("egress-demo-proxy", "deployment/mitmproxy"),
            ("egress-demo-proxy", "deployment/origin"),
        ] {
            run(self
                .kubectl()
                .args(["-n", ns, "rollout", "status", what, "--timeout=300s"]))?;
        }
        for ns in ["egress-demo", "egress-demo-exempt"] {
            run(self.kubectl().args([
                "-n",
                ns,
                "wait",
                "pod/curl",
                "--for=condition=Ready",
                "--timeout=300s",
            ]))?;
        }
        let origin = self
            .kubectl_output(&[
                "-n",
                "egress-demo-proxy",
                "get",
                "pod",
                "-l",
                "app=origin",
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ])?
            .trim()
            .to_string();
        if origin.is_empty() {
            bail!("the origin pod has no IP");
        }
        println!("origin: http://{origin}:18080/ (node address, hostNetwork)");

        let mut t = Checks {
            kind: self,
            origin,
            probe: 0,
            counts: Counts::default(),
        };
        t.expect(
            "pod without proxy settings goes through mitmproxy",
            "egress-demo",
            true,
        );
        t.expect(
            "pod in an exempt namespace goes direct",
            "egress-demo-exempt",
            false,
        );

        let ns_label = ["label", "namespace", "egress-demo"];
        t.toggle(
            "namespace labelled exempt: next connection direct",
            &[
                &ns_label[..],
                &["egress-redirector/exempt=true", "--overwrite"],
            ]
            .concat(),
            "egress-demo",
            false,
        )?;
        t.toggle(
            "label removed: through the proxy again",
            &[&ns_label[..], &["egress-redirector/exempt-"]].concat(),
            "egress-demo",
            true,
        )?;
        let annotate = ["-n", "egress-demo", "annotate", "pod", "curl"];
        t.toggle(
            "pod annotated exempt: next connection direct",
            &[
                &annotate[..],
                &["egress-redirector/exempt=true", "--overwrite"],
            ]
            .concat(),
            "egress-demo",
            false,
        )?;
        t.toggle(
            "annotation removed: through the proxy again",
            &[&annotate[..], &["egress-redirector/exempt-"]].concat(),
            "egress-demo",
            true,
        )?;
        println!("kind-e2e: {}", t.counts);
        Ok(t.counts)
    }

    /// What to look at when something failed, printed before the cluster
    /// goes.
    fn diagnostics(&self) {
        println!("\n==> diagnostics");
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &[
                "-n",
                "egress-redirector",
                "logs",
                "daemonset/egress-redirector",
                "--tail=100",
            ],
            &[
                "-n",
                "egress-redirector",
                "exec",
                "daemonset/egress-redirector",
                "--",
                "/usr/local/bin/redirector",
                "status",
                "--bpffs=/host/sys/fs/bpf/redirector",
            ],
            &[
                "-n",
                "egress-demo-proxy",
                "logs",
                "deployment/mitmproxy",
                "--tail=50",
            ],
        ] {
            let mut cmd = self.kubectl();
            cmd.args(args);
            println!("$ {}", describe(&cmd));
            let _ = cmd.status();
        }
    }
}

/// The assertions, each counted.
struct Checks<'a> {
    kind: &'a Kind,
    origin: String,
    probe: u32,
    counts: Counts,
}

impl Checks<'_> {
    /// Curls the origin from the `curl` pod of `ns` with a fresh path;
    /// returns whether the request went through mitmproxy: the response
    /// carries its header and its log shows the path. A mismatch between
    /// the two is an error.
    fn via_proxy(&mut self, ns: &str) -> Result<bool> {
        self.probe += 1;
        let path = format!("/kind-e2e/{}", self.probe);
        let url = format!("http://{}:18080{path}", self.origin);
        let response = self.kind.kubectl_output(&[
            "-n",
            ns,
            "exec",
            "curl",
            "--",
            "curl",
            "-si",
            "--max-time",
            "10",
            &url,
        ])?;
        if !response.contains("origin ok") {
            bail!("curl {url} from {ns}: no answer from the origin:\n{response}");
        }
        let header = response.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-egress-proxy: mitmproxy")
        });
        let log = self.kind.kubectl_output(&[
            "-n",
            "egress-demo-proxy",
            "logs",
            "deployment/mitmproxy",
        ])?;
        let logged = log.lines().any(|l| l.contains(&path));
        if header != logged {
            bail!(
                "curl {url} from {ns}: header says {}, mitmproxy's log says {}",
                if header { "proxied" } else { "direct" },
                if logged { "proxied" } else { "direct" }
            );
        }
        let body = response.lines().last().unwrap_or_default();
        println!(
            "  {ns} {path}: {} ({body})",
            if header { "via mitmproxy" } else { "direct" }
        );
        Ok(header)
    }

    fn record(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            self.counts.passed += 1;
            println!("ok - {name}{detail}");
        } else {
            self.counts.failed += 1;
            println!("FAIL - {name}{detail}");
        }
    }

    fn expect(&mut self, name: &str, ns: &str, proxied: bool) {
        match self.via_proxy(ns) {
            Ok(got) => self.record(name, got == proxied, ""),
            Err(e) => self.record(name, false, &format!(": {e:#}")),
        }
    }

    /// Runs `kubectl args`, then curls from `ns` until the treatment is
    /// `proxied`, within [`TOGGLE_DEADLINE`]; reports the latency.
    fn toggle(&mut self, name: &str, args: &[&str], ns: &str, proxied: bool) -> Result<()> {
        self.kind.kubectl_output(args)?;
        let start = Instant::now();
        loop {
            match self.via_proxy(ns) {
                Ok(got) if got == proxied => {
                    let detail = format!(" (after {:.1}s)", start.elapsed().as_secs_f64());
                    self.record(name, true, &detail);
                    return Ok(());
                }
                Ok(_) if start.elapsed() < TOGGLE_DEADLINE => sleep(Duration::from_millis(500)),
                Ok(_) => {
                    let detail = format!(" (not within {}s)", TOGGLE_DEADLINE.as_secs());
                    self.record(name, false, &detail);
                    return Ok(());
                }
                Err(e) => {
                    self.record(name, false, &format!(": {e:#}"));
                    return Ok(());
                }
            }
        }
    }
}
