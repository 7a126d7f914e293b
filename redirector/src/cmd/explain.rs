//! `redirector explain`: how the daemon would route a connection, and the
//! rule that decided. It calls the daemon's own [`Policy::decide`]; only
//! the input differs (a target from the command line instead of a peeked
//! connection).
//!
//! When a `noProxy` name rule matches, the name is resolved as the daemon
//! resolves it (`--resolv-conf`, `--resolve-timeout`, the same flags as
//! `run`), and the rule counts only if the connection's address
//! (`--destination`) is one of the name's; without `--destination`, any of
//! them. Resolving for real, rather than taking the answers on the command
//! line, shows what the daemon on this node would do, not what the
//! operator assumes the names resolve to. No other name is ever resolved
//! by the policy.
//!
//! A port in `serverFirstPorts` is never peeked at: the daemon sees no
//! name and no protocol there, and neither does `explain`, which says so.
//!
//! The kernel bypasses more than the configuration says (`bypass`): the
//! node's own addresses (read here, where `explain` runs: on the node, or
//! in the daemon's container), the upstream proxies' addresses (looked up
//! here as the daemon looks them up), and the sources only the Kubernetes
//! API knows (pod CIDRs, the `kubernetes` Service and its endpoints, this
//! Node's addresses), which come from the file the daemon publishes in its
//! `--handover-dir`. Without that file, `explain` says what it could not
//! know.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{
    bypass::{
        self, Automatic, Source, Sources,
        published::{FILE_NAME, Published},
    },
    caller,
    classify::Protocol,
    cli::ExplainArgs,
    config::ProxyConfig,
    policy::{Decision, Mode, NameCheck, Policy, Target, Verdict},
    resolve::Resolution,
};

/// A parsed TARGET: what the daemon would know about such a connection.
#[derive(Debug, PartialEq, Eq)]
struct ParsedTarget {
    ip: Option<IpAddr>,
    host: Option<String>,
    port: u16,
    protocol: Protocol,
    /// The port is in `serverFirstPorts`: routed by address at once.
    server_first: bool,
}

impl ParsedTarget {
    /// Whether the daemon would see a host name: only in the client's
    /// first bytes (TLS SNI, HTTP `Host`), which it does not read on a
    /// server-first port and which raw TCP does not carry.
    fn daemon_sees_name(&self) -> bool {
        !self.server_first && self.protocol != Protocol::Other
    }

    /// The policy's view of it, as the daemon's: the address and port, and
    /// the name only where the daemon would see one.
    fn target(&self) -> Target<'_> {
        Target {
            ip: self.ip,
            host: self.host.as_deref().filter(|_| self.daemon_sees_name()),
            port: self.port,
            protocol: if self.server_first {
                Protocol::Other
            } else {
                self.protocol
            },
        }
    }
}

/// A bypass source outside the configuration that covers the target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BypassMatch {
    source: String,
    prefix: ipnet::IpNet,
    detail: String,
    /// Read from the daemon's published file (`Some(pid)`), or found here.
    published_by: Option<u32>,
}

/// The kernel's bypass sources beyond the configuration, as far as
/// `explain` can know them.
struct BypassView {
    /// Found here: the node's interface addresses, the proxies' addresses.
    local: Sources,
    /// The daemon's published sources, or why they could not be read.
    published: Result<Published, String>,
    file: PathBuf,
}

