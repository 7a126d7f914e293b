//! Policy: what the operator's proxy configuration means for one
//! connection — bypassed in the kernel, direct, refused, or through which
//! proxy and how. The daemon and `redirector explain` call the same
//! [`Policy::decide`].
//!
//! Order of decision:
//! 1. built-in bypasses (loopback, link-local, `--cluster-cidr`,
//!    `serviceCidrs`) and `noProxy` IP/CIDR entries: enforced in the
//!    kernel, never proxied (the kernel's other bypass sources, the node's,
//!    the cluster's and the proxies' addresses, are `bypass`'s: `explain`
//!    adds them);
//! 2. other `noProxy` rules, matched on the destination and port alone
//!    (`10.0.0.5:8443`): direct;
//! 3. `noProxy` name rules, matched on the hostname that `classify`
//!    recovered (TLS SNI, HTTP `Host`): the client writes that name, so
//!    it counts only if the destination is one of the name's addresses as
//!    the node resolves them ([`Verdict::CheckName`], `resolve`); if not,
//!    the connection is routed as if no rule had matched (step 4, with the
//!    name kept in `CONNECT`);
//! 4. plain HTTP → `httpProxy` in absolute form; TLS and any other TCP →
//!    `httpsProxy` with `CONNECT`; a class whose proxy is not set goes as
//!    `missingProxy` says: direct (as an env-var client would), through
//!    the other proxy, or refused.
use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use crate::{
    classify::Protocol,
    config::{MissingProxy, ProxyConfig, ProxyUrl},
    dial::{LinkLocal, NodeLocal, guard},
    resolve::Resolution,
};

/// Built-in bypasses, each of which an operator can switch off.
#[derive(Debug, Clone)]
pub struct Builtins {
    /// 127.0.0.0/8 and ::1: a pod's own loopback is never the proxy's business.
    pub loopback: bool,
    /// 169.254.0.0/16 and fe80::/10: cloud metadata and link-local peers.
    pub link_local: bool,
    /// The cluster's pod and service ranges (`--cluster-cidr`).
    pub cluster_cidrs: Vec<IpNet>,
}

impl Default for Builtins {
    fn default() -> Self {
        Self {
            loopback: true,
            link_local: true,
            cluster_cidrs: Vec::new(),
        }
    }
}

impl Builtins {
    /// Every built-in prefix with the name `explain` and logs give it.
    pub fn prefixes(&self) -> Vec<(IpNet, String)> {
        let mut out = Vec::new();
        let mut add = |net: &str, name: &str| out.push((net.parse().unwrap(), name.to_owned()));
        if self.loopback {
            add("127.0.0.0/8", "built-in loopback 127.0.0.0/8");
            add("::1/128", "built-in loopback ::1/128");
        }
        if self.link_local {
            add("169.254.0.0/16", "built-in link-local 169.254.0.0/16");
            add("fe80::/10", "built-in link-local fe80::/10");
        }
        for net in &self.cluster_cidrs {
            out.push((net.trunc(), format!("--cluster-cidr {net}")));
        }
        out
    }
}

/// One connection as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The original destination IP; `explain` of a host name has none.
    pub ip: Option<IpAddr>,
    /// Hostname from TLS SNI or HTTP Host (normalized), if any.
    pub host: Option<&'a str>,
    pub port: u16,
    pub protocol: Protocol,
}

/// How a proxied connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A `CONNECT host:port` tunnel.
    Connect,
    /// Plain HTTP requests in absolute form (`GET http://host/path`).
    AbsoluteForm,
}

/// The decision for one connection, with the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Never redirected: the kernel hooks skip it.
    KernelBypass { rule: String },
    /// Connected straight to the original destination.
    Direct {
        rule: String,
        /// Whether the rule names the destination address itself (an IP or
        /// CIDR entry with a port): only then may a link-local address be
        /// dialed (`dial::guard`).
        address_rule: bool,
    },
    /// Through `proxy`, or the first of `fallbacks` that is up when it is
    /// down (never direct); `rule` says which key chose it.
    Proxy {
        proxy: ProxyUrl,
        fallbacks: Vec<ProxyUrl>,
        mode: Mode,
        rule: &'static str,
    },
    /// Reset: `missingProxy: refuse` for a class without a proxy, or a
    /// direct decision for an address the daemon never dials (`dial::guard`).
    Refuse { rule: String },
}

