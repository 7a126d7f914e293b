//! Caps on concurrent connections: one for the node, one per pod (client
//! address), so that one pod opening connections without end cannot take
//! every file descriptor the daemon has and starve its neighbours. Over a
//! cap the connection is reset at once, never queued: the client sees a
//! failure it can retry, and the daemon holds nothing for it.
//!
//! The node-wide cap is what both the open-files limit and the memory limit
//! allow ([`caps`]; `memory_budget`), so that no client can take the daemon
//! past either: past the memory limit it would be OOM-killed, and every
//! pod's egress with it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use thiserror::Error;

use crate::{
    memory_budget::{self, BudgetError, ConnectionCost, MemoryLimit},
    ratelog::{self, RateLog},
};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node-wide cap (`--max-connections`).
    Global,
    /// The per-pod cap (`--max-connections-per-pod`).
    Pod,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Global => "global_limit",
            Refusal::Pod => "pod_limit",
        }
    }
}

/// Counts of open connections, node-wide and per client address.
pub struct Limits {
    global_max: usize,
    per_pod_max: usize,
    active: AtomicUsize,
    per_pod: Mutex<HashMap<IpAddr, usize>>,
}

/// Refusals are logged once per ten seconds at most, however hard a pod
/// pushes, with how many were refused meanwhile.
static REFUSED: RateLog = RateLog::new("connection_limit", 1, Duration::from_secs(10));

/// One admitted connection; dropping it frees its place.
pub struct Permit {
    limits: Arc<Limits>,
    client: IpAddr,
}

impl Limits {
    pub fn new(global_max: usize, per_pod_max: usize) -> Arc<Self> {
        Arc::new(Limits {
            global_max,
            per_pod_max,
            active: AtomicUsize::new(0),
            per_pod: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `client`, or says which cap is full.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Permit, Refusal> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.global_max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Global);
        }
        let mut per_pod = self.per_pod.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_pod.entry(client).or_default();
        if *count >= self.per_pod_max {
            drop(per_pod);
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Pod);
        }
        *count += 1;
        Ok(Permit {
            limits: self.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Logs a refusal, rate-limited (see [`REFUSED`]).
    pub fn log_refusal(&self, refusal: Refusal, client: IpAddr) {
        let (global_max, per_pod_max) = (self.global_max, self.per_pod_max);
        ratelog::warn!(
            REFUSED,
            reason = refusal.label(), %client, global_max, per_pod_max,
            "connection limit reached: refusing new connections (counted in \
             redirector_connections_refused_total)"
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_pod = self
            .limits
            .per_pod
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_pod.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_pod.remove(&self.client);
            }
        }
        drop(per_pod);
        self.limits.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Descriptors kept for all but relayed connections: listeners, the API
/// client, the kernel maps, the splice relay's idle pipes.
const RESERVED_FDS: u64 = 1024;
/// The metrics listener's connection cap. Set here, where descriptors are
/// budgeted, so the data path's cap leaves room for it (the listener in
/// `metrics::server` reads it).
pub const METRICS_MAX_CONNECTIONS: usize = 32;
/// Descriptors for the metrics listener: its connection cap and itself.
const METRICS_FDS: u64 = METRICS_MAX_CONNECTIONS as u64 + 1;
/// A proxied connection takes two descriptors, and a busy one borrows a
/// pipe (two more) for a moment.
const FDS_PER_CONNECTION: u64 = 3;
/// What a connection needs at the least: its two sockets. An explicit
/// `--max-connections` is refused only when these cannot fit (the pipes
/// are borrowed briefly, from a pool); the default keeps the headroom.
const SOCKETS_PER_CONNECTION: u64 = 2;
/// The per-pod cap when not given: at most this, and at most half the
/// node's (rounded up), so that one pod never takes the whole node by
/// default.
pub const DEFAULT_PER_POD_MAX: usize = 4096;

/// The node-wide cap the open-files limit allows.
pub fn default_global_max(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(RESERVED_FDS + METRICS_FDS);
    usize::try_from(usable / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .max(64)
}

/// The caps in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub global: usize,
    pub per_pod: usize,
    /// What the memory limit allows, when there is one.
    pub memory_bound: Option<usize>,
    /// What the open-files limit allows.
    pub fd_bound: usize,
}

#[derive(Debug, Error)]
pub enum CapError {
    #[error(transparent)]
    Memory(#[from] BudgetError),
    #[error(
        "--max-connections {given} does not fit in the memory limit {limit}: at most \
         {allowed} connections do, each at its most expensive; lower --max-connections \
         (or leave it out) or raise the limit"
    )]
    OverMemory {
        given: usize,
        allowed: usize,
        limit: MemoryLimit,
    },
    #[error(
        "--max-connections {given} needs about {needed} file descriptors, but the \
         open-files limit is {open_files}: lower --max-connections (or leave it out) or \
         raise the limit (LimitNOFILE, ulimit -n)"
    )]
    OverFds {
        given: usize,
        needed: u64,
        open_files: u64,
    },
}

