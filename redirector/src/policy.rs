//! Policy: what the operator's proxy configuration means for one
//! connection — bypassed in the kernel, direct, or through which proxy and
//! how. The daemon and `redirector explain` call the same [`Policy::decide`].
//!
//! Order of decision:
//! 1. built-in bypasses (loopback, link-local, `--cluster-cidr`) and
//!    `noProxy` IP/CIDR entries: enforced in the kernel, never proxied;
//! 2. other `noProxy` rules (names, ports), matched on the hostname that
//!    `classify` recovered: direct;
//! 3. plain HTTP → `httpProxy` in absolute form; TLS and any other TCP →
//!    `httpsProxy` with `CONNECT`; a class without a proxy goes direct, as
//!    an env-var client would.
use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use crate::{
    classify::Protocol,
    config::{ProxyConfig, ProxyUrl},
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
    Direct { rule: String },
    /// Through `proxy`; `rule` is `httpProxy` or `httpsProxy`.
    Proxy {
        proxy: ProxyUrl,
        mode: Mode,
        rule: &'static str,
    },
}

impl Decision {
    /// `kernel-bypass`, `direct` or `proxy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::KernelBypass { .. } => "kernel-bypass",
            Decision::Direct { .. } => "direct",
            Decision::Proxy { .. } => "proxy",
        }
    }

    /// The rule that decided.
    pub fn rule(&self) -> &str {
        match self {
            Decision::KernelBypass { rule } | Decision::Direct { rule } => rule,
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

/// The configuration and built-ins, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    config: ProxyConfig,
    builtin_prefixes: Vec<(IpNet, String)>,
}

impl Policy {
    pub fn new(config: ProxyConfig, builtins: &Builtins) -> Self {
        Self {
            config,
            builtin_prefixes: builtins.prefixes(),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Every prefix the kernel must bypass: built-ins and `noProxy` IPs/CIDRs.
    pub fn kernel_bypass(&self) -> Vec<IpNet> {
        let builtins = self.builtin_prefixes.iter().map(|(net, _)| *net);
        builtins
            .chain(self.config.no_proxy.kernel_bypass().copied())
            .collect()
    }

    pub fn decide(&self, target: &Target<'_>) -> Decision {
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
            return Decision::KernelBypass { rule: name.clone() };
        }
        if let Some(rule) = self.config.no_proxy.find(target.host, ip, target.port) {
            let entry = rule.entry().to_owned();
            return if rule.in_kernel() {
                Decision::KernelBypass { rule: entry }
            } else {
                Decision::Direct { rule: entry }
            };
        }
        let (proxy, mode, rule) = match target.protocol {
            Protocol::Http => (&self.config.http_proxy, Mode::AbsoluteForm, "httpProxy"),
            Protocol::Tls | Protocol::Other => {
                (&self.config.https_proxy, Mode::Connect, "httpsProxy")
            }
        };
        match proxy {
            Some(proxy) => Decision::Proxy {
                proxy: proxy.clone(),
                mode,
                rule,
            },
            None => Decision::Direct {
                rule: format!("no {rule} configured"),
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

    fn decide(
        p: &Policy,
        ip: Option<&str>,
        host: Option<&str>,
        port: u16,
        protocol: Protocol,
    ) -> Decision {
        p.decide(&Target {
            ip: ip.map(|i| i.parse().unwrap()),
            host,
            port,
            protocol,
        })
    }

    const CFG: &str = r#"{"httpProxy": "http://hp:3128", "httpsProxy": "http://user:pw@sp:3129",
        "noProxy": ["10.0.0.0/8", "direct.example", "api.example:8443"]}"#;

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
}