impl BypassView {
    /// `file`: the daemon's published `bypass.json`.
    fn gather(policy: &Policy, automatic: Automatic, file: &Path) -> Self {
        let mut local = Sources::default();
        if automatic.node_addresses
            && let Ok(entries) = bypass::node::interface_entries()
        {
            local.set(Source::NodeInterfaces, entries);
        }
        let hosts = bypass::proxies::hosts(policy.config());
        if automatic.proxy_addresses && !hosts.is_empty() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                for host in hosts {
                    let found = runtime.block_on(bypass::proxies::lookup(
                        &host,
                        bypass::proxies::LOOKUP_TIMEOUT,
                    ));
                    if let Ok(entries) = found {
                        local.set(Source::UpstreamProxy(host), entries);
                    }
                }
            }
        }
        Self {
            local,
            published: Published::read(file).map_err(|e| format!("{e:#}")),
            file: file.to_path_buf(),
        }
    }

    /// The first source beyond the configuration that covers `ip`: found
    /// here first, else published by the daemon from the API.
    fn find(&self, ip: IpAddr) -> Option<BypassMatch> {
        if let Some((source, entry)) = self.local.matching(ip).into_iter().next() {
            return Some(BypassMatch {
                source: source.to_string(),
                prefix: entry.net,
                detail: entry.detail.clone(),
                published_by: None,
            });
        }
        let published = self.published.as_ref().ok()?;
        published
            .sources
            .iter()
            .filter(|s| s.from_api)
            .flat_map(|s| s.prefixes.iter().map(move |p| (s, p)))
            .find(|(_, p)| p.prefix.contains(&ip))
            .map(|(s, p)| BypassMatch {
                source: s.source.clone(),
                prefix: p.prefix,
                detail: p.detail.clone(),
                published_by: Some(published.pid),
            })
    }

    /// What could not be known, when nothing matched: the API's sources
    /// without the daemon's file.
    fn unknown(&self) -> Option<String> {
        let error = self.published.as_ref().err()?;
        Some(format!(
            "the bypass sources from the Kubernetes API (pod CIDRs, the kubernetes Service \
             and its endpoints, the Node's addresses) are not known here: {error} (the daemon \
             publishes them in {} while it runs; see --handover-dir)",
            self.file.display()
        ))
    }
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    let config = ProxyConfig::load(&args.proxy_config)?;
    let top = Policy::new(config, &args.policy.builtins());
    let profile = match &args.namespace {
        None => None,
        Some(namespace) => Some(namespace_profile(
            namespace,
            &args
                .published
                .handover_dir
                .join(caller::published::FILE_NAME),
        )?),
    };
    let label = profile.as_ref().and_then(|p| p.label.as_deref());
    let policy = match top.select(label) {
        Ok(policy) => policy,
        Err(unknown) => {
            let profile = profile.as_ref().map(|p| p.text()).unwrap_or_default();
            if args.json {
                let v = json!({"target": args.target, "kind": "refuse",
                    "rule": unknown.to_string(), "profile": label});
                println!("{v}");
            } else {
                print!("{profile}decision: refuse\nrule: {unknown}\n");
            }
            return Ok(());
        }
    };
    let mut target = parse_target(&args.target, &args.protocol)?;
    if let Some(destination) = args.destination {
        match target.ip {
            Some(ip) if ip != destination => bail!(
                "--destination {destination} with the address target {ip}: give a host-name \
                 target (a URL or host:port) to say which name the client sent"
            ),
            _ => target.ip = Some(destination),
        }
    }
    target.server_first = policy.config().is_server_first(target.port);
    // A name the daemon would not see only says where the client connects:
    // resolved here, the decision is the address's, as the daemon's is.
    let mut name_note = None;
    if let (Some(name), None, false) = (&target.host, target.ip, target.daemon_sees_name()) {
        let resolver = args.resolver.resolver()?;
        let resolution = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(resolver.resolve(name));
        name_note = Some(match resolution {
            Resolution::Addresses(addrs) if !addrs.is_empty() => {
                target.ip = Some(addrs[0]);
                format!(
                    "{why}: the daemon sees only the address; `{name}` resolves to {}, \
                     decided for {} (--destination picks another)",
                    join_addrs(&addrs),
                    addrs[0],
                    why = no_name_why(&target),
                )
            }
            Resolution::Addresses(_) => format!(
                "{}: the daemon sees only the address; `{name}` has no address here",
                no_name_why(&target)
            ),
            Resolution::Failed(why) => format!(
                "{}: the daemon sees only the address; `{name}` did not resolve here ({why}): \
                 decided for an address no rule names (--destination gives one)",
                no_name_why(&target)
            ),
        });
    }
    let verdict = policy.decide(&target.target());
    let (mut decision, check) = match verdict {
        Verdict::Final(decision) => (decision, None),
        Verdict::CheckName(rule) => {
            let resolver = args.resolver.resolver()?;
            let resolution = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(resolver.resolve(rule.name()));
            let (decision, check) = rule.decide(resolution);
            (decision, Some(check))
        }
    };
    // The kernel's other sources: the connect never reaches the daemon.
    // The kernel's other sources, looked at only for an address the
    // configuration does not bypass: such a connect never reaches the daemon.
    let file = args.published.handover_dir.join(FILE_NAME);
    let (mut found, mut note) = (None, None);
    if let (false, Some(ip)) = (matches!(decision, Decision::KernelBypass { .. }), target.ip) {
        let view = BypassView::gather(policy, args.policy.automatic(), &file);
        found = view.find(ip);
        note = if found.is_none() {
            view.unknown()
        } else {
            None
        };
    }
    if let Some(found) = &found {
        decision = Decision::KernelBypass {
            rule: if found.detail.is_empty() {
                format!("{}: {}", found.source, found.prefix)
            } else {
                format!("{}: {} ({})", found.source, found.prefix, found.detail)
            },
        };
    }
    let extra = Extra {
        found: found.as_ref(),
        file: &file,
        note: note.as_deref(),
    };
    if args.json {
        let mut v = to_json(&args.target, &target, &decision, check.as_ref());
        v["name_not_seen"] = json!(name_note);
        if let Some(profile) = &profile {
            v["profile"] = json!(profile.label);
            v["namespace"] = json!(profile.namespace);
        }
        extra.add_json(&mut v);
        println!("{v}");
    } else {
        let name = name_note
            .map(|n| format!("name: {n}\n"))
            .unwrap_or_default();
        let profile = profile.map(|p| p.text()).unwrap_or_default();
        print!(
            "{profile}{}{name}{}",
            to_text(&args.target, &target, &decision, check.as_ref()),
            extra.text()
        );
    }
    Ok(())
}

