//! The memory the daemon may use, and how many connections fit in it.
//!
//! Past its memory limit the daemon is OOM-killed, and every pod on the
//! node loses egress with it. So the node-wide connection cap is derived
//! from that limit: what a connection can cost at most, whatever its
//! client and destination do, times the cap, fits in the limit with the
//! daemon's fixed overhead and a headroom.
//!
//! A connection costs userspace memory (measured) and the kernel's socket
//! buffers, which cgroup v2 charges to the daemon too (derived from the
//! queue limits `socket_options` sets: [`ConnectionCost`]). The bulk
//! lanes' wider buffers (`relay::lanes`) are reserved once, at their
//! worst, within an eighth of the limit.
//!
//! The limit is the lower of `--memory-limit` and the daemon's memory
//! cgroup's (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`; the lowest
//! on the way up to the hierarchy's root, as the kernel enforces each),
//! found through `/proc/self/cgroup` and `/proc/self/mountinfo`.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{relay::tls, socket_options::KernelBuffers};

/// What the daemon takes before any connection: code, runtime, the
/// configuration, the API client's caches, and the BPF maps the cgroup is
/// charged for. Measured on the e2e node (x86_64, release build): 19 MiB in
/// the memory cgroup at idle, of which 9 MiB RSS. Also covers the kernel's
/// per-CPU batches of socket charges (up to 256 KiB a CPU).
pub const FIXED_OVERHEAD: u64 = 32 << 20;
/// Idle cost of one connection, the most expensive path: a tunnel through
/// an `https://` proxy (its task, rustls state with a 4 KiB read buffer,
/// two sockets with their kernel objects). Measured in the daemon's memory
/// cgroup on e2e nodes (cgroup v1, kernel objects included, socket
/// buffers not; bounds_memory): 19.8 KiB per tunnel over 400, 22 to 24.3
/// KiB over 158 (a CI machine). A third more than measured, because the
/// figure varies with the machine and the kernel's per-CPU charge batches.
pub const PER_CONNECTION_IDLE: u64 = 32 << 10;
/// The most one connection can cost in userspace: idle, plus what rustls
/// holds for peers that do not read ([`tls::IN_FLIGHT_MAX`]). Measured
/// likewise with both peers of every tunnel stalled: see bounds_memory's
/// output.
pub const PER_CONNECTION_USERSPACE: u64 = PER_CONNECTION_IDLE + tls::IN_FLIGHT_MAX as u64;
/// A relayed connection's sockets: the pod's and the upstream one.
pub const SOCKETS_PER_CONNECTION: u64 = 2;
/// How far the kernel lets one socket queue pass its limit: it checks the
/// limit before taking a packet, not after. A send queue's last packet
/// grows up to the GSO size (64 KiB) while the limit is reached; a receive
/// queue takes one more packet (up to 64 KiB with GSO/GRO) when its limit
/// is reached by out-of-order data alone. 4 KiB more for the packet's own
/// structures and the charge, which is rounded up to pages.
pub const QUEUE_OVERSHOOT: u64 = 68 << 10;
/// Kept free: allocator fragmentation, the splice relay's pipes, bursts of
/// short-lived connections between accept and their first byte.
pub const HEADROOM_DIVISOR: u64 = 8;
/// Bulk lanes take at most this share of the memory limit (an eighth):
/// fewer lanes than asked when they would not fit.
pub const LANES_SHARE_DIVISOR: u64 = 8;
/// Fewer connections than this is no proxy: the limit is a mistake.
pub const MIN_CONNECTIONS: usize = 64;

/// What one connection can cost at most, whatever its peers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCost {
    /// Userspace, with the sockets' kernel objects ([`PER_CONNECTION_USERSPACE`]).
    pub userspace: u64,
    /// Both sockets' queues, each full and past its limit by
    /// [`QUEUE_OVERSHOOT`] (see [`ConnectionCost::socket_buffers`]).
    pub socket_buffers: u64,
    /// Set aside once for all connections: what the bulk lanes' wide
    /// buffers add at their worst ([`ConnectionCost::with_lanes`]).
    pub reserved: u64,
}

