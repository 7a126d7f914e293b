//! The user-space side of the kernel hooks: load the embedded programs,
//! fill their maps, attach them to a cgroup as pinned `bpf_link`s, and
//! remove them again.
//!
//! Pin layout under the bpffs directory (`--bpffs`):
//! `links/<PROGRAM>` and `maps/<MAP NAME>` of the instance attached now, and
//! `shared/v<LAYOUT>/<MAP NAME>`, the original-destination maps every
//! instance adopts (`shared`).
//! Pinned links keep the programs attached when the daemon exits, so pods
//! never bypass the proxy while it is down: their connects are refused by
//! the empty listen address instead (fail closed).
//!
//! - `support`: what the kernel must offer, checked before loading;
//! - `load`: load the programs, fill their maps, attach and pin them;
//! - `pins`: the pin directory of an instance, and `detach`;
//! - `shared`: the maps successive instances share through a hand-over;
//! - `maps`: the maps changed at run time (exempt cgroups, bypass tries,
//!   refused UDP ports and flags);
//! - `cgroup`: the daemon's own cgroup, cgroup ids, cgroup v1 refused, and
//!   the kubepods directory derived from where the daemon's pod sits;
//! - `cgroup_layout`: how kubelet names pods' cgroups (both drivers, with
//!   or without a cgroup root), for the attach root and the exemptions;
//! - `counters`: the kernel counters, for `status` and `/metrics`.
mod cgroup;
mod cgroup_layout;
mod counters;
mod load;
mod maps;
mod pins;
mod shared;
mod support;

pub use cgroup::{cgroup_id, derive_kubepods, own_cgroup, own_cgroup_candidates};
pub use cgroup_layout::{Kubepods, Layout, Qos};
pub use counters::{PinnedCounters, read_counters};
pub use load::{DEBUG_MAP_MAX_ENV, HookSettings, LoadedHooks, parse_debug_map_max};
pub use maps::{
    BypassTries, ExemptCgroups, KernelBypass, KernelExemptCgroups, KernelSwitches, Switches,
    bypass_diff, port_diff, read_bypass, read_exempt_cgroups, read_redirect_config,
    read_refused_udp_ports,
};
pub use pins::{PinDir, detach};
pub use support::{KernelSupportError, check_cgroup2, check_kernel};

/// The programs, by their names in the kernel crate.
/// The `cgroup/*` sock_addr programs: TCP connects, UDP connects and sends.
const CONNECT_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// The `cgroup/sock_create` program: stream protocols other than TCP.
const SOCK_CREATE_PROGRAM: &str = "sock_create";
const SOCK_OPS_PROGRAM: &str = "rekey_client";
/// Every program whose link an attached instance pins.
pub const PROGRAMS: [&str; 6] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "sock_create",
    "rekey_client",
];
