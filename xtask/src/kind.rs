//! `cargo xtask kind-e2e`: the demo overlay on a real (kind) cluster.
//!
//! Creates the cluster `egress-redirector-e2e` (its kubeconfig stays in
//! target/kind-e2e, the user's ~/.kube/config is not touched), builds and
//! loads the image, generates mitmproxy's CA with `redirector gen-ca`, starts
//! an origin outside the cluster (an nginx container on kind's Docker
//! network, HTTP and TLS, named in the cluster by a headless Service),
//! deploys `deploy/overlays/demo`, and checks:
//!
//! - from `egress-demo` (no proxy settings): plain HTTP and HTTPS with SNI go
//!   through mitmproxy (its header, its log, and for TLS its certificate:
//!   it intercepted the tunnel the daemon opened by the SNI name);
//! - pod-to-pod and pod-to-ClusterIP connections stay direct (the peer sees
//!   the curl pod's own address, no proxy header);
//! - `kube-system` is left alone: its pods are all ready, and a probe pod
//!   there reaches the origin directly;
//! - from `egress-demo-exempt` (labelled exempt): direct;
//! - `egress-demo` labelled exempt: direct within a few seconds, no
//!   restart; label removed: through the proxy again; the same with the
//!   curl pod's annotation;
//! - `curl-env`, a pod with `HTTPS_PROXY`/`HTTP_PROXY` set (as AKS injects
//!   them): HTTP and HTTPS work, through mitmproxy;
//! - uninstall, in the documented order: `deploy/uninstall` detaches the
//!   hooks while the DaemonSet runs, and pods go direct at once; then the
//!   DaemonSet is deleted (its pods drain and exit), pods still go direct
//!   and the pins are gone from the node's bpffs.
//!
//! Ends with `kind-e2e: N passed, M failed` and deletes the cluster and the
//! origin, also on failure (`KIND_E2E_KEEP=1` keeps them for inspection).
//!
//! What the run relies on in the manifests is checked offline first
//! ([`kind_plan`], a part of `cargo xtask manifests`). The run itself needs
//! Docker and kind, and the internet for the public images (mitmproxy,
//! nginx, curl, distroless). Without a Docker engine or kind it prints
//! `kind-e2e: SKIPPED (...)` and exits with [`SKIPPED_EXIT_CODE`]: never a
//! pass. It is not part of `cargo xtask test`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::build::{self, DEV_TAG, IMAGE};
use crate::counts::Counts;
use crate::manifests::{self, kind_plan};
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

