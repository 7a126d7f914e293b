//! The `noProxy` engine: which connections skip the proxy.
//!
//! The baseline is Go's `golang.org/x/net/http/httpproxy`, which kubelet,
//! containerd and most Kubernetes components use to read `NO_PROXY`, so a
//! pod whose traffic we redirect is treated as the node's Go clients treat
//! the same list. Where we differ from Go it is to be stricter (refuse what
//! Go silently ignores) or because we see the destination IP, not a URL.
//!
//! Each `noProxy` element may itself be a comma-separated list (a `NO_PROXY`
//! value copied from a pod). Items are trimmed; empty items are skipped.
//! Matching is ASCII case-insensitive and ignores a trailing dot on either
//! side. The rule reported is an in-kernel rule covering the destination if
//! there is one (the kernel decides before user space sees the connection),
//! else the first match in the order written.
//!
//! | entry | matches | where |
//! | --- | --- | --- |
//! | `*` (alone or among others) | every connection | kernel (`0.0.0.0/0`, `::/0`) |
//! | `10.1.2.3`, `::1`, `[::1]` | destination IP equal to it | kernel |
//! | `10.0.0.0/8`, `fd00::/8` | destination IP inside it | kernel |
//! | `10.1.2.3:8080`, `[fd00::1]:443` | that IP, on that port | user space |
//! | `example.com` | hostname `example.com` and every `*.example.com` | user space |
//! | `.example.com`, `*.example.com` | every `*.example.com`, not `example.com` itself | user space |
//! | `example.com:8443`, `.example.com:443` | as above, on that port only | user space |
//!
//! Hostnames come from TLS SNI or the HTTP `Host` header. A connection
//! without one (raw TCP, TLS without SNI) can only be matched by `*` and
//! IP/CIDR rules; name rules never match it, so it goes through the proxy.
//! IP/CIDR rules match the destination IP even when a hostname is known
//! (the kernel applies them before any byte is read). A hostname that is an
//! IP literal is never matched when the destination IP is known (a pod
//! could write `Host: 10.0.0.5` to go direct to anywhere); it stands in for
//! the destination only where there is none (`explain 10.0.0.5:80`).
//!
//! Refused, so that the daemon never runs with a half-understood policy
//! (Go ignores most of these silently): URLs, `/` outside a CIDR, a bad
//! prefix length, a CIDR with a port (no implementation supports it), `*`
//! with a port, `*` anywhere but as the whole first label, an empty host
//! or bad port around `:`, empty or over-long labels, whitespace inside an
//! entry, characters outside `[A-Za-z0-9-_.]`, non-ASCII names (write
//! punycode, which is what SNI and `Host` carry), and names whose last label
//! is numeric (`10.0.0`, `1.2.3.4.5`: broken IPs, not names).
//!
//! Where Go, curl 7.88.1 and Python 3.11's `urllib` disagree (Go read from
//! its source; curl and Python observed by running them):
//!
//! | entry | connection | Go | curl | Python | us |
//! | --- | --- | --- | --- | --- | --- |
//! | `.example.com` | `example.com` | no | yes | yes | no (1) |
//! | `*.example.com` | `a.example.com` | yes | no | no | yes |
//! | `a.com,*` | anything | yes | no | no | yes |
//! | `10.0.0.0/8` | `http://10.1.2.3/` | yes | yes | no | yes |
//! | `10.0.0.0/8` | `example.com`, resolved to 10.1.2.3 | no | no | no | yes (2) |
//! | `fd00::/8` | `http://[fd00::1]/` | yes | no | no | yes |
//! | `::1` / `[::1]` | `http://[::1]/` | yes / no | yes / no | no / yes | yes / yes |
//! | `example.com:443` | `https://example.com/` | yes | no | no | yes |
//! | `example.com:8443` | `https://example.com:8443/` | yes | no | yes | yes |
//! | `example.com.` | `example.com` | no | yes | no | yes |
//! | `0.0.1` | `http://10.0.0.1/` | yes | no | yes | refused |
//! | `a.com b.com` | `b.com` | no | yes | no | refused |
//! | `10.0.0.0/33`, `:8080` | — | ignored | ignored | ignored | refused |
//!
//! (1) Go's reading: a leading dot means subdomains, and leaving the apex
//! out errs on the safe side (proxied). (2) The kernel sees only the IP.
//!
//! Loopback, link-local and other built-in bypasses are the policy's job,
//! not this module's: an empty list here matches nothing.
use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    num::NonZeroU16,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

/// A `noProxy` entry that could not be understood.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("entry {index} `{entry}`: {reason}")]
pub struct NoProxyError {
    /// Index of the `noProxy` element (0-based) the entry came from.
    pub index: usize,
    /// The offending comma-separated item, trimmed.
    pub entry: String,
    /// Why it was refused.
    pub reason: InvalidEntry,
}