impl Decision {
    /// `kernel-bypass`, `direct`, `proxy` or `refuse`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::KernelBypass { .. } => "kernel-bypass",
            Decision::Direct { .. } => "direct",
            Decision::Proxy { .. } => "proxy",
            Decision::Refuse { .. } => "refuse",
        }
    }

    /// The rule that decided.
    pub fn rule(&self) -> &str {
        match self {
            Decision::KernelBypass { rule }
            | Decision::Direct { rule, .. }
            | Decision::Refuse { rule } => rule,
            Decision::Proxy { rule, .. } => rule,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Proxy { proxy, .. } => write!(f, "proxy {proxy}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// What [`Policy::decide`] answers: a decision, or the name whose
/// addresses it needs first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Final(Decision),
    /// A `noProxy` name rule matched: resolve [`NameRule::name`], then
    /// [`NameRule::decide`].
    CheckName(NameRule),
}

impl Verdict {
    /// The decision, resolving a name with `resolve` if one is needed (for
    /// callers that have the answer at hand: tests, a fixed table).
    pub fn decide_with(
        self,
        resolve: impl FnOnce(&str) -> Resolution,
    ) -> (Decision, Option<NameCheck>) {
        match self {
            Verdict::Final(decision) => (decision, None),
            Verdict::CheckName(rule) => {
                let resolution = resolve(rule.name());
                let (decision, check) = rule.decide(resolution);
                (decision, Some(check))
            }
        }
    }
}

/// A `noProxy` name rule that matched the name a client wrote, waiting for
/// the name's addresses. Owns what it needs, so a connection can hold it
/// across the lookup without holding the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRule {
    name: String,
    rule: String,
    dst: Option<IpAddr>,
    /// The decision as if no `noProxy` rule had matched.
    otherwise: Decision,
}

impl NameRule {
    /// The name to resolve (as the client wrote it, normalized).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Direct if the destination is one of the name's addresses, else the
    /// decision as if no rule had matched. Addresses the daemon never dials
    /// (loopback, unspecified, link-local: `dial::guard`) do not count.
    /// Without a destination (`explain` of a host name), any address does.
    pub fn decide(self, resolution: Resolution) -> (Decision, NameCheck) {
        let result = match &resolution {
            Resolution::Failed(_) => CheckResult::LookupFailed,
            Resolution::Addresses(addrs) => {
                let mut usable = addrs.iter().filter(|a| NodeLocal::of(**a).is_none());
                match self.dst.map(|d| d.to_canonical()) {
                    _ if usable.clone().next().is_none() => CheckResult::NoAddress,
                    Some(dst) if usable.any(|a| a.to_canonical() == dst) => CheckResult::Verified,
                    Some(_) => CheckResult::Mismatch,
                    None => CheckResult::Verified,
                }
            }
        };
        let decision = match result {
            CheckResult::Verified => Decision::Direct {
                rule: self.rule.clone(),
                address_rule: false,
            },
            _ => self.otherwise,
        };
        let check = NameCheck {
            name: self.name,
            rule: self.rule,
            dst: self.dst,
            resolution,
            result,
        };
        (decision, check)
    }
}

/// How a name rule's check came out, as counted in
/// `redirector_name_checks_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The destination is one of the name's addresses: direct.
    Verified,
    /// The name resolves, but not to the destination: proxied.
    Mismatch,
    /// The name has no address the daemon would dial (none at all, no
    /// such name, or only loopback/link-local ones): proxied.
    NoAddress,
    /// No answer in time, or the name servers failed: proxied.
    LookupFailed,
}

impl CheckResult {
    pub const ALL: [CheckResult; 4] = [
        CheckResult::Verified,
        CheckResult::Mismatch,
        CheckResult::NoAddress,
        CheckResult::LookupFailed,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            CheckResult::Verified => "verified",
            CheckResult::Mismatch => "mismatch",
            CheckResult::NoAddress => "no_address",
            CheckResult::LookupFailed => "lookup_failed",
        }
    }
}

/// A name rule's check: what was resolved and how it came out. `Display`
/// is the sentence `explain` and the daemon's log give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCheck {
    pub name: String,
    /// The `noProxy` entry that matched the name.
    pub rule: String,
    pub dst: Option<IpAddr>,
    pub resolution: Resolution,
    pub result: CheckResult,
}

