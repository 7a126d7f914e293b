//! Hot reload of `--proxy-config`: the daemon polls the file's content
//! (a mounted ConfigMap changes by swapping a symlink, which inotify on the
//! file itself would miss) and reloads on `SIGHUP`. A changed file is
//! parsed and validated like at startup; if it is valid, the kernel bypass
//! tries are brought up to date (new prefixes in first, stale ones out
//! after, so they are never empty) and the policy and proxy TLS settings
//! are swapped for new connections. Established connections keep the
//! snapshot they took when they started. An invalid file is logged and
//! counted, and the previous configuration stays in force.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use tokio::signal::unix::Signal;

use crate::{
    config::{ConfigError, ProxyConfig},
    connection::Shared,
    dial,
    hook::BypassTries,
    policy::{Builtins, Policy},
};

/// How often the file is read and compared.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A value replaced as a whole while readers hold on to the one they took.
/// Clones share the same slot.
pub struct Swappable<T>(Arc<RwLock<Arc<T>>>);

impl<T> Swappable<T> {
    pub fn new(value: impl Into<Arc<T>>) -> Self {
        Self(Arc::new(RwLock::new(value.into())))
    }
    /// The value in force now; later swaps do not change it.
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn store(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

impl<T> Clone for Swappable<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Reload counts, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// New configurations applied.
    pub ok: AtomicU64,
    /// New files refused (invalid, unreadable, or the kernel tries could
    /// not be updated); the previous configuration stayed in force.
    pub failed: AtomicU64,
}

/// A short digest of a configuration file's bytes: the first 12 hex digits
/// of its SHA-256, for logs and `status`.
pub fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and validates the file once, returning it with the digest of the
/// exact bytes that were parsed.
pub fn load(path: &Path) -> Result<(ProxyConfig, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let config = ProxyConfig::parse(&file, &text)?;
    Ok((config, digest(text.as_bytes())))
}

/// Prefixes to insert into and remove from the kernel tries to go from
/// `current` to `wanted`, compared after truncation to their prefix.
pub fn bypass_diff(current: &[IpNet], wanted: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let current: BTreeSet<IpNet> = current.iter().map(IpNet::trunc).collect();
    let wanted: BTreeSet<IpNet> = wanted.iter().map(IpNet::trunc).collect();
    (
        wanted.difference(&current).copied().collect(),
        current.difference(&wanted).copied().collect(),
    )
}

/// What one look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The file's content, by digest.
    Content(String),
    /// The file could not be read; the error's text.
    Unreadable(String),
}

/// Remembers the last thing seen, so each change is acted on once rather
/// than on every poll; a forced look (`SIGHUP`) always acts.
#[derive(Debug)]
pub struct Watch {
    last: Seen,
}

impl Watch {
    /// Starts from the content the daemon loaded at startup.
    pub fn new(loaded_digest: String) -> Self {
        Self {
            last: Seen::Content(loaded_digest),
        }
    }

    /// Records `now` and says whether to act on it.
    pub fn observe(&mut self, now: Seen, forced: bool) -> bool {
        let changed = now != self.last;
        self.last = now;
        changed || forced
    }
}

/// Applies new configurations to a running daemon.
pub struct Reloader {
    /// The `--proxy-config` file.
    pub path: PathBuf,
    /// The built-in bypasses, the same as at startup.
    pub builtins: Builtins,
    /// Where the policy and the proxy TLS settings are swapped.
    pub shared: Arc<Shared>,
    /// The kernel's bypass tries.
    pub bypass: Box<dyn BypassTries>,
    /// Counts of applied and refused reloads.
    pub stats: Arc<ReloadStats>,
    pub watch: Watch,
}

