//! `sock_ops`: at `TCP_CONNECT_CB` (the local port is bound, the SYN not
//! yet sent) move the original destination saved by the connect hook from
//! the socket cookie to the client's (address, port), the key the daemon
//! sees on accept. Doing it before the SYN means the entry always exists
//! by the time the daemon can accept.
//!
//! Failure policy: if the entry cannot be moved, the daemon finds no
//! original destination and closes the connection (fail closed).
use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext};
use redirector_ebpf::{AF_INET, AF_INET6, Endpoint};

use super::{
    maps::{DST_BY_CLIENT, DST_BY_COOKIE},
    read_words,
};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

// Not named `sockops`: that is the ELF section's name and LLVM refuses a
// symbol of the same name.
#[sock_ops]
pub fn rekey_client(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        move_to_client_key(&ctx);
    }
    // sock_ops programs report success with 1.
    1
}

#[inline(always)]
fn move_to_client_key(ctx: &SockOpsContext) {
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is plain data, copied out before the remove.
    let Some(dst) = (unsafe { DST_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    // local_port is in host byte order for sock_ops (unlike user_port).
    let port = ctx.local_port() as u16;
    let client = match ctx.family() as u16 {
        AF_INET => Endpoint::v4(ctx.local_ip4(), port),
        // A dual-stack socket connecting to an IPv4(-mapped) address is
        // connected by the IPv4 code, which fills the IPv4 source first;
        // take it from there should the IPv6 view not be filled in yet.
        AF_INET6 => {
            // SAFETY: the context pointer is valid for the program's run.
            let ip6 = unsafe { read_words(&raw const (*ctx.ops).local_ip6) };
            if ip6 == [0; 4] {
                Endpoint::v4(ctx.local_ip4(), port)
            } else {
                Endpoint::v6(ip6, port)
            }
        }
        _ => return,
    };
    let _ = DST_BY_CLIENT.insert(&client, &dst, 0);
    let _ = DST_BY_COOKIE.remove(&cookie);
}
