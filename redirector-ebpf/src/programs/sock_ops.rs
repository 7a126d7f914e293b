//! `sock_ops`: at `TCP_CONNECT_CB` (the local port is bound, the SYN not
//! yet sent) move the original destination saved by the connect hook from
//! the socket cookie to the client's (address, port), the key the daemon
//! sees on accept. Doing it before the SYN means the entry always exists
//! by the time the daemon can accept.
//!
//! A key is claimed once. A pod can bind another pod's address
//! (`IP_FREEBIND`, `IP_TRANSPARENT`) and connect from the same port; if its
//! write replaced the first one, the victim's connection would be served
//! with the attacker's destination. So a second claim before the daemon
//! took the first turns the entry into a conflict, which the daemon
//! refuses: both connections fail, neither is misrouted.
//!
//! Nothing evicts a claim: `DST_BY_CLIENT` is a plain hash map, not an LRU
//! one. Were the victim's entry evicted (another pod can fill the map with
//! connects from made-up addresses whose SYN-ACKs go nowhere), a second
//! claim would find the key free and the victim's connection would be
//! served with the attacker's destination. So every entry is removed by
//! the daemon, which takes it on accept, or by the socket that saved it,
//! when that socket closes (whenever: before being established, or
//! established but never accepted, e.g. refused at the daemon's caps or
//! left in the backlog of a daemon that died) with the entry still its
//! own. An entry the daemon never takes would otherwise turn the next
//! honest connection from that port into a conflict, and fill the map.
//!
//! Failure policy: if the entry cannot be moved (the map is full), the
//! daemon finds no original destination and closes the connection (fail
//! closed).
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_ebpf::{AF_INET, AF_INET6, CONFLICT, Counter, Endpoint, SAVED, SavedDst};

use super::{
    maps::{DST_BY_CLIENT, DST_BY_COOKIE, count},
    read_words,
};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const TCP_CLOSE: u32 = 7;
const EEXIST: i32 = 17;

// Not named `sockops`: that is the ELF section's name and LLVM refuses a
// symbol of the same name.
#[sock_ops]
pub fn rekey_client(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => move_to_client_key(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
        _ => {}
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
    let _ = DST_BY_COOKIE.remove(&cookie);
    let Some(client) = client_key(ctx) else {
        return;
    };
    let saved = SavedDst {
        dst,
        state: SAVED,
        cookie,
    };
    match DST_BY_CLIENT.insert(&client, &saved, u64::from(BPF_NOEXIST)) {
        // Watch this socket's state for its whole life, to remove the entry
        // when it closes should the daemon never have taken it.
        Ok(()) => watch_until_close(ctx),
        Err(e) if e == -EEXIST => {
            count(Counter::KeyConflict);
            match DST_BY_CLIENT.get_ptr_mut(&client) {
                // Mark the first socket's entry in place: the daemon refuses
                // it, and the first socket's close removes it.
                // SAFETY: a value of the map, valid for the program's run;
                // one aligned 4-byte store.
                Some(first) => unsafe { (*first).state = CONFLICT },
                // The daemon took the first one meanwhile: this socket's own
                // entry marks the conflict, and its close removes it. (Built
                // from `saved`: a zeroed struct would be a memset loop that
                // the verifier refuses without CAP_PERFMON.)
                None => {
                    let conflict = SavedDst {
                        state: CONFLICT,
                        ..saved
                    };
                    if DST_BY_CLIENT.insert(&client, &conflict, 0).is_ok() {
                        watch_until_close(ctx);
                    }
                }
            }
        }
        Err(_) => {}
    }
}

#[inline(always)]
fn watch_until_close(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

#[inline(always)]
fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) != TCP_CLOSE {
        return;
    }
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(client) = client_key(ctx) else {
        return;
    };
    // SAFETY: the value is plain data, read once.
    let ours = unsafe { DST_BY_CLIENT.get(&client) }.is_some_and(|v| v.cookie == cookie);
    if ours {
        let _ = DST_BY_CLIENT.remove(&client);
    }
}

/// The client's (address, port) as the daemon will see it on accept.
#[inline(always)]
fn client_key(ctx: &SockOpsContext) -> Option<Endpoint> {
    // local_port is in host byte order for sock_ops (unlike user_port).
    let port = ctx.local_port() as u16;
    match ctx.family() as u16 {
        AF_INET => Some(Endpoint::v4(ctx.local_ip4(), port)),
        // A dual-stack socket connecting to an IPv4(-mapped) address is
        // connected by the IPv4 code, which fills the IPv4 source first;
        // take it from there should the IPv6 view not be filled in yet.
        AF_INET6 => {
            // SAFETY: the context pointer is valid for the program's run.
            let ip6 = unsafe { read_words(&raw const (*ctx.ops).local_ip6) };
            Some(if ip6 == [0; 4] {
                Endpoint::v4(ctx.local_ip4(), port)
            } else {
                Endpoint::v6(ip6, port)
            })
        }
        _ => None,
    }
}