impl Reloader {
    /// Polls the file every [`POLL_INTERVAL`] and reloads on `SIGHUP`, forever.
    pub async fn run(mut self, mut hangup: Signal) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hangup.recv() => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: reloading the configuration");
                    true
                }
            };
            self.poll(forced);
        }
    }

    /// One look at the file: applies it if it changed (or if `forced`).
    pub fn poll(&mut self, forced: bool) {
        let file = self.path.display().to_string();
        let read = std::fs::read_to_string(&self.path);
        let seen = match &read {
            Ok(text) => Seen::Content(digest(text.as_bytes())),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        if !self.watch.observe(seen.clone(), forced) {
            return;
        }
        let result = match read {
            Ok(text) => self.apply(&file, &text),
            Err(source) => Err(ConfigError::Read { file, source }.to_string()),
        };
        match result {
            Ok(()) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    "config reload failed; the previous configuration stays in force"
                );
            }
        }
    }

    fn apply(&self, file: &str, text: &str) -> Result<(), String> {
        let config = ProxyConfig::parse(file, text).map_err(|e| e.to_string())?;
        let tls = dial::proxy_tls_config(&config.trusted_ca)
            .map_err(|e| format!("{file}: field `trustedCA`: {e:#}"))?;
        let policy = Policy::new(config, &self.builtins);
        let (added, removed) = self
            .bypass
            .sync(&policy.kernel_bypass())
            .map_err(|e| format!("updating the kernel bypass tries: {e:#}"))?;
        let config = policy.config();
        tracing::info!(
            file,
            digest = %digest(text.as_bytes()),
            https_proxy = ?config.https_proxy,
            http_proxy = ?config.http_proxy,
            no_proxy_rules = config.no_proxy.rules().len(),
            trusted_ca_certs = config.trusted_ca.len(),
            fail_mode = %config.fail_mode,
            allow_pod_opt_out = config.allow_pod_opt_out,
            bypass_added = ?added,
            bypass_removed = ?removed,
            "config reloaded"
        );
        self.shared.dialer.tls.store(tls);
        self.shared.policy.store(Arc::new(policy));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Mutex, time::Duration};

    use crate::{
        classify::{PeekLimits, Protocol},
        dial::Dialer,
        lookup::OriginalDst,
        policy::{Decision, Target},
    };

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn bypass_diff_adds_new_and_removes_stale() {
        let current = nets(&["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"]);
        let wanted = nets(&["10.0.0.0/8", "127.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]);
        let (add, remove) = bypass_diff(&current, &wanted);
        assert_eq!(add, nets(&["192.0.2.0/24", "2001:db8::/32"]));
        assert_eq!(remove, nets(&["fd00::/8"]));
    }

    #[test]
    fn bypass_diff_compares_truncated_prefixes() {
        // 10.1.2.3/8 is 10.0.0.0/8: nothing to do, and no duplicates.
        let (add, remove) =
            bypass_diff(&nets(&["10.0.0.0/8"]), &nets(&["10.1.2.3/8", "10.0.0.0/8"]));
        assert!(add.is_empty() && remove.is_empty(), "{add:?} {remove:?}");
        let (add, remove) = bypass_diff(&[], &nets(&["10.1.2.3/8", "10.0.0.0/8"]));
        assert_eq!(add, nets(&["10.0.0.0/8"]));
        assert!(remove.is_empty());
        let (add, remove) = bypass_diff(&nets(&["10.0.0.0/8"]), &[]);
        assert!(add.is_empty());
        assert_eq!(remove, nets(&["10.0.0.0/8"]));
    }

    #[test]
    fn digest_is_short_sha256() {
        // SHA-256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(digest(b""), "e3b0c44298fc");
        assert_eq!(digest(b"{}").len(), 12);
        assert_ne!(digest(b"{}"), digest(b"{ }"));
    }

    #[test]
    fn watch_acts_once_per_change_and_always_when_forced() {
        let mut w = Watch::new(digest(b"a"));
        let a = || Seen::Content(digest(b"a"));
        let b = || Seen::Content(digest(b"b"));
        let gone = || Seen::Unreadable("No such file or directory".into());
        assert!(!w.observe(a(), false));
        assert!(w.observe(a(), true));
        assert!(w.observe(b(), false));
        assert!(!w.observe(b(), false));
        assert!(w.observe(gone(), false));
        assert!(!w.observe(gone(), false));
        // Back to an earlier content: a change all the same.
        assert!(w.observe(a(), false));
    }

    /// Bypass tries in memory, changed the way the kernel's are.
    #[derive(Default)]
    struct Tries {
        nets: Mutex<Vec<IpNet>>,
        fail: bool,
    }
    impl BypassTries for Tries {
        fn sync(&self, wanted: &[IpNet]) -> anyhow::Result<(Vec<IpNet>, Vec<IpNet>)> {
            if self.fail {
                anyhow::bail!("map full");
            }
            let mut nets = self.nets.lock().unwrap();
            let (add, remove) = bypass_diff(&nets, wanted);
            nets.extend(&add);
            nets.retain(|n| !remove.contains(n));
            Ok((add, remove))
        }
    }

    struct NoDst;
    impl OriginalDst for NoDst {
        fn take(&self, _: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
            None
        }
    }

    fn reloader(dir: &Path, text: &str, tries: Tries) -> Reloader {
        let path = dir.join("proxy.json");
        std::fs::write(&path, text).unwrap();
        let builtins = Builtins {
            loopback: false,
            link_local: false,
            cluster_cidrs: vec![],
        };
        let (config, loaded) = load(&path).unwrap();
        let policy = Policy::new(config, &builtins);
        tries.sync(&policy.kernel_bypass()).unwrap();
        let shared = Arc::new(Shared {
            policy: Swappable::new(policy),
            original_dst: Arc::new(NoDst),
            dialer: Dialer {
                socket_mark: 0,
                timeout: Duration::from_secs(1),
                tls: Swappable::new(dial::proxy_tls_config(&[]).unwrap()),
            },
            peek: PeekLimits::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(None)),
        });
        Reloader {
            path,
            builtins,
            shared,
            bypass: Box::new(tries),
            stats: Arc::default(),
            watch: Watch::new(loaded),
        }
    }

    fn decide(r: &Reloader, host: &str) -> String {
        let d = r.shared.policy.load().decide(&Target {
            ip: Some("192.0.2.1".parse().unwrap()),
            host: Some(host),
            port: 443,
            protocol: Protocol::Tls,
        });
        match d {
            Decision::Direct { .. } => "direct".into(),
            Decision::KernelBypass { .. } => "bypass".into(),
            Decision::Proxy { .. } => "proxy".into(),
        }
    }

    /// Replaces the file the way a ConfigMap update does: a new file renamed
    /// over the old one.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn applies_a_valid_change_and_keeps_the_old_policy_on_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = r#""httpsProxy": "http://10.0.0.4:3128""#;
        let mut r = reloader(dir.path(), &format!("{{{proxy}}}"), Tries::default());
        let before = r.shared.policy.load();
        assert_eq!(decide(&r, "reload.test"), "proxy");

        // Unchanged: nothing happens.
        r.poll(false);
        assert_eq!(r.stats.ok.load(Ordering::Relaxed), 0);

        replace(
            &r.path,
            &format!(r#"{{{proxy}, "noProxy": ["reload.test", "198.51.100.0/24"]}}"#),
        );
        r.poll(false);
        assert_eq!(r.stats.ok.load(Ordering::Relaxed), 1);
        assert_eq!(decide(&r, "reload.test"), "direct");
        // A connection that started before keeps its snapshot.
        assert!(matches!(
            before.decide(&Target {
                ip: None,
                host: Some("reload.test"),
                port: 443,
                protocol: Protocol::Tls
            }),
            Decision::Proxy { .. }
        ));
        let (add, _) = r.bypass.sync(&nets(&["198.51.100.0/24"])).unwrap();
        assert!(add.is_empty(), "the CIDR should be in the tries already");

        // Broken: refused once, counted once, the previous rule stays.
        replace(&r.path, r#"{"noProxy": ["*.*.com"]}"#);
        r.poll(false);
        r.poll(false);
        assert_eq!(r.stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(r.stats.ok.load(Ordering::Relaxed), 1);
        assert_eq!(decide(&r, "reload.test"), "direct");

        // Forced: tried again even though unchanged.
        r.poll(true);
        assert_eq!(r.stats.failed.load(Ordering::Relaxed), 2);

        // Unreadable (removed mid-swap): refused, old policy kept.
        std::fs::remove_file(&r.path).unwrap();
        r.poll(false);
        assert_eq!(r.stats.failed.load(Ordering::Relaxed), 3);
        assert_eq!(decide(&r, "reload.test"), "direct");

        // Back to the first file: applied, and the CIDR leaves the tries.
        replace(&r.path, &format!("{{{proxy}}}"));
        r.poll(false);
        assert_eq!(r.stats.ok.load(Ordering::Relaxed), 2);
        assert_eq!(decide(&r, "reload.test"), "proxy");
        let (add, remove) = r.bypass.sync(&[]).unwrap();
        assert!(add.is_empty() && remove.is_empty(), "{add:?} {remove:?}");
    }

    #[test]
    fn a_kernel_failure_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reloader(dir.path(), "{}", Tries::default());
        r.bypass = Box::new(Tries {
            fail: true,
            ..Tries::default()
        });
        replace(&r.path, r#"{"httpsProxy": "http://10.0.0.4:3128"}"#);
        r.poll(false);
        assert_eq!(r.stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(decide(&r, "x.test"), "direct");
    }
}