impl ConnectionCost {
    /// The cost with sockets whose queues the kernel limits to `buffers`
    /// (`sk_rcvbuf`, `sk_sndbuf`: what `SO_RCVBUF`/`SO_SNDBUF` read back).
    /// The kernel charges a queued packet's true size (data, structures,
    /// slack), and bounds the sum of those by the limit: so the limit, not
    /// the bytes of data, is what a full queue costs.
    pub fn new(buffers: KernelBuffers) -> Self {
        ConnectionCost {
            userspace: PER_CONNECTION_USERSPACE,
            socket_buffers: Self::socket_buffers(buffers),
            reserved: 0,
        }
    }

    /// With `lanes` connections whose sockets may be widened to `wide`
    /// (`relay::lanes`): each lane's extra queues are reserved.
    pub fn with_lanes(self, lanes: usize, wide: KernelBuffers) -> Self {
        ConnectionCost {
            reserved: lanes as u64 * self.lane_extra(wide),
            ..self
        }
    }

    /// What widening a connection's sockets to `wide` adds at its worst.
    fn lane_extra(&self, wide: KernelBuffers) -> u64 {
        Self::socket_buffers(wide).saturating_sub(self.socket_buffers)
    }

    /// Every queue of both sockets full, each past its limit by
    /// [`QUEUE_OVERSHOOT`]: receive and send, towards the pod and the
    /// upstream (a tunnel stalled both ways).
    pub fn socket_buffers(buffers: KernelBuffers) -> u64 {
        SOCKETS_PER_CONNECTION * (buffers.receive + buffers.send + 2 * QUEUE_OVERSHOOT)
    }

    pub fn max(&self) -> u64 {
        self.userspace + self.socket_buffers
    }

    /// How many of `asked` lanes widened to `wide` fit in an eighth of
    /// `limit` ([`LANES_SHARE_DIVISOR`]); all of them without a limit.
    pub fn lanes_that_fit(
        &self,
        limit: Option<&MemoryLimit>,
        asked: usize,
        wide: KernelBuffers,
    ) -> usize {
        let extra = self.lane_extra(wide);
        match limit {
            Some(limit) if extra > 0 => {
                let fit = limit.bytes / LANES_SHARE_DIVISOR / extra;
                asked.min(usize::try_from(fit).unwrap_or(usize::MAX))
            }
            _ => asked,
        }
    }
}

/// A memory limit and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: String,
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB ({})", self.bytes >> 20, self.source)
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error(
        "memory limit {limit} leaves room for fewer than {MIN_CONNECTIONS} connections \
         of {} KiB each at most; the daemon needs at least {needed} MiB: raise the \
         container's memory limit (resources.limits.memory) or --memory-limit, or \
         lower --socket-buffer, --bulk-lanes or --bulk-buffer", .per_connection >> 10
    )]
    TooSmall {
        limit: MemoryLimit,
        needed: u64,
        per_connection: u64,
    },
    #[error("--memory-limit `{0}`: expected bytes, or a number with Ki, Mi or Gi (e.g. 512Mi)")]
    BadQuantity(String),
}

/// How many connections fit in `limit`, each at its most expensive.
pub fn connection_cap(limit: &MemoryLimit, cost: &ConnectionCost) -> Result<usize, BudgetError> {
    let per_connection = cost.max();
    let usable = limit
        .bytes
        .saturating_sub(FIXED_OVERHEAD)
        .saturating_sub(cost.reserved)
        .saturating_sub(limit.bytes / HEADROOM_DIVISOR);
    let cap = usize::try_from(usable / per_connection).unwrap_or(usize::MAX);
    if cap < MIN_CONNECTIONS {
        let needed = (FIXED_OVERHEAD + cost.reserved + MIN_CONNECTIONS as u64 * per_connection)
            * HEADROOM_DIVISOR
            / (HEADROOM_DIVISOR - 1);
        return Err(BudgetError::TooSmall {
            limit: limit.clone(),
            needed: needed.div_ceil(1 << 20),
            per_connection,
        });
    }
    Ok(cap)
}

/// `--memory-limit`: bytes, or with a Kubernetes binary suffix (Ki, Mi, Gi).
pub fn parse_quantity(s: &str) -> Result<u64, BudgetError> {
    let bad = || BudgetError::BadQuantity(s.to_owned());
    let (digits, shift) = match s.trim() {
        t if t.ends_with("Gi") => (&t[..t.len() - 2], 30),
        t if t.ends_with("Mi") => (&t[..t.len() - 2], 20),
        t if t.ends_with("Ki") => (&t[..t.len() - 2], 10),
        t => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).filter(|b| *b > 0).ok_or_else(bad)
}

