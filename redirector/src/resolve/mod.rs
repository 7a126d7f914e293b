//! Resolve: the addresses a `noProxy` name has, from the node's resolver,
//! so that a name rule sends a connection direct only to one of them (the
//! check itself is `NameRule` in `policy`, which depends on this module).
//!
//! Why verify rather than dial the name: the pod keeps its choice among the
//! name's addresses (pinned A records, happy eyeballs, IPv4 or IPv6); an
//! honest pod, whose resolver agrees with the node's (the cluster DNS
//! forwards to the node's `resolv.conf` by default, and the DaemonSet's
//! `dnsPolicy: ClusterFirstWithHostNet` gives the daemon the cluster DNS
//! itself), sees no change; and a mismatch is never a failure, it costs the
//! proxy hop. Dialing by name would silently send traffic to an address the
//! application did not choose, and make the node's resolver a hard
//! dependency of every direct connection.
//!
//! A lookup is bounded in time (`--resolve-timeout`; no answer means the
//! proxy), its answer is cached within its TTL (capped, see [`CacheLimits`]),
//! and connections that need the same name at once wait on one lookup.
//! Names are looked up as written (fully qualified: no search domains) and
//! the hosts file is not read: a pod's names come from the cluster DNS,
//! which never sees the node's `/etc/hosts`.
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
};
use thiserror::Error;
use tokio::{sync::watch, time::Instant};

/// Where the node's name servers are listed, unless `--resolv-conf` says.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long a connection waits for a name's addresses, unless
/// `--resolve-timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the resolver could not be set up.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("--resolv-conf {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--resolv-conf {path}: {message} (noProxy name rules are verified with the name \
         servers listed there: give a file with at least one `nameserver` line)"
    )]
    Parse { path: PathBuf, message: String },
}

/// What the resolver said about a name. Cheap to clone: one answer is
/// shared by every connection that waited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its A and AAAA addresses; empty when it has none or does not exist.
    Addresses(Arc<[IpAddr]>),
    /// No answer, and why (timed out, server failure, not a DNS name).
    Failed(Arc<str>),
}

impl Resolution {
    fn failed(why: impl fmt::Display) -> Self {
        Resolution::Failed(why.to_string().into())
    }
}

/// One answer from the name servers and how long it may be reused.
#[derive(Debug, Clone)]
pub struct Answer {
    pub resolution: Resolution,
    /// The answer's TTL: the records' smallest, or the negative TTL of an
    /// answer without addresses; `None` when the server gave none.
    pub ttl: Option<Duration>,
}

/// Where lookups go: the name servers of a `resolv.conf` ([`DnsLookup`]),
/// or a table in tests.
pub trait Lookup: Send + Sync + 'static {
    /// A and AAAA of `name` (lowercase, no trailing dot).
    fn lookup(&self, name: &str) -> Pin<Box<dyn Future<Output = Answer> + Send>>;
}

/// Bounds on the cache, so that neither a long TTL nor a pod that names
/// endless subdomains of a `noProxy` domain can grow it or keep it stale.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Longest an answer with addresses is reused: the Kubernetes default
    /// Corefile caches 30 s, and staying fresher than the pods' own DNS
    /// avoids needless mismatches when addresses move.
    pub max_ttl: Duration,
    /// Longest "no such name" or "no address" is reused (and how long when
    /// the server gave no negative TTL).
    pub max_negative_ttl: Duration,
    /// How long a failed lookup (timeout, server failure) is reused, so
    /// that while the name servers are down each connection does not wait
    /// `--resolve-timeout` before going through the proxy.
    pub failure_ttl: Duration,
    /// Most names remembered; when full, expired entries go first, then any.
    pub max_names: usize,
    /// Most lookups under way at once; past it a name is not looked up
    /// (its connection goes through the proxy).
    pub max_in_flight: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(30),
            max_negative_ttl: Duration::from_secs(10),
            failure_ttl: Duration::from_secs(5),
            max_names: 10_000,
            max_in_flight: 256,
        }
    }
}

