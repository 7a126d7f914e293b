//! The rule index: name rules hashed by name, looked up for the hostname
//! and each parent domain; prefixes cut into address ranges, each with the
//! first rule covering it, found by binary search.
use std::{borrow::Cow, collections::HashMap, net::IpAddr, num::NonZeroU16};

use ipnet::IpNet;

use super::{Host, Rule, Target};

/// The rules arranged so that [`NoProxy::find`](super::NoProxy::find) takes the same answer as a
/// scan in the order written without looking at every rule (lists of
/// thousands of entries are written by tools). Every part answers "the
/// first rule of this kind that matches"; `find` takes the earliest of them.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
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
    pub(super) fn build(rules: &[Rule]) -> Self {
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

    /// The position of the rule
    /// [`NoProxy::find_by_scan`](super::NoProxy::find_by_scan) would return; `ip`
    /// is canonical.
    pub(super) fn find(
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