struct Kind {
    paths: Paths,
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

pub fn kind_e2e(paths: &Paths) -> Result<()> {
    // Offline first: what the run relies on in deploy/ (also a stage of
    // `cargo xtask manifests`), so a broken overlay never costs a cluster.
    let demo = manifests::render(paths, &paths.root.join(kind_plan::DEMO_OVERLAY))?;
    let violations = kind_plan::violations(&demo, kind_plan::KIND_CONFIG);
    if !violations.is_empty() {
        bail!(
            "the demo overlay lacks what kind-e2e needs:\n  {}",
            violations.join("\n  ")
        );
    }
    println!(
        "kind-e2e plan: ok ({} objects in {})",
        demo.len(),
        kind_plan::DEMO_OVERLAY
    );

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

    kind.delete_all();
    let result = kind.create_and_test(&image_ref);
    if result.is_err() {
        kind.diagnostics();
    }
    if std::env::var_os("KIND_E2E_KEEP").is_some() {
        println!(
            "KIND_E2E_KEEP set: cluster {CLUSTER} and container {} kept; KUBECONFIG={}",
            kind_plan::ORIGIN_CONTAINER,
            kind.kubeconfig.display()
        );
    } else {
        kind.delete_all();
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

    /// The cluster and the origin container, whatever is left of them.
    fn delete_all(&self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", kind_plan::ORIGIN_CONTAINER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = run(self.kind().args(["delete", "cluster", "--name", CLUSTER])) {
            println!("warning: deleting the cluster failed: {e:#}");
        }
    }

    /// Starts the origin on kind's Docker network and returns its address.
    fn start_origin(&self, ca_dir: &Path) -> Result<String> {
        let conf = self.dir.join("origin/conf");
        let certs = self.dir.join("origin/certs");
        fs::create_dir_all(&conf)?;
        fs::create_dir_all(&certs)?;
        fs::write(conf.join("default.conf"), kind_plan::origin_nginx_conf())?;
        // Any key and certificate will do (mitmproxy runs with
        // ssl_insecure): the generated CA's, key and certificate in one file.
        fs::copy(ca_dir.join("mitmproxy-ca.pem"), certs.join("origin.pem"))?;
        run(Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                kind_plan::ORIGIN_CONTAINER,
                "--network",
                "kind",
            ])
            .arg("-v")
            .arg(format!("{}:/etc/nginx/conf.d:ro", conf.display()))
            .arg("-v")
            .arg(format!("{}:/certs:ro", certs.display()))
            .arg("nginx:1.27-alpine"))?;
        let mut inspect = Command::new("docker");
        inspect.args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            kind_plan::ORIGIN_CONTAINER,
        ]);
        let ip = toolchain::output(&mut inspect)
            .unwrap_or_default()
            .trim()
            .to_owned();
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            bail!("the origin container has no IPv4 address on the kind network: {ip:?}");
        }
        Ok(ip)
    }

    fn create_and_test(&self, image_ref: &str) -> Result<Counts> {
        let config = self.dir.join("kind.yaml");
        fs::write(&config, kind_plan::KIND_CONFIG)
            .with_context(|| format!("writing {}", config.display()))?;
        run(self
            .kind()
            .args(["create", "cluster", "--name", CLUSTER, "--wait", "180s"])
            .arg("--config")
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig))?;

        // The daemon pins into the node's bpffs; kind's node image normally
        // has one (systemd mounts it), mount it if not.
        run(Command::new("docker").args([
            "exec",
            NODE,
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
            .args(["create", "namespace", kind_plan::DEMO_PROXY_NS]))?;
        run(self
            .kubectl()
            .args([
                "-n",
                kind_plan::DEMO_PROXY_NS,
                "create",
                "secret",
                "generic",
                "mitmproxy-ca",
            ])
            .arg(format!(
                "--from-file=mitmproxy-ca.pem={}",
                ca.join("mitmproxy-ca.pem").display()
            )))?;
        let origin_ip = self.start_origin(&ca)?;
        println!("origin: {origin_ip} on the kind network, ports 18080 (HTTP) and 18443 (TLS)");

        let overlay = self.paths.root.join(kind_plan::DEMO_OVERLAY);
        debug_assert_eq!(image_ref, format!("{IMAGE}:{DEV_TAG}"));
        run(self.kubectl().arg("apply").arg("-k").arg(&overlay))?;
        let runtime = self.dir.join("runtime.yaml");
        fs::write(&runtime, kind_plan::runtime_objects(&origin_ip))?;
        run(self.kubectl().arg("apply").arg("-f").arg(&runtime))?;
        for (ns, what) in [
            ("egress-redirector", "daemonset/egress-redirector"),
            (kind_plan::DEMO_PROXY_NS, "deployment/mitmproxy"),
            ("egress-demo", "deployment/peer"),
        ] {
            run(self
                .kubectl()
                .args(["-n", ns, "rollout", "status", what, "--timeout=300s"]))?;
        }
        for (ns, pod) in [
            ("egress-demo", "curl"),
            ("egress-demo", "curl-env"),
            ("egress-demo-exempt", "curl"),
            ("kube-system", kind_plan::SYSTEM_PROBE),
        ] {
            run(self.kubectl().args([
                "-n",
                ns,
                "wait",
                &format!("pod/{pod}"),
                "--for=condition=Ready",
                "--timeout=300s",
            ]))?;
        }

        let mut t = Checks {
            kind: self,
            origin_ip,
            probe: 0,
            counts: Counts::default(),
        };
        let plain = Fetch::Http;
        let sni = Fetch::TlsByName;
        t.expect(
            "plain HTTP from a pod without proxy settings goes through mitmproxy",
            CURL,
            plain,
            true,
        );
        t.expect(
            "HTTPS by name (SNI) goes through mitmproxy, intercepted",
            CURL,
            sni,
            true,
        );
        t.expect(
            "pod in an exempt namespace goes direct",
            EXEMPT_CURL,
            plain,
            false,
        );
        t.peer_stays_direct();
        t.system_left_alone();

        let ns_label = ["label", "namespace", "egress-demo"];
        t.toggle(
            "namespace labelled exempt: next connection direct",
            &[
                &ns_label[..],
                &["egress-redirector/exempt=true", "--overwrite"],
            ]
            .concat(),
            false,
        )?;
        t.toggle(
            "label removed: through the proxy again",
            &[&ns_label[..], &["egress-redirector/exempt-"]].concat(),
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
            false,
        )?;
        t.toggle(
            "annotation removed: through the proxy again",
            &[&annotate[..], &["egress-redirector/exempt-"]].concat(),
            true,
        )?;

        t.expect(
            "a pod with HTTP_PROXY set: plain HTTP through mitmproxy",
            ENV_CURL,
            plain,
            true,
        );
        t.expect(
            "a pod with HTTPS_PROXY set: HTTPS through mitmproxy",
            ENV_CURL,
            sni,
            true,
        );

        t.uninstall()?;
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
                kind_plan::DEMO_PROXY_NS,
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

/// kind's only node.
const NODE: &str = "egress-redirector-e2e-control-plane";

/// The client pods, as (namespace, pod).
type Client = (&'static str, &'static str);
const CURL: Client = ("egress-demo", "curl");
const EXEMPT_CURL: Client = ("egress-demo-exempt", "curl");
const ENV_CURL: Client = ("egress-demo", "curl-env");
const SYSTEM_CURL: Client = ("kube-system", kind_plan::SYSTEM_PROBE);

/// How a check reaches the origin.
#[derive(Clone, Copy)]
enum Fetch {
    /// `http://ORIGIN_IP:18080/...`
    Http,
    /// `https://origin.egress-demo-proxy.svc.cluster.local:18443/...`,
    /// resolved by curl to the origin's address: the TLS SNI names it.
    TlsByName,
}

/// The assertions, each counted.
struct Checks<'a> {
    kind: &'a Kind,
    origin_ip: String,
    probe: u32,
    counts: Counts,
}

impl Checks<'_> {
    /// Runs curl in a client pod (`sh -c`, stderr folded into stdout);
    /// returns its output and whether it succeeded.
    fn curl(&self, (ns, pod): Client, args: &str) -> Result<(bool, String)> {
        let mut cmd = self.kind.kubectl();
        cmd.args(["-n", ns, "exec", pod, "--", "sh", "-c"])
            .arg(format!("curl --max-time 10 {args} 2>&1"));
        let out = cmd
            .output()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Fetches a fresh path from the origin; returns whether the request
    /// went through mitmproxy: the response carries its header and its log
    /// shows the path (and for TLS, mitmproxy's certificate was presented).
    /// A disagreement between them is an error.
    fn via_proxy(&mut self, client: Client, how: Fetch) -> Result<bool> {
        self.probe += 1;
        let path = format!("/kind-e2e/{}", self.probe);
        let (url, extra) = match how {
            Fetch::Http => (
                format!(
                    "http://{}:{}{path}",
                    self.origin_ip,
                    kind_plan::ORIGIN_HTTP_PORT
                ),
                String::new(),
            ),
            Fetch::TlsByName => {
                let host = kind_plan::origin_host();
                let port = kind_plan::ORIGIN_HTTPS_PORT;
                (
                    format!("https://{host}:{port}{path}"),
                    format!("-kv --resolve {host}:{port}:{}", self.origin_ip),
                )
            }
        };
        let (ok, response) = self.curl(client, &format!("-si {extra} {url}"))?;
        if !ok || !response.contains("origin ok") {
            bail!("curl {url} from {client:?}: no answer from the origin:\n{response}");
        }
        let header = response.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-egress-proxy: mitmproxy")
        });
        let log = self.kind.kubectl_output(&[
            "-n",
            kind_plan::DEMO_PROXY_NS,
            "logs",
            "deployment/mitmproxy",
        ])?;
        let logged = log.lines().any(|l| l.contains(&path));
        let mut verdicts = vec![("header", header), ("mitmproxy's log", logged)];
        if let Fetch::TlsByName = how {
            // curl -v prints the server certificate's issuer.
            let issuer = response
                .lines()
                .any(|l| l.contains("issuer:") && l.contains("mitmproxy"));
            verdicts.push(("the certificate's issuer", issuer));
        }
        if verdicts.iter().any(|(_, v)| *v != header) {
            bail!("curl {url} from {client:?}: the signs disagree: {verdicts:?}\n{response}");
        }
        let body = response.lines().last().unwrap_or_default();
        println!(
            "  {client:?} {path}: {} ({body})",
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

    fn expect(&mut self, name: &str, client: Client, how: Fetch, proxied: bool) {
        match self.via_proxy(client, how) {
            Ok(got) => self.record(name, got == proxied, ""),
            Err(e) => self.record(name, false, &format!(": {e:#}")),
        }
    }

    /// The peer, by pod IP and by Service name, sees the curl pod's own
    /// address and no proxy header: in-cluster traffic stays direct.
    fn peer_stays_direct(&mut self) {
        let result = (|| -> Result<Vec<String>> {
            let pod_ip = |selector: &[&str]| -> Result<String> {
                let args = [
                    &["-n", "egress-demo", "get", "pod"][..],
                    selector,
                    &["-o", "jsonpath={..podIP}"],
                ];
                let ip = self.kind.kubectl_output(&args.concat())?.trim().to_owned();
                if ip.is_empty() {
                    bail!("no pod IP for {selector:?}");
                }
                Ok(ip)
            };
            let own = pod_ip(&["curl"])?;
            let peer = pod_ip(&["-l", "app=peer"])?;
            let mut problems = Vec::new();
            for url in [
                format!("http://{peer}:8080/pod-to-pod"),
                "http://peer.egress-demo.svc.cluster.local:8080/pod-to-service".to_owned(),
            ] {
                let (ok, response) = self.curl(CURL, &format!("-si {url}"))?;
                let direct = ok
                    && response.contains(&format!("peer ok client={own} "))
                    && !response.to_ascii_lowercase().contains("x-egress-proxy");
                println!("  {url}: {}", response.lines().last().unwrap_or_default());
                if !direct {
                    problems.push(format!("{url} was not direct from {own}:\n{response}"));
                }
            }
            Ok(problems)
        })();
        match result {
            Ok(problems) => self.record(
                "pod-to-pod and pod-to-ClusterIP stay direct",
                problems.is_empty(),
                &problems
                    .iter()
                    .map(|p| format!(": {p}"))
                    .collect::<String>(),
            ),
            Err(e) => self.record(
                "pod-to-pod and pod-to-ClusterIP stay direct",
                false,
                &format!(": {e:#}"),
            ),
        }
    }

    /// kube-system's pods all ready with the daemon running, and a pod there
    /// reaches the origin directly.
    fn system_left_alone(&mut self) {
        let ready = self.kind.kubectl_output(&[
            "-n",
            "kube-system",
            "wait",
            "pod",
            "--all",
            "--for=condition=Ready",
            "--timeout=120s",
        ]);
        self.record(
            "kube-system's pods are ready with the daemon running",
            ready.is_ok(),
            &ready.err().map(|e| format!(": {e:#}")).unwrap_or_default(),
        );
        self.expect(
            "a pod in kube-system goes direct",
            SYSTEM_CURL,
            Fetch::Http,
            false,
        );
    }

    /// Runs `kubectl args`, then fetches from `egress-demo/curl` until the
    /// treatment is `proxied`, within [`TOGGLE_DEADLINE`]; reports the
    /// latency.
    fn toggle(&mut self, name: &str, args: &[&str], proxied: bool) -> Result<()> {
        self.kind.kubectl_output(args)?;
        let start = Instant::now();
        loop {
            match self.via_proxy(CURL, Fetch::Http) {
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

    /// The documented uninstall: `deploy/uninstall` detaches the hooks
    /// while the daemon runs (pods go direct at once, never refused), then
    /// the DaemonSet goes (its pods drain and exit) and nothing is left
    /// pinned on the node.
    fn uninstall(&mut self) -> Result<()> {
        let url = format!(
            "http://{}:{}/after-detach",
            self.origin_ip,
            kind_plan::ORIGIN_HTTP_PORT
        );
        let uninstall = self.kind.paths.root.join("deploy/uninstall");
        run(self.kind.kubectl().arg("apply").arg("-k").arg(&uninstall))?;
        run(self.kind.kubectl().args([
            "-n",
            "egress-redirector-uninstall",
            "rollout",
            "status",
            "daemonset/egress-redirector-detach",
            "--timeout=300s",
        ]))?;
        let direct = |response: &str| {
            response.contains("origin ok")
                && !response.to_ascii_lowercase().contains("x-egress-proxy")
        };
        let (ok, response) = self.curl(CURL, &format!("-si {url}"))?;
        self.record(
            "deploy/uninstall with the daemon still running: pods go direct",
            ok && direct(&response),
            "",
        );
        let base = self.kind.paths.root.join("deploy/base");
        run(self
            .kind
            .kubectl()
            .args(["delete", "--wait=true", "-k"])
            .arg(&base))?;
        let (ok, response) = self.curl(CURL, &format!("-si {url}"))?;
        self.record(
            "then the DaemonSet deleted: pods still go direct",
            ok && direct(&response),
            "",
        );
        let pins_gone = !toolchain::succeeds(Command::new("docker").args([
            "exec",
            NODE,
            "test",
            "-e",
            "/sys/fs/bpf/redirector",
        ]));
        self.record(
            "after the uninstall: nothing pinned on the node",
            pins_gone,
            "",
        );
        run(self.kind.kubectl().args(["delete", "-k"]).arg(&uninstall))?;
        Ok(())
    }
}
