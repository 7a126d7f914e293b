//! Where bypassed prefixes come from, and what each source holds.
use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;

/// One origin of bypassed prefixes. The order is the display order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Loopback and link-local (`--no-bypass-loopback`,
    /// `--no-bypass-link-local` switch them off).
    BuiltIn,
    /// `--cluster-cidr` flags.
    ClusterCidrFlag,
    /// The configuration's `serviceCidrs`.
    ServiceCidrs,
    /// The configuration's `noProxy` IPs and CIDRs.
    NoProxy,
    /// The node's interface addresses.
    NodeInterfaces,
    /// This Node's `status.addresses`, from the API.
    NodeStatus,
    /// Every Node's `spec.podCIDRs`, from the API.
    PodCidrs,
    /// `default/kubernetes`'s ClusterIPs, from the API.
    KubernetesService,
    /// The addresses of the EndpointSlice `default/kubernetes`: the API
    /// servers themselves.
    ApiServerEndpoints,
    /// One upstream proxy's addresses (its host as written in the
    /// configuration).
    UpstreamProxy(String),
    /// What an earlier instance had in the kernel, kept until this one's
    /// view of the API is complete.
    EarlierInstance,
}

impl Source {
    /// Whether the source comes from the Kubernetes API, which `explain`
    /// cannot see on its own.
    pub fn from_api(&self) -> bool {
        matches!(
            self,
            Self::NodeStatus
                | Self::PodCidrs
                | Self::KubernetesService
                | Self::ApiServerEndpoints
                | Self::EarlierInstance
        )
    }
}

/// The names `status`, `explain` and the logs show.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("built-in"),
            Self::ClusterCidrFlag => f.write_str("--cluster-cidr"),
            Self::ServiceCidrs => f.write_str("serviceCidrs"),
            Self::NoProxy => f.write_str("noProxy"),
            Self::NodeInterfaces => f.write_str("node addresses"),
            Self::NodeStatus => f.write_str("node addresses (Node.status.addresses)"),
            Self::PodCidrs => f.write_str("pod CIDRs (Node.spec.podCIDRs)"),
            Self::KubernetesService => f.write_str("kubernetes Service"),
            Self::ApiServerEndpoints => f.write_str("API server endpoints"),
            Self::UpstreamProxy(host) => write!(f, "upstream proxy {host}"),
            Self::EarlierInstance => f.write_str("earlier instance"),
        }
    }
}

/// One bypassed prefix of a source, with what it is there (an interface,
/// a node, `loopback`), possibly empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub net: IpNet,
    pub detail: String,
}

impl Entry {
    pub fn new(net: IpNet, detail: impl Into<String>) -> Self {
        Self {
            net: net.trunc(),
            detail: detail.into(),
        }
    }

    /// One address as a host prefix (/32 or /128).
    pub fn host(ip: IpAddr, detail: impl Into<String>) -> Self {
        Self::new(IpNet::from(ip), detail)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.net)
        } else {
            write!(f, "{} ({})", self.net, self.detail)
        }
    }
}

/// The sources switched on and off by flags, beside the configuration's:
/// the node's own addresses and the upstream proxies' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Automatic {
    /// The node's interface addresses and its Node's `status.addresses`.
    pub node_addresses: bool,
    /// The addresses of `httpProxy` and `httpsProxy`.
    pub proxy_addresses: bool,
}

impl Default for Automatic {
    fn default() -> Self {
        Self {
            node_addresses: true,
            proxy_addresses: true,
        }
    }
}

/// Every source's entries: sorted, without duplicates, and a source
/// without entries is absent, so equal contents compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<Source, Vec<Entry>>);

impl Sources {
    /// Replaces what `source` holds.
    pub fn set(&mut self, source: Source, mut entries: Vec<Entry>) {
        entries.sort();
        entries.dedup();
        if entries.is_empty() {
            self.0.remove(&source);
        } else {
            self.0.insert(source, entries);
        }
    }

    /// What `source` holds (empty when absent).
    pub fn get(&self, source: &Source) -> &[Entry] {
        self.0.get(source).map_or(&[], Vec::as_slice)
    }

    /// Drops every source `drop` picks.
    pub fn remove_where(&mut self, drop: impl Fn(&Source) -> bool) {
        self.0.retain(|source, _| !drop(source));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Source, &[Entry])> {
        self.0.iter().map(|(s, e)| (s, e.as_slice()))
    }

    /// The prefixes the kernel must hold: every entry, aggregated
    /// (adjacent prefixes merged, covered ones dropped), which keeps the
    /// tries small (one prefix for a cluster's pod CIDRs, typically) and
    /// bypasses exactly the same addresses.
    pub fn kernel_prefixes(&self) -> Vec<IpNet> {
        let all: Vec<IpNet> = self.0.values().flatten().map(|e| e.net).collect();
        IpNet::aggregate(&all)
    }

    /// Every entry that covers `ip`, with its source.
    pub fn matching(&self, ip: IpAddr) -> Vec<(&Source, &Entry)> {
        self.0
            .iter()
            .flat_map(|(s, entries)| entries.iter().map(move |e| (s, e)))
            .filter(|(_, e)| e.net.contains(&ip))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str) -> Entry {
        Entry::new(net.parse().unwrap(), "")
    }

    #[test]
    fn names_as_status_shows_them() {
        assert_eq!(
            Source::PodCidrs.to_string(),
            "pod CIDRs (Node.spec.podCIDRs)"
        );
        assert_eq!(
            Source::UpstreamProxy("proxy.corp".into()).to_string(),
            "upstream proxy proxy.corp"
        );
        assert_eq!(Source::NodeInterfaces.to_string(), "node addresses");
        assert_eq!(
            Entry::new("10.0.0.1/8".parse().unwrap(), "x").to_string(),
            "10.0.0.0/8 (x)",
            "host bits cleared"
        );
    }

    #[test]
    fn empty_sources_are_absent_and_order_does_not_matter() {
        let mut a = Sources::default();
        a.set(
            Source::NoProxy,
            vec![entry("10.0.0.0/8"), entry("fd00::/8")],
        );
        a.set(Source::ServiceCidrs, vec![]);
        let mut b = Sources::default();
        b.set(
            Source::NoProxy,
            vec![entry("fd00::/8"), entry("10.0.0.0/8"), entry("10.0.0.0/8")],
        );
        assert_eq!(a, b);
        assert_eq!(a.iter().count(), 1);
        a.set(Source::NoProxy, vec![]);
        assert_eq!(a, Sources::default());
    }

    #[test]
    fn kernel_prefixes_are_aggregated() {
        let mut s = Sources::default();
        s.set(
            Source::PodCidrs,
            vec![
                entry("10.244.0.0/24"),
                entry("10.244.1.0/24"),
                entry("10.244.3.0/24"),
            ],
        );
        s.set(Source::ClusterCidrFlag, vec![entry("10.96.0.0/12")]);
        s.set(Source::KubernetesService, vec![entry("10.96.0.1/32")]);
        s.set(Source::NodeInterfaces, vec![entry("fd00::4/128")]);
        let got: Vec<String> = s.kernel_prefixes().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.96.0.0/12",
                "10.244.0.0/23",
                "10.244.3.0/24",
                "fd00::4/128"
            ]
        );
        let hits = s.matching("10.96.0.1".parse().unwrap());
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(s.matching("10.244.2.1".parse().unwrap()).is_empty());
    }
}
