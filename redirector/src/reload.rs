//! Hot reload of `--proxy-config`: the daemon polls the file's content
//! (a mounted ConfigMap changes by swapping a symlink, which inotify on the
//! file itself would miss) and reloads on `SIGHUP`. A changed file is
//! parsed and validated like at startup; if it is valid, the configuration's
//! sources of the kernel's bypass set (`bypass`: built-in, `--cluster-cidr`,
//! `serviceCidrs`, `noProxy`; the others are left as they are) and the
//! refused UDP ports are brought up to date (new entries in
//! first, stale ones out after, so they are never empty), the kernel's
//! flags rewritten (`allowOtherStreamProtocols`), and the policy (with all
//! of the configuration, `serverFirstPorts` included) and proxy TLS
//! settings are swapped for new connections. Established connections keep the
//! snapshot they took when they started; the exemption settings
//! (`allowPodOptOut`, `exemptNamespaces`, `exemptHostNetworkPods`) are
//! read from the swapped policy on the watcher's next pass, and the
//! upstream proxies' addresses looked up again. An invalid file is logged
//! and counted, and the previous configuration stays in force.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{signal::unix::Signal, sync::Notify};

use crate::{
    bypass::{BypassSet, from_config},
    config::{ConfigError, ProxyConfig, digest},
    dial,
    hook::Switches,
    metrics::{Metrics, ReloadResult},
    policy::{Builtins, Policy},
    swappable::Swappable,
};