impl CacheLimits {
    /// How long `answer` may be reused.
    fn keep(&self, answer: &Answer) -> Duration {
        match &answer.resolution {
            Resolution::Addresses(a) if !a.is_empty() => {
                answer.ttl.unwrap_or(Duration::ZERO).min(self.max_ttl)
            }
            Resolution::Addresses(_) => answer
                .ttl
                .unwrap_or(self.max_negative_ttl)
                .min(self.max_negative_ttl),
            Resolution::Failed(_) => self.failure_ttl,
        }
    }
}

/// Names' addresses, cached and with one lookup per name in flight.
/// Clones share the cache.
#[derive(Clone)]
pub struct NameResolver {
    inner: Arc<Inner>,
}

struct Inner {
    lookup: Box<dyn Lookup>,
    timeout: Duration,
    limits: CacheLimits,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    names: HashMap<Arc<str>, Slot>,
    in_flight: usize,
}

enum Slot {
    Ready {
        resolution: Resolution,
        expires: Instant,
    },
    /// A lookup is under way; its answer arrives here.
    Pending(watch::Receiver<Option<Resolution>>),
}

impl fmt::Debug for NameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameResolver")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl NameResolver {
    /// Looks names up through `lookup`, waiting at most `timeout` for each.
    pub fn new(lookup: impl Lookup, timeout: Duration, limits: CacheLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                lookup: Box::new(lookup),
                timeout,
                limits,
                cache: Mutex::new(Cache::default()),
            }),
        }
    }

    /// The node's resolver: the name servers of `resolv_conf`.
    pub fn from_resolv_conf(resolv_conf: &Path, timeout: Duration) -> Result<Self, ResolveError> {
        let lookup = DnsLookup::from_resolv_conf(resolv_conf, timeout)?;
        Ok(Self::new(lookup, timeout, CacheLimits::default()))
    }

    /// How long a lookup may take.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `name`'s addresses: from the cache while its TTL lasts, else from
    /// the lookup already under way for it, else from a new one. Returns
    /// within the timeout.
    pub async fn resolve(&self, name: &str) -> Resolution {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Err(why) = check_name(&name) {
            return Resolution::failed(why);
        }
        let mut answer = match self.slot_for(name) {
            Next::Ready(resolution) => return resolution,
            Next::Wait(answer) => answer,
            Next::Start(answer, lookup) => {
                // A task of its own: the lookup completes (and is cached)
                // even if the connection that started it goes away.
                tokio::spawn(lookup.run());
                answer
            }
        };
        match answer.wait_for(Option::is_some).await {
            Ok(resolution) => (*resolution)
                .clone()
                .unwrap_or_else(|| Resolution::failed("no answer")),
            Err(_) => Resolution::failed("the lookup was abandoned"),
        }
    }

    /// The cached answer, or the lookup under way, or a new lookup to start.
    fn slot_for(&self, name: String) -> Next {
        let now = Instant::now();
        let limits = &self.inner.limits;
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.names.get(name.as_str()) {
            Some(Slot::Ready {
                resolution,
                expires,
            }) if *expires > now => return Next::Ready(resolution.clone()),
            Some(Slot::Pending(rx)) => return Next::Wait(rx.clone()),
            _ => {}
        }
        if cache.in_flight >= limits.max_in_flight {
            return Next::Ready(Resolution::failed(format!(
                "{} lookups already under way",
                limits.max_in_flight
            )));
        }
        if cache.names.len() >= limits.max_names {
            cache.make_room(now, limits.max_names);
        }
        let (tx, rx) = watch::channel(None);
        let name: Arc<str> = name.into();
        cache.names.insert(name.clone(), Slot::Pending(rx.clone()));
        cache.in_flight += 1;
        let lookup = InFlight {
            inner: self.inner.clone(),
            name,
            tx,
        };
        Next::Start(rx, lookup)
    }
}

/// What [`NameResolver::slot_for`] found.
enum Next {
    Ready(Resolution),
    Wait(watch::Receiver<Option<Resolution>>),
    /// No answer and none under way: run this lookup, the answer comes here.
    Start(watch::Receiver<Option<Resolution>>, InFlight),
}