impl fmt::Display for NameCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            name, rule, dst, ..
        } = self;
        let addrs = match &self.resolution {
            Resolution::Addresses(a) => join(a),
            Resolution::Failed(_) => String::new(),
        };
        match (self.result, dst, &self.resolution) {
            (CheckResult::Verified, Some(dst), _) => {
                write!(
                    f,
                    "{name} resolves to {addrs}: {dst} is one of its addresses"
                )
            }
            (CheckResult::Verified, None, _) => write!(
                f,
                "{name} resolves to {addrs}: a connection to one of them goes direct, \
                 to any other address as if no noProxy rule matched"
            ),
            (CheckResult::Mismatch, Some(dst), _) => write!(
                f,
                "{name} matches noProxy rule {rule}, but {dst} is not one of its addresses \
                 ({addrs})"
            ),
            (CheckResult::NoAddress, _, Resolution::Addresses(a)) if a.is_empty() => write!(
                f,
                "{name} matches noProxy rule {rule}, but has no address (no such name, or no \
                 A/AAAA record)"
            ),
            (CheckResult::NoAddress, _, _) => write!(
                f,
                "{name} matches noProxy rule {rule}, but resolves only to {addrs}, which the \
                 node never dials direct (loopback, unspecified or link-local)"
            ),
            (_, _, Resolution::Failed(why)) => write!(
                f,
                "{name} matches noProxy rule {rule}, but could not be resolved: {why}"
            ),
            // A mismatch needs a destination; nothing else is left.
            _ => write!(f, "{name} matches noProxy rule {rule}"),
        }
    }
}

/// A direct decision for an address the daemon never dials (the node's own
/// loopback or link, `dial::guard`) is a refusal: said here, so that
/// `explain` shows it and it is counted as one; the guard enforces it.
fn refuse_node_local(decision: Decision, dst: Option<IpAddr>) -> Decision {
    let (
        Decision::Direct {
            rule, address_rule, ..
        },
        Some(dst),
    ) = (&decision, dst)
    else {
        return decision;
    };
    let link_local = if *address_rule {
        LinkLocal::AllowedByRule
    } else {
        LinkLocal::Refuse
    };
    match guard::check(dst, link_local) {
        Ok(()) => decision,
        Err(kind) => Decision::Refuse {
            rule: format!(
                "{rule}, but {dst} is {kind}: never dialed direct ({})",
                kind.why()
            ),
        },
    }
}

fn join(addrs: &Arc<[IpAddr]>) -> String {
    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    list.join(", ")
}

/// The configuration and built-ins, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    config: ProxyConfig,
    builtin_prefixes: Vec<(IpNet, String)>,
    /// The profile this policy is (`None`: the top level).
    profile: Option<String>,
    /// The top level's profiles, each a policy of its own.
    profiles: BTreeMap<String, Arc<Policy>>,
}

/// A namespace's label names a profile the configuration does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "profile `{0}` (the namespace's label egress-redirector/profile) is not in the \
     configuration's profiles; connections refused"
)]
pub struct UnknownProfile(pub String);

