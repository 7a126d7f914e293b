//! Types shared by the kernel programs (built for `bpfel-unknown-none` from
//! `src/main.rs`) and the `redirector` daemon, which reads and writes the
//! same maps.
//!
//! Everything here is `#[repr(C)]`, padding-free and plain old data, because
//! the kernel compares hash keys byte by byte and user space reads values
//! as raw bytes. Feature `user` adds `aya::Pod` so the daemon can use these
//! types with aya's map API.
#![no_std]

/// Address family numbers as the kernel reports them.
pub const AF_INET: u16 = 2;
/// See [`AF_INET`].
pub const AF_INET6: u16 = 10;

/// One end of a TCP connection: an IPv4 or IPv6 address and a port.
///
/// Used as the key of [`maps::DST_BY_CLIENT`] (the client's address and
/// port as the proxy sees them on accept) and as the value of both
/// original-destination maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The address in network byte order, exactly as the kernel stores it
    /// in `bpf_sock_addr.user_ip6` (IPv6) or in the first word (IPv4; the
    /// other three words are zero). IPv4-mapped IPv6 addresses are always
    /// stored as IPv4, so that one client has one key.
    pub addr: [u32; 4],
    /// The port in host byte order.
    pub port: u16,
    /// [`AF_INET`], [`AF_INET6`], or 0 for "not set".
    pub family: u16,
}

impl Endpoint {
    /// An IPv4 endpoint from a network-order address word.
    pub const fn v4(addr_be: u32, port: u16) -> Self {
        Self {
            addr: [addr_be, 0, 0, 0],
            port,
            family: AF_INET,
        }
    }

    /// An IPv6 endpoint from network-order address words; IPv4-mapped
    /// addresses (`::ffff:a.b.c.d`) become IPv4.
    pub const fn v6(addr_be: [u32; 4], port: u16) -> Self {
        match mapped_v4(addr_be) {
            Some(v4) => Self::v4(v4, port),
            None => Self {
                addr: addr_be,
                port,
                family: AF_INET6,
            },
        }
    }

    /// Whether this endpoint carries an address (family set).
    pub const fn is_set(&self) -> bool {
        self.family != 0
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
pub const fn mapped_v4(addr_be: [u32; 4]) -> Option<u32> {
    // The words are in network byte order, so compare bytes, not numbers.
    if addr_be[0] == 0 && addr_be[1] == 0 && addr_be[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        Some(addr_be[3])
    } else {
        None
    }
}

/// The single entry of [`maps::CONFIG`]: where to send redirected connects
/// and how the daemon's own sockets are told apart (its mark, in its cgroup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The proxy's IPv4 listen address; `family == 0` when it has none.
    pub proxy_v4: Endpoint,
    /// The proxy's IPv6 listen address; `family == 0` when it has none.
    pub proxy_v6: Endpoint,
    /// `SO_MARK` carried by every socket of the daemon: never redirected
    /// when the connect comes from `daemon_cgroup`.
    pub socket_mark: u32,
    /// Reserved; keeps the struct free of implicit padding.
    pub _reserved: u32,
    /// The cgroup id of the daemon's process. A mark alone proves nothing:
    /// any process with CAP_NET_RAW (a container default) can set it.
    pub daemon_cgroup: u64,
}

/// Indices into the per-CPU [`maps::COUNTERS`] array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP connects rewritten to the proxy.
    Redirected = 0,
    /// Skipped: the socket carries the daemon's mark.
    SkippedMark = 1,
    /// Skipped: the caller's cgroup (or an ancestor) is exempt.
    SkippedCgroup = 2,
    /// Skipped: the destination is in a bypass prefix (`noProxy` CIDR).
    SkippedBypass = 3,
    /// Refused: no proxy address of a usable family is configured (for
    /// example an IPv6 destination with an IPv4-only proxy).
    RefusedNoProxyAddress = 4,
    /// Refused: the original destination could not be saved (map error).
    RefusedMapError = 5,
    /// Skipped: the destination already is the proxy's listen address.
    SkippedProxyAddress = 6,
    /// Seen: a socket with the daemon's mark outside the daemon's cgroup
    /// (a spoofing attempt); it is handled like any other connect.
    ForeignMark = 7,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTERS_LEN as usize] = [
        Counter::Redirected,
        Counter::SkippedMark,
        Counter::SkippedCgroup,
        Counter::SkippedBypass,
        Counter::RefusedNoProxyAddress,
        Counter::RefusedMapError,
        Counter::SkippedProxyAddress,
        Counter::ForeignMark,
    ];

    /// The stable name used in `redirector status` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::SkippedMark => "skipped_mark",
            Counter::SkippedCgroup => "skipped_cgroup",
            Counter::SkippedBypass => "skipped_bypass",
            Counter::RefusedNoProxyAddress => "refused_no_proxy_address",
            Counter::RefusedMapError => "refused_map_error",
            Counter::SkippedProxyAddress => "skipped_proxy_address",
            Counter::ForeignMark => "foreign_mark",
        }
    }
}

