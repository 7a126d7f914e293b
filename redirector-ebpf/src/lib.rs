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
    /// Operator switches, a set of `FLAG_*` bits.
    pub flags: u32,
    /// The cgroup id of the daemon's process. A mark alone proves nothing:
    /// any process with CAP_NET_RAW (a container default) can set it.
    pub daemon_cgroup: u64,
}

/// [`RedirectConfig::flags`]: let redirected pods use stream sockets of
/// protocols other than TCP and MPTCP (SCTP), which would leave direct.
pub const FLAG_ALLOW_OTHER_STREAMS: u32 = 1 << 0;

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
    /// Skipped: a loopback or unspecified destination, which is the pod's
    /// own loopback (Linux turns `0.0.0.0`/`::` into it after the hook).
    SkippedLocal = 8,
    /// Refused: UDP to a held-back port (HTTP/3 would leave around the
    /// proxy); the client falls back to TCP.
    RefusedUdp = 9,
    /// Refused: a stream socket of another protocol than TCP or MPTCP.
    RefusedStreamProtocol = 10,
    /// Refused: two sockets claimed the same client (address, port) before
    /// the daemon took it; neither is served (see [`SavedDst`]).
    KeyConflict = 11,
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
        Counter::SkippedLocal,
        Counter::RefusedUdp,
        Counter::RefusedStreamProtocol,
        Counter::KeyConflict,
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
            Counter::SkippedLocal => "skipped_local",
            Counter::RefusedUdp => "refused_udp",
            Counter::RefusedStreamProtocol => "refused_stream_protocol",
            Counter::KeyConflict => "key_conflict",
        }
    }
}

/// Number of entries in [`maps::COUNTERS`].
pub const COUNTERS_LEN: u32 = 12;

/// [`SavedDst::state`]: the destination was saved by exactly one socket.
pub const SAVED: u32 = 1;
/// [`SavedDst::state`]: a second socket claimed the same client (address,
/// port) before the daemon took the first one. Binding another pod's
/// address (`IP_FREEBIND`, `IP_TRANSPARENT`) makes that possible; serving
/// either destination could send one pod's bytes where another asked, so
/// the daemon refuses the connection.
pub const CONFLICT: u32 = 2;

/// Value of [`maps::DST_BY_CLIENT`]: the original destination and which
/// socket saved it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedDst {
    /// The destination the client asked for (meaningless when `state` is
    /// [`CONFLICT`]: the daemon refuses the connection).
    pub dst: Endpoint,
    /// [`SAVED`] or [`CONFLICT`].
    pub state: u32,
    /// The socket cookie of the client that saved it; its close removes
    /// the entry if the daemon never took it.
    pub cookie: u64,
}

/// Socket types and protocols the hooks tell apart.
pub mod sock {
    /// `SOCK_STREAM`.
    pub const STREAM: u32 = 1;
    /// `SOCK_DGRAM`.
    pub const DGRAM: u32 = 2;
    /// `SOCK_SEQPACKET`.
    pub const SEQPACKET: u32 = 5;
    /// `IPPROTO_TCP`.
    pub const TCP: u32 = 6;
    /// `IPPROTO_UDP`.
    pub const UDP: u32 = 17;
    /// `IPPROTO_UDPLITE`.
    pub const UDPLITE: u32 = 136;
    /// `IPPROTO_SCTP`.
    pub const SCTP: u32 = 132;
    /// `IPPROTO_MPTCP`: its subflows are TCP sockets, redirected like TCP.
    pub const MPTCP: u32 = 262;
}

/// What a socket's type and protocol make of it, for the hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP or MPTCP: redirected to the proxy.
    Tcp,
    /// UDP or UDP-Lite: refused only to held-back ports.
    Udp,
    /// A stream of another protocol (SCTP, SMC), or SCTP's one-to-many
    /// style: connections that would leave direct; refused unless allowed.
    OtherStream,
    /// Anything else (raw, ping): left to a NetworkPolicy.
    Other,
}

impl Transport {
    /// Classifies a socket by `bpf_sock_addr`/`bpf_sock`'s `type` and
    /// `protocol` (the resolved protocol, never 0).
    pub const fn of(sock_type: u32, protocol: u32) -> Self {
        match (sock_type, protocol) {
            (sock::STREAM, sock::TCP | sock::MPTCP) => Transport::Tcp,
            (sock::STREAM, _) | (sock::SEQPACKET, sock::SCTP) => Transport::OtherStream,
            (sock::DGRAM, sock::UDP | sock::UDPLITE) => Transport::Udp,
            _ => Transport::Other,
        }
    }
}