impl Cache {
    /// Drops expired answers, then any answer, until there is room for one
    /// more name. Lookups under way stay (they are bounded on their own).
    fn make_room(&mut self, now: Instant, max: usize) {
        self.names
            .retain(|_, slot| !matches!(slot, Slot::Ready { expires, .. } if *expires <= now));
        while self.names.len() >= max {
            let Some(victim) = self
                .names
                .iter()
                .find(|(_, slot)| matches!(slot, Slot::Ready { .. }))
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            self.names.remove(&victim);
        }
    }
}

/// One lookup under way. Dropped without an answer (the runtime shutting
/// down), it still frees its place, so the name can be looked up again.
struct InFlight {
    inner: Arc<Inner>,
    name: Arc<str>,
    tx: watch::Sender<Option<Resolution>>,
}

impl InFlight {
    async fn run(self) {
        let timeout = self.inner.timeout;
        let answer = match tokio::time::timeout(timeout, self.inner.lookup.lookup(&self.name)).await
        {
            Ok(answer) => answer,
            Err(_) => Answer {
                resolution: Resolution::failed(format!("no answer within {timeout:?}")),
                ttl: None,
            },
        };
        let expires = Instant::now() + self.inner.limits.keep(&answer);
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.names.insert(
            self.name.clone(),
            Slot::Ready {
                resolution: answer.resolution.clone(),
                expires,
            },
        );
        drop(cache);
        let _ = self.tx.send(Some(answer.resolution));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.in_flight -= 1;
        if matches!(cache.names.get(&self.name), Some(Slot::Pending(_))) {
            cache.names.remove(&self.name);
        }
    }
}

/// Whether `name` can be a DNS host name: what a pod writes in SNI or
/// `Host` is sent to the name servers only if so.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("not a DNS name (empty or longer than 253 bytes)");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("not a DNS name (an empty label, or one longer than 63 bytes)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("not a DNS name (a byte other than a letter, digit, `-` or `_`)");
        }
    }
    Ok(())
}

/// Lookups through the name servers of a `resolv.conf`.
pub struct DnsLookup {
    resolver: TokioResolver,
}

impl DnsLookup {
    /// The name servers of `path` (its `options timeout/attempts` give way
    /// to `timeout`: one lookup per type, bounded by it).
    pub fn from_resolv_conf(path: &Path, timeout: Duration) -> Result<Self, ResolveError> {
        let text = std::fs::read(path).map_err(|source| ResolveError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (config, opts) =
            hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|e| {
                ResolveError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                }
            })?;
        Self::new(config, opts, timeout).map_err(|e| ResolveError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// A resolver with `config`'s name servers; our own options win where
    /// they matter (see the module doc).
    pub fn new(
        config: ResolverConfig,
        mut opts: ResolverOpts,
        timeout: Duration,
    ) -> Result<Self, NetError> {
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        // Our cache is the only one: its TTL bounds are the ones documented.
        opts.cache_size = 0;
        // One lookup per type, bounded as a whole by `timeout` (hickory
        // re-sends a UDP query every 333 ms within it, for a lost datagram);
        // no second round after it: a slow answer costs as much as a lost
        // one, the proxy hop, never the connection.
        opts.timeout = timeout;
        opts.attempts = 0;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        Ok(Self {
            resolver: builder.build()?,
        })
    }
}

impl Lookup for DnsLookup {
    fn lookup(&self, name: &str) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        let resolver = self.resolver.clone();
        // Fully qualified: the name as the pod wrote it, no search domains.
        let fqdn = format!("{name}.");
        Box::pin(async move {
            match resolver.lookup_ip(fqdn.as_str()).await {
                Ok(lookup) => Answer {
                    resolution: Resolution::Addresses(lookup.iter().collect()),
                    ttl: Some(
                        lookup
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now()),
                    ),
                },
                Err(e) => answer_for_error(e),
            }
        })
    }
}

/// "No such name" and "no address" are answers (cached by their negative
/// TTL); anything else is a failure.
fn answer_for_error(e: NetError) -> Answer {
    if e.is_no_records_found() {
        let ttl = match &e {
            NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(n)) => n.negative_ttl,
            _ => None,
        };
        return Answer {
            resolution: Resolution::Addresses(Arc::from([])),
            ttl: ttl.map(|s| Duration::from_secs(u64::from(s))),
        };
    }
    Answer {
        resolution: Resolution::failed(e),
        ttl: None,
    }
}

#[cfg(test)]
mod tests;
