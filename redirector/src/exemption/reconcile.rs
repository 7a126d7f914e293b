//! The mirror of the API objects we need and the reconciler that turns it
//! into the kernel's exempt-cgroup map, applying only the difference.
//!
//! Fails closed: a pod whose cgroup cannot be put in the map (map full, any
//! write error) stays redirected; the failure is logged once, counted, and
//! the write retried on every pass.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use kube::runtime::watcher::Event;

use super::{cgroups, rules};
use crate::{
    hook::{ExemptCgroups, cgroup_id},
    metrics::Metrics,
    readiness::Condition,
};

/// What the reconciler keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`, for logs.
    pub name: String,
    /// Its namespace, to look up the namespace's label.
    pub namespace: String,
    /// The UID kubelet names the pod's cgroup after: `metadata.uid`, or a
    /// mirror pod's `kubernetes.io/config.mirror` (its static pod's UID).
    pub uid: String,
    /// `status.qosClass`, a hint for the cgroup's middle level.
    pub qos: Option<cgroups::Qos>,
    /// Only the annotations the rules read.
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.podIPs`: who the pod is on a connection (`caller`).
    pub addrs: Vec<std::net::IpAddr>,
}

/// Objects of one kind as last listed and watched, by key. A relist fills a
/// side buffer and replaces the current set only when complete (`InitDone`),
/// so a lost or restarted watch never empties it: stale beats empty.
#[derive(Debug)]
pub struct Mirror<T> {
    current: HashMap<String, T>,
    relist: Option<HashMap<String, T>>,
    /// A complete list has been seen at least once.
    synced: bool,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T> Mirror<T> {
    /// Applies one watcher event; `convert` gives an object's key and what
    /// we keep of it (`None`: the object is of no use, e.g. has no UID).
    pub fn handle<K>(&mut self, event: Event<K>, convert: impl Fn(K) -> Option<(String, T)>) {
        match event {
            Event::Apply(obj) => {
                if let Some((key, value)) = convert(obj) {
                    self.current.insert(key, value);
                }
            }
            Event::Delete(obj) => {
                if let Some((key, _)) = convert(obj) {
                    self.current.remove(&key);
                }
            }
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let (Some(buffer), Some((key, value))) = (self.relist.as_mut(), convert(obj)) {
                    buffer.insert(key, value);
                }
            }
            Event::InitDone => {
                if let Some(buffer) = self.relist.take() {
                    self.current = buffer;
                    self.synced = true;
                }
            }
        }
    }

    /// Whether a complete list has been seen: until then, what we have is
    /// not the cluster's state, only part of it.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.current.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.current.values()
    }

    /// Every object, with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.current.iter()
    }
}

/// Everything the decision needs: this node's pods (by UID) and the
/// namespaces' labels (by name, only the label the rules read).
#[derive(Debug, Default)]
pub struct View {
    pub pods: Mirror<PodInfo>,
    pub namespaces: Mirror<BTreeMap<String, String>>,
}

/// Keeps the kernel's exempt-cgroup map equal to the exempt pods' cgroups,
/// plus the static `--exempt-cgroup` entries it never touches.
pub struct Reconciler {
    /// The map we write.
    exempt: Arc<dyn ExemptCgroups>,
    /// Where pods' cgroups are looked up.
    pods: cgroups::PodCgroups,
    /// `--exempt-cgroup` ids: put in the map at load, never removed here.
    static_ids: HashSet<u64>,
    /// Ids we put in the map, with the pod they belong to (for logs).
    applied: HashMap<u64, String>,
    /// The last (exempt pods, exempt cgroups) counts logged.
    last_counts: Option<(usize, usize)>,
    /// Gets the exempt pods gauge and the exempt-map failures.
    metrics: Option<Arc<Metrics>>,
    /// Marked ready once a pass ran (passes run only on complete lists, so
    /// the first one means "API synced").
    synced: Option<Condition>,
    /// The configuration's exemption settings as in force now
    /// (`allowPodOptOut`, `exemptNamespaces`, `exemptHostNetworkPods`;
    /// they change on reload); read on every pass.
    settings: Arc<dyn Fn() -> rules::Settings + Send + Sync>,
    /// The settings the last pass used, to log a change once.
    last_settings: Option<rules::Settings>,
    /// Ids whose exemption could not be written, with their pod: logged on
    /// the first failure and on recovery, not on every retry.
    failing: HashMap<u64, String>,
}

/// The result of one pass, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Pods the rules exempt.
    pub exempt_pods: usize,
    /// Of those, pods whose cgroup is not there (yet).
    pub unresolved: usize,
    /// Ids added to and removed from the map in this pass.
    pub added: usize,
    pub removed: usize,
    /// Exempt pods whose cgroup could not be put in the map: they stay
    /// redirected until a later pass succeeds.
    pub failed: usize,
}

impl Reconciler {
    pub fn new(
        exempt: Arc<dyn ExemptCgroups>,
        pods: impl Into<cgroups::PodCgroups>,
        static_ids: HashSet<u64>,
    ) -> Self {
        Self {
            exempt,
            pods: pods.into(),
            static_ids,
            applied: HashMap::new(),
            last_counts: None,
            metrics: None,
            synced: None,
            settings: Arc::new(rules::Settings::default),
            last_settings: None,
            failing: HashMap::new(),
        }
    }

    /// Reads the exemption settings from `current` on every pass (default:
    /// the configuration's defaults).
    pub fn with_settings(
        mut self,
        current: impl Fn() -> rules::Settings + Send + Sync + 'static,
    ) -> Self {
        self.settings = Arc::new(current);
        self
    }

    /// Reports to `metrics` from the next pass on.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Marks `synced` ready after the first pass.
    pub fn with_readiness(mut self, synced: Condition) -> Self {
        self.synced = Some(synced);
        self
    }

    /// Takes over ids already in the map (an earlier instance's): they stay
    /// until a pass finds them no longer wanted. Static ids stay static.
    pub fn adopt(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if !self.static_ids.contains(&id) {
                self.applied.insert(id, "(earlier instance)".to_string());
            }
        }
    }

    /// The exempt cgroup ids we manage now (static ones excluded).
    #[cfg(test)]
    pub fn applied(&self) -> HashSet<u64> {
        self.applied.keys().copied().collect()
    }

    /// One pass: resolve every exempt pod's cgroup as it is on disk now and
    /// apply the difference to the map. A failed write is retried by the
    /// next pass.
    pub fn reconcile(&mut self, view: &View) -> Pass {
        let mut pass = Pass::default();
        let settings = (self.settings)();
        self.log_settings(&settings);
        let mut write_failures = 0;
        let mut desired: HashMap<u64, (&str, rules::Reason)> = HashMap::new();
        for pod in view.pods.values() {
            let ns_labels = view.namespaces.get(&pod.namespace);
            let facts = rules::Pod {
                namespace: &pod.namespace,
                annotations: Some(&pod.annotations),
                host_network: pod.host_network,
            };
            let Some(reason) = rules::exemption(&facts, ns_labels, &settings) else {
                continue;
            };
            pass.exempt_pods += 1;
            match self
                .pods
                .resolve(&pod.uid, pod.qos)
                .map(|dir| cgroup_id(&dir))
            {
                Some(Ok(id)) => {
                    desired.insert(id, (&pod.name, reason));
                }
                // Not there yet (the usual race with kubelet) or just gone:
                // the next pass looks again.
                Some(Err(_)) | None => pass.unresolved += 1,
            }
        }

        let stale: Vec<u64> = self
            .applied
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            match self.exempt.set(id, false) {
                Ok(()) => {
                    let pod = self.applied.remove(&id).unwrap_or_default();
                    tracing::info!(pod, cgroup_id = id, "pod no longer exempt");
                    pass.removed += 1;
                }
                Err(e) => {
                    write_failures += 1;
                    tracing::warn!(cgroup_id = id, error = %format!("{e:#}"), "cannot un-exempt a cgroup; retrying")
                }
            }
        }
        // Pods no longer wanted, or gone, are no longer failing.
        self.failing.retain(|id, _| desired.contains_key(id));
        for (id, (pod, reason)) in desired {
            if self.applied.contains_key(&id) || self.static_ids.contains(&id) {
                continue;
            }
            match self.exempt.set(id, true) {
                Ok(()) => {
                    if self.failing.remove(&id).is_some() {
                        tracing::info!(pod, cgroup_id = id, %reason, "pod exempt after earlier failures");
                    } else {
                        tracing::info!(pod, cgroup_id = id, %reason, "pod exempt");
                    }
                    self.applied.insert(id, pod.to_string());
                    pass.added += 1;
                }
                Err(e) => {
                    write_failures += 1;
                    pass.failed += 1;
                    if self.failing.insert(id, pod.to_string()).is_none() {
                        tracing::warn!(
                            pod,
                            cgroup_id = id,
                            error = %format!("{e:#}"),
                            "cannot exempt a pod: it stays redirected through the proxy (fail closed); retrying"
                        );
                    }
                }
            }
        }

        if let Some(metrics) = &self.metrics {
            metrics.record_exempt_failures(write_failures, pass.failed);
            metrics.set_exempt_pods(pass.exempt_pods);
        }
        if let Some(synced) = self.synced.take() {
            synced.mark_ready();
        }
        let counts = (pass.exempt_pods, self.applied.len());
        if self.last_counts != Some(counts) {
            self.last_counts = Some(counts);
            tracing::info!(
                exempt_cgroups = counts.1,
                waiting_for_cgroup = pass.unresolved,
                "exempt pods: {}",
                counts.0
            );
        }
        pass
    }

    /// Logs the settings when they differ from the last pass's (and at the
    /// first pass when they are not the defaults).
    fn log_settings(&mut self, settings: &rules::Settings) {
        let last = self.last_settings.as_ref();
        if last == Some(settings) {
            return;
        }
        let defaults = rules::Settings::default();
        let before = last.unwrap_or(&defaults);
        if before.pod_opt_out != settings.pod_opt_out {
            tracing::info!(
                allow_pod_opt_out = settings.pod_opt_out,
                "{}",
                if settings.pod_opt_out {
                    "pod annotations may exempt pods again"
                } else {
                    "pod annotations ignored: only namespace labels and the operator's keys exempt pods"
                }
            );
        }
        if last.is_some()
            && (before.exempt_namespaces != settings.exempt_namespaces
                || before.exempt_host_network != settings.exempt_host_network)
        {
            tracing::info!(
                exempt_namespaces = ?settings.exempt_namespaces,
                exempt_host_network_pods = settings.exempt_host_network,
                "exemption settings changed"
            );
        }
        self.last_settings = Some(settings.clone());
    }
}

/// The kernel map, in memory, for tests.
#[cfg(test)]
pub mod fake {
    use std::{collections::HashSet, sync::Mutex};

    use crate::hook::ExemptCgroups;

    #[derive(Default)]
    pub struct FakeMap {
        pub ids: Mutex<HashSet<u64>>,
        /// Makes every write fail while set.
        pub fail: Mutex<bool>,
        /// Refuses inserts beyond this many entries, as a full kernel map does.
        pub capacity: Option<usize>,
    }

    impl ExemptCgroups for FakeMap {
        fn set(&self, id: u64, exempt: bool) -> anyhow::Result<()> {
            if *self.fail.lock().unwrap() {
                anyhow::bail!("map full");
            }
            let mut ids = self.ids.lock().unwrap();
            if exempt && !ids.contains(&id) && self.capacity.is_some_and(|c| ids.len() >= c) {
                anyhow::bail!("map full");
            }
            if exempt {
                ids.insert(id);
            } else {
                ids.remove(&id);
            }
            Ok(())
        }
    }

    impl FakeMap {
        pub fn ids(&self) -> HashSet<u64> {
            self.ids.lock().unwrap().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{fake::FakeMap, *};
    use crate::exemption::rules::{AKS_NO_PROXY_KEY, EXEMPT_KEY};

    fn pod(ns: &str, name: &str, uid: &str, annotations: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            name: format!("{ns}/{name}"),
            namespace: ns.into(),
            uid: uid.into(),
            qos: Some(cgroups::Qos::Burstable),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            host_network: false,
            addrs: Vec::new(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn apply_pod(view: &mut View, p: PodInfo) {
        view.pods
            .handle(Event::Apply(p), |p: PodInfo| Some((p.uid.clone(), p)));
    }

    fn apply_ns(view: &mut View, name: &str, l: &[(&str, &str)]) {
        view.namespaces
            .handle(Event::Apply((name, labels(l))), |(n, l)| {
                Some((n.to_string(), l))
            });
    }

    fn mkpod(root: &Path, uid: &str) -> u64 {
        let dir = root.join(format!("burstable/pod{uid}"));
        std::fs::create_dir_all(&dir).unwrap();
        cgroup_id(&dir).unwrap()
    }

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    /// The first pass (passes run on complete lists only) means the API is
    /// synced: `/readyz` may say ready from then on.
    #[test]
    fn the_first_pass_marks_the_api_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let readiness = crate::readiness::Readiness::default();
        let mut r = Reconciler::new(Arc::new(FakeMap::default()), tmp.path(), HashSet::new())
            .with_readiness(readiness.register("api synced"));
        assert!(!readiness.is_ready());
        r.reconcile(&View::default());
        assert!(readiness.is_ready());
        r.reconcile(&View::default());
        assert!(readiness.is_ready());
    }

    #[test]
    fn follows_labels_annotations_and_deletions() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::new());
        let mut view = View::default();
        let (a, b) = (mkpod(tmp.path(), A), mkpod(tmp.path(), B));
        apply_ns(&mut view, "ns1", &[]);
        apply_pod(&mut view, pod("ns1", "a", A, &[]));
        apply_pod(&mut view, pod("ns1", "b", B, &[]));
        assert_eq!(r.reconcile(&view).exempt_pods, 0);
        assert!(map.ids().is_empty());

        // namespace label exempts both; pod b opts back in
        apply_ns(&mut view, "ns1", &[(EXEMPT_KEY, "true")]);
        apply_pod(&mut view, pod("ns1", "b", B, &[(EXEMPT_KEY, "false")]));
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([a]));

        // AKS annotation on b, label lifted: only b
        apply_ns(&mut view, "ns1", &[]);
        apply_pod(&mut view, pod("ns1", "b", B, &[(AKS_NO_PROXY_KEY, "true")]));
        let pass = r.reconcile(&view);
        assert_eq!((pass.added, pass.removed), (1, 1));
        assert_eq!(map.ids(), HashSet::from([b]));

        // an unchanged view writes nothing
        assert_eq!(
            r.reconcile(&view),
            Pass {
                exempt_pods: 1,
                ..Pass::default()
            }
        );

        // b deleted
        view.pods
            .handle(Event::Delete(pod("ns1", "b", B, &[])), |p: PodInfo| {
                Some((p.uid.clone(), p))
            });
        r.reconcile(&view);
        assert!(map.ids().is_empty());
    }

    #[test]
    fn cgroup_that_appears_late_or_churns_is_picked_up() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::new());
        let mut view = View::default();
        apply_pod(&mut view, pod("ns", "a", A, &[(EXEMPT_KEY, "true")]));
        let pass = r.reconcile(&view);
        assert_eq!((pass.exempt_pods, pass.unresolved), (1, 1));
        assert!(map.ids().is_empty());

        let first = mkpod(tmp.path(), A);
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([first]));

        // recreated: a new inode replaces the old id. Hold a file open
        // in the old directory's place so the inode is not reused at once.
        let dir = tmp.path().join(format!("burstable/pod{A}"));
        std::fs::remove_dir(&dir).unwrap();
        let _keep = tempfile::tempfile_in(tmp.path()).unwrap();
        let second = mkpod(tmp.path(), A);
        r.reconcile(&view);
        if second != first {
            assert_eq!(map.ids(), HashSet::from([second]));
        }
        std::fs::remove_dir(&dir).unwrap();
        r.reconcile(&view);
        assert!(map.ids().is_empty());
    }

    #[test]
    fn static_entries_are_never_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let a = mkpod(tmp.path(), A);
        map.set(a, true).unwrap(); // as load() does for --exempt-cgroup
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::from([a]));
        let mut view = View::default();
        apply_pod(&mut view, pod("ns", "a", A, &[(EXEMPT_KEY, "true")]));
        r.reconcile(&view);
        apply_pod(&mut view, pod("ns", "a", A, &[]));
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([a]));
    }

    #[test]
    fn adopted_ids_stay_until_a_pass_drops_them() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let a = mkpod(tmp.path(), A);
        let b = mkpod(tmp.path(), B);
        for id in [a, b, 7] {
            map.set(id, true).unwrap(); // the earlier instance's map, copied
        }
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::from([7]));
        r.adopt([a, b, 7]);
        assert_eq!(r.applied(), HashSet::from([a, b]));
        let mut view = View::default();
        apply_pod(&mut view, pod("ns", "a", A, &[(EXEMPT_KEY, "true")]));
        apply_pod(&mut view, pod("ns", "b", B, &[]));
        let pass = r.reconcile(&view);
        assert_eq!((pass.added, pass.removed), (0, 1));
        assert_eq!(map.ids(), HashSet::from([a, 7]));
    }

    #[test]
    fn failed_writes_are_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::new());
        let a = mkpod(tmp.path(), A);
        let mut view = View::default();
        apply_pod(&mut view, pod("ns", "a", A, &[(EXEMPT_KEY, "true")]));
        *map.fail.lock().unwrap() = true;
        assert_eq!(r.reconcile(&view).added, 0);
        *map.fail.lock().unwrap() = false;
        assert_eq!(r.reconcile(&view).added, 1);
        assert_eq!(r.applied(), HashSet::from([a]));
    }

    /// A full map: the pods that fit are exempt, the others stay
    /// redirected (never "exempt" without being in the map), counted in
    /// the metrics, and exempted once room frees up.
    #[test]
    fn a_full_map_leaves_pods_redirected_and_counts_them() {
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap {
            capacity: Some(1),
            ..FakeMap::default()
        });
        let metrics = Arc::new(Metrics::new(None));
        let mut r =
            Reconciler::new(map.clone(), tmp.path(), HashSet::new()).with_metrics(metrics.clone());
        let (a, b) = (mkpod(tmp.path(), A), mkpod(tmp.path(), B));
        let mut view = View::default();
        apply_pod(&mut view, pod("ns", "a", A, &[(EXEMPT_KEY, "true")]));
        apply_pod(&mut view, pod("ns", "b", B, &[(EXEMPT_KEY, "true")]));
        let pass = r.reconcile(&view);
        assert_eq!((pass.exempt_pods, pass.added, pass.failed), (2, 1, 1));
        assert_eq!(map.ids().len(), 1);
        assert_eq!(r.applied(), map.ids(), "only what is in the map counts");
        let text = metrics.encode();
        assert!(
            text.contains("redirector_exempt_pods_unapplied 1"),
            "{text}"
        );
        assert!(
            text.contains("redirector_exempt_map_write_failures_total 1"),
            "{text}"
        );

        // Retried on every pass, counted each time.
        assert_eq!(r.reconcile(&view).failed, 1);
        assert!(
            metrics
                .encode()
                .contains("redirector_exempt_map_write_failures_total 2")
        );

        // The exempt pod that fitted goes: the other one takes its place.
        let fitted = *map.ids().iter().next().unwrap();
        let (gone, other) = if fitted == a { (A, b) } else { (B, a) };
        view.pods
            .handle(Event::Delete(pod("ns", "x", gone, &[])), |p: PodInfo| {
                Some((p.uid.clone(), p))
            });
        let pass = r.reconcile(&view);
        assert_eq!((pass.added, pass.removed, pass.failed), (1, 1, 0));
        assert_eq!(map.ids(), HashSet::from([other]));
        assert!(
            metrics
                .encode()
                .contains("redirector_exempt_pods_unapplied 0")
        );
    }

    /// `allowPodOptOut` is read on every pass: turning it off re-includes
    /// pods that annotated themselves out, not those of exempt namespaces.
    #[test]
    fn pod_opt_out_follows_the_configuration() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let allowed = Arc::new(AtomicBool::new(true));
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::new()).with_settings({
            let allowed = allowed.clone();
            move || rules::Settings {
                pod_opt_out: allowed.load(Ordering::Relaxed),
                ..rules::Settings::default()
            }
        });
        let (a, b) = (mkpod(tmp.path(), A), mkpod(tmp.path(), B));
        let mut view = View::default();
        apply_ns(&mut view, "free", &[(EXEMPT_KEY, "true")]);
        apply_ns(&mut view, "shop", &[]);
        apply_pod(
            &mut view,
            pod("shop", "a", A, &[(AKS_NO_PROXY_KEY, "true")]),
        );
        apply_pod(&mut view, pod("free", "b", B, &[]));
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([a, b]));

        allowed.store(false, Ordering::Relaxed);
        let pass = r.reconcile(&view);
        assert_eq!((pass.exempt_pods, pass.removed), (1, 1));
        assert_eq!(map.ids(), HashSet::from([b]));

        allowed.store(true, Ordering::Relaxed);
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([a, b]));
    }

    /// `exemptNamespaces` and `exemptHostNetworkPods` are read on every
    /// pass: switching them off re-includes kube-system and hostNetwork
    /// pods on the next pass, switching them on exempts them again.
    #[test]
    fn operator_keys_follow_the_configuration() {
        use std::sync::Mutex;
        let tmp = tempfile::tempdir().unwrap();
        let map = Arc::new(FakeMap::default());
        let current = Arc::new(Mutex::new(rules::Settings::default()));
        let mut r = Reconciler::new(map.clone(), tmp.path(), HashSet::new()).with_settings({
            let current = current.clone();
            move || current.lock().unwrap().clone()
        });
        let (a, b) = (mkpod(tmp.path(), A), mkpod(tmp.path(), B));
        let mut view = View::default();
        apply_pod(&mut view, pod("kube-system", "a", A, &[]));
        let mut host = pod("shop", "b", B, &[]);
        host.host_network = true;
        apply_pod(&mut view, host);
        assert_eq!(r.reconcile(&view).exempt_pods, 2);
        assert_eq!(map.ids(), HashSet::from([a, b]));

        current.lock().unwrap().exempt_namespaces.clear();
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([b]));
        current.lock().unwrap().exempt_host_network = false;
        let pass = r.reconcile(&view);
        assert_eq!((pass.exempt_pods, pass.removed), (0, 1));
        assert!(map.ids().is_empty());

        *current.lock().unwrap() = rules::Settings::default();
        r.reconcile(&view);
        assert_eq!(map.ids(), HashSet::from([a, b]));
    }

    /// A relist replaces the set only when complete; a watch that restarts
    /// and never finishes its relist keeps the old set.
    #[test]
    fn relist_swaps_only_when_done() {
        let mut m: Mirror<u32> = Mirror::default();
        let key = |(k, v): (&str, u32)| Some((k.to_string(), v));
        m.handle(Event::Init, key);
        m.handle(Event::InitApply(("a", 1)), key);
        m.handle(Event::InitApply(("b", 2)), key);
        assert_eq!(m.values().count(), 0);
        assert!(!m.synced());
        m.handle(Event::InitDone, key);
        assert!(m.synced());
        assert_eq!(m.get("a"), Some(&1));

        m.handle(Event::Init, key); // watch lost (410): relisting
        m.handle(Event::InitApply(("a", 3)), key);
        assert_eq!(
            (m.get("a"), m.get("b")),
            (Some(&1), Some(&2)),
            "stale, not empty"
        );
        m.handle(Event::Init, key); // lost again mid-list
        m.handle(Event::InitApply(("c", 4)), key);
        m.handle(Event::InitDone, key);
        assert_eq!((m.get("a"), m.get("b"), m.get("c")), (None, None, Some(&4)));

        m.handle(Event::Apply(("d", 5)), key);
        m.handle(Event::Delete(("c", 0)), key);
        let mut v: Vec<_> = m.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![5]);
    }
}
