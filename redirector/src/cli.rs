//! Command-line interface.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// Default pin directory on a node's bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/redirector";
/// Default `SO_MARK` of the daemon's sockets: clear of kube-proxy
/// (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00, 0xf000).
pub const DEFAULT_SOCKET_MARK: u32 = 0xe5;
/// [`DEFAULT_SOCKET_MARK`] as `--help` and the docs write it.
const DEFAULT_SOCKET_MARK_HEX: &str = "0xe5";
/// Default port of the redirect listener.
pub const DEFAULT_PORT: u16 = 15001;
/// Default `--handover-dir`.
pub const DEFAULT_HANDOVER_DIR: &str = "/run/egress-redirector";
/// Default `--drain-timeout`, in seconds: below the DaemonSet's
/// `terminationGracePeriodSeconds` (60), so the daemon ends its drain
/// before the kubelet's SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: &str = "50";

/// Transparent egress through a corporate HTTP proxy for Kubernetes pods.
#[derive(Debug, Parser)]
#[command(name = "redirector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format on stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the hooks to a cgroup and proxy redirected connections.
    Run(Box<RunArgs>),
    /// Remove the hooks and pinned maps of an instance.
    Detach(PinArgs),
    /// Show attached hooks, exempt cgroups and kernel counters.
    Status(StatusArgs),
    /// Generate a MITM CA for the upstream proxy (mitmproxy's confdir file
    /// set) and print it as base64 for `trustedCA`.
    GenCa(GenCaArgs),
    /// Say how the daemon would route a connection, and which rule decided.
    Explain(ExplainArgs),
    /// Write the config's `trustedCA` certificates into a host's trust
    /// store (Debian/Ubuntu or RHEL family) and rebuild its bundle.
    InstallCa(InstallCaArgs),
    /// Serve the CA-injection admission webhook: pods in namespaces labelled
    /// `egress-redirector/inject-ca=true` get the trust bundle (public roots +
    /// `trustedCA`) mounted and the variables runtimes read; the bundle's
    /// ConfigMap is kept in each such namespace.
    Webhook(WebhookArgs),
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// The AKS proxy JSON: its `trustedCA` goes into the bundle (re-read
    /// every 5 s).
    #[arg(long, value_name = "FILE")]
    pub proxy_config: PathBuf,
    /// Address of the HTTPS server the API server calls (`POST /mutate`).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The webhook's namespace (Secret, Lease, Service).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        default_value = "egress-redirector"
    )]
    pub namespace: String,
    /// The webhook's Service: its certificate names `NAME.NS.svc`.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "egress-redirector-ca-injector"
    )]
    pub service: String,
    /// Serving certificate and key (PEM), e.g. from cert-manager; re-read
    /// when they change. Without them a certificate is generated and kept
    /// in --tls-secret.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The Secret (in --namespace) holding the generated certificate.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "egress-redirector-ca-injector-tls"
    )]
    pub tls_secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept equal to
    /// the generated certificate's CA; `""` leaves it to someone else
    /// (cert-manager's CA injector).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "egress-redirector-ca-injector"
    )]
    pub webhook_config: String,
    /// Keep no ConfigMaps: the bundle comes from elsewhere (a trust-manager
    /// `Bundle` named egress-redirector-ca-bundle).
    #[arg(long)]
    pub no_bundle_sync: bool,
    /// The Lease (in --namespace) that picks the one replica writing
    /// ConfigMaps.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "egress-redirector-ca-injector"
    )]
    pub lease: String,
    /// Write ConfigMaps without a Lease (a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
    /// No Kubernetes API at all: only serve reviews (needs --tls-cert).
    #[arg(long)]
    pub no_kube: bool,
}

impl WebhookArgs {
    /// The names the API server may call the Service by.
    pub fn dns_names(&self) -> Vec<String> {
        let base = format!("{}.{}.svc", self.service, self.namespace);
        vec![base.clone(), format!("{base}.cluster.local")]
    }

    /// This replica's name in the Lease: the pod name, else the host name.
    pub fn identity(&self) -> String {
        std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| format!("pid-{}", std::process::id()))
    }
}