/// Number of entries in [`maps::COUNTERS`].
pub const COUNTERS_LEN: u32 = 8;

/// How many cgroup levels, from the root down, the connect hooks check
/// against the exempt map. Kubernetes pod cgroups sit 3 to 5 levels deep.
pub const MAX_CGROUP_LEVELS: i32 = 16;

/// Names and sizes of the maps, shared so the loader and `status` cannot
/// drift from the kernel side.
pub mod maps {
    /// `Array<RedirectConfig>` with one entry.
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<u64 cgroup id, u8>`: cgroups whose processes are not redirected.
    pub const EXEMPT_CGROUPS: &str = "EXEMPT_CGROUPS";
    /// `LpmTrie<[u8; 4], u8>`: IPv4 destinations that bypass the proxy.
    pub const BYPASS_V4: &str = "BYPASS_V4";
    /// `LpmTrie<[u8; 16], u8>`: IPv6 destinations that bypass the proxy.
    pub const BYPASS_V6: &str = "BYPASS_V6";
    /// `LruHashMap<u64 socket cookie, Endpoint>`: original destination saved
    /// by the connect hook, until `sock_ops` knows the client's port.
    pub const DST_BY_COOKIE: &str = "DST_BY_COOKIE";
    /// `LruHashMap<Endpoint client, Endpoint original destination>`: what
    /// the daemon looks up (and removes) on accept.
    pub const DST_BY_CLIENT: &str = "DST_BY_CLIENT";
    /// `PerCpuArray<u64>` indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";

    /// Capacity of the exempt-cgroup map (pods per node, with room).
    pub const EXEMPT_CGROUPS_MAX: u32 = 16 * 1024;
    /// Capacity of each bypass trie.
    pub const BYPASS_MAX: u32 = 4 * 1024;
    /// Capacity of each original-destination map: connects in flight
    /// between the hook and the daemon's accept. LRU, so a connect that
    /// never completes cannot fill it for good.
    pub const DST_MAX: u32 = 64 * 1024;
}

// SAFETY: plain data with no padding and no pointers; every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RedirectConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<Endpoint>(), 20);
        assert_eq!(core::mem::size_of::<RedirectConfig>(), 56);
    }

    #[test]
    fn mapped_v4_is_stored_as_v4() {
        let v4 = u32::from_ne_bytes([10, 1, 2, 3]);
        let mapped = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4];
        assert_eq!(Endpoint::v6(mapped, 80), Endpoint::v4(v4, 80));
        let real_v6 = [u32::from_ne_bytes([0xfd, 0, 0, 0]), 0, 0, 1];
        assert_eq!(Endpoint::v6(real_v6, 80).family, AF_INET6);
    }

    #[test]
    fn counter_names_follow_indices() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