/// Why an entry was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InvalidEntry {
    #[error("a URL is not a NO_PROXY entry; write the host alone, e.g. `{0}`")]
    Url(String),
    #[error("`{0}` before the `/` is not an IP address")]
    CidrAddress(String),
    #[error("prefix length {len} is not 0..={max}")]
    PrefixLength { len: String, max: u8 },
    #[error("missing prefix length after `/`")]
    MissingPrefixLength,
    #[error(
        "a CIDR cannot carry a port (no NO_PROXY implementation supports it); \
         drop the port or list the addresses one by one with it"
    )]
    CidrWithPort,
    #[error("`/` is only allowed in a CIDR (address/prefix-length)")]
    Slash,
    #[error("`[` `]` must enclose an IPv6 address, optionally followed by `:port`")]
    Brackets,
    #[error("`{0}` looks like an IPv6 address but is not one (for a port, write `[address]:port`)")]
    NotIpv6(String),
    #[error("no host before the `:port`")]
    EmptyHost,
    #[error("port `{0}` is not 1..=65535")]
    Port(String),
    #[error("`*` cannot carry a port; write `*` alone to bypass everything")]
    StarWithPort,
    #[error("`*` is only allowed alone or as the whole first label (`*.example.com`)")]
    Wildcard,
    #[error("no name")]
    EmptyName,
    #[error("empty label (`..`)")]
    EmptyLabel,
    #[error("label `{0}` is longer than 63 characters")]
    LabelTooLong(String),
    #[error("name is longer than 253 characters")]
    NameTooLong,
    #[error("contains whitespace; entries are separated by commas")]
    Whitespace,
    #[error(
        "non-ASCII name; write internationalized names in punycode (`xn--...`), \
         as TLS SNI and HTTP Host carry them"
    )]
    NonAscii,
    #[error("character `{0}` is not allowed in a host name (letters, digits, `-`, `_`, `.`)")]
    Char(char),
    #[error("looks like an IP address but is not one")]
    NotAnIp,
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
        for (index, element) in entries.iter().enumerate() {
            for item in element.as_ref().split(',') {
                let entry = item.trim();
                if entry.is_empty() {
                    continue;
                }
                let (target, port) = parse_entry(entry).map_err(|reason| NoProxyError {
                    index,
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

/// The rules arranged so that [`NoProxy::find`] takes the same answer as a
/// scan in the order written without looking at every rule (lists of
/// thousands of entries are written by tools). Every part answers "the
/// first rule of this kind that matches"; `find` takes the earliest of them.
#[derive(Debug, Clone, Default)]
struct Index {
    /// The first `*` rule.
    all: Option<usize>,
    /// IP and CIDR rules without a port (all in the kernel), per family.
    nets_v4: FirstCover,
    nets_v6: FirstCover,
    /// IP rules with a port, by address: (rule, port) in the order written.
    ip_ports: HashMap<IpAddr, Vec<(usize, NonZeroU16)>>,
    /// Name rules by name (lowercase), in the order written.
    names: HashMap<Box<str>, Vec<NameRule>>,
    /// Rules none of the above holds (a prefix with a port, which `parse`
    /// refuses today): scanned.
    rest: Vec<usize>,
}

impl Index {
    fn build(rules: &[Rule]) -> Self {
        let mut index = Index::default();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, rule) in rules.iter().enumerate() {
            match (&rule.target, rule.port) {
                (Target::All, _) => {
                    index.all.get_or_insert(i);
                }
                (Target::Net(IpNet::V4(net)), None) => v4.push((
                    u128::from(u32::from(net.network())),
                    u128::from(u32::from(net.broadcast())),
                    i,
                )),
                (Target::Net(IpNet::V6(net)), None) => {
                    v6.push((u128::from(net.network()), u128::from(net.broadcast()), i))
                }
                (Target::Net(net), Some(port)) if net.prefix_len() == net.max_prefix_len() => {
                    index
                        .ip_ports
                        .entry(net.addr())
                        .or_default()
                        .push((i, port));
                }
                (Target::Net(_), Some(_)) => index.rest.push(i),
                (Target::Name { name, apex }, port) => index
                    .names
                    .entry(name.as_str().into())
                    .or_default()
                    .push(NameRule {
                        rule: i,
                        apex: *apex,
                        port,
                    }),
            }
        }
        index.nets_v4 = FirstCover::build(v4);
        index.nets_v6 = FirstCover::build(v6);
        index
    }

    /// The position of the rule [`NoProxy::find_by_scan`] would return; `ip`
    /// is canonical.
    fn find(
        &self,
        rules: &[Rule],
        host: Option<&Host<'_>>,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Option<usize> {
        let covering = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => self.nets_v4.first(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => self.nets_v6.first(u128::from(v6)),
        };
        // The kernel acts first: `*` or a prefix covering the destination.
        let kernel = earliest(self.all, ip.and_then(covering));
        if kernel.is_some() {
            return kernel;
        }
        // Then the order written. An IP literal in the hostname stands in for
        // a missing destination only.
        let ip = ip.or(match host {
            Some(Host::Ip(h)) => Some(*h),
            _ => None,
        });
        let port_ok = |p: Option<NonZeroU16>| p.is_none_or(|p| p.get() == port);
        let mut first = ip.and_then(covering);
        if let Some(ip) = ip
            && let Some(rules) = self.ip_ports.get(&ip)
        {
            let hit = rules.iter().find(|(_, p)| p.get() == port);
            first = earliest(first, hit.map(|(i, _)| *i));
        }
        if let Some(Host::Name(name)) = host {
            first = earliest(first, self.find_name(name, &port_ok));
        }
        let rest = self
            .rest
            .iter()
            .copied()
            .find(|&i| rules[i].matches(host, ip, port));
        earliest(first, rest)
    }

    /// The first name rule matching `host`: the host itself (apex rules),
    /// then each parent domain (`a.b.example.com` → `b.example.com`,
    /// `example.com`, `com`), one hash look-up each.
    fn find_name(
        &self,
        host: &str,
        port_ok: &impl Fn(Option<NonZeroU16>) -> bool,
    ) -> Option<usize> {
        if self.names.is_empty() {
            return None;
        }
        // Rule names are lowercase; SNI and Host normally are already.
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let first_of = |name: &str, subdomain: bool| {
            self.names.get(name).and_then(|rules| {
                rules
                    .iter()
                    .find(|r| (subdomain || r.apex) && port_ok(r.port))
                    .map(|r| r.rule)
            })
        };
        let mut first = first_of(&host, false);
        for (dot, _) in host.match_indices('.') {
            first = earliest(first, first_of(&host[dot + 1..], true));
        }
        first
    }
}

/// One name rule in [`Index::names`].
#[derive(Debug, Clone, Copy)]
struct NameRule {
    /// Position in the list.
    rule: usize,
    /// Whether the name itself matches, or only its subdomains.
    apex: bool,
    port: Option<NonZeroU16>,
}

/// The smaller of two optional rule positions.
fn earliest(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// For every address of one family, the first rule (in the order written)
/// among the prefixes covering it: the address space cut into ranges at
/// every prefix boundary, searched by binary search. Prefixes nest or are
/// disjoint, so one pass over them, sorted, builds it.
#[derive(Debug, Clone, Default)]
struct FirstCover {
    /// Where each range starts, ascending; the first is 0 unless empty.
    starts: Vec<u128>,
    /// The first covering rule of each range.
    first: Vec<Option<usize>>,
}

impl FirstCover {
    /// `prefixes`: (first address, last address, rule position).
    fn build(mut prefixes: Vec<(u128, u128, usize)>) -> Self {
        let mut out = FirstCover::default();
        if prefixes.is_empty() {
            return out;
        }
        // Containing prefixes before the ones they contain.
        prefixes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        out.set(0, None);
        // The prefixes containing the current address, outermost first, with
        // the first rule among each one and those around it.
        let mut open: Vec<(u128, usize)> = Vec::new();
        for (start, end, rule) in prefixes {
            while let Some(&(open_end, _)) = open.last()
                && open_end < start
            {
                open.pop();
                out.set(open_end + 1, open.last().map(|&(_, first)| first));
            }
            let first = open.last().map_or(rule, |&(_, first)| first.min(rule));
            out.set(start, Some(first));
            open.push((end, first));
        }
        while let Some((open_end, _)) = open.pop() {
            if open_end < u128::MAX {
                out.set(open_end + 1, open.last().map(|&(_, first)| first));
            }
        }
        out
    }

    /// Starts a range at `start` (replacing one that starts there already).
    fn set(&mut self, start: u128, first: Option<usize>) {
        if self.starts.last() == Some(&start) {
            *self.first.last_mut().expect("same length") = first;
        } else {
            self.starts.push(start);
            self.first.push(first);
        }
    }

    fn first(&self, addr: u128) -> Option<usize> {
        let ranges = self.starts.partition_point(|&s| s <= addr);
        self.first.get(ranges.checked_sub(1)?).copied().flatten()
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

/// One trimmed, non-empty entry.
fn parse_entry(entry: &str) -> Result<(Target, Option<NonZeroU16>), InvalidEntry> {
    if let Some((_, rest)) = entry.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or(host);
        return Err(InvalidEntry::Url(host.to_owned()));
    }
    if entry.contains(char::is_whitespace) {
        return Err(InvalidEntry::Whitespace);
    }
    if !entry.is_ascii() {
        return Err(InvalidEntry::NonAscii);
    }
    if entry == "*" {
        return Ok((Target::All, None));
    }
    if let Some(inner) = entry.strip_prefix('[') {
        // `[fd00::1]` or `[fd00::1]:443`: brackets exist to set a port
        // apart from an IPv6 address, so they hold nothing else.
        let (addr, rest) = inner.split_once(']').ok_or(InvalidEntry::Brackets)?;
        let ip: Ipv6Addr = addr.parse().map_err(|_| InvalidEntry::Brackets)?;
        let port = match rest {
            "" => None,
            _ => Some(parse_port(
                rest.strip_prefix(':').ok_or(InvalidEntry::Brackets)?,
            )?),
        };
        return Ok((Target::Net(host_net(IpAddr::V6(ip))), port));
    }
    if let Some((addr, len)) = entry.split_once('/') {
        return parse_cidr(addr, len).map(|net| (Target::Net(net), None));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok((Target::Net(host_net(ip)), None));
    }
    let (host, port) = match entry.matches(':').count() {
        0 => (entry, None),
        // Unbracketed IPv6 is always an address, never `address:port`
        // (`fd00::1:443` is the address fd00::1:443), as in Go.
        1 => {
            let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
            (host, Some(parse_port(port)?))
        }
        _ => return Err(InvalidEntry::NotIpv6(entry.to_owned())),
    };
    if host.is_empty() {
        return Err(InvalidEntry::EmptyHost);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Target::Net(host_net(IpAddr::V4(ip))), port));
    }
    if host == "*" {
        return Err(InvalidEntry::StarWithPort);
    }
    parse_name(host).map(|target| (target, port))
}

/// `addr/len`; a port after the length is refused rather than guessed at.
fn parse_cidr(addr: &str, len: &str) -> Result<IpNet, InvalidEntry> {
    let ip: IpAddr = addr.parse().map_err(|_| {
        if addr.contains(':') || addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            InvalidEntry::CidrAddress(addr.to_owned())
        } else {
            InvalidEntry::Slash
        }
    })?;
    if len.contains(':') {
        return Err(InvalidEntry::CidrWithPort);
    }
    if len.is_empty() {
        return Err(InvalidEntry::MissingPrefixLength);
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bad_len = || InvalidEntry::PrefixLength {
        len: len.to_owned(),
        max,
    };
    // All digits: `u8::from_str` would also take `+8`.
    if !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_len());
    }
    let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(bad_len)?;
    let net = IpNet::new(ip, len).map_err(|_| bad_len())?;
    Ok(canonical_net(net.trunc()))
}

fn parse_port(port: &str) -> Result<NonZeroU16, InvalidEntry> {
    let bad = || InvalidEntry::Port(port.to_owned());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    port.parse().map_err(|_| bad())
}

/// A DNS name entry, with its `.` or `*.` prefix if any.
fn parse_name(host: &str) -> Result<Target, InvalidEntry> {
    let (name, apex) = match host.strip_prefix("*.") {
        Some(rest) => (rest, false),
        None => match host.strip_prefix('.') {
            Some(rest) => (rest, false),
            None => (host, true),
        },
    };
    // `example.com.` is the same name written fully qualified.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.contains('*') {
        return Err(InvalidEntry::Wildcard);
    }
    if name.is_empty() {
        return Err(InvalidEntry::EmptyName);
    }
    if name.len() > 253 {
        return Err(InvalidEntry::NameTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(InvalidEntry::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(InvalidEntry::LabelTooLong(label.to_owned()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidEntry::Char(c));
        }
    }
    // No top-level domain is numeric, and resolvers read `10.0.0` or `123`
    // as IPv4 shorthand; Go and Python would suffix-match `0.0.1` against
    // `10.0.0.1`. Such an entry is a broken IP, not a name.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(InvalidEntry::NotAnIp);
    }
    Ok(Target::Name {
        name: name.to_ascii_lowercase(),
        apex,
    })
}

/// An IP literal entry as a one-address prefix.
fn host_net(ip: IpAddr) -> IpNet {
    canonical_net(IpNet::from(ip))
}

/// IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/104`) as the IPv4 prefixes
/// they mean: the kernel and [`NoProxy::find`] see such destinations as
/// IPv4, so a mapped prefix would otherwise never match.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `find` question: the `noProxy` value (one comma-separated
    /// string), the connection, and the entry that should match.
    struct Case {
        no_proxy: &'static str,
        host: Option<&'static str>,
        ip: &'static str,
        port: u16,
        want: Option<&'static str>,
    }

    const fn case(
        no_proxy: &'static str,
        host: Option<&'static str>,
        ip: &'static str,
        port: u16,
        want: Option<&'static str>,
    ) -> Case {
        Case {
            no_proxy,
            host,
            ip,
            port,
            want,
        }
    }

    const EXT: &str = "203.0.113.7";

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // `*` alone, and among others (Go: everything; curl, Python: nothing).
        case("*", None, EXT, 22, Some("*")),
        case("*", Some("a.example"), EXT, 443, Some("*")),
        case("a.com,*", Some("x.example"), EXT, 443, Some("*")),
        case("a.com, *", None, "2001:db8::1", 443, Some("*")),
        case("x.example,*", Some("x.example"), EXT, 443, Some("*")), // in the kernel: acts first
        // A name: apex and subdomains, on label boundaries only.
        case("example.com", Some("example.com"), EXT, 443, Some("example.com")),
        case("example.com", Some("a.b.example.com"), EXT, 443, Some("example.com")),
        case("example.com", Some("notexample.com"), EXT, 443, None),
        case("example.com", Some("example.com.evil"), EXT, 443, None),
        case("example.com", Some("com"), EXT, 443, None),
        // Leading dot: subdomains only (Go); curl and Python also match the apex.
        case(".example.com", Some("a.example.com"), EXT, 443, Some(".example.com")),
        case(".example.com", Some("example.com"), EXT, 443, None),
        // `*.example.com` = `.example.com` (Go); curl and Python match nothing.
        case("*.example.com", Some("a.example.com"), EXT, 443, Some("*.example.com")),
        case("*.example.com", Some("x.a.example.com"), EXT, 443, Some("*.example.com")),
        case("*.example.com", Some("example.com"), EXT, 443, None),
        // Case and trailing dots, on either side (Go: neither; curl: both).
        case("Example.COM", Some("www.example.com"), EXT, 443, Some("Example.COM")),
        case("example.com", Some("WWW.Example.Com"), EXT, 443, Some("example.com")),
        case("example.com.", Some("example.com"), EXT, 443, Some("example.com.")),
        case("example.com", Some("example.com."), EXT, 443, Some("example.com")),
        case(".example.com.", Some("a.example.com"), EXT, 443, Some(".example.com.")),
        // AKS forms.
        case("localhost", Some("localhost"), "127.0.0.1", 8080, Some("localhost")),
        case(".svc", Some("kubernetes.default.svc"), "10.0.0.1", 443, Some(".svc")),
        case(".svc", Some("svc"), EXT, 443, None),
        case(".cluster.local", Some("kube-dns.kube-system.svc.cluster.local"), "10.0.0.10", 53, Some(".cluster.local")),
        case("kubernetes.default.svc", Some("kubernetes.default.svc"), "10.0.0.1", 443, Some("kubernetes.default.svc")),
        case("konnectivity", Some("konnectivity"), EXT, 8132, Some("konnectivity")),
        case("mcr.microsoft.com", Some("mcr.microsoft.com"), EXT, 443, Some("mcr.microsoft.com")),
        case("169.254.169.254", None, "169.254.169.254", 80, Some("169.254.169.254")),
        case("168.63.129.16", None, "168.63.129.16", 80, Some("168.63.129.16")),
        case("_srv.example", Some("_srv.example"), EXT, 443, Some("_srv.example")),
        // No hostname: only IP/CIDR (and `*`) rules can match.
        case("example.com", None, EXT, 443, None),
        case("example.com,203.0.113.0/24", None, EXT, 443, Some("203.0.113.0/24")),
        // IP/CIDR rules match the destination even when a name is known
        // (Go, curl: only for IP-literal URLs; Python: never).
        case("10.0.0.0/8", Some("example.com"), "10.1.2.3", 443, Some("10.0.0.0/8")),
        case("10.0.0.0/8", Some("example.com"), EXT, 443, None),
        case("10.0.0.0/8", None, "10.255.255.255", 1, Some("10.0.0.0/8")),
        case("10.0.0.0/8", None, "11.0.0.0", 1, None),
        case("10.1.2.3/8", None, "10.200.0.1", 1, Some("10.1.2.3/8")),
        case("0.0.0.0/0", None, EXT, 1, Some("0.0.0.0/0")),
        case("0.0.0.0/0", None, "2001:db8::1", 1, None),
        case("fd00::/8", None, "fd12::1", 443, Some("fd00::/8")),
        case("fd00::/8", None, "fe00::1", 443, None),
        case("10.1.2.3", None, "10.1.2.3", 1, Some("10.1.2.3")),
        case("10.1.2.3", None, "10.1.2.4", 1, None),
        // IPv6 literals: bare and bracketed, any spelling (curl: text only;
        // Go: bracketed only with a port; Python: bracketed only).
        case("::1", None, "::1", 80, Some("::1")),
        case("[::1]", None, "::1", 80, Some("[::1]")),
        case("0::1", None, "::1", 80, Some("0::1")),
        case("fd00::1:443", None, "fd00::1:443", 80, Some("fd00::1:443")),
        // An IP-literal hostname is matched by IP rules, never by name rules.
        // The destination IP decides, never an IP literal the client wrote;
        // the literal counts only without a destination (`explain ip:port`,
        // written "" here).
        case("10.0.0.0/8", Some("10.9.9.9"), EXT, 443, None),
        case("10.9.9.9", Some("10.9.9.9"), EXT, 443, None),
        case("[fd00::1]:443", Some("[fd00::1]"), EXT, 443, None),
        case("fd00::/8", Some("fd00::5"), EXT, 443, None),
        case("10.0.0.0/8", Some("10.9.9.9"), "", 443, Some("10.0.0.0/8")),
        case("[fd00::1]:443", Some("[fd00::1]"), "", 443, Some("[fd00::1]:443")),
        case("fd00::/8", Some("fd00::5"), "", 443, Some("fd00::/8")),
        case("example.com", Some("example.com"), "", 443, Some("example.com")),
        // IPv4-mapped destinations are IPv4, in entries too.
        case("10.0.0.0/8", None, "::ffff:10.1.2.3", 443, Some("10.0.0.0/8")),
        case("::ffff:10.1.2.3", None, "10.1.2.3", 443, Some("::ffff:10.1.2.3")),
        case("::ffff:10.0.0.0/104", None, "10.1.2.3", 443, Some("::ffff:10.0.0.0/104")),
        // Ports (Go: yes; curl: never matches; Python: only if the URL spells it).
        case("example.com:8443", Some("example.com"), EXT, 8443, Some("example.com:8443")),
        case("example.com:8443", Some("a.example.com"), EXT, 8443, Some("example.com:8443")),
        case("example.com:8443", Some("example.com"), EXT, 443, None),
        case("example.com:443", Some("example.com"), EXT, 443, Some("example.com:443")),
        case(".example.com:443", Some("a.example.com"), EXT, 443, Some(".example.com:443")),
        case(".example.com:443", Some("example.com"), EXT, 443, None),
        case(".example.com:443", Some("a.example.com"), EXT, 80, None),
        case("10.0.0.1:8080", None, "10.0.0.1", 8080, Some("10.0.0.1:8080")),
        case("10.0.0.1:8080", None, "10.0.0.1", 8081, None),
        case("[fd00::1]:443", None, "fd00::1", 443, Some("[fd00::1]:443")),
        case("[fd00::1]:443", None, "fd00::1", 80, None),
        case("example.com.:443", Some("example.com"), EXT, 443, Some("example.com.:443")),
        // Order written decides which rule is named, except that an
        // in-kernel rule covering the destination wins (the kernel acts first).
        case("a.example.com,example.com", Some("a.example.com"), EXT, 443, Some("a.example.com")),
        case("example.com,a.example.com", Some("a.example.com"), EXT, 443, Some("example.com")),
        case("example.com:8443,10.0.0.0/8", Some("example.com"), "10.0.0.1", 8443, Some("10.0.0.0/8")),
        case("10.0.0.1:8080,10.0.0.0/8", None, "10.0.0.1", 8080, Some("10.0.0.0/8")),
        case("example.com,10.0.0.0/8", Some("example.com"), EXT, 443, Some("example.com")),
        case("10.9.9.9,10.0.0.0/8", Some("10.0.0.1"), "10.9.9.9", 443, Some("10.9.9.9")),
        // Whitespace and empty items around commas.
        case(" , a.example ,, b.example , ", Some("b.example"), EXT, 443, Some("b.example")),
        // Empty list.
        case("", Some("example.com"), EXT, 443, None),
        // Degenerate hosts are no hostname.
        case("example.com", Some(""), EXT, 443, None),
        case("example.com", Some("."), EXT, 443, None),
        case("*", Some(""), EXT, 443, Some("*")),
    ];

    #[test]
    fn find_table() {
        for c in CASES {
            let np =
                NoProxy::parse(&[c.no_proxy]).unwrap_or_else(|e| panic!("{}: {e}", c.no_proxy));
            let ip: Option<IpAddr> = (!c.ip.is_empty()).then(|| c.ip.parse().unwrap());
            // Short lists are scanned; the index must answer the same.
            for got in [
                np.find(c.host, ip, c.port),
                np.find_by_index(c.host, ip, c.port),
            ] {
                assert_eq!(
                    got.map(Rule::entry),
                    c.want,
                    "noProxy `{}`, host {:?}, {}:{}",
                    c.no_proxy,
                    c.host,
                    c.ip,
                    c.port
                );
            }
        }
    }

    /// What the kernel bypasses, user space names: a destination in a
    /// kernel prefix is matched by an in-kernel rule, whatever the hostname;
    /// and an in-kernel rule matching the destination is in the kernel.
    #[test]
    fn kernel_bypass_agrees_with_find() {
        for c in CASES.iter().filter(|c| !c.ip.is_empty()) {
            let np = NoProxy::parse(&[c.no_proxy]).unwrap();
            let ip = c.ip.parse::<IpAddr>().unwrap().to_canonical();
            let in_kernel = np.kernel_bypass().any(|net| net.contains(&ip));
            let rule = np.find(c.host, ip, c.port);
            assert_eq!(
                in_kernel,
                np.find(None, ip, 0).is_some_and(Rule::in_kernel),
                "{}: {}",
                c.no_proxy,
                c.ip
            );
            if in_kernel {
                assert!(
                    rule.is_some_and(Rule::in_kernel),
                    "{}: {rule:?}",
                    c.no_proxy
                );
            }
        }
    }

    /// A small deterministic generator (xorshift64*), so that a failure
    /// names a seed that reproduces it.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A name from a small pool of labels, so that rules and hosts overlap.
    fn random_name(rng: &mut Rng) -> String {
        let labels = ["a", "b", "Ex", "svc", "com", "local", "x-1"];
        let depth = 1 + rng.below(3);
        let mut name: Vec<&str> = (0..depth).map(|_| rng.pick(&labels)).collect();
        name.push(rng.pick(&["com", "net", "svc"]));
        name.join(".")
    }

    fn random_v4(rng: &mut Rng) -> String {
        format!(
            "10.{}.{}.{}",
            rng.below(3),
            rng.below(3) * 100,
            rng.below(4)
        )
    }

    fn random_v6(rng: &mut Rng) -> String {
        format!("fd00:{:x}::{:x}", rng.below(3), rng.below(4))
    }

    fn random_entry(rng: &mut Rng) -> String {
        let port = |rng: &mut Rng| [":80", ":443", ":8080"][rng.below(3)];
        match rng.below(14) {
            0 if rng.below(8) == 0 => "*".into(),
            0 | 1 => random_name(rng),
            2 => format!(".{}", random_name(rng)),
            3 => format!("*.{}", random_name(rng)),
            4 => format!("{}{}", random_name(rng), port(rng)),
            5 => format!(".{}.{}", random_name(rng), port(rng)),
            6 => format!("{}.", random_name(rng).to_uppercase()),
            7 => format!(
                "{}/{}",
                random_v4(rng),
                [0, 8, 14, 16, 23, 24, 30, 32][rng.below(8)]
            ),
            8 => random_v4(rng),
            9 => format!("{}{}", random_v4(rng), port(rng)),
            10 => format!(
                "{}/{}",
                random_v6(rng),
                [0, 16, 20, 32, 127, 128][rng.below(6)]
            ),
            11 => format!("[{}]{}", random_v6(rng), port(rng)),
            12 => format!("::ffff:{}/{}", random_v4(rng), 104 + rng.below(25)),
            _ => format!(
                "{}/{}",
                ["0.0.0.0", "255.255.255.255", "::", "ffff::"][rng.below(4)],
                rng.below(2) * 32
            ),
        }
    }

    /// The index answers exactly what a scan in the order written answers,
    /// the same rule (not just an equal one), on random lists and queries.
    #[test]
    fn index_agrees_with_scan() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let entries: Vec<String> = (0..rng.below(40)).map(|_| random_entry(&mut rng)).collect();
            let np = NoProxy::parse(&entries).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            for _ in 0..200 {
                let host = match rng.below(6) {
                    0 => None,
                    1 => Some(random_v4(&mut rng)),
                    2 => Some(format!("[{}]", random_v6(&mut rng))),
                    3 => Some(format!("{}.", random_name(&mut rng))),
                    _ => Some(random_name(&mut rng)),
                };
                let ip: Option<IpAddr> = match rng.below(5) {
                    0 => None,
                    1 => Some(random_v6(&mut rng).parse().unwrap()),
                    2 => Some(format!("::ffff:{}", random_v4(&mut rng)).parse().unwrap()),
                    _ => Some(random_v4(&mut rng).parse().unwrap()),
                };
                let port = [80, 443, 8080, 22][rng.below(4)];
                let want = np.find_by_scan(host.as_deref(), ip, port);
                let same = |got: Option<&Rule>| match (got, want) {
                    (Some(g), Some(w)) => std::ptr::eq(g, w),
                    (None, None) => true,
                    _ => false,
                };
                let got = np.find_by_index(host.as_deref(), ip, port);
                assert!(
                    same(got) && same(np.find(host.as_deref(), ip, port)),
                    "seed {seed}: {entries:?}, host {host:?}, {ip:?}:{port}: index {got:?}, scan {want:?}"
                );
            }
        }
    }

    /// Ranges at the ends of the address space and nested, repeated and
    /// adjacent prefixes: the first rule in the order written wins.
    #[test]
    fn first_cover_ranges() {
        let np = NoProxy::parse(&[
            "10.1.0.0/16",
            "10.0.0.0/8",
            "10.1.2.0/24",
            "10.0.0.0/8",
            "11.0.0.0/8",
            "255.255.255.255",
            "::/0",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ])
        .unwrap();
        let first = |ip: &str| {
            np.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
                .map(Rule::entry)
        };
        assert_eq!(first("10.1.2.3"), Some("10.1.0.0/16"));
        assert_eq!(first("10.2.0.0"), Some("10.0.0.0/8"));
        assert_eq!(first("9.255.255.255"), None);
        assert_eq!(first("11.255.255.255"), Some("11.0.0.0/8"));
        assert_eq!(first("12.0.0.0"), None);
        assert_eq!(first("255.255.255.255"), Some("255.255.255.255"));
        assert_eq!(first("255.255.255.254"), None);
        assert_eq!(first("0.0.0.0"), None);
        assert_eq!(
            first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some("::/0")
        );
        assert_eq!(first("::"), Some("::/0"));
        let late = NoProxy::parse(&["10.1.2.0/24", "10.0.0.0/8", "0.0.0.0/0"]).unwrap();
        let first = |ip: &str| {
            late.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
                .map(Rule::entry)
        };
        assert_eq!(first("10.1.2.3"), Some("10.1.2.0/24"));
        assert_eq!(first("10.1.3.3"), Some("10.0.0.0/8"));
        assert_eq!(first("10.255.255.255"), Some("10.0.0.0/8"));
        assert_eq!(first("11.0.0.0"), Some("0.0.0.0/0"));
        assert_eq!(first("255.255.255.255"), Some("0.0.0.0/0"));
        let top = NoProxy::parse(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]).unwrap();
        let first = |ip: &str| {
            top.find_by_index(None, ip.parse::<IpAddr>().unwrap(), 1)
                .map(Rule::entry)
        };
        assert_eq!(first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), None);
        assert!(first("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe").is_some());
    }

    #[test]
    fn find_without_destination_ip() {
        let np = NoProxy::parse(&["10.0.0.0/8", "example.com"]).unwrap();
        let rule = |host, ip: Option<IpAddr>| np.find(host, ip, 443).map(Rule::entry);
        assert_eq!(rule(Some("10.1.1.1"), None), Some("10.0.0.0/8"));
        assert_eq!(rule(Some("a.example.com"), None), Some("example.com"));
        assert_eq!(rule(Some("x.example"), None), None);
        assert_eq!(rule(None, None), None);
    }

    #[test]
    fn kernel_bypass_lists_ip_entries_without_port() {
        let np = NoProxy::parse(&[
            "localhost",
            "10.0.0.0/16",
            "127.0.0.1",
            " ",
            "[::1]",
            "fd00::/8",
            "10.1.2.3/8",
            "Docker.IO",
            "10.0.0.5:8080, [fd00::5]:443",
            "::ffff:192.0.2.0/120",
        ])
        .unwrap();
        let bypass: Vec<String> = np.kernel_bypass().map(ToString::to_string).collect();
        assert_eq!(
            bypass,
            [
                "10.0.0.0/16",
                "127.0.0.1/32",
                "::1/128",
                "fd00::/8",
                "10.0.0.0/8",
                "192.0.2.0/24"
            ]
        );
        let user: Vec<&str> = np
            .rules()
            .iter()
            .filter(|r| !r.in_kernel())
            .map(Rule::entry)
            .collect();
        assert_eq!(
            user,
            ["localhost", "Docker.IO", "10.0.0.5:8080", "[fd00::5]:443"]
        );
    }

    #[test]
    fn star_bypasses_everything_in_the_kernel() {
        let np = NoProxy::parse(&["a.example", "*"]).unwrap();
        let bypass: Vec<String> = np.kernel_bypass().map(ToString::to_string).collect();
        assert_eq!(bypass, ["0.0.0.0/0", "::/0"]);
        assert!(np.rules()[1].in_kernel());
    }

    #[test]
    fn rules_keep_the_entry_as_written() {
        let np = NoProxy::parse(&["  Example.COM.:8443 ", "*.Svc"]).unwrap();
        let rule = &np.rules()[0];
        assert_eq!(rule.entry(), "Example.COM.:8443");
        assert_eq!(rule.to_string(), "Example.COM.:8443");
        assert!(!rule.in_kernel());
        assert_eq!(np.rules()[1].to_string(), "*.Svc");
    }

    #[test]
    fn list_and_comma_separated_string_are_the_same() {
        let list = NoProxy::parse(&["a.example", "10.0.0.0/8", ".svc"]).unwrap();
        let csv = NoProxy::parse(&["a.example, 10.0.0.0/8,.svc,"]).unwrap();
        assert_eq!(list, csv);
        assert_eq!(NoProxy::parse::<&str>(&[]).unwrap(), NoProxy::default());
    }

    #[test]
    fn every_aks_form_parses() {
        let aks = [
            "localhost",
            "127.0.0.1",
            "10.0.0.0/16",
            ".svc",
            ".cluster.local",
            "kubernetes.default.svc",
            "kubernetes.default",
            "169.254.169.254",
            "168.63.129.16",
            "konnectivity",
            "mcr.microsoft.com",
            "login.microsoftonline.com",
            ".azmk8s.io",
            "10.224.0.0/12",
            "fd00::/8",
            "::1",
        ];
        let np = NoProxy::parse(&aks).unwrap();
        assert_eq!(np.rules().len(), aks.len());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        use InvalidEntry::*;
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        let cases: Vec<(&str, InvalidEntry)> = vec![
            (
                "10.0.0.0/33",
                PrefixLength {
                    len: "33".into(),
                    max: 32,
                },
            ),
            (
                "fd00::/129",
                PrefixLength {
                    len: "129".into(),
                    max: 128,
                },
            ),
            (
                "10.0.0.0/x",
                PrefixLength {
                    len: "x".into(),
                    max: 32,
                },
            ),
            (
                "10.0.0.0/+8",
                PrefixLength {
                    len: "+8".into(),
                    max: 32,
                },
            ),
            ("10.0.0.0/", MissingPrefixLength),
            ("10.0.0/8", CidrAddress("10.0.0".into())),
            ("fd00::g/8", CidrAddress("fd00::g".into())),
            ("10.0.0.0/8:443", CidrWithPort),
            ("fd00::/8:443", CidrWithPort),
            ("example.com/path", Slash),
            ("http://example.com", Url("example.com".into())),
            (
                "https://user:pw@example.com:8443/x",
                Url("example.com:8443".into()),
            ),
            ("*.*.com", Wildcard),
            ("foo*.com", Wildcard),
            ("*foo.com", Wildcard),
            ("a.*.com", Wildcard),
            ("**", Wildcard),
            ("*:443", StarWithPort),
            (":8080", EmptyHost),
            ("example.com:0", Port("0".into())),
            ("example.com:99999", Port("99999".into())),
            ("example.com:abc", Port("abc".into())),
            ("example.com:", Port("".into())),
            ("example.com:+80", Port("+80".into())),
            ("[::1]:0", Port("0".into())),
            ("[::1", Brackets),
            ("[example.com]", Brackets),
            ("[10.0.0.1]", Brackets),
            ("[::1]x", Brackets),
            ("fd00::g", NotIpv6("fd00::g".into())),
            ("a:b:c", NotIpv6("a:b:c".into())),
            (long_label.as_str(), LabelTooLong("a".repeat(64))),
            (long_name.as_str(), NameTooLong),
            ("a..com", EmptyLabel),
            (".", EmptyName),
            ("*.", EmptyName),
            ("..", EmptyName),
            ("a b.com", Whitespace),
            ("a\tb", Whitespace),
            ("bücher.de", NonAscii),
            ("exa$mple.com", Char('$')),
            ("example.com;", Char(';')),
            ("10.0.0", NotAnIp),
            ("1.2.3.4.5", NotAnIp),
            ("256.1.1.1", NotAnIp),
            ("010.0.0.1", NotAnIp),
            (".0.0.1", NotAnIp),
            ("123", NotAnIp),
        ];
        for (entry, want) in cases {
            let err = NoProxy::parse(&["ok.example", entry]).unwrap_err();
            assert_eq!(
                err,
                NoProxyError {
                    index: 1,
                    entry: entry.to_owned(),
                    reason: want
                },
                "{entry}"
            );
        }
    }

    #[test]
    fn error_names_element_entry_and_reason() {
        let err =
            NoProxy::parse(&["a.example", "b.example", "c.example", " 10.0.0.0/33 "]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry 3 `10.0.0.0/33`: prefix length 33 is not 0..=32"
        );
        // Inside a comma-separated element: the element's index, the item.
        let err = NoProxy::parse(&["a.example, http://b.example/ ,c"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry 0 `http://b.example/`: a URL is not a NO_PROXY entry; \
             write the host alone, e.g. `b.example`"
        );
    }
}
