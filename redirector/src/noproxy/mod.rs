//! The `noProxy` engine: which connections skip the proxy.
//!
//! [`NoProxy::parse`] reads the list into [`Rule`]s one entry at a time
//! (`parse`) and fails on the first entry it does not understand.
//! [`NoProxy::find`] names the rule a connection matches: short lists are
//! scanned in the order written; longer ones go through an index (`index`:
//! names hashed per parent domain, prefixes as address ranges found by
//! binary search) that returns the very rule the scan would.
//!
//! Loopback, link-local and other built-in bypasses are the policy's job,
//! not this module's: an empty list here matches nothing. What each entry
//! means, and where we differ from Go, curl and Python, follows (the user
//! documentation, `docs/no-proxy.md`).
//!
#![doc = include_str!("../../../docs/no-proxy.md")]
mod index;
mod parse;

use std::{fmt, net::IpAddr, num::NonZeroU16};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use index::Index;
pub use parse::InvalidEntry;

/// A `noProxy` entry that could not be understood.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("entry {position} `{entry}`: {reason}")]
pub struct NoProxyError {
    /// Where the entry is among all entries as written, comma-separated
    /// items included, counting from 1 (`"a,b"` and `["a", "b"]` both have
    /// `b` second).
    pub position: usize,
    /// The offending comma-separated item, trimmed.
    pub entry: String,
    /// Why it was refused.
    pub reason: InvalidEntry,
}

/// One understood entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The entry as written (trimmed), for logs and `explain`.
    entry: String,
    /// What the entry matches, port aside.
    target: Target,
    /// The only destination port it applies to, if restricted.
    port: Option<NonZeroU16>,
}

/// What an entry matches, port aside.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `*`.
    All,
    /// An IP literal (as a host prefix) or a CIDR, host bits cleared.
    Net(IpNet),
    /// A DNS name: lowercase, no leading or trailing dot.
    Name {
        name: String,
        /// Whether the name itself matches, or only its subdomains.
        apex: bool,
    },
}

impl Rule {
    /// The entry as written (trimmed).
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Whether the kernel enforces this rule: an IP, CIDR or `*` without a
    /// port needs neither the hostname nor the port.
    pub fn in_kernel(&self) -> bool {
        self.port.is_none() && matches!(self.target, Target::All | Target::Net(_))
    }

    fn matches(&self, host: Option<&Host<'_>>, ip: Option<IpAddr>, port: u16) -> bool {
        if self.port.is_some_and(|p| p.get() != port) {
            return false;
        }
        match &self.target {
            Target::All => true,
            // The destination IP is authoritative: an IP literal in SNI or
            // Host counts only when there is none (`explain host:port`),
            // or a pod could go direct to anywhere by writing
            // `Host: 10.0.0.5`.
            Target::Net(net) => match ip {
                Some(ip) => net.contains(&ip),
                None => matches!(host, Some(Host::Ip(h)) if net.contains(h)),
            },
            Target::Name { name, apex } => {
                matches!(host, Some(Host::Name(h)) if name_matches(name, *apex, h))
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entry)
    }
}

/// Lists up to this long are scanned: the index's hash look-ups (one per
/// label of the hostname) cost about as much as scanning this many rules.
const SCAN_MAX: usize = 16;

/// The parsed `noProxy` list.
#[derive(Clone, Default)]
pub struct NoProxy {
    /// Every rule, in the order written.
    rules: Vec<Rule>,
    /// The prefixes of the in-kernel rules, for the bypass LPM tries.
    kernel: Vec<IpNet>,
    /// The rules arranged for [`NoProxy::find`]; derived from `rules`.
    index: Index,
}

/// Equal lists have equal rules; the rest is derived from them.
impl PartialEq for NoProxy {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Eq for NoProxy {}

impl fmt::Debug for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoProxy")
            .field("rules", &self.rules)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl NoProxy {
    /// Parses the `noProxy` elements; each may be a comma-separated list.
    /// The first entry that is not understood fails the whole list.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, NoProxyError> {
        let mut out = Self::default();
        let mut position = 0;
        for element in entries {
            for item in element.as_ref().split(',') {
                let entry = item.trim();
                if entry.is_empty() {
                    continue;
                }
                position += 1;
                let (target, port) = parse::parse_entry(entry).map_err(|reason| NoProxyError {
                    position,
                    entry: entry.to_owned(),
                    reason,
                })?;
                let rule = Rule {
                    entry: entry.to_owned(),
                    target,
                    port,
                };
                match (&rule.target, rule.port) {
                    (Target::All, None) => out
                        .kernel
                        .extend([IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]),
                    (Target::Net(net), None) => out.kernel.push(*net),
                    _ => {}
                }
                out.rules.push(rule);
            }
        }
        out.index = Index::build(&out.rules);
        Ok(out)
    }