/// Built-in bypasses, shared by `run` and `explain` so both decide alike.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The cluster's pod or service range, never proxied (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: Vec<ipnet::IpNet>,
    /// Redirect loopback destinations too (127.0.0.0/8, ::1).
    #[arg(long)]
    pub no_bypass_loopback: bool,
    /// Redirect link-local destinations too (169.254.0.0/16 with cloud
    /// metadata, fe80::/10).
    #[arg(long)]
    pub no_bypass_link_local: bool,
    /// Redirect connections to the node's own addresses too (its
    /// interfaces' and, with --kube, its Node's `status.addresses`).
    #[arg(long)]
    pub no_bypass_node_addresses: bool,
    /// Redirect connections to the upstream proxies' addresses too (every
    /// port of the proxy's address is direct otherwise, for pods that speak
    /// to the proxy themselves): for a proxy that shares its address with
    /// destinations that must stay proxied.
    #[arg(long)]
    pub no_bypass_proxy_addresses: bool,
}

impl PolicyArgs {
    pub fn builtins(&self) -> crate::policy::Builtins {
        crate::policy::Builtins {
            loopback: !self.no_bypass_loopback,
            link_local: !self.no_bypass_link_local,
            cluster_cidrs: self.cluster_cidr.clone(),
        }
    }

    /// The bypass sources the flags switch on and off.
    pub fn automatic(&self) -> crate::bypass::Automatic {
        crate::bypass::Automatic {
            node_addresses: !self.no_bypass_node_addresses,
            proxy_addresses: !self.no_bypass_proxy_addresses,
        }
    }
}

/// Where the daemon publishes what `status` and `explain` cannot read
/// from the kernel (where each bypassed prefix came from).
#[derive(Debug, Args)]
pub struct PublishedArgs {
    /// The daemon's --handover-dir: it publishes its bypass sources there
    /// too (`bypass.json`), for `status` and `explain`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_HANDOVER_DIR)]
    pub handover_dir: PathBuf,
}

/// The resolver that verifies `noProxy` name rules, shared by `run` and
/// `explain` so both decide alike.
#[derive(Debug, Args)]
pub struct ResolverArgs {
    /// Name servers (resolv.conf format) that verify noProxy name rules: a
    /// connection matched by its TLS SNI or HTTP Host goes direct only to an
    /// address the name resolves to there, else through the proxy. Read at
    /// start.
    #[arg(long, value_name = "FILE", default_value = crate::resolve::DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,
    /// Bound, in seconds, on one name's lookup; without an answer in time
    /// the connection goes through the proxy.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub resolve_timeout: std::time::Duration,
}

