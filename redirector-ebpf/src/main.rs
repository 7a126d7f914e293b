//! Kernel programs of the egress redirector, built by `cargo xtask build`
//! for `bpfel-unknown-none` and embedded in the `redirector` binary.
//!
//! - `programs/connect.rs`: `cgroup/connect4` and `cgroup/connect6` decide
//!   whether a pod's TCP connect is redirected and rewrite it to the proxy.
//! - `programs/sock_ops.rs`: re-keys the saved original destination by the
//!   client's address and port as the connection starts.
//! - `programs/maps.rs`: the maps both share with the daemon.
//!
//! On the host this file builds to an empty binary, so the workspace
//! builds, lints and tests without the BPF toolchain.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("redirector-ebpf is built for bpfel-unknown-none by `cargo xtask build`");
}
