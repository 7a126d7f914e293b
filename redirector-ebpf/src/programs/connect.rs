//! `cgroup/connect4` and `cgroup/connect6`: redirect a pod's TCP connect to
//! the node proxy.
//!
//! Failure policy: fail closed. When a connect should be redirected but
//! cannot be (no proxy address of a usable family, the original destination
//! cannot be saved), the connect is refused (`EPERM`), never sent direct.
//! Skips, in order: the daemon's own sockets (`SO_MARK`, from the daemon's
//! cgroup: a mark set elsewhere is a spoof and is counted), exempt cgroups,
//! the pod's own loopback (loopback and unspecified destinations),
//! destinations in the bypass tries, destinations that already are the
//! proxy's address.
//!
//! The same hooks judge the other socket kinds a pod could leave by: UDP
//! connects to held-back ports (`udp.rs`) and streams of other protocols
//! (`sock_create.rs`). MPTCP needs nothing of its own: the kernel runs this
//! hook on its first subflow, a TCP socket.
use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use redirector_ebpf::{AF_INET, Counter, Endpoint, RedirectConfig, Transport, is_local_only};

use super::{
    ALLOW, REFUSE,
    maps::{CONFIG, DST_BY_COOKIE, count},
    read_words,
    scope::{caller_is_exempt, is_bypassed, is_daemon_socket, port_from_user, port_to_user},
    sock_create::other_stream_verdict,
    udp::held_udp_verdict,
    write_words,
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for this hook.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = Endpoint::v4(sa.user_ip4, port_from_user(sa.user_port));
    match Transport::of(sa.type_, sa.protocol) {
        Transport::Tcp => {}
        Transport::Udp => return held_udp_verdict(&ctx, &dst),
        Transport::OtherStream => return other_stream_verdict(),
        Transport::Other => return ALLOW,
    }
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
    // `Endpoint::v6` turns `::ffff:a.b.c.d` into IPv4, so a dual-stack
    // socket (Java) connecting to an IPv4 address is treated as IPv4.
    // SAFETY: the field lives in the context, valid for the program's run.
    let dst = Endpoint::v6(
        unsafe { read_words(&raw const sa.user_ip6) },
        port_from_user(sa.user_port),
    );
    match Transport::of(sa.type_, sa.protocol) {
        Transport::Tcp => {}
        Transport::Udp => return held_udp_verdict(&ctx, &dst),
        Transport::OtherStream => return other_stream_verdict(),
        Transport::Other => return ALLOW,
    }
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
    if is_daemon_socket(cfg, socket_mark(ctx)) {
        count(Counter::SkippedMark);
        return Decision::Skip;
    }
    if caller_is_exempt() {
        count(Counter::SkippedCgroup);
        return Decision::Skip;
    }
    // The pod's own loopback: redirecting it would break sidecars, and the
    // daemon dialing `0.0.0.0` from the node would reach the node's own
    // loopback services (kubelet, kube-proxy, etcd).
    if is_local_only(dst) {
        count(Counter::SkippedLocal);
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

/// The socket's `SO_MARK`.
#[inline(always)]
pub fn socket_mark(ctx: &SockAddrContext) -> u32 {
    // SAFETY: `sk` is always set for sock_addr hooks.
    unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).mark }
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
