//! Who and what the hooks leave alone: the daemon's own sockets, exempt
//! cgroups, bypassed destinations. Shared by every hook so that TCP, UDP
//! and socket creation agree on what "a redirected pod" is.
use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    maps::lpm_trie::Key,
};
use redirector_ebpf::{AF_INET, Counter, Endpoint, MAX_CGROUP_LEVELS, RedirectConfig};

use super::maps::{BYPASS_V4, BYPASS_V6, EXEMPT_CGROUPS, count};

/// Whether a socket with this mark belongs to the daemon: the mark alone
/// proves nothing (CAP_NET_RAW, a container default, can set any mark), so
/// the caller must also be in the daemon's cgroup. A foreign use is counted.
#[inline(always)]
pub fn is_daemon_socket(cfg: &RedirectConfig, mark: u32) -> bool {
    if cfg.socket_mark == 0 || mark != cfg.socket_mark {
        return false;
    }
    // SAFETY: plain helper call.
    if unsafe { bpf_get_current_cgroup_id() } == cfg.daemon_cgroup {
        return true;
    }
    count(Counter::ForeignMark);
    false
}

/// Whether the calling task's cgroup or any ancestor is exempt.
#[inline(always)]
pub fn caller_is_exempt() -> bool {
    let mut level = 0;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: plain helper call; returns 0 past the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: the value is a plain u8 and only tested for presence.
        if unsafe { EXEMPT_CGROUPS.get(&id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// Whether the destination is in a bypass prefix (`noProxy` IP or CIDR).
#[inline(always)]
pub fn is_bypassed(dst: &Endpoint) -> bool {
    if dst.family == AF_INET {
        BYPASS_V4
            .get(Key::new(32, dst.addr[0].to_ne_bytes()))
            .is_some()
    } else {
        let a = dst.addr;
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&a[0].to_ne_bytes());
        bytes[4..8].copy_from_slice(&a[1].to_ne_bytes());
        bytes[8..12].copy_from_slice(&a[2].to_ne_bytes());
        bytes[12..16].copy_from_slice(&a[3].to_ne_bytes());
        BYPASS_V6.get(Key::new(128, bytes)).is_some()
    }
}

/// `user_port` holds the network-order port in its low 16 bits.
#[inline(always)]
pub fn port_from_user(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

#[inline(always)]
pub fn port_to_user(port: u16) -> u32 {
    u32::from(port.to_be())
}
