//! Conversions between the kernel's [`Endpoint`] and std socket addresses.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use redirector_ebpf::{AF_INET, AF_INET6, Endpoint};

/// The kernel key for a socket address; IPv4-mapped IPv6 becomes IPv4, as
/// the kernel programs store it.
pub fn to_endpoint(addr: SocketAddr) -> Endpoint {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => Endpoint::v4(u32::from_ne_bytes(ip.octets()), addr.port()),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            Endpoint::v6([word(0), word(4), word(8), word(12)], addr.port())
        }
    }
}

/// The socket address of a kernel endpoint, `None` if its family is unset.
pub fn to_socket_addr(ep: &Endpoint) -> Option<SocketAddr> {
    let ip = match ep.family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(ep.addr[0].to_ne_bytes())),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (chunk, word) in o.chunks_exact_mut(4).zip(ep.addr) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, ep.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_canonicalizes() {
        for s in ["10.1.2.3:443", "[fd42:e9e5::2]:80", "[::1]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(to_socket_addr(&to_endpoint(a)), Some(a));
        }
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:7".parse().unwrap();
        assert_eq!(
            to_endpoint(mapped),
            to_endpoint("10.1.2.3:7".parse().unwrap())
        );
        // The kernel stores addresses in network byte order.
        let ep = to_endpoint("10.1.2.3:7".parse().unwrap());
        assert_eq!(ep.addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(to_socket_addr(&Endpoint::default()), None);
    }
}