/// Whether a destination is one the kernel delivers to the caller's own
/// network namespace: loopback (`127.0.0.0/8`, `::1`) or unspecified
/// (`0.0.0.0/8`, `::`), which Linux turns into loopback after the connect
/// hook ran. Such a connect is the pod talking to itself: never redirected,
/// and the daemon must never dial it from the node.
pub const fn is_local_only(dst: &Endpoint) -> bool {
    if dst.family == AF_INET {
        let first_octet = dst.addr[0].to_ne_bytes()[0];
        first_octet == 0 || first_octet == 127
    } else {
        let a = dst.addr;
        a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && (a[3] == 0 || a[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    }
}

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
    /// `HashMap<Endpoint client, SavedDst>`: what the daemon looks up (and
    /// removes) on accept. Not LRU: nothing may evict a claim (another
    /// socket could then claim the key afresh); an entry the daemon does
    /// not take is removed when the socket that saved it closes.
    pub const DST_BY_CLIENT: &str = "DST_BY_CLIENT";
    /// `HashMap<u16 port, u8>`: UDP destination ports redirected pods may
    /// not send to (default 443: HTTP/3).
    pub const HELD_UDP_PORTS: &str = "HELD_UDP_PORTS";
    /// `PerCpuArray<u64>` indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";

    /// Capacity of the exempt-cgroup map (pods per node, with room).
    pub const EXEMPT_CGROUPS_MAX: u32 = 16 * 1024;
    /// Capacity of each bypass trie.
    pub const BYPASS_MAX: u32 = 4 * 1024;
    /// Capacity of each original-destination map: connects in flight
    /// between the hook and the daemon's accept. `DST_BY_COOKIE` is LRU,
    /// so a connect that fails before `sock_ops` cannot fill it for good;
    /// `DST_BY_CLIENT` holds an entry only while its socket lives.
    pub const DST_MAX: u32 = 64 * 1024;
    /// Capacity of the held-back UDP port set.
    pub const HELD_UDP_PORTS_MAX: u32 = 64;
}

// SAFETY: plain data with no padding and no pointers; every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RedirectConfig {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SavedDst {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<Endpoint>(), 20);
        assert_eq!(core::mem::size_of::<RedirectConfig>(), 56);
        assert_eq!(core::mem::size_of::<SavedDst>(), 32);
    }

    fn v4(a: [u8; 4]) -> Endpoint {
        Endpoint::v4(u32::from_ne_bytes(a), 80)
    }

    fn v6(a: [u8; 16]) -> Endpoint {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        Endpoint::v6([w(0), w(4), w(8), w(12)], 80)
    }

    #[test]
    fn loopback_and_unspecified_are_local_only() {
        for local in [[127, 0, 0, 1], [127, 9, 9, 9], [0, 0, 0, 0], [0, 1, 2, 3]] {
            assert!(is_local_only(&v4(local)), "{local:?}");
        }
        for remote in [
            [10, 0, 0, 1],
            [1, 0, 0, 0],
            [169, 254, 0, 1],
            [128, 0, 0, 1],
        ] {
            assert!(!is_local_only(&v4(remote)), "{remote:?}");
        }
        let mut any = [0u8; 16];
        assert!(is_local_only(&v6(any)));
        any[15] = 1;
        assert!(is_local_only(&v6(any)), "::1");
        any[15] = 2;
        assert!(!is_local_only(&v6(any)), "::2");
        let mut mapped_any = [0u8; 16];
        mapped_any[10] = 0xff;
        mapped_any[11] = 0xff;
        assert!(is_local_only(&v6(mapped_any)), "::ffff:0.0.0.0");
        let mut fd = [0u8; 16];
        fd[0] = 0xfd;
        fd[15] = 1;
        assert!(!is_local_only(&v6(fd)));
    }

    #[test]
    fn transports_by_type_and_protocol() {
        assert_eq!(Transport::of(sock::STREAM, sock::TCP), Transport::Tcp);
        assert_eq!(Transport::of(sock::STREAM, sock::MPTCP), Transport::Tcp);
        assert_eq!(
            Transport::of(sock::STREAM, 132),
            Transport::OtherStream,
            "SCTP"
        );
        assert_eq!(
            Transport::of(sock::STREAM, 256),
            Transport::OtherStream,
            "SMC"
        );
        assert_eq!(Transport::of(sock::DGRAM, sock::UDP), Transport::Udp);
        assert_eq!(Transport::of(sock::DGRAM, sock::UDPLITE), Transport::Udp);
        assert_eq!(Transport::of(sock::DGRAM, 1), Transport::Other, "ping");
        assert_eq!(Transport::of(3, 255), Transport::Other, "raw");
        assert_eq!(
            Transport::of(sock::SEQPACKET, sock::SCTP),
            Transport::OtherStream
        );
        assert_eq!(Transport::of(sock::SEQPACKET, 0), Transport::Other);
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
