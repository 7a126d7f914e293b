//! Caps on concurrent connections: one for the node, one per pod (client
//! address), so that one pod opening connections without end cannot take
//! every file descriptor the daemon has and starve its neighbours. Over a
//! cap the connection is reset at once, never queued: the client sees a
//! failure it can retry, and the daemon holds nothing for it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
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
    /// Refusals not yet logged, and when the last line was written: one
    /// line per interval, however hard a pod pushes.
    log: Mutex<(usize, Option<Instant>)>,
}

/// How often a refusal is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
            log: Mutex::new((0, None)),
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

    /// Logs a refusal, at most once per [`LOG_EVERY`], with how many were
    /// refused since the last line.
    pub fn log_refusal(&self, refusal: Refusal, client: IpAddr) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.0 += 1;
        let now = Instant::now();
        if log
            .1
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            return;
        }
        let (global_max, per_pod_max) = (self.global_max, self.per_pod_max);
        tracing::warn!(
            reason = refusal.label(), %client, refused = log.0, global_max, per_pod_max,
            "connection limit reached: refusing new connections (counted in \
             redirector_connections_refused_total)"
        );
        *log = (0, Some(now));
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

/// The default node-wide cap: what the open-files limit allows. A proxied
/// connection takes two descriptors, and a busy one borrows a pipe (two
/// more) for a moment; a reserve stays for listeners, the API and pipes.
pub fn default_global_max(open_files: u64) -> usize {
    ((open_files as usize).saturating_sub(1024) / 3).max(64)
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

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let limits = Limits::new(0, 0);
        for _ in 0..5 {
            limits.log_refusal(Refusal::Global, ip("10.0.0.1"));
        }
        // One line written, four refusals waiting for the next one.
        let log = limits.log.lock().unwrap();
        assert_eq!(log.0, 4);
        assert!(log.1.is_some());
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
        assert!(limit.rlim_cur < 1024 + 192 || cap * 3 + 1024 <= limit.rlim_cur as usize);
    }
}