/// The lowest of `flag` and the limits of the daemon's memory cgroup.
pub fn effective_limit(flag: Option<u64>) -> Option<MemoryLimit> {
    let cgroup = read_file("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = read_file("/proc/self/mountinfo").unwrap_or_default();
    let from_cgroup = cgroup_limit(&cgroup, &mountinfo, &|p| read_file(p));
    let from_flag = flag.map(|bytes| MemoryLimit {
        bytes,
        source: "--memory-limit".into(),
    });
    [from_flag, from_cgroup]
        .into_iter()
        .flatten()
        .min_by_key(|l| l.bytes)
}

fn read_file(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The lowest memory limit over the daemon's cgroups (v2 and v1 memory),
/// given the texts of `/proc/self/cgroup` and `/proc/self/mountinfo` and a
/// way to read a file.
pub fn cgroup_limit(
    proc_cgroup: &str,
    mountinfo: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<MemoryLimit> {
    let mut best: Option<MemoryLimit> = None;
    for mount in cgroup_mounts(mountinfo) {
        let Some(own) = own_cgroup(proc_cgroup, mount.v1_memory) else {
            continue;
        };
        // The mount shows the hierarchy from `root`; our cgroup must be
        // under it to be seen there.
        let Some(rel) = Path::new(own).strip_prefix(&mount.root).ok() else {
            continue;
        };
        let file = if mount.v1_memory {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        let mut dir = mount.point.join(rel);
        loop {
            let path = dir.join(file);
            if let Some(bytes) = read(&path).and_then(|text| parse_limit(&text))
                && best.as_ref().is_none_or(|b| bytes < b.bytes)
            {
                best = Some(MemoryLimit {
                    bytes,
                    source: path.display().to_string(),
                });
            }
            if dir == mount.point || !dir.pop() {
                break;
            }
        }
    }
    best
}

/// A mounted cgroup hierarchy that can hold a memory limit.
struct CgroupMount {
    /// The hierarchy's directory shown at the mount point.
    root: PathBuf,
    point: PathBuf,
    /// A v1 hierarchy with the memory controller (else cgroup2).
    v1_memory: bool,
}

/// cgroup2 mounts and v1 memory mounts, from `/proc/self/mountinfo`:
/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_opts = right.nth(1).unwrap_or("");
            let v1_memory = match fstype {
                "cgroup2" => false,
                "cgroup" if super_opts.split(',').any(|o| o == "memory") => true,
                _ => return None,
            };
            Some(CgroupMount {
                root: PathBuf::from(unescape(left.get(3)?)),
                point: PathBuf::from(unescape(left.get(4)?)),
                v1_memory,
            })
        })
        .collect()
}

/// Our cgroup's path in the v2 hierarchy (`0::PATH`) or the v1 memory one
/// (`N:...memory...:PATH`), from `/proc/self/cgroup`.
fn own_cgroup(proc_cgroup: &str, v1_memory: bool) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if v1_memory {
            controllers.split(',').any(|c| c == "memory")
        } else {
            id == "0" && controllers.is_empty()
        };
        matches.then_some(path)
    })
}