/// The profile a namespace selects, as the daemon published it.
struct NamespaceProfile {
    namespace: String,
    /// The label's value; `None`: unlabelled (the top level).
    label: Option<String>,
    pid: u32,
}

impl NamespaceProfile {
    fn text(&self) -> String {
        match &self.label {
            Some(label) => format!(
                "profile: {label} (namespace {}'s label, published by the daemon, pid {})\n",
                self.namespace, self.pid
            ),
            None => format!(
                "profile: none, the top level (namespace {} has no egress-redirector/profile \
                 label, published by the daemon, pid {})\n",
                self.namespace, self.pid
            ),
        }
    }
}

/// Reads the daemon's `profiles.json`: without it the label is unknown
/// here, and a guess could explain another proxy than the daemon uses.
fn namespace_profile(namespace: &str, file: &Path) -> Result<NamespaceProfile> {
    let published = caller::published::PublishedProfiles::read(file).with_context(|| {
        format!(
            "--namespace needs the daemon's published labels (run with --kube; \
             --handover-dir names where): namespace {namespace}"
        )
    })?;
    Ok(NamespaceProfile {
        namespace: namespace.to_owned(),
        label: published.namespaces.get(namespace).cloned(),
        pid: published.pid,
    })
}

/// What `explain` adds about the kernel's sources beyond the configuration.
struct Extra<'a> {
    found: Option<&'a BypassMatch>,
    file: &'a Path,
    note: Option<&'a str>,
}

impl Extra<'_> {
    fn text(&self) -> String {
        let mut out = String::new();
        if let Some(found) = self.found {
            out += &match found.published_by {
                Some(pid) => format!(
                    "bypass source: {}, published by the daemon (pid {pid}) in {}\n",
                    found.source,
                    self.file.display()
                ),
                None => format!("bypass source: {}, found by explain\n", found.source),
            };
        }
        if let Some(note) = self.note {
            out += &format!("note: {note}\n");
        }
        out
    }

    fn add_json(&self, v: &mut serde_json::Value) {
        if let Some(found) = self.found {
            v["bypass_source"] = json!({
                "source": found.source,
                "prefix": found.prefix,
                "detail": found.detail,
                "published_by_pid": found.published_by,
            });
        }
        if let Some(note) = self.note {
            v["note"] = json!(note);
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Connect => "connect",
        Mode::AbsoluteForm => "absolute-form",
    }
}

/// Why the daemon would not see the target's name.
fn no_name_why(t: &ParsedTarget) -> &'static str {
    if t.server_first {
        "a server-first port"
    } else {
        "raw TCP carries no name"
    }
}

fn join_addrs(addrs: &[IpAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    list.join(", ")
}

fn protocol_name(p: &Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tls => "tls",
        Protocol::Other => "tcp",
    }
}

