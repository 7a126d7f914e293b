//! `cgroup/sock_create`: redirected pods may not open stream sockets of
//! protocols other than TCP and MPTCP (SCTP, SMC): the proxy only speaks
//! TCP, so such a connection would leave direct. The operator can allow
//! them (`FLAG_ALLOW_OTHER_STREAMS`). Refusing at `socket()` gives the
//! application a clear `EPERM` before it builds on the socket; the connect
//! hooks refuse the same sockets again, should one exist from before.
//!
//! Failure policy: refused (`EPERM`) and counted; TCP, UDP and everything
//! else are left alone here.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use redirector_ebpf::{AF_INET, AF_INET6, Counter, FLAG_ALLOW_OTHER_STREAMS, Transport};

use super::{
    ALLOW, REFUSE,
    maps::{CONFIG, count},
    scope::caller_is_exempt,
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock for this hook.
    let sk = unsafe { &*ctx.sock };
    let family = sk.family as u16;
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    match Transport::of(sk.type_, sk.protocol) {
        Transport::OtherStream => other_stream_verdict(),
        _ => ALLOW,
    }
}

/// ALLOW only where the operator allows other stream protocols, or the
/// caller is exempt.
#[inline(always)]
pub fn other_stream_verdict() -> i32 {
    let allowed = CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.flags & FLAG_ALLOW_OTHER_STREAMS != 0);
    if allowed || caller_is_exempt() {
        return ALLOW;
    }
    count(Counter::RefusedStreamProtocol);
    REFUSE
}
