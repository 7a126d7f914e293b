//! `cgroup/sendmsg4` and `cgroup/sendmsg6`, and the UDP half of the connect
//! hooks: redirected pods may not send UDP to held-back ports (default 443),
//! so HTTP/3 clients fall back to TCP, which goes through the proxy.
//!
//! The sendmsg hooks see datagrams sent with an address (`sendto`,
//! `sendmsg` on an unconnected socket, or with an address on a connected
//! one); the connect hooks see `connect` + `send`. Other UDP ports, exempt
//! pods, the pod's own loopback and bypassed destinations are untouched.
//!
//! Failure policy: a held-back port is refused (`EPERM`) and counted.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use redirector_ebpf::{Counter, Endpoint, Transport, is_local_only};

use super::{
    ALLOW, REFUSE,
    connect::socket_mark,
    maps::{CONFIG, HELD_UDP_PORTS, count},
    read_words,
    scope::{caller_is_exempt, is_bypassed, is_daemon_socket, port_from_user},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for this hook.
    let sa = unsafe { &*ctx.sock_addr };
    if Transport::of(sa.type_, sa.protocol) != Transport::Udp {
        return ALLOW;
    }
    held_udp_verdict(
        &ctx,
        &Endpoint::v4(sa.user_ip4, port_from_user(sa.user_port)),
    )
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for this hook.
    let sa = unsafe { &*ctx.sock_addr };
    if Transport::of(sa.type_, sa.protocol) != Transport::Udp {
        return ALLOW;
    }
    // `Endpoint::v6` turns `::ffff:a.b.c.d` into IPv4.
    // SAFETY: the field lives in the context, valid for the program's run.
    let dst = Endpoint::v6(
        unsafe { read_words(&raw const sa.user_ip6) },
        port_from_user(sa.user_port),
    );
    held_udp_verdict(&ctx, &dst)
}

/// ALLOW unless a redirected pod sends to a held-back port.
#[inline(always)]
pub fn held_udp_verdict(ctx: &SockAddrContext, dst: &Endpoint) -> i32 {
    // The cheap test first: most datagrams (DNS) go to other ports.
    // SAFETY: the value is a plain u8 and only tested for presence.
    if unsafe { HELD_UDP_PORTS.get(&dst.port) }.is_none() {
        return ALLOW;
    }
    if let Some(cfg) = CONFIG.get(0) {
        if is_daemon_socket(cfg, socket_mark(ctx)) {
            return ALLOW;
        }
    }
    if caller_is_exempt() || is_local_only(dst) || is_bypassed(dst) {
        return ALLOW;
    }
    count(Counter::RefusedUdp);
    REFUSE
}