/// The caps from the limits and the flags (`--max-connections`,
/// `--max-connections-per-pod`), with each connection costing at most
/// `cost`. A global cap given is checked against both limits; when not
/// given, it is the lower of what each allows.
pub fn caps(
    open_files: u64,
    memory: Option<&MemoryLimit>,
    cost: &ConnectionCost,
    global: Option<usize>,
    per_pod: Option<usize>,
) -> Result<Caps, CapError> {
    let fd_bound = default_global_max(open_files);
    let memory_bound = memory
        .map(|limit| memory_budget::connection_cap(limit, cost))
        .transpose()?;
    let global = match global {
        Some(given) => {
            if let (Some(allowed), Some(limit)) = (memory_bound, memory)
                && given > allowed
            {
                return Err(CapError::OverMemory {
                    given,
                    allowed,
                    limit: limit.clone(),
                });
            }
            let needed = given as u64 * SOCKETS_PER_CONNECTION + RESERVED_FDS + METRICS_FDS;
            if needed > open_files {
                return Err(CapError::OverFds {
                    given,
                    needed,
                    open_files,
                });
            }
            given
        }
        None => memory_bound.map_or(fd_bound, |m| m.min(fd_bound)),
    };
    let per_pod = per_pod.unwrap_or_else(|| DEFAULT_PER_POD_MAX.min(global.div_ceil(2)));
    Ok(Caps {
        global,
        per_pod,
        memory_bound,
        fd_bound,
    })
}

/// The open-files limit (soft and hard).
fn open_files_limit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft open-files limit to the hard one: a node proxy needs
/// far more than the usual soft 1,024. Returns the limit in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = open_files_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_pod_cap_refuses_only_that_pod() {
        let limits = Limits::new(10, 2);
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Refusal::Pod));
        // A neighbour is not affected...
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(limits.active(), 3);
        // ...and a closed connection frees its place.
        drop(a1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.active(), 3);
    }

    #[test]
    fn global_cap_counts_every_pod_and_frees_on_drop() {
        let limits = Limits::new(3, 100);
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "fd00::1"]
            .iter()
            .map(|a| limits.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(limits.admit(ip("10.0.0.9")).err(), Some(Refusal::Global));
        // A refusal takes no place.
        assert_eq!(limits.active(), 3);
        drop(held);
        assert_eq!(limits.active(), 0);
        assert!(limits.per_pod.lock().unwrap().is_empty());
        assert!(limits.admit(ip("10.0.0.9")).is_ok());
    }

    fn cost() -> ConnectionCost {
        crate::socket_options::SocketOptions::default()
            .kernel_buffers()
            .map(ConnectionCost::new)
            .unwrap()
    }

    fn mib(n: u64) -> MemoryLimit {
        MemoryLimit {
            bytes: n << 20,
            source: "test".into(),
        }
    }

    #[test]
    fn caps_are_the_lowest_the_limits_allow() {
        // Plenty of descriptors: the memory limit decides.
        let c = caps(1 << 20, Some(&mib(512)), &cost(), None, None).unwrap();
        assert_eq!(
            c.global,
            memory_budget::connection_cap(&mib(512), &cost()).unwrap()
        );
        assert_eq!(c.memory_bound, Some(c.global));
        // Half of it per pod, so one pod never takes the node by default.
        assert_eq!(c.per_pod, c.global.div_ceil(2));
        let c = caps(1 << 20, Some(&mib(16384)), &cost(), None, None).unwrap();
        assert_eq!(c.per_pod, DEFAULT_PER_POD_MAX);
        // Few descriptors: they decide, with the metrics listener's budget
        // taken off.
        let c = caps(20_000, Some(&mib(16384)), &cost(), None, None).unwrap();
        assert_eq!(c.global, (20_000 - 1024 - 33) / 3);
        // No memory limit: the descriptors alone.
        let c = caps(20_000, None, &cost(), None, None).unwrap();
        assert_eq!((c.global, c.memory_bound), ((20_000 - 1024 - 33) / 3, None));
        // A small node cap halves the default per-pod one; a given one stays.
        let c = caps(1 << 20, Some(&mib(96)), &cost(), None, None).unwrap();
        assert_eq!(c.per_pod, c.global.div_ceil(2));
        let c = caps(1 << 20, Some(&mib(96)), &cost(), None, Some(10)).unwrap();
        assert_eq!(c.per_pod, 10);
    }

    #[test]
    fn a_given_cap_must_fit_in_both_limits() {
        let allowed = memory_budget::connection_cap(&mib(512), &cost()).unwrap();
        assert_eq!(
            caps(1 << 20, Some(&mib(512)), &cost(), Some(allowed), None)
                .unwrap()
                .global,
            allowed
        );
        let err = caps(1 << 20, Some(&mib(512)), &cost(), Some(allowed + 1), None).unwrap_err();
        assert!(matches!(err, CapError::OverMemory { .. }), "{err}");
        assert!(err.to_string().contains("lower --max-connections"), "{err}");
        let err = caps(20_000, None, &cost(), Some(10_000), None).unwrap_err();
        assert!(matches!(err, CapError::OverFds { .. }), "{err}");
        assert!(caps(20_000, None, &cost(), Some(4_000), None).is_ok());
        // A limit too small for any proxy is an error, not a tiny cap.
        assert!(matches!(
            caps(1 << 20, Some(&mib(16)), &cost(), None, None),
            Err(CapError::Memory(_))
        ));
    }

    #[test]
    fn default_cap_follows_the_open_files_limit() {
        let open_files = raise_open_files_limit().unwrap();
        let limit = open_files_limit().unwrap();
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(open_files, limit.rlim_cur);
        // Three descriptors per connection plus the reserve fit in the limit.
        let cap = default_global_max(open_files);
        assert!(cap >= 64);
        assert!(limit.rlim_cur < 1024 + 33 + 192 || cap * 3 + 1024 + 33 <= limit.rlim_cur as usize);
    }
}