fn to_text(raw: &str, t: &ParsedTarget, d: &Decision, check: Option<&NameCheck>) -> String {
    let mut out = format!(
        "target: {raw} (host {}, port {}, {})\n",
        t.host
            .clone()
            .or(t.ip.map(|i| i.to_string()))
            .unwrap_or_default(),
        t.port,
        protocol_name(&t.protocol),
    );
    if let (Some(_), Some(ip)) = (&t.host, t.ip) {
        out += &format!("destination: {ip}\n");
    }
    if t.server_first {
        out += &format!(
            "server-first: port {} is in serverFirstPorts: routed by address at once, without \
             waiting for the client's first bytes (no host name is seen)\n",
            t.port
        );
    }
    out += &format!("decision: {}\n", d.kind());
    if let Decision::Proxy { proxy, mode, .. } = d {
        out += &format!("proxy: {proxy}\nmode: {}\n", mode_name(*mode));
    }
    out += &format!("rule: {}\n", d.rule());
    if let Some(check) = check {
        out += &format!("name check: {}: {check}\n", check.result.label());
    }
    out
}

fn to_json(
    raw: &str,
    t: &ParsedTarget,
    d: &Decision,
    check: Option<&NameCheck>,
) -> serde_json::Value {
    let mut v = json!({
        "target": raw,
        "host": t.host,
        "ip": t.ip.map(|i| i.to_string()),
        "port": t.port,
        "protocol": protocol_name(&t.protocol),
        "server_first": t.server_first,
        "decision": d.kind(),
        "rule": d.rule(),
    });
    if let Decision::Proxy { proxy, mode, .. } = d {
        v["proxy"] = json!(proxy.to_string());
        v["mode"] = json!(mode_name(*mode));
    }
    if let Some(check) = check {
        let (addresses, error) = match &check.resolution {
            Resolution::Addresses(a) => (
                Some(a.iter().map(IpAddr::to_string).collect::<Vec<_>>()),
                None,
            ),
            Resolution::Failed(why) => (None, Some(why.to_string())),
        };
        v["name_check"] = json!({
            "name": check.name,
            "rule": check.rule,
            "result": check.result.label(),
            "addresses": addresses,
            "error": error,
            "explanation": check.to_string(),
        });
    }
    v
}