/// A limit file's value: `max` (v2) and v1's page-counter maximum mean none.
fn parse_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < 1 << 62).then_some(n)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MIB: u64 = 1 << 20;

    fn limit(bytes: u64) -> MemoryLimit {
        MemoryLimit {
            bytes,
            source: "test".into(),
        }
    }

    /// A connection's cost with the default `--socket-buffer`, as the
    /// kernel sets it (doubled).
    fn default_cost() -> ConnectionCost {
        let doubled = 2 * crate::socket_options::DEFAULT_BUFFER as u64;
        ConnectionCost::new(KernelBuffers {
            receive: doubled,
            send: doubled,
        })
    }

    #[test]
    fn a_connection_s_sockets_cost_every_queue_full_and_past_its_limit() {
        // SO_RCVBUF = SO_SNDBUF = 32 KiB: the kernel limits each queue to
        // 64 KiB; two sockets, each with a receive and a send queue.
        let sockets = ConnectionCost::socket_buffers(KernelBuffers {
            receive: 64 << 10,
            send: 64 << 10,
        });
        assert_eq!(sockets, (2 * (64 + 64 + 2 * 68)) << 10);
        let cost = ConnectionCost::new(KernelBuffers {
            receive: 64 << 10,
            send: 64 << 10,
        });
        assert_eq!(cost.max(), (32 + 72 + 528) << 10);
        // Bigger buffers, fewer connections; the userspace part is the same.
        let big = ConnectionCost::new(KernelBuffers {
            receive: 256 << 10,
            send: 256 << 10,
        });
        assert_eq!(big.userspace, cost.userspace);
        assert_eq!(
            big.socket_buffers - cost.socket_buffers,
            2 * 2 * (192 << 10)
        );
        let l = limit(512 * MIB);
        assert!(connection_cap(&l, &big).unwrap() < connection_cap(&l, &cost).unwrap());
    }

    #[test]
    fn the_cap_fits_in_the_limit_at_every_connection_s_worst() {
        let cost = default_cost();
        for mib in [96, 128, 512, 4096] {
            let l = limit(mib * MIB);
            let cap = connection_cap(&l, &cost).unwrap() as u64;
            // Every connection at its most expensive, the fixed overhead and
            // the headroom: within the limit, and one more would not be.
            let used = FIXED_OVERHEAD + cap * cost.max() + l.bytes / HEADROOM_DIVISOR;
            assert!(used <= l.bytes, "{mib} MiB: {cap} connections use {used}");
            assert!(
                used + cost.max() > l.bytes,
                "{mib} MiB: {cap} is not the most"
            );
        }
        // The figures of the docs, with the default socket buffers and bulk
        // lanes (`--bulk-buffer 4Mi`, set past the sysctl: 8 MiB queues).
        let wide = KernelBuffers {
            receive: 8 << 20,
            send: 8 << 20,
        };
        let asked = crate::relay::lanes::DEFAULT_LANES;
        let figures: Vec<(u64, usize, usize)> = [512, 1024, 2048]
            .into_iter()
            .map(|mib| {
                let l = limit(mib * MIB);
                let lanes = cost.lanes_that_fit(Some(&l), asked, wide);
                let cap = connection_cap(&l, &cost.with_lanes(lanes, wide)).unwrap();
                (mib, lanes, cap)
            })
            .collect();
        assert_eq!(
            figures, DOCUMENTED_CAPS,
            "update the figures in docs/deploy.md, docs/configuration.md and the DaemonSet"
        );
    }

    /// (MiB, bulk lanes, node cap): docs/deploy.md's table, also in
    /// docs/configuration.md and deploy/base/daemonset.yaml.
    const DOCUMENTED_CAPS: [(u64, usize, usize); 3] =
        [(512, 2, 571), (1024, 2, 1297), (2048, 2, 2748)];

    #[test]
    fn bulk_lanes_are_reserved_at_their_worst_and_fit_in_an_eighth() {
        let cost = default_cost();
        let wide = KernelBuffers {
            receive: 8 << 20,
            send: 8 << 20,
        };
        let extra = ConnectionCost::socket_buffers(wide) - cost.socket_buffers;
        let with = cost.with_lanes(2, wide);
        assert_eq!(with.reserved, 2 * extra);
        assert_eq!(with.max(), cost.max(), "a lane is not per connection");
        for mib in [256, 512, 4096] {
            let l = limit(mib * MIB);
            let cap = connection_cap(&l, &with).unwrap() as u64;
            let used =
                FIXED_OVERHEAD + with.reserved + cap * with.max() + l.bytes / HEADROOM_DIVISOR;
            assert!(used <= l.bytes && used + with.max() > l.bytes, "{mib} MiB");
            assert!(cap < connection_cap(&l, &cost).unwrap() as u64);
        }
        // An eighth of the limit: 128 MiB holds no 32 MiB lane, 256 MiB one.
        assert_eq!(cost.lanes_that_fit(Some(&limit(128 * MIB)), 2, wide), 0);
        assert_eq!(cost.lanes_that_fit(Some(&limit(256 * MIB)), 2, wide), 1);
        assert_eq!(cost.lanes_that_fit(Some(&limit(64 << 30)), 2, wide), 2);
        assert_eq!(cost.lanes_that_fit(None, 2, wide), 2);
    }

    #[test]
    fn a_limit_too_small_for_a_proxy_is_refused_with_what_it_needs() {
        let cost = default_cost();
        let err = connection_cap(&limit(32 * MIB), &cost).unwrap_err();
        let BudgetError::TooSmall { needed, .. } = err.clone() else {
            panic!("{err}")
        };
        assert!(connection_cap(&limit(needed * MIB), &cost).unwrap() >= MIN_CONNECTIONS);
        assert!(connection_cap(&limit((needed - 1) * MIB), &cost).is_err());
        assert!(err.to_string().contains("resources.limits.memory"));
        assert!(err.to_string().contains("--socket-buffer"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi").unwrap(), 512 * MIB);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_quantity("64Ki").unwrap(), 64 << 10);
        assert_eq!(parse_quantity("100000000").unwrap(), 100_000_000);
        for bad in ["", "12MB", "-1", "0", "Mi", "99999999999Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    fn fs(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| files.get(p).cloned()
    }

    #[test]
    fn cgroup_v2_in_a_container_namespace() {
        // A container with its own cgroup namespace: it is the root it sees.
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n\
                         31 25 0:26 /../.. /host/sys/fs/cgroup ro - cgroup2 cgroup rw\n";
        let read = fs(&[("/sys/fs/cgroup/memory.max", "536870912\n")]);
        let l = cgroup_limit("0::/\n", mountinfo, &read).unwrap();
        assert_eq!(l.bytes, 512 * MIB);
        assert_eq!(l.source, "/sys/fs/cgroup/memory.max");
    }

    #[test]
    fn cgroup_v2_the_lowest_ancestor_wins_and_max_is_none() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let read = fs(&[
            ("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n"),
            ("/sys/fs/cgroup/kubepods/pod1/memory.max", "268435456\n"),
            ("/sys/fs/cgroup/kubepods/memory.max", "1073741824\n"),
        ]);
        let l = cgroup_limit("0::/kubepods/pod1/c1\n", mountinfo, &read).unwrap();
        assert_eq!(l.bytes, 256 * MIB);
        assert!(l.source.ends_with("pod1/memory.max"), "{}", l.source);
        let unlimited = fs(&[("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n")]);
        assert_eq!(
            cgroup_limit("0::/kubepods/pod1/c1\n", mountinfo, &unlimited),
            None
        );
    }

    #[test]
    fn cgroup_v1_memory_in_a_hybrid_hierarchy() {
        // This machine's layout: v2 at /sys/fs/cgroup/unified without
        // controllers, the memory controller on v1.
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                         32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let proc_cgroup =
            "8:pids:/\n4:memory:/a/rde-bounds\n1:cpu:/\n0::/rde-e2e/system/redirector\n";
        let read = fs(&[
            (
                "/sys/fs/cgroup/memory/a/rde-bounds/memory.limit_in_bytes",
                "100663296\n",
            ),
            (
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        let l = cgroup_limit(proc_cgroup, mountinfo, &read).unwrap();
        assert_eq!(l.bytes, 96 * MIB);
        assert_eq!(
            l.source,
            "/sys/fs/cgroup/memory/a/rde-bounds/memory.limit_in_bytes"
        );
        // Unlimited everywhere: no limit.
        let read = fs(&[(
            "/sys/fs/cgroup/memory/a/rde-bounds/memory.limit_in_bytes",
            "9223372036854771712\n",
        )]);
        assert_eq!(cgroup_limit(proc_cgroup, mountinfo, &read), None);
    }

    #[test]
    fn mount_points_with_escapes() {
        let mounts = cgroup_mounts("1 2 0:3 / /odd\\040dir rw - cgroup2 none rw\n");
        assert_eq!(mounts[0].point, PathBuf::from("/odd dir"));
    }

    #[test]
    fn this_process_s_limit_can_be_read() {
        // Whatever this machine has, reading it does not fail, and a flag
        // lower than any cgroup limit wins.
        let l = effective_limit(Some(64 * MIB)).unwrap();
        assert_eq!(l.bytes, 64 * MIB);
        assert_eq!(l.source, "--memory-limit");
    }
}
