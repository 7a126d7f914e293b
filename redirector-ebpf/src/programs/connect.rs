//! `cgroup/connect4` and `cgroup/connect6`: redirect a pod's TCP connect to
//! the node proxy.
//!
//! Failure policy: fail closed. When a connect should be redirected but
//! cannot be (no proxy address of a usable family, the original destination
//! cannot be saved), the connect is refused (`EPERM`), never sent direct.
//! Skips, in order: the daemon's own sockets (`SO_MARK`, from the daemon's
//! cgroup: a mark set elsewhere is a spoof and is counted), exempt cgroups,
//! destinations in the bypass tries, destinations that already are the
//! proxy's address.
use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use redirector_ebpf::{AF_INET, Counter, Endpoint, MAX_CGROUP_LEVELS, RedirectConfig};

use super::{
    maps::{BYPASS_V4, BYPASS_V6, CONFIG, DST_BY_COOKIE, EXEMPT_CGROUPS, count},
    read_words, write_words,
};

/// Return values of a cgroup sock_addr program.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for this hook.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = Endpoint::v4(sa.user_ip4, port_from_user(sa.user_port));
    match decide(&ctx, &dst) {
        Decision::Skip => ALLOW,
        Decision::Refuse(counter) => {
            count(counter);
            REFUSE
        }
        Decision::Redirect(cfg) => {
            if !cfg.proxy_v4.is_set() {
                count(Counter::RefusedNoProxyAddress);
                return REFUSE;
            }
            if !save_original(&ctx, &dst) {
                return REFUSE;
            }
            sa.user_ip4 = cfg.proxy_v4.addr[0];
            sa.user_port = port_to_user(cfg.proxy_v4.port);
            count(Counter::Redirected);
            debug!(&ctx, "connect4 redirected port {}", dst.port);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for this hook.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // `Endpoint::v6` turns `::ffff:a.b.c.d` into IPv4, so a dual-stack
    // socket (Java) connecting to an IPv4 address is treated as IPv4.
    // SAFETY: the field lives in the context, valid for the program's run.
    let dst = Endpoint::v6(
        unsafe { read_words(&raw const sa.user_ip6) },
        port_from_user(sa.user_port),
    );
    match decide(&ctx, &dst) {
        Decision::Skip => ALLOW,
        Decision::Refuse(counter) => {
            count(counter);
            REFUSE
        }
        Decision::Redirect(cfg) => {
            // An IPv4 destination on an IPv6 socket must stay IPv4-mapped:
            // the socket can only reach IPv4 that way.
            let proxy_addr = if dst.family == AF_INET {
                if !cfg.proxy_v4.is_set() {
                    count(Counter::RefusedNoProxyAddress);
                    return REFUSE;
                }
                (
                    [
                        0,
                        0,
                        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                        cfg.proxy_v4.addr[0],
                    ],
                    cfg.proxy_v4.port,
                )
            } else {
                if !cfg.proxy_v6.is_set() {
                    count(Counter::RefusedNoProxyAddress);
                    return REFUSE;
                }
                (cfg.proxy_v6.addr, cfg.proxy_v6.port)
            };
            if !save_original(&ctx, &dst) {
                return REFUSE;
            }
            // SAFETY: as above.
            unsafe { write_words(&raw mut sa.user_ip6, proxy_addr.0) };
            sa.user_port = port_to_user(proxy_addr.1);
            count(Counter::Redirected);
            debug!(&ctx, "connect6 redirected port {}", dst.port);
            ALLOW
        }
    }
}

enum Decision {
    Skip,
    Refuse(Counter),
    Redirect(RedirectConfig),
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, dst: &Endpoint) -> Decision {
    let Some(cfg) = CONFIG.get(0) else {
        return Decision::Refuse(Counter::RefusedNoProxyAddress);
    };
    // SAFETY: `sk` is always set for connect hooks.
    let mark = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).mark };
    if cfg.socket_mark != 0 && mark == cfg.socket_mark {
        // SAFETY: plain helper call.
        if unsafe { bpf_get_current_cgroup_id() } == cfg.daemon_cgroup {
            count(Counter::SkippedMark);
            return Decision::Skip;
        }
        count(Counter::ForeignMark);
    }
    if caller_is_exempt() {
        count(Counter::SkippedCgroup);
        return Decision::Skip;
    }
    if is_bypassed(dst) {
        count(Counter::SkippedBypass);
        return Decision::Skip;
    }
    // Already aimed at the proxy: redirected by another instance's program
    // running first while instances hand over, or a pod dialing the node's
    // listener itself. Saving it as an "original destination" would make
    // the daemon dial itself.
    if *dst == cfg.proxy_v4 || *dst == cfg.proxy_v6 {
        count(Counter::SkippedProxyAddress);
        return Decision::Skip;
    }
    Decision::Redirect(*cfg)
}

/// Whether the calling task's cgroup or any ancestor is exempt.
#[inline(always)]
fn caller_is_exempt() -> bool {
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

#[inline(always)]
fn is_bypassed(dst: &Endpoint) -> bool {
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

/// Saves the original destination under the socket's cookie; `sock_ops`
/// moves it to the client's (address, port) once the port is bound.
#[inline(always)]
fn save_original(ctx: &SockAddrContext, dst: &Endpoint) -> bool {
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if DST_BY_COOKIE.insert(&cookie, dst, 0).is_err() {
        count(Counter::RefusedMapError);
        return false;
    }
    true
}

/// `user_port` holds the network-order port in its low 16 bits.
#[inline(always)]
fn port_from_user(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

#[inline(always)]
fn port_to_user(port: u16) -> u32 {
    u32::from(port.to_be())
}