/// A URL (`https://host/x`), `host:port`, `ip:port` or `[v6]:port`.
fn parse_target(raw: &str, protocol: &str) -> Result<ParsedTarget> {
    let (host, port, protocol) = if raw.contains("://") {
        let url = url::Url::parse(raw).with_context(|| format!("target `{raw}`"))?;
        let protocol = match url.scheme() {
            "http" => Protocol::Http,
            "https" => Protocol::Tls,
            other => bail!("target `{raw}`: scheme `{other}` (use http://, https:// or host:port)"),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => bail!("target `{raw}`: no host"),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        (host, port, protocol)
    } else {
        let (host, port) = raw
            .rsplit_once(':')
            .with_context(|| format!("target `{raw}`: expected a URL or host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse()
            .with_context(|| format!("target `{raw}`: bad port `{port}`"))?;
        let protocol = match protocol {
            "http" => Protocol::Http,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Other,
            other => bail!("--protocol `{other}`: expected http, tls or tcp"),
        };
        (host.to_owned(), port, protocol)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        bail!("target `{raw}`: no host");
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => ParsedTarget {
            ip: Some(ip),
            host: None,
            port,
            protocol,
            server_first: false,
        },
        Err(_) => ParsedTarget {
            ip: None,
            host: Some(host),
            port,
            protocol,
            server_first: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For each protocol, `explain` decides as the daemon does: the
    /// daemon's view built as `connection` builds it, from what `classify`
    /// makes of a real client's first bytes, against `explain`'s view of
    /// the same connection on the command line.
    #[test]
    fn explain_decides_as_the_daemon_for_each_protocol() {
        let config = ProxyConfig::parse(
            "p.json",
            r#"{"httpsProxy": "http://10.0.0.4:3128/", "httpProxy": "http://10.0.0.4:3128/",
                "noProxy": [".corp.example", "www.example.org"]}"#,
        )
        .unwrap();
        let policy = Policy::new(config, &crate::policy::Builtins::default());
        let dst: IpAddr = "192.0.2.7".parse().unwrap();
        let hello = include_bytes!("../../testdata/tls_client_hello/curl.bin");
        let cases: [(&[u8], &str, &str, u16); 3] = [
            // TLS with SNI www.example.org (a name rule: checked)
            (hello, "https://www.example.org/", "tcp", 443),
            // HTTP with Host db.corp.example (a name rule: checked)
            (
                b"GET / HTTP/1.1\r\nHost: db.corp.example:8080\r\n\r\n",
                "http://db.corp.example:8080/",
                "tcp",
                8080,
            ),
            // raw TCP: no name, whatever the command line says
            (b"\x00\x01\x02hello", "db.corp.example:5432", "tcp", 5432),
        ];
        for (bytes, cli, proto, port) in cases {
            let class = crate::classify::classify(bytes).unwrap();
            let daemon = policy.decide(&Target {
                ip: Some(dst),
                host: class.hostname.as_deref(),
                port,
                protocol: class.protocol,
            });
            let mut parsed = parse_target(cli, proto).unwrap();
            parsed.ip = Some(dst);
            let explained = policy.decide(&parsed.target());
            assert_eq!(format!("{explained:?}"), format!("{daemon:?}"), "{cli}");
        }
        // The raw TCP case is the one the name alone would get wrong.
        let raw = parse_target("db.corp.example:5432", "tcp").unwrap();
        assert!(!raw.daemon_sees_name() && raw.target().host.is_none());
    }

    #[test]
    fn targets() {
        let t = parse_target("https://API.Example.com./x", "tcp").unwrap();
        assert_eq!(
            t,
            ParsedTarget {
                ip: None,
                host: Some("api.example.com".into()),
                port: 443,
                protocol: Protocol::Tls,
                server_first: false,
            }
        );
        let t = parse_target("http://[fd00::1]:8080/", "tcp").unwrap();
        assert_eq!((t.ip, t.port), (Some("fd00::1".parse().unwrap()), 8080));
        let t = parse_target("10.0.0.1:5432", "tcp").unwrap();
        assert_eq!((t.ip.is_some(), t.protocol), (true, Protocol::Other));
        let t = parse_target("example.com:80", "http").unwrap();
        assert_eq!(t.protocol, Protocol::Http);
        for bad in ["example.com", "ftp://x/", "x:y", ":80", "a:80"] {
            let r = parse_target(bad, if bad == "a:80" { "udp" } else { "tcp" });
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn output_never_shows_credentials() {
        let cfg = ProxyConfig::parse(
            "t",
            r#"{"httpsProxy": "http://user:s3cret@proxy:3128", "noProxy": ["direct.example"]}"#,
        )
        .unwrap();
        let policy = Policy::new(cfg, &crate::policy::Builtins::default());
        let t = parse_target("https://origin.example/", "tcp").unwrap();
        let (d, check) = policy
            .decide(&t.target())
            .decide_with(|name| panic!("{name} resolved: no name rule matches"));
        assert!(check.is_none());
        let text = to_text("https://origin.example/", &t, &d, None);
        assert!(
            text.contains("decision: proxy\nproxy: http://proxy:3128\n"),
            "{text}"
        );
        assert!(text.contains("rule: httpsProxy"), "{text}");
        let json = to_json("https://origin.example/", &t, &d, None).to_string();
        assert!(
            !json.contains("s3cret") && json.contains(r#""decision":"proxy""#),
            "{json}"
        );
    }

    /// Sources beyond the configuration: found here (the node's, the
    /// proxies'), or from the daemon's file for the API's; without the
    /// file, a note says what could not be known.
    #[test]
    fn bypass_sources_beyond_the_configuration() {
        use crate::bypass::Entry;
        let dir = tempfile::tempdir().unwrap();
        let mut local = Sources::default();
        local.set(
            Source::UpstreamProxy("10.0.0.4".into()),
            vec![Entry::host("10.0.0.4".parse().unwrap(), "IP literal")],
        );
        let mut view = BypassView {
            local,
            published: Err("reading x: No such file or directory".into()),
            file: dir.path().join(FILE_NAME),
        };
        let found = view.find("10.0.0.4".parse().unwrap()).unwrap();
        assert_eq!(found.source, "upstream proxy 10.0.0.4");
        assert_eq!(found.published_by, None);
        assert!(view.find("10.250.0.7".parse().unwrap()).is_none());
        let note = view.unknown().unwrap();
        assert!(
            note.contains("pod CIDRs") && note.contains("No such file"),
            "{note}"
        );

        let mut api = Sources::default();
        api.set(
            Source::PodCidrs,
            vec![Entry::new("10.250.0.0/24".parse().unwrap(), "node n2")],
        );
        // Not from the API: explain's own view counts, not the file's.
        api.set(
            Source::NodeInterfaces,
            vec![Entry::host("10.9.9.9".parse().unwrap(), "interface x")],
        );
        view.published = Ok(Published::of(&api, &api.kernel_prefixes()));
        let found = view.find("10.250.0.7".parse().unwrap()).unwrap();
        assert_eq!(
            (found.source.as_str(), found.detail.as_str()),
            ("pod CIDRs (Node.spec.podCIDRs)", "node n2")
        );
        assert_eq!(found.published_by, Some(std::process::id()));
        assert!(view.find("10.9.9.9".parse().unwrap()).is_none());
        assert!(view.unknown().is_none());
        let extra = Extra {
            found: Some(&found),
            file: &view.file,
            note: None,
        };
        assert!(
            extra.text().starts_with(
                "bypass source: pod CIDRs (Node.spec.podCIDRs), published by the daemon (pid "
            ),
            "{}",
            extra.text()
        );
    }

    /// A server-first port: no name, so a noProxy name rule cannot match;
    /// said in both outputs.
    #[test]
    fn a_server_first_port_is_routed_by_address() {
        let cfg = ProxyConfig::parse(
            "t",
            r#"{"httpsProxy": "http://proxy:3128", "noProxy": ["mail.example", "192.0.2.25"]}"#,
        )
        .unwrap();
        let policy = Policy::new(cfg, &crate::policy::Builtins::default());
        let explain_as = |raw: &str, protocol: &str| {
            let mut t = parse_target(raw, protocol).unwrap();
            t.server_first = policy.config().is_server_first(t.port);
            let (d, _) = policy
                .decide(&t.target())
                .decide_with(|_| Resolution::Addresses(["192.0.2.25".parse().unwrap()].into()));
            (to_text(raw, &t, &d, None), to_json(raw, &t, &d, None))
        };
        let explain = |raw: &str| explain_as(raw, "tls");
        let (text, json) = explain("mail.example:25");
        assert!(
            text.contains("server-first: port 25 is in serverFirstPorts"),
            "{text}"
        );
        assert!(text.contains("decision: proxy\n"), "{text}");
        assert_eq!(json["server_first"], true);
        // By address, the noProxy IP entry still applies.
        let (text, _) = explain("192.0.2.25:25");
        assert!(text.contains("decision: kernel-bypass\n"), "{text}");
        // Off the list, a TLS client's name is seen (SMTPS: SNI) ...
        let (text, json) = explain("mail.example:465");
        assert!(!text.contains("server-first"), "{text}");
        assert!(text.contains("decision: direct\n"), "{text}");
        assert_eq!(json["server_first"], false);
        // ... and raw TCP carries none: through the proxy by address.
        let (text, _) = explain_as("mail.example:465", "tcp");
        assert!(text.contains("decision: proxy\n"), "{text}");
    }

    /// What `explain --destination` shows for a name rule, verified or not.
    #[test]
    fn a_name_rule_s_check_is_shown() {
        let cfg = ProxyConfig::parse(
            "t",
            r#"{"httpsProxy": "http://proxy:3128", "noProxy": ["direct.example"]}"#,
        )
        .unwrap();
        let policy = Policy::new(cfg, &crate::policy::Builtins::default());
        let explain = |dst: &str| {
            let mut t = parse_target("https://www.direct.example/", "tcp").unwrap();
            t.ip = Some(dst.parse().unwrap());
            let (d, check) = policy
                .decide(&t.target())
                .decide_with(|_| Resolution::Addresses(["192.0.2.10".parse().unwrap()].into()));
            (
                to_text("https://www.direct.example/", &t, &d, check.as_ref()),
                to_json("https://www.direct.example/", &t, &d, check.as_ref()),
            )
        };
        let (text, json) = explain("192.0.2.10");
        assert!(
            text.contains("destination: 192.0.2.10\ndecision: direct\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "name check: verified: www.direct.example resolves to 192.0.2.10: 192.0.2.10 is \
                 one of its addresses"
            ),
            "{text}"
        );
        assert_eq!(json["name_check"]["result"], "verified");
        let (text, json) = explain("203.0.113.9");
        assert!(text.contains("decision: proxy\n"), "{text}");
        assert!(
            text.contains(
                "name check: mismatch: www.direct.example matches noProxy rule direct.example, \
                 but 203.0.113.9 is not one of its addresses (192.0.2.10)"
            ),
            "{text}"
        );
        assert_eq!(json["name_check"]["addresses"][0], "192.0.2.10");
        assert_eq!(json["decision"], "proxy");
    }
}
