//! The direct-dial guard: addresses the daemon never dials for a pod.
//!
//! The daemon dials from the node's network namespace, as the node. There,
//! an unspecified or loopback destination is the node's own loopback
//! (kubelet 10248, kube-proxy 10249, etcd on control-plane nodes), and a
//! link-local one is the node's link (cloud metadata at 169.254.169.254
//! answers with the node's credentials). A pod's own loopback is never
//! redirected by the kernel hook, so such a destination reaching the daemon
//! is either a race (maps changed) or an attempt; either way it is refused
//! here, at the one place direct sockets are opened, whatever path (a
//! `noProxy` match, `failMode: open`) asked for it. Link-local is let
//! through only when an operator's rule names the address itself.
use std::{fmt, net::IpAddr};

/// Whether the rule that sent a connection direct names its address (an
/// IP or CIDR `noProxy` entry, a kernel bypass range): only then may a
/// link-local address be dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLocal {
    Refuse,
    AllowedByRule,
}

/// Why an address is never dialed directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLocal {
    /// `0.0.0.0/8` or `::`: Linux connects them to the node's loopback.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// `169.254.0.0/16` or `fe80::/10`.
    LinkLocal,
}

impl NodeLocal {
    /// What `ip` is, if it is one of these (IPv4-mapped IPv6 as IPv4).
    pub fn of(ip: IpAddr) -> Option<Self> {
        match ip.to_canonical() {
            IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(NodeLocal::Unspecified),
            IpAddr::V4(v4) if v4.is_loopback() => Some(NodeLocal::Loopback),
            IpAddr::V4(v4) if v4.is_link_local() => Some(NodeLocal::LinkLocal),
            IpAddr::V6(v6) if v6.is_unspecified() => Some(NodeLocal::Unspecified),
            IpAddr::V6(v6) if v6.is_loopback() => Some(NodeLocal::Loopback),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(NodeLocal::LinkLocal),
            _ => None,
        }
    }

    /// Why the daemon will not dial it, for the error and `explain`.
    pub fn why(self) -> &'static str {
        match self {
            NodeLocal::Unspecified => {
                "an unspecified address reaches the node's own loopback services"
            }
            NodeLocal::Loopback => "a loopback address reaches the node's own loopback services",
            NodeLocal::LinkLocal => {
                "a link-local address reaches the node's link (cloud metadata); only a \
                 noProxy IP or CIDR entry naming it lets it be dialed direct"
            }
        }
    }
}

impl fmt::Display for NodeLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeLocal::Unspecified => "unspecified",
            NodeLocal::Loopback => "loopback",
            NodeLocal::LinkLocal => "link-local",
        })
    }
}

/// Whether a direct dial to `ip` is allowed: `Err` says what the address is.
pub fn check(ip: IpAddr, link_local: LinkLocal) -> Result<(), NodeLocal> {
    match NodeLocal::of(ip) {
        None => Ok(()),
        Some(NodeLocal::LinkLocal) if link_local == LinkLocal::AllowedByRule => Ok(()),
        #[cfg(test)]
        Some(NodeLocal::Loopback) if test_loopback::allowed() => Ok(()),
        Some(kind) => Err(kind),
    }
}

/// Unit tests elsewhere in the crate run their origins on loopback (the
/// only address a test can count on); they let loopback through on their
/// own thread. Compiled in tests only.
#[cfg(test)]
pub mod test_loopback {
    use std::cell::Cell;

    thread_local! {
        static ALLOWED: Cell<bool> = const { Cell::new(false) };
    }

    /// Lets this thread's direct dials reach loopback (a `#[tokio::test]`
    /// runs its tasks on the test's thread).
    pub fn allow() {
        ALLOWED.with(|a| a.set(true));
    }

    pub(super) fn allowed() -> bool {
        ALLOWED.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<NodeLocal> {
        NodeLocal::of(ip.parse().unwrap())
    }

    #[test]
    fn names_every_node_local_address() {
        use NodeLocal::*;
        for (ip, want) in [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("::ffff:169.254.1.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("10.0.0.1", None),
            ("1.0.0.0", None),
            ("128.0.0.1", None),
            ("169.255.0.1", None),
            ("::2", None),
            ("fec0::1", None),
            ("fd00::1", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(kind(ip), want, "{ip}");
        }
    }

    #[test]
    fn only_link_local_can_be_allowed_by_a_rule() {
        let ip = |s: &str| s.parse().unwrap();
        for rule in [LinkLocal::Refuse, LinkLocal::AllowedByRule] {
            assert_eq!(check(ip("0.0.0.0"), rule), Err(NodeLocal::Unspecified));
            assert_eq!(check(ip("::"), rule), Err(NodeLocal::Unspecified));
            assert_eq!(check(ip("::1"), rule), Err(NodeLocal::Loopback));
            assert_eq!(check(ip("10.1.2.3"), rule), Ok(()));
        }
        assert_eq!(
            check(ip("169.254.169.254"), LinkLocal::Refuse),
            Err(NodeLocal::LinkLocal)
        );
        assert_eq!(
            check(ip("169.254.169.254"), LinkLocal::AllowedByRule),
            Ok(())
        );
        assert_eq!(
            check(ip("fe80::1"), LinkLocal::Refuse),
            Err(NodeLocal::LinkLocal)
        );
    }
}