/// How often the file is read and compared.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

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
    /// The policy in force, swapped for new connections.
    pub policy: Swappable<Policy>,
    /// The proxy TLS settings in force (`trustedCA`), swapped likewise.
    pub tls: Swappable<rustls::ClientConfig>,
    /// The kernel's bypass set, whose configuration sources a reload
    /// replaces.
    pub bypass: Arc<BypassSet>,
    /// Notified after each applied reload: the proxies' addresses are
    /// looked up again.
    pub reloaded: Arc<Notify>,
    /// The kernel's refused UDP ports and flags.
    pub switches: Box<dyn Switches>,
    /// Where applied and refused reloads are counted.
    pub metrics: Arc<Metrics>,
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
            Err(error) => Err(ConfigError::Read { file, error }.to_string()),
        };
        match result {
            Ok(()) => self.metrics.record_reload(ReloadResult::Ok),
            Err(error) => {
                self.metrics.record_reload(ReloadResult::Failed);
                tracing::error!(
                    %error,
                    "config reload failed; the previous configuration stays in force"
                );
            }
        }
    }

    fn apply(&self, file: &str, text: &str) -> Result<(), String> {
        let config = ProxyConfig::parse(file, text).map_err(|e| e.to_string())?;
        let tls = dial::proxy_tls_config(&config.all_trusted_ca())
            .map_err(|e| format!("{file}: field `trustedCA`: {e:#}"))?;
        let policy = Policy::new(config, &self.builtins);
        let bypass = self
            .bypass
            .update("config reload", |s| {
                from_config::apply(s, policy.config(), &self.builtins)
            })
            .map_err(|e| format!("{e:#}"))?;
        let config = policy.config();
        let (udp_added, udp_removed) = self
            .switches
            .sync_udp_ports(&config.refuse_udp_ports)
            .map_err(|e| format!("updating the kernel's refused UDP ports: {e:#}"))?;
        self.switches
            .set_allow_other_streams(config.allow_other_stream_protocols)
            .map_err(|e| format!("updating the kernel's flags: {e:#}"))?;
        tracing::info!(
            file,
            digest = %digest(text.as_bytes()),
            https_proxy = ?config.https_proxy,
            http_proxy = ?config.http_proxy,
            no_proxy_rules = config.no_proxy.rules().len(),
            trusted_ca_certs = config.trusted_ca.len(),
            fail_mode = %config.fail_mode,
            allow_pod_opt_out = config.allow_pod_opt_out,
            refuse_udp_ports = ?config.refuse_udp_ports,
            allow_other_stream_protocols = config.allow_other_stream_protocols,
            exempt_namespaces = ?config.exempt_namespaces,
            exempt_host_network_pods = config.exempt_host_network_pods,
            service_cidrs = ?config.service_cidrs,
            server_first_ports = ?config.server_first_ports,
            bypass_added = ?bypass.added,
            bypass_removed = ?bypass.removed,
            udp_ports_added = ?udp_added,
            udp_ports_removed = ?udp_removed,
            "config reloaded"
        );
        self.tls.store(tls);
        self.policy.store(Arc::new(policy));
        self.reloaded.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, sync::Mutex};

    use crate::{
        bypass::{Sources, fake::FakeTries},
        classify::Protocol,
        hook::port_diff,
        policy::{Decision, Target, Verdict},
        resolve::Resolution,
    };

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

    /// The refused UDP ports and the flag in memory, shared with the test
    /// (the reloader owns its box).
    #[derive(Default, Clone)]
    struct SwitchState(Arc<Mutex<(Vec<u16>, bool, bool)>>);
    impl SwitchState {
        fn ports(&self) -> Vec<u16> {
            let mut ports = self.0.lock().unwrap().0.clone();
            ports.sort_unstable();
            ports
        }
        fn allow_other_streams(&self) -> bool {
            self.0.lock().unwrap().1
        }
        fn fail(&self) {
            self.0.lock().unwrap().2 = true;
        }
    }
    impl Switches for SwitchState {
        fn sync_udp_ports(&self, wanted: &[u16]) -> anyhow::Result<(Vec<u16>, Vec<u16>)> {
            let mut state = self.0.lock().unwrap();
            if state.2 {
                anyhow::bail!("map gone");
            }
            let (add, remove) = port_diff(&state.0, wanted);
            state.0.extend(&add);
            state.0.retain(|p| !remove.contains(p));
            Ok((add, remove))
        }
        fn set_allow_other_streams(&self, allow: bool) -> anyhow::Result<bool> {
            let mut state = self.0.lock().unwrap();
            let changed = state.1 != allow;
            state.1 = allow;
            Ok(changed)
        }
    }

    fn reloader(dir: &Path, text: &str, tries: FakeTries) -> Reloader {
        let path = dir.join("proxy.json");
        std::fs::write(&path, text).unwrap();
        let builtins = Builtins {
            loopback: false,
            link_local: false,
            cluster_cidrs: vec![],
        };
        let (config, loaded) = ProxyConfig::load_with_digest(&path).unwrap();
        let policy = Policy::new(config, &builtins);
        let mut sources = Sources::default();
        from_config::apply(&mut sources, policy.config(), &builtins);
        let bypass = BypassSet::new(Box::new(tries), sources, None).unwrap();
        let switches = SwitchState::default();
        switches
            .sync_udp_ports(&policy.config().refuse_udp_ports)
            .unwrap();
        Reloader {
            path,
            builtins,
            policy: Swappable::new(policy),
            tls: Swappable::new(dial::proxy_tls_config(&[]).unwrap()),
            bypass: Arc::new(bypass),
            reloaded: Arc::new(Notify::new()),
            switches: Box::new(switches),
            metrics: Arc::new(Metrics::new(None)),
            watch: Watch::new(loaded),
        }
    }

    /// `redirector_config_reloads_total{result}` as scraped.
    fn reloads(r: &Reloader, result: &str) -> u64 {
        let series = format!("redirector_config_reloads_total{{result=\"{result}\"}} ");
        let text = r.metrics.encode();
        let value = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
        value
            .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// The decision for `host` at 192.0.2.1, one of its addresses.
    fn decide(r: &Reloader, host: &str) -> String {
        let (d, _) = r
            .policy
            .load()
            .decide(&Target {
                ip: Some("192.0.2.1".parse().unwrap()),
                host: Some(host),
                port: 443,
                protocol: Protocol::Tls,
            })
            .decide_with(|_| Resolution::Addresses(["192.0.2.1".parse().unwrap()].into()));
        d.kind().into()
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
        let tries = FakeTries::default();
        let mut r = reloader(dir.path(), &format!("{{{proxy}}}"), tries.clone());
        let before = r.policy.load();
        assert_eq!(decide(&r, "reload.test"), "proxy");

        // Unchanged: nothing happens.
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 0);

        replace(
            &r.path,
            &format!(r#"{{{proxy}, "noProxy": ["reload.test", "198.51.100.0/24"]}}"#),
        );
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 1);
        assert_eq!(decide(&r, "reload.test"), "direct");
        // A connection that started before keeps its snapshot.
        assert!(matches!(
            before.decide(&Target {
                ip: None,
                host: Some("reload.test"),
                port: 443,
                protocol: Protocol::Tls
            }),
            Verdict::Final(Decision::Proxy { .. })
        ));
        assert_eq!(tries.nets(), ["198.51.100.0/24"], "the CIDR in the tries");

        // Broken: refused once, counted once, the previous rule stays.
        replace(&r.path, r#"{"noProxy": ["*.*.com"]}"#);
        r.poll(false);
        r.poll(false);
        assert_eq!(reloads(&r, "failed"), 1);
        assert_eq!(reloads(&r, "ok"), 1);
        assert_eq!(decide(&r, "reload.test"), "direct");

        // Forced: tried again even though unchanged.
        r.poll(true);
        assert_eq!(reloads(&r, "failed"), 2);

        // Unreadable (removed mid-swap): refused, old policy kept.
        std::fs::remove_file(&r.path).unwrap();
        r.poll(false);
        assert_eq!(reloads(&r, "failed"), 3);
        assert_eq!(decide(&r, "reload.test"), "direct");

        // Back to the first file: applied, and the CIDR leaves the tries.
        replace(&r.path, &format!("{{{proxy}}}"));
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 2);
        assert_eq!(decide(&r, "reload.test"), "proxy");
        assert!(tries.nets().is_empty(), "{:?}", tries.nets());
    }

    /// `serviceCidrs` reach the kernel and leave it again; sources other
    /// than the configuration's (here the pod CIDRs) are left alone.
    #[test]
    fn service_cidrs_follow_the_file_and_other_sources_stay() {
        use crate::bypass::{Entry, Source};
        let dir = tempfile::tempdir().unwrap();
        let tries = FakeTries::default();
        let mut r = reloader(dir.path(), "{}", tries.clone());
        r.bypass
            .update("test", |s| {
                s.set(
                    Source::PodCidrs,
                    vec![Entry::new("10.250.0.0/24".parse().unwrap(), "node n2")],
                )
            })
            .unwrap();
        replace(&r.path, r#"{"serviceCidrs": ["10.96.0.0/12"]}"#);
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 1);
        assert_eq!(tries.nets(), ["10.250.0.0/24", "10.96.0.0/12"]);
        replace(&r.path, "{}");
        r.poll(false);
        assert_eq!(tries.nets(), ["10.250.0.0/24"]);
    }

    /// A reloader whose switches the test can look at.
    fn reloader_with_switches(dir: &Path, text: &str) -> (Reloader, SwitchState) {
        let mut r = reloader(dir, text, FakeTries::default());
        let switches = SwitchState::default();
        let config = ProxyConfig::load(&r.path).unwrap();
        switches.sync_udp_ports(&config.refuse_udp_ports).unwrap();
        r.switches = Box::new(switches.clone());
        (r, switches)
    }

    #[test]
    fn refused_udp_ports_and_flags_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, switches) = reloader_with_switches(dir.path(), "{}");
        assert_eq!(switches.ports(), [443], "the default");
        assert!(!switches.allow_other_streams());

        replace(&r.path, r#"{"refuseUdpPorts": [443, 8443]}"#);
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 1);
        assert_eq!(switches.ports(), [443, 8443]);

        replace(
            &r.path,
            r#"{"refuseUdpPorts": [], "allowOtherStreamProtocols": true}"#,
        );
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 2);
        assert!(switches.ports().is_empty(), "[] refuses nothing");
        assert!(switches.allow_other_streams());

        // A bad list is refused whole: the kernel keeps what it had.
        replace(&r.path, r#"{"refuseUdpPorts": [443, 443]}"#);
        r.poll(false);
        assert_eq!(reloads(&r, "failed"), 1);
        assert!(switches.ports().is_empty());
        assert!(switches.allow_other_streams());

        // Keys removed: back to the defaults.
        replace(&r.path, "{}");
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 3);
        assert_eq!(switches.ports(), [443]);
        assert!(!switches.allow_other_streams());
    }

    /// `serverFirstPorts` travels with the policy: new connections see the
    /// new list, one that started before keeps its own.
    #[test]
    fn server_first_ports_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reloader(dir.path(), "{}", FakeTries::default());
        let before = r.policy.load();
        assert!(before.config().is_server_first(22), "the default");
        replace(&r.path, r#"{"serverFirstPorts": [2222]}"#);
        r.poll(false);
        assert_eq!(reloads(&r, "ok"), 1);
        let after = r.policy.load();
        assert!(after.config().is_server_first(2222) && !after.config().is_server_first(22));
        assert!(before.config().is_server_first(22));
        replace(&r.path, r#"{"serverFirstPorts": []}"#);
        r.poll(false);
        assert!(r.policy.load().config().server_first_ports.is_empty());
    }

    #[test]
    fn a_switch_failure_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, switches) = reloader_with_switches(dir.path(), "{}");
        switches.fail();
        replace(&r.path, r#"{"httpsProxy": "http://10.0.0.4:3128"}"#);
        r.poll(false);
        assert_eq!(reloads(&r, "failed"), 1);
        assert_eq!(decide(&r, "x.test"), "direct");
    }

    #[test]
    fn a_kernel_failure_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let full = FakeTries {
            capacity: Some(0),
            ..FakeTries::default()
        };
        let mut r = reloader(dir.path(), "{}", full);
        replace(
            &r.path,
            r#"{"httpsProxy": "http://10.0.0.4:3128", "noProxy": ["10.1.0.0/16"]}"#,
        );
        r.poll(false);
        assert_eq!(reloads(&r, "failed"), 1);
        assert_eq!(decide(&r, "x.test"), "direct");
    }
}