impl ResolverArgs {
    /// The resolver these flags describe.
    pub fn resolver(&self) -> Result<crate::resolve::NameResolver, crate::resolve::ResolveError> {
        crate::resolve::NameResolver::from_resolv_conf(&self.resolv_conf, self.resolve_timeout)
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The AKS proxy JSON, as given to `run`.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub resolver: ResolverArgs,
    #[command(flatten)]
    pub published: PublishedArgs,
    /// The address the pod connected to (its original destination), for a
    /// host-name target: a noProxy name rule counts only if it is one of
    /// the name's addresses. Without it, any of them.
    #[arg(long, value_name = "IP")]
    pub destination: Option<std::net::IpAddr>,
    /// The client pod's namespace: decide on the profile its
    /// `egress-redirector/profile` label selects, as the daemon last
    /// published it (`profiles.json` in --handover-dir).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// What the client speaks, for a `host:port` target (a URL's scheme
    /// says it): `http` (plain HTTP), `tls`, or `tcp` (anything else).
    #[arg(long, value_name = "PROTO", default_value = "tcp")]
    pub protocol: String,
    /// A URL (`https://api.example.com/x`), `host:port` or `ip:port`.
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The AKS proxy JSON (`httpProxy`, `httpsProxy`, `noProxy`, `trustedCA`).
    #[arg(long, value_name = "FILE")]
    pub proxy_config: PathBuf,
    /// cgroup v2 directory whose processes (and descendants') are redirected.
    /// Default: the kubepods directory the daemon's own pod sits under
    /// (e.g. /host/sys/fs/cgroup/kubepods.slice, or kind's
    /// .../kubelet.slice/kubelet-kubepods.slice), derived at start. Pods'
    /// cgroups are looked up in the layout its name says (kubepods,
    /// kubepods.slice, <root>-kubepods.slice), else in kubelet's standard
    /// places below it.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Address redirected connects go to: the node's IP, reachable from pods'
    /// network namespaces (never loopback: a pod's 127.0.0.1 is its own).
    /// Repeat for an IPv6 address. Default: port 15001 on the first IPv4 and
    /// the first IPv6 address of $NODE_IPS (the downward API's
    /// status.hostIPs, comma-separated), else of $NODE_IP.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    #[command(flatten)]
    pub pins: PinArgs,
    /// cgroup v2 directory whose processes are never redirected (repeatable).
    #[arg(long, value_name = "DIR")]
    pub exempt_cgroup: Vec<PathBuf>,
    /// SO_MARK on the daemon's own sockets; the hooks skip sockets carrying it.
    #[arg(long, value_name = "N", default_value = DEFAULT_SOCKET_MARK_HEX, value_parser = parse_u32)]
    pub socket_mark: u32,
    /// Bound, in seconds, on connecting to the upstream and its CONNECT answer.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// How long, in seconds, to wait for a client's first bytes (TLS SNI,
    /// HTTP Host) before routing by IP; server-speaks-first protocols
    /// (SMTP, SSH) wait this long for their banner.
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    pub peek_timeout: f64,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub resolver: ResolverArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Serve `/metrics` (Prometheus/OpenMetrics text), `/healthz` and
    /// `/readyz` on this address; off when absent. At most 32 connections
    /// at once (8 per client address), one request each, 2 s for the
    /// request head, 5 s in all.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Most connections open at once on this node; more are reset at once.
    /// Default: what both the memory limit and the open-files limit allow
    /// (each connection at its most expensive; three descriptors each). A
    /// value neither allows is refused at start.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one pod (client address), so one
    /// pod cannot starve the others; more are reset at once. Default: 4096,
    /// or half the node-wide cap if that is lower.
    #[arg(long, value_name = "N")]
    pub max_connections_per_pod: Option<usize>,
    /// The memory the daemon may use, e.g. `512Mi`: the node-wide cap is
    /// derived from it. Default: the daemon's memory cgroup's limit (cgroup
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`); when both are set, the
    /// lower one.
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    pub memory_limit: Option<u64>,
    /// Receive and send buffer (SO_RCVBUF, SO_SNDBUF) of both sockets of
    /// every relayed connection, e.g. `64Ki`; the kernel limits each queue
    /// to twice this. Bigger: more throughput per connection over a long
    /// round trip to the proxy, fewer connections within the memory limit
    /// (the cap counts every queue full).
    #[arg(long, value_name = "BYTES", default_value = "32Ki",
          value_parser = parse_socket_buffer)]
    pub socket_buffer: usize,
    /// Connections at once whose sockets are widened to --bulk-buffer once
    /// they have moved 1 MiB (bulk transfers: more throughput, less CPU per
    /// byte). The memory budget reserves every lane's buffers at their
    /// worst, so each lane lowers the connection cap; 0 turns lanes off.
    #[arg(long, value_name = "N", default_value_t = crate::relay::lanes::DEFAULT_LANES)]
    pub bulk_lanes: usize,
    /// Receive and send buffer of a bulk lane's sockets (set past
    /// net.core.rmem_max / wmem_max).
    #[arg(long, value_name = "BYTES", default_value = "4Mi",
          value_parser = parse_socket_buffer)]
    pub bulk_buffer: usize,
    /// TCP keepalive of both sockets of every relayed connection, in
    /// seconds: idle time before the first probe, between probes, and
    /// unanswered probes before the connection is closed. Their sum bound
    /// also limits how long sent data may stay unacknowledged
    /// (TCP_USER_TIMEOUT): a vanished peer's connection closes within
    /// IDLE + INTERVAL x COUNT seconds.
    #[arg(long, value_name = "IDLE,INTERVAL,COUNT",
          default_value_t = crate::socket_options::Keepalive::DEFAULT)]
    pub keepalive: crate::socket_options::Keepalive,
    #[command(flatten)]
    pub upgrade: UpgradeArgs,
}

impl RunArgs {
    /// The options on both sockets of every relayed connection.
    pub fn socket_options(&self) -> crate::socket_options::SocketOptions {
        crate::socket_options::SocketOptions {
            buffer: self.socket_buffer,
            keepalive: self.keepalive,
            scale_for: if self.bulk_lanes > 0 {
                self.bulk_buffer
            } else {
                0
            },
        }
    }
}

/// Upgrades and restarts without a dropped connection.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// After SIGTERM, how long connections in flight may go on before they
    /// are cut, in seconds (keep it below the pod's
    /// terminationGracePeriodSeconds). Until then the daemon also keeps
    /// accepting while no new instance has taken over and the hooks are
    /// attached.
    #[arg(long, value_name = "SECS", default_value = DEFAULT_DRAIN_TIMEOUT_SECS, value_parser = parse_secs)]
    pub drain_timeout: std::time::Duration,
    /// Directory of the hand-over socket, through which a new instance on
    /// this node takes the listening sockets over from the running one
    /// (made mode 0700 if missing). Instances that share a --bpffs must
    /// share it. The daemon also publishes its bypass sources there
    /// (`bypass.json`), which `status` and `explain` read.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_HANDOVER_DIR)]
    pub handover_dir: PathBuf,
}

/// Live exemption of pods and namespaces from the Kubernetes API.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Follow this node's pods and the cluster's namespaces, and exempt pods
    /// live: namespace label `egress-redirector/exempt=true`, pod annotation
    /// `egress-redirector/exempt: "true"` or
    /// `kubernetes.azure.com/no-http-proxy-vars: "true"` (`"false"` on the
    /// pod re-includes it). The API client is configured in-cluster or from
    /// KUBECONFIG.
    #[arg(long, requires = "node_name")]
    pub kube: bool,
    /// This node's name, as in the pods' `spec.nodeName` (the downward API's
    /// `spec.nodeName`); required with --kube and --remove-taint.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Remove this taint (whatever its effect) from this node once the
    /// daemon is ready: the startup-taint pattern, where nodes are created
    /// with the taint so that no pod runs there before the hooks attach
    /// (deploy/components/startup-taint). Needs get and patch on nodes.
    #[arg(
        long,
        value_name = "KEY",
        requires = "node_name",
        value_parser = crate::startup_taint::parse_taint_key
    )]
    pub remove_taint: Option<String>,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on a bpffs where links and maps are pinned.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Exit non-zero unless all hooks are attached (for probes and scripts).
    #[arg(long)]
    pub check: bool,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,
    /// The cgroup2 tree in which cgroup ids are looked up to print paths
    /// (`/host/sys/fs/cgroup` in the DaemonSet's container).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Print the digest of this config file, as the daemon logs it when it
    /// loads or reloads one.
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
    /// Also ask the daemon serving `--metrics` on this address which path
    /// its connections' bytes took (splice, splice on a bulk lane, TLS) and
    /// how many bulk lanes it holds (the DaemonSet's container sets it).
    #[arg(long, env = "REDIRECTOR_STATUS_METRICS", value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub published: PublishedArgs,
}

#[derive(Debug, Args)]
pub struct InstallCaArgs {
    /// The host's root directory (`/host` in the init container).
    #[arg(long, value_name = "DIR")]
    pub host_root: PathBuf,
    /// The AKS proxy JSON whose `trustedCA` is installed; an empty or
    /// missing `trustedCA` removes what an earlier run installed.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/egress-redirector/proxy.json"
    )]
    pub proxy_config: PathBuf,
    /// Only write the certificate files; do not run `update-ca-certificates`
    /// / `update-ca-trust` chrooted into the host root.
    #[arg(long)]
    pub no_update: bool,
}

#[derive(Debug, Args)]
pub struct GenCaArgs {
    /// Directory to write mitmproxy-ca.pem, mitmproxy-ca-cert.pem and
    /// mitmproxy-ca-key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Seconds as a positive, finite number (`1`, `0.25`).
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!("`{s}`: expected seconds between 0 and 3600"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_memory(s: &str) -> Result<u64, String> {
    crate::memory_budget::parse_quantity(s).map_err(|e| e.to_string())
}

/// `--socket-buffer`: bytes, or with Ki/Mi, within the bounds
/// `socket_options` sets.
fn parse_socket_buffer(s: &str) -> Result<usize, String> {
    use crate::socket_options::{MAX_BUFFER, MIN_BUFFER};
    let bytes = crate::memory_budget::parse_quantity(s)
        .map_err(|_| format!("`{s}`: expected bytes, or a number with Ki or Mi (e.g. 32Ki)"))?;
    usize::try_from(bytes)
        .ok()
        .filter(|b| (MIN_BUFFER..=MAX_BUFFER).contains(b))
        .ok_or_else(|| {
            format!(
                "`{s}`: must be {} KiB to {} MiB",
                MIN_BUFFER >> 10,
                MAX_BUFFER >> 20
            )
        })
}

/// Accepts decimal or `0x` hexadecimal.
fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `run --help` says what the docs say: the mark in hex, the listen
    /// default from $NODE_IPS before $NODE_IP.
    #[test]
    fn help_agrees_with_the_docs() {
        assert_eq!(parse_u32(DEFAULT_SOCKET_MARK_HEX), Ok(DEFAULT_SOCKET_MARK));
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        assert!(help.contains("[default: 0xe5]"), "{help}");
        let listen = help.split("--listen").nth(1).unwrap();
        let (ips, ip) = (
            listen.find("$NODE_IPS").unwrap(),
            listen
                .find("$NODE_IP\n")
                .or_else(|| listen.find("$NODE_IP."))
                .unwrap(),
        );
        assert!(ips < ip, "{listen}");
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "redirector",
            "run",
            "--proxy-config",
            "p.json",
            "--cgroup",
            "/cg",
            "--listen",
            "10.0.0.4:15001",
            "--listen",
            "[fd00::4]:15001",
            "--exempt-cgroup",
            "/cg/a",
            "--socket-mark",
            "0x10",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.listen.len(), 2);
        assert_eq!(run.socket_mark, 16);
        assert_eq!(run.pins.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert!(!run.kube.kube);
        assert_eq!(
            run.upgrade.drain_timeout,
            std::time::Duration::from_secs(50)
        );
        assert_eq!(
            run.upgrade.handover_dir,
            PathBuf::from(DEFAULT_HANDOVER_DIR)
        );
        assert_eq!(run.resolver.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(
            run.resolver.resolve_timeout,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(run.policy.automatic(), crate::bypass::Automatic::default());
    }

    #[test]
    fn automatic_bypass_switches() {
        let cli = run_with(&["--no-bypass-node-addresses", "--no-bypass-proxy-addresses"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let auto = run.policy.automatic();
        assert!(!auto.node_addresses && !auto.proxy_addresses);
        let cli =
            Cli::try_parse_from(["redirector", "status", "--handover-dir", "/tmp/h"]).unwrap();
        let Command::Status(status) = cli.command else {
            panic!("not status")
        };
        assert_eq!(status.published.handover_dir, PathBuf::from("/tmp/h"));
    }

    #[test]
    fn resolver_flags_parse_and_refuse_nonsense() {
        let base = [
            "redirector",
            "explain",
            "--proxy-config",
            "p",
            "https://a.example/",
        ];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        let cli = with(&[
            "--resolv-conf",
            "/tmp/r.conf",
            "--resolve-timeout",
            "0.25",
            "--destination",
            "192.0.2.1",
        ])
        .unwrap();
        let Command::Explain(explain) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(explain.resolver.resolv_conf, PathBuf::from("/tmp/r.conf"));
        assert_eq!(
            explain.resolver.resolve_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(explain.destination, Some("192.0.2.1".parse().unwrap()));
        for bad in ["0", "-1", "NaN", "inf", "x", "3601"] {
            assert!(with(&["--resolve-timeout", bad]).is_err(), "{bad}");
        }
    }

    /// `redirector run` with its one required flag, and `extra`.
    fn run_with(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["redirector", "run", "--proxy-config", "p"];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    /// Without --cgroup the attach root is derived at start.
    #[test]
    fn cgroup_is_optional() {
        let Command::Run(run) = run_with(&[]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.cgroup, None);
        let Command::Run(run) = run_with(&["--cgroup", "/cg"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.cgroup, Some(PathBuf::from("/cg")));
    }

    #[test]
    fn log_format_and_metrics_flags() {
        let cli = run_with(&[]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.metrics, None);
        let extra = ["--log-format", "json", "--metrics", "127.0.0.1:9465"];
        let cli = run_with(&extra).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.metrics, Some("127.0.0.1:9465".parse().unwrap()));
        assert!(Cli::try_parse_from(["redirector", "--log-format", "xml", "status"]).is_err());
    }

    #[test]
    fn upgrade_flags_parse_and_refuse_nonsense() {
        let cli = run_with(&["--drain-timeout", "2.5", "--handover-dir", "/tmp/h"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            run.upgrade.drain_timeout,
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(run.upgrade.handover_dir, PathBuf::from("/tmp/h"));
        for bad in ["0", "-1", "x", "3601"] {
            assert!(run_with(&["--drain-timeout", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_flags_default_and_parse() {
        let Command::Run(run) = run_with(&[]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(
            run.socket_options(),
            crate::socket_options::SocketOptions {
                scale_for: 4 << 20,
                ..Default::default()
            }
        );
        let extra = ["--socket-buffer", "128Ki", "--keepalive", "2,1,2"];
        let Command::Run(run) = run_with(&extra).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.socket_buffer, 128 << 10);
        assert_eq!(
            run.keepalive.dead_peer_bound(),
            std::time::Duration::from_secs(4)
        );
        for bad in [["--socket-buffer", "1Ki"], ["--keepalive", "60,10"]] {
            assert!(run_with(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_socket_buffer("4096").unwrap(), 4096);
        assert_eq!(parse_socket_buffer("64Mi").unwrap(), 64 << 20);
        for bad in ["", "1Ki", "4095", "65Mi", "1Gi", "32KB", "0"] {
            assert!(parse_socket_buffer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bulk_lane_flags_default_and_parse() {
        let Command::Run(run) = run_with(&[]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!((run.bulk_lanes, run.bulk_buffer), (2, 4 << 20));
        let off = ["--bulk-lanes", "0", "--bulk-buffer", "1Mi"];
        let Command::Run(run) = run_with(&off).unwrap().command else {
            panic!("not run")
        };
        assert_eq!((run.bulk_lanes, run.bulk_buffer), (0, 1 << 20));
        for bad in [["--bulk-lanes", "-1"], ["--bulk-buffer", "65Mi"]] {
            assert!(run_with(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kube_needs_a_node_name() {
        // NODE_NAME from the environment would satisfy --kube.
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(run_with(&["--kube"]).is_err());
        }
        let cli = run_with(&["--kube", "--node-name", "node-1"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.kube.kube);
        assert_eq!(run.kube.node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn remove_taint_takes_a_key_and_a_node() {
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(run_with(&["--remove-taint", "egress-redirector/not-ready"]).is_err());
        }
        let cli = run_with(&[
            "--remove-taint",
            "egress-redirector/not-ready",
            "--node-name",
            "node-1",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            run.kube.remove_taint.as_deref(),
            Some("egress-redirector/not-ready")
        );
        assert!(!run.kube.kube, "independent of --kube");
        let err = run_with(&["--remove-taint", "x:NoSchedule", "--node-name", "n"]).unwrap_err();
        assert!(err.to_string().contains("not a taint key"), "{err}");
    }
}
