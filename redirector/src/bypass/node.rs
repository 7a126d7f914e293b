//! The node's own addresses, from its interfaces: a pod's connection to
//! the node (kubelet, a hostNetwork pod's port, the node's DNS cache) is
//! the node's business, never the upstream proxy's.
//!
//! Each address is bypassed alone (/32, /128), never its subnet. Loopback
//! and link-local addresses are left out (the built-ins cover them, and
//! their switches must keep working), and so are the interfaces where
//! kube-proxy's IPVS mode (`kube-ipvs0`) and kube-router (`kube-dummy-if`)
//! put Service VIPs: ClusterIPs, external and load-balancer IPs of
//! Services any tenant may create, which are not the node's.
//!
//! Read with `getifaddrs(3)` in the daemon's network namespace (the host's:
//! the DaemonSet runs on the host network), at start and every
//! [`REFRESH`].
use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use super::{BypassSet, Entry, Source};
use crate::dial::NodeLocal;

/// How often the interfaces are read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Interfaces that carry Service VIPs rather than the node's addresses.
pub const SERVICE_VIP_INTERFACES: &[&str] = &["kube-ipvs0", "kube-dummy-if"];

/// Whether `ip` can be one of the node's own addresses as a bypass: not
/// loopback, unspecified, link-local or multicast.
pub fn is_own_address(ip: IpAddr) -> bool {
    NodeLocal::of(ip).is_none() && !ip.to_canonical().is_multicast()
}

/// The entries for these (interface, address) pairs.
pub fn entries(addresses: impl IntoIterator<Item = (String, IpAddr)>) -> Vec<Entry> {
    addresses
        .into_iter()
        .filter(|(name, ip)| {
            !SERVICE_VIP_INTERFACES.contains(&name.as_str()) && is_own_address(*ip)
        })
        .map(|(name, ip)| Entry::host(ip, format!("interface {name}")))
        .collect()
}

/// The node's interface addresses as entries.
pub fn interface_entries() -> io::Result<Vec<Entry>> {
    Ok(entries(interface_addresses()?))
}

/// Every (interface, address) of this network namespace.
fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocated into `head`, freed
    // below with freeifaddrs and not used after.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until
        // freeifaddrs.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose
        // family says which struct it is; each cast below matches it.
        let ip = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: see above: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: see above: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Keeps the node's interface addresses current in `set`, forever.
pub async fn follow(set: Arc<BypassSet>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let result = interface_entries()
            .map_err(anyhow::Error::from)
            .and_then(|e| set.update("node addresses", |s| s.set(Source::NodeInterfaces, e)));
        match result {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("node addresses up to date again");
            }
            Ok(_) => {}
            // The addresses already bypassed stay; retried on the next tick.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{e:#}"), "cannot update the node's addresses; retrying");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_s_own_addresses() {
        let pairs = [
            ("eth0", "10.0.0.4"),
            ("eth0", "fd00::4"),
            ("eth0", "fe80::1"),
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("cni0", "10.244.0.1"),
            ("kube-ipvs0", "10.96.0.10"),
            ("kube-ipvs0", "203.0.113.7"),
            ("kube-dummy-if", "10.96.0.1"),
            ("nodelocaldns", "169.254.20.10"),
        ];
        let got: Vec<String> = entries(pairs.map(|(n, a)| (n.to_string(), a.parse().unwrap())))
            .iter()
            .map(Entry::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.4/32 (interface eth0)",
                "fd00::4/128 (interface eth0)",
                "10.244.0.1/32 (interface cni0)",
            ]
        );
    }

    /// This process's namespace has at least loopback, which is left out;
    /// the call itself works.
    #[test]
    fn reads_this_namespace() {
        let all = interface_addresses().unwrap();
        assert!(all.iter().any(|(_, ip)| ip.is_loopback()), "{all:?}");
        assert!(
            interface_entries()
                .unwrap()
                .iter()
                .all(|e| !e.net.addr().is_loopback())
        );
    }
}