impl Policy {
    pub fn new(config: ProxyConfig, builtins: &Builtins) -> Self {
        let mut builtin_prefixes = builtins.prefixes();
        // `serviceCidrs` is `--cluster-cidr` written in the file.
        let services = config.service_cidrs.iter();
        builtin_prefixes.extend(services.map(|net| (*net, format!("serviceCidrs {net}"))));
        // A profile is the top level with its own proxy keys: everything
        // else (failMode, missingProxy, serverFirstPorts, identity, the
        // built-ins) is the node's.
        let profiles = config
            .profiles
            .iter()
            .map(|(name, profile)| {
                let mut own = config.clone();
                own.http_proxy = profile.http_proxy.clone();
                own.https_proxy = profile.https_proxy.clone();
                own.http_proxy_fallbacks = profile.http_proxy_fallbacks.clone();
                own.https_proxy_fallbacks = profile.https_proxy_fallbacks.clone();
                own.no_proxy = profile.no_proxy.clone();
                own.trusted_ca = profile.trusted_ca.clone();
                own.profiles = BTreeMap::new();
                let policy = Policy {
                    config: own,
                    builtin_prefixes: builtin_prefixes.clone(),
                    profile: Some(name.clone()),
                    profiles: BTreeMap::new(),
                };
                (name.clone(), Arc::new(policy))
            })
            .collect();
        Self {
            config,
            builtin_prefixes,
            profile: None,
            profiles,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The profile this policy is, `None` for the top level.
    pub fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    /// The policy for a namespace whose profile label is `label` (`None`:
    /// unlabelled, the top level). An unknown name is an error, never the
    /// top level: the namespace's owner asked for another proxy, and the
    /// top level may be direct.
    pub fn select(&self, label: Option<&str>) -> Result<&Policy, UnknownProfile> {
        match label {
            None => Ok(self),
            Some(name) => self
                .profiles
                .get(name)
                .map(|p| p.as_ref())
                .ok_or_else(|| UnknownProfile(name.to_owned())),
        }
    }

    /// Every prefix the configuration and flags bypass in the kernel:
    /// built-ins, `--cluster-cidr`, `serviceCidrs` and `noProxy` IPs/CIDRs
    /// (the daemon's whole set, with its other sources, is `bypass`'s).
    pub fn kernel_bypass(&self) -> Vec<IpNet> {
        let builtins = self.builtin_prefixes.iter().map(|(net, _)| *net);
        builtins
            .chain(self.config.no_proxy.kernel_bypass().copied())
            .collect()
    }

    pub fn decide(&self, target: &Target<'_>) -> Verdict {
        // A hostname that is an IP literal is as good as the IP.
        let ip = target
            .ip
            .or_else(|| target.host.and_then(|h| h.parse().ok()));
        if let Some(ip) = ip
            && let Some((_, name)) = self
                .builtin_prefixes
                .iter()
                .find(|(net, _)| net.contains(&ip))
        {
            return Verdict::Final(Decision::KernelBypass { rule: name.clone() });
        }
        let no_proxy = &self.config.no_proxy;
        if let Some(rule) = no_proxy.find(target.host, ip, target.port) {
            if rule.in_kernel() {
                return Verdict::Final(Decision::KernelBypass {
                    rule: rule.entry().to_owned(),
                });
            }
            // Matched without the name: the rule names the address (or the
            // port), which the client cannot choose without going there.
            if let Some(by_address) = no_proxy.find(None, ip, target.port) {
                let direct = Decision::Direct {
                    rule: by_address.entry().to_owned(),
                    address_rule: true,
                };
                return Verdict::Final(refuse_node_local(direct, target.ip));
            }
            // Matched by the name the client wrote: verified first.
            if let Some(host) = target.host {
                return Verdict::CheckName(NameRule {
                    name: host.strip_suffix('.').unwrap_or(host).to_owned(),
                    rule: rule.entry().to_owned(),
                    dst: target.ip,
                    otherwise: refuse_node_local(self.by_protocol(target.protocol), target.ip),
                });
            }
        }
        Verdict::Final(refuse_node_local(
            self.by_protocol(target.protocol),
            target.ip,
        ))
    }

    /// The proxy for the connection's class, or what `missingProxy` says
    /// when that class has none.
    fn by_protocol(&self, protocol: Protocol) -> Decision {
        let config = &self.config;
        let (own, own_key, mode, other, other_rule) = match protocol {
            Protocol::Http => (
                (&config.http_proxy, &config.http_proxy_fallbacks),
                "httpProxy",
                Mode::AbsoluteForm,
                (&config.https_proxy, &config.https_proxy_fallbacks),
                "httpsProxy for plain HTTP (missingProxy: useOther)",
            ),
            Protocol::Tls | Protocol::Other => (
                (&config.https_proxy, &config.https_proxy_fallbacks),
                "httpsProxy",
                Mode::Connect,
                (&config.http_proxy, &config.http_proxy_fallbacks),
                "httpProxy for TLS and other TCP (missingProxy: useOther)",
            ),
        };
        if let (Some(proxy), fallbacks) = own {
            return Decision::Proxy {
                proxy: proxy.clone(),
                fallbacks: fallbacks.clone(),
                mode,
                rule: own_key,
            };
        }
        let (other, other_fallbacks) = other;
        match (config.missing_proxy, other) {
            (MissingProxy::Direct, _) => Decision::Direct {
                rule: format!("no {own_key} configured"),
                address_rule: false,
            },
            // A tunnel either way: `CONNECT host:80` carries plain HTTP
            // through an https-only proxy just as it carries TLS.
            (MissingProxy::UseOther, Some(proxy)) => Decision::Proxy {
                proxy: proxy.clone(),
                fallbacks: other_fallbacks.clone(),
                mode: Mode::Connect,
                rule: other_rule,
            },
            // Not loaded by `ProxyConfig::parse`; refused to stay total.
            (MissingProxy::UseOther, None) | (MissingProxy::Refuse, _) => Decision::Refuse {
                rule: format!(
                    "no {own_key} configured (missingProxy: {})",
                    config.missing_proxy
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str, builtins: &Builtins) -> Policy {
        Policy::new(ProxyConfig::parse("t", json).unwrap(), builtins)
    }

    fn ips(list: &[&str]) -> Resolution {
        Resolution::Addresses(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    /// Every name resolves to 203.0.113.7, the destination of most rows.
    fn decide(
        p: &Policy,
        ip: Option<&str>,
        host: Option<&str>,
        port: u16,
        protocol: Protocol,
    ) -> Decision {
        decide_resolving(p, ip, host, port, protocol, ips(&["203.0.113.7"])).0
    }

    fn decide_resolving(
        p: &Policy,
        ip: Option<&str>,
        host: Option<&str>,
        port: u16,
        protocol: Protocol,
        resolution: Resolution,
    ) -> (Decision, Option<NameCheck>) {
        p.decide(&Target {
            ip: ip.map(|i| i.parse().unwrap()),
            host,
            port,
            protocol,
        })
        .decide_with(|_| resolution)
    }

    /// Issue 18: a labelled namespace decides on its profile's keys, an
    /// unlabelled one on the top level's, an unknown label on nothing.
    #[test]
    fn profiles_decide_for_their_namespaces() {
        let p = policy(
            r#"{"httpsProxy": "http://top:3128", "noProxy": ["top.example"], "failMode": "open",
                "profiles": {
                  "team-a": {"httpsProxy": "http://a:3128", "noProxy": ["a.example"],
                             "credentials": {"username": "ua", "password": "pa"}},
                  "empty": {}}}"#,
            &Builtins::default(),
        );
        let tls =
            |p: &Policy, host: &str| decide(p, Some("203.0.113.7"), Some(host), 443, Protocol::Tls);
        let top = p.select(None).unwrap();
        assert_eq!(top.profile(), None);
        assert_eq!(tls(top, "x.example").to_string(), "proxy http://top:3128");
        assert_eq!(tls(top, "top.example").kind(), "direct");
        let a = p.select(Some("team-a")).unwrap();
        assert_eq!(a.profile(), Some("team-a"));
        let Decision::Proxy { proxy, .. } = tls(a, "x.example") else {
            panic!("team-a goes through its proxy")
        };
        assert_eq!((proxy.host.as_str(), proxy.port), ("a", 3128));
        assert_eq!(proxy.credentials, Some(("ua".into(), "pa".into())));
        // The top level's noProxy names are not the profile's.
        assert_eq!(tls(a, "top.example").kind(), "proxy");
        assert_eq!(tls(a, "a.example").kind(), "direct");
        // The node's own keys stay.
        assert_eq!(a.config().fail_mode, crate::config::FailMode::Open);
        // A profile without proxies is direct, as the top level would be.
        assert_eq!(
            tls(p.select(Some("empty")).unwrap(), "x.example").kind(),
            "direct"
        );
        let err = p.select(Some("team-z")).unwrap_err();
        assert_eq!(err, UnknownProfile("team-z".into()));
        assert!(err.to_string().contains("connections refused"), "{err}");
    }

    const CFG: &str = r#"{"httpProxy": "http://hp:3128", "httpsProxy": "http://user:pw@sp:3129",
        "noProxy": ["10.0.0.0/8", "direct.example", "api.example:8443", "198.51.100.9:22"]}"#;

    #[test]
    fn decision_table() {
        let cidr = "10.96.0.0/12".parse().unwrap();
        let p = policy(
            CFG,
            &Builtins {
                cluster_cidrs: vec![cidr],
                ..Default::default()
            },
        );
        let ip = Some("203.0.113.7");
        use Protocol::*;
        for (ip, host, port, proto, kind, rule) in [
            (
                Some("127.0.0.1"),
                None,
                80,
                Http,
                "kernel-bypass",
                "built-in loopback 127.0.0.0/8",
            ),
            (
                Some("169.254.169.254"),
                None,
                80,
                Http,
                "kernel-bypass",
                "built-in link-local 169.254.0.0/16",
            ),
            (
                Some("fe80::1"),
                None,
                80,
                Other,
                "kernel-bypass",
                "built-in link-local fe80::/10",
            ),
            (
                Some("10.1.0.1"),
                None,
                443,
                Tls,
                "kernel-bypass",
                "10.0.0.0/8",
            ),
            (
                Some("10.96.0.1"),
                None,
                443,
                Tls,
                "kernel-bypass",
                "--cluster-cidr 10.96.0.0/12",
            ),
            (
                None,
                Some("10.1.2.3"),
                443,
                Tls,
                "kernel-bypass",
                "10.0.0.0/8",
            ),
            (
                ip,
                Some("www.direct.example"),
                443,
                Tls,
                "direct",
                "direct.example",
            ),
            (
                ip,
                Some("api.example"),
                8443,
                Tls,
                "direct",
                "api.example:8443",
            ),
            (
                Some("198.51.100.9"),
                Some("anything.example"),
                22,
                Other,
                "direct",
                "198.51.100.9:22",
            ),
            (ip, Some("api.example"), 443, Tls, "proxy", "httpsProxy"),
            (ip, None, 443, Tls, "proxy", "httpsProxy"),
            (ip, None, 22, Other, "proxy", "httpsProxy"),
            (ip, Some("plain.example"), 80, Http, "proxy", "httpProxy"),
        ] {
            let d = decide(&p, ip, host, port, proto);
            assert_eq!((d.kind(), d.rule()), (kind, rule), "{ip:?} {host:?} {port}");
        }
        // The cluster CIDR is a built-in when no noProxy entry covers it first.
        let p = policy(
            "{}",
            &Builtins {
                cluster_cidrs: vec![cidr],
                ..Default::default()
            },
        );
        let d = decide(&p, Some("10.96.0.1"), None, 443, Tls);
        assert_eq!(d.rule(), "--cluster-cidr 10.96.0.0/12");
    }

    /// Only a match that rests on the name the client wrote waits for the
    /// name's addresses; address and port rules decide at once.
    #[test]
    fn only_name_matches_are_checked() {
        let p = policy(CFG, &Builtins::default());
        let verdict = |ip: &str, host: &str, port| {
            p.decide(&Target {
                ip: Some(ip.parse().unwrap()),
                host: Some(host),
                port,
                protocol: Protocol::Tls,
            })
        };
        match verdict("203.0.113.7", "WWW.direct.example.", 443) {
            Verdict::CheckName(rule) => assert_eq!(rule.name(), "WWW.direct.example"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verdict("198.51.100.9", "www.direct.example", 22),
            Verdict::Final(Decision::Direct {
                address_rule: true,
                ..
            })
        ));
        assert!(matches!(
            verdict("203.0.113.7", "origin.example", 443),
            Verdict::Final(Decision::Proxy { .. })
        ));
    }

    /// The escape of issue 12: SNI or Host naming a noProxy name sent the
    /// connection direct to whatever address the pod chose.
    #[test]
    fn a_name_rule_sends_direct_only_to_the_name_s_own_addresses() {
        let p = policy(CFG, &Builtins::default());
        let host = Some("www.direct.example");
        let real = ips(&["192.0.2.10", "2001:db8::10"]);
        // One of its addresses, v4 or v6: direct, the pod's choice kept.
        for dst in ["192.0.2.10", "2001:db8::10", "::ffff:192.0.2.10"] {
            let (d, check) =
                decide_resolving(&p, Some(dst), host, 443, Protocol::Tls, real.clone());
            let check = check.unwrap();
            assert_eq!(
                (d.kind(), d.rule(), check.result),
                ("direct", "direct.example", CheckResult::Verified),
                "{dst}"
            );
            assert!(!matches!(
                d,
                Decision::Direct {
                    address_rule: true,
                    ..
                }
            ));
        }
        // Any other address: as if no rule had matched, by protocol.
        let (d, check) = decide_resolving(
            &p,
            Some("203.0.113.9"),
            host,
            443,
            Protocol::Tls,
            real.clone(),
        );
        assert_eq!((d.kind(), d.rule()), ("proxy", "httpsProxy"));
        let check = check.unwrap();
        assert_eq!(check.result, CheckResult::Mismatch);
        assert_eq!(
            check.to_string(),
            "www.direct.example matches noProxy rule direct.example, but 203.0.113.9 is not \
             one of its addresses (192.0.2.10, 2001:db8::10)"
        );
        let (d, _) = decide_resolving(&p, Some("203.0.113.9"), host, 80, Protocol::Http, real);
        assert_eq!((d.kind(), d.rule()), ("proxy", "httpProxy"));
        // No address, no answer: the proxy, with the reason.
        let (d, check) =
            decide_resolving(&p, Some("203.0.113.9"), host, 443, Protocol::Tls, ips(&[]));
        assert_eq!(
            (d.kind(), check.unwrap().result),
            ("proxy", CheckResult::NoAddress)
        );
        let failed = Resolution::Failed("no answer within 1s".into());
        let (d, check) =
            decide_resolving(&p, Some("203.0.113.9"), host, 443, Protocol::Tls, failed);
        let check = check.unwrap();
        assert_eq!(
            (d.kind(), check.result),
            ("proxy", CheckResult::LookupFailed)
        );
        assert!(
            check
                .to_string()
                .ends_with("could not be resolved: no answer within 1s")
        );
    }

    /// A name that resolves to the node's own addresses never yields a
    /// direct dial, even when the destination is that address.
    #[test]
    fn node_local_answers_never_verify() {
        let p = policy(
            r#"{"httpsProxy": "http://sp:3129", "noProxy": ["localhost", "meta.example"]}"#,
            &Builtins {
                loopback: false,
                link_local: false,
                cluster_cidrs: vec![],
            },
        );
        for (host, dst, answer) in [
            ("localhost", "203.0.113.9", ips(&["127.0.0.1", "::1"])),
            ("localhost", "127.0.0.1", ips(&["127.0.0.1"])),
            ("meta.example", "169.254.169.254", ips(&["169.254.169.254"])),
            ("meta.example", "0.0.0.0", ips(&["0.0.0.0"])),
            ("meta.example", "fe80::1", ips(&["fe80::1"])),
        ] {
            let (d, check) =
                decide_resolving(&p, Some(dst), Some(host), 443, Protocol::Tls, answer);
            let check = check.unwrap();
            assert_eq!(
                (d.kind(), check.result),
                ("proxy", CheckResult::NoAddress),
                "{host} -> {dst}"
            );
            assert!(check.to_string().contains("never dials direct"), "{check}");
        }
        // Mixed: the usable address counts, the loopback one does not.
        let mixed = ips(&["127.0.0.1", "192.0.2.10"]);
        let (d, _) = decide_resolving(
            &p,
            Some("192.0.2.10"),
            Some("meta.example"),
            443,
            Protocol::Tls,
            mixed.clone(),
        );
        assert_eq!(d.kind(), "direct");
        let (d, check) = decide_resolving(
            &p,
            Some("127.0.0.1"),
            Some("meta.example"),
            443,
            Protocol::Tls,
            mixed,
        );
        assert_eq!(
            (d.kind(), check.unwrap().result),
            ("proxy", CheckResult::Mismatch)
        );
    }

    /// Item 2: whatever rule decides direct, the node's own loopback,
    /// unspecified and (unless an address rule names it) link-local
    /// addresses are refused; `explain` and the counters say so.
    #[test]
    fn direct_to_a_node_local_address_is_refused() {
        let p = policy(
            r#"{"httpsProxy": "http://sp:3129",
                "noProxy": ["127.0.0.1:10248", "0.0.0.0:10249", "169.254.169.254:80", "meta.example"]}"#,
            &Builtins {
                loopback: false,
                link_local: false,
                cluster_cidrs: vec![],
            },
        );
        use Protocol::*;
        for (dst, port, host, proto, kind) in [
            ("127.0.0.1", 10248, None, Other, "refuse"),
            ("0.0.0.0", 10249, None, Other, "refuse"),
            ("::ffff:0.0.0.0", 10249, None, Other, "refuse"),
            // No httpProxy: plain HTTP would go direct, but not there.
            ("::", 80, None, Http, "refuse"),
            ("::1", 80, None, Http, "refuse"),
            ("169.254.1.1", 80, None, Http, "refuse"),
            // A rule names this link-local address: direct.
            ("169.254.169.254", 80, None, Http, "direct"),
            // A name rule's fallback is guarded too.
            ("127.0.0.1", 80, Some("meta.example"), Http, "refuse"),
            ("10.1.2.3", 80, None, Http, "direct"),
        ] {
            let (d, _) = decide_resolving(&p, Some(dst), host, port, proto, ips(&["192.0.2.10"]));
            assert_eq!(d.kind(), kind, "{dst}:{port} {d:?}");
            if kind == "refuse" {
                assert!(d.rule().contains("never dialed direct"), "{d:?}");
            }
        }
    }

    #[test]
    fn without_a_destination_a_name_that_resolves_goes_direct() {
        // `explain https://www.direct.example/`: no address was connected to.
        let p = policy(CFG, &Builtins::default());
        let (d, check) = decide_resolving(
            &p,
            None,
            Some("www.direct.example"),
            443,
            Protocol::Tls,
            ips(&["192.0.2.10"]),
        );
        assert_eq!(d.kind(), "direct");
        assert!(
            check
                .unwrap()
                .to_string()
                .starts_with("www.direct.example resolves to 192.0.2.10: a connection to one")
        );
    }

    #[test]
    fn proxy_selection_by_protocol() {
        let p = policy(CFG, &Builtins::default());
        let d = decide(&p, Some("203.0.113.7"), None, 80, Protocol::Http);
        assert!(matches!(
            d,
            Decision::Proxy {
                mode: Mode::AbsoluteForm,
                ..
            }
        ));
        assert_eq!(d.to_string(), "proxy http://hp:3128");
        let d = decide(&p, Some("203.0.113.7"), None, 443, Protocol::Tls);
        assert!(matches!(
            d,
            Decision::Proxy {
                mode: Mode::Connect,
                ..
            }
        ));
        assert_eq!(d.to_string(), "proxy http://sp:3129");
        // A missing proxy for a class means direct.
        let p = policy(r#"{"httpsProxy": "http://sp:3129"}"#, &Builtins::default());
        let d = decide(&p, Some("203.0.113.7"), None, 80, Protocol::Http);
        assert_eq!((d.kind(), d.rule()), ("direct", "no httpProxy configured"));
    }

    /// `missingProxy`: the class a client's bytes put it in no longer
    /// chooses direct, unless the operator keeps AKS's meaning.
    #[test]
    fn missing_proxy_sends_the_other_class_where_the_operator_says() {
        let only_https = r#""httpsProxy": "http://sp:3129""#;
        let only_http = r#""httpProxy": "http://hp:3128""#;
        let dst = Some("203.0.113.7");
        use Protocol::*;
        for (proxy, missing, proto, kind, rule, shown) in [
            (
                only_https,
                "direct",
                Http,
                "direct",
                "no httpProxy configured",
                "",
            ),
            (
                only_https,
                "useOther",
                Http,
                "proxy",
                "httpsProxy for plain HTTP (missingProxy: useOther)",
                "proxy http://sp:3129",
            ),
            (
                only_https,
                "refuse",
                Http,
                "refuse",
                "no httpProxy configured (missingProxy: refuse)",
                "refuse",
            ),
            (
                only_http,
                "direct",
                Tls,
                "direct",
                "no httpsProxy configured",
                "",
            ),
            (
                only_http,
                "direct",
                Other,
                "direct",
                "no httpsProxy configured",
                "",
            ),
            (
                only_http,
                "useOther",
                Tls,
                "proxy",
                "httpProxy for TLS and other TCP (missingProxy: useOther)",
                "proxy http://hp:3128",
            ),
            (
                only_http,
                "useOther",
                Other,
                "proxy",
                "httpProxy for TLS and other TCP (missingProxy: useOther)",
                "proxy http://hp:3128",
            ),
            (
                only_http,
                "refuse",
                Other,
                "refuse",
                "no httpsProxy configured (missingProxy: refuse)",
                "refuse",
            ),
            // The class that has its proxy is not affected.
            (
                only_https,
                "refuse",
                Tls,
                "proxy",
                "httpsProxy",
                "proxy http://sp:3129",
            ),
            (
                only_http,
                "refuse",
                Http,
                "proxy",
                "httpProxy",
                "proxy http://hp:3128",
            ),
        ] {
            let json = format!(r#"{{{proxy}, "missingProxy": "{missing}"}}"#);
            let p = policy(&json, &Builtins::default());
            let d = decide(&p, dst, None, 80, proto);
            assert_eq!((d.kind(), d.rule()), (kind, rule), "{json} {proto:?}");
            if !shown.is_empty() {
                assert_eq!(d.to_string(), shown);
            }
            // Used for the other class, a proxy is always a CONNECT tunnel.
            if rule.contains("useOther") {
                assert!(
                    matches!(
                        d,
                        Decision::Proxy {
                            mode: Mode::Connect,
                            ..
                        }
                    ),
                    "{d:?}"
                );
            }
        }
        // A name rule that does not verify falls back the same way.
        let p = policy(
            r#"{"httpsProxy": "http://sp:3129", "missingProxy": "refuse", "noProxy": ["direct.example"]}"#,
            &Builtins::default(),
        );
        let (d, _) = decide_resolving(
            &p,
            Some("203.0.113.9"),
            Some("direct.example"),
            80,
            Http,
            ips(&["192.0.2.10"]),
        );
        assert_eq!(d.kind(), "refuse");
    }

    #[test]
    fn builtins_can_be_switched_off() {
        let off = Builtins {
            loopback: false,
            link_local: false,
            cluster_cidrs: vec![],
        };
        let p = policy(r#"{"httpsProxy": "http://sp:3129"}"#, &off);
        assert_eq!(
            decide(&p, Some("127.0.0.1"), None, 443, Protocol::Tls).kind(),
            "proxy"
        );
        assert_eq!(
            decide(&p, Some("169.254.169.254"), None, 443, Protocol::Tls).kind(),
            "proxy"
        );
        assert!(p.kernel_bypass().is_empty());
        let p = policy(
            r#"{"noProxy": ["10.0.0.0/8", "x.example"]}"#,
            &Builtins::default(),
        );
        assert_eq!(p.kernel_bypass().len(), 5);
    }

    /// `serviceCidrs` acts as `--cluster-cidr` does, named as the file's.
    #[test]
    fn service_cidrs_are_a_kernel_bypass() {
        let p = policy(
            r#"{"httpsProxy": "http://sp:3129", "serviceCidrs": ["10.96.0.0/12"]}"#,
            &Builtins::default(),
        );
        let d = decide(&p, Some("10.96.0.10"), None, 443, Protocol::Tls);
        assert_eq!(
            (d.kind(), d.rule()),
            ("kernel-bypass", "serviceCidrs 10.96.0.0/12")
        );
        assert!(p.kernel_bypass().contains(&"10.96.0.0/12".parse().unwrap()));
    }
}