    /// Prefixes to load into the kernel bypass tries: every IP, CIDR and
    /// `*` entry without a port. Connects to them never reach user space.
    pub fn kernel_bypass(&self) -> impl Iterator<Item = &IpNet> {
        self.kernel.iter()
    }

    /// The first rule that sends this connection direct, if any: an
    /// in-kernel rule covering `ip` first, else the first match in order.
    ///
    /// `host` is the hostname from TLS SNI or HTTP `Host` (lowercase, no
    /// port, no trailing dot expected, but tolerated) or `None`; `ip` is
    /// the original destination (`IpAddr`, or `Option<IpAddr>` when only a
    /// name is known, as in `explain`); `port` the destination port.
    pub fn find(
        &self,
        host: Option<&str>,
        ip: impl Into<Option<IpAddr>>,
        port: u16,
    ) -> Option<&Rule> {
        if self.rules.len() <= SCAN_MAX {
            self.find_by_scan(host, ip, port)
        } else {
            self.find_by_index(host, ip, port)
        }
    }

    /// [`NoProxy::find`] through the index, whatever the list's length:
    /// about 200 ns for a hostname (one hash look-up per label) and 50 ns for
    /// an address (a binary search), with 10,000 rules as with 10.
    #[doc(hidden)]
    pub fn find_by_index(
        &self,
        host: Option<&str>,
        ip: impl Into<Option<IpAddr>>,
        port: u16,
    ) -> Option<&Rule> {
        let ip = ip.into().map(|ip| ip.to_canonical());
        let host = host.and_then(Host::classify);
        let first = self.index.find(&self.rules, host.as_ref(), ip, port);
        first.map(|i| &self.rules[i])
    }

    /// [`NoProxy::find`] by looking at every rule in turn: the reference the
    /// index is tested against, and the baseline of the benchmarks.
    /// Linear in the number of rules (about 6 ns each).
    #[doc(hidden)]
    pub fn find_by_scan(
        &self,
        host: Option<&str>,
        ip: impl Into<Option<IpAddr>>,
        port: u16,
    ) -> Option<&Rule> {
        // IPv4-mapped destinations (dual-stack sockets) are IPv4 to the
        // kernel tries too, so `10.0.0.0/8` covers `::ffff:10.1.2.3`.
        let ip = ip.into().map(|ip| ip.to_canonical());
        let host = host.and_then(Host::classify);
        // The kernel acts first: a destination in an in-kernel prefix never
        // reaches user space, so that rule is the one to name even if an
        // earlier user-space rule (`10.0.0.1:443`, a name) also matches.
        // Then the order written.
        self.rules
            .iter()
            .find(|rule| rule.in_kernel() && rule.matches(None, ip, port))
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|rule| rule.matches(host.as_ref(), ip, port))
            })
    }

    /// Every rule, in the order written.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// A connection's hostname, as rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host<'a> {
    /// An IP literal in SNI/Host: stands in for a missing destination IP.
    Ip(IpAddr),
    /// A DNS name without its trailing dot: matched by name rules only.
    Name(&'a str),
}

impl<'a> Host<'a> {
    fn classify(host: &'a str) -> Option<Self> {
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(Host::Ip(ip.to_canonical()));
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        (!name.is_empty()).then_some(Host::Name(name))
    }
}

/// `example.com` (apex) matches `example.com` and `a.example.com`;
/// without apex only the latter. Byte-wise so that a non-ASCII host can
/// never split a character.
fn name_matches(name: &str, apex: bool, host: &str) -> bool {
    let (name, host) = (name.as_bytes(), host.as_bytes());
    if host.len() == name.len() {
        return apex && host.eq_ignore_ascii_case(name);
    }
    host.len() > name.len()
        && host[host.len() - name.len() - 1] == b'.'
        && host[host.len() - name.len()..].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests;
