//! The API side: watch this node's pods and all namespaces, mirror what the
//! exemption rules need, and reconcile on every event and on a short timer (the
//! timer catches cgroups that appear after their pod's API event, and
//! cgroups recreated under a live pod).
use std::{collections::BTreeMap, pin::pin, time::Duration};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use crate::caller::{PodDirectory, PodRef, pods::PROFILE_LABEL, pods::PodIndex};

use super::{
    cgroups::Qos,
    reconcile::{PodInfo, Reconciler, View},
    rules::{AKS_NO_PROXY_KEY, EXEMPT_KEY},
};

/// How often cgroups are looked up again without an API event.
pub const RESCAN: Duration = Duration::from_secs(1);

/// The annotation kubelet puts on a static pod's mirror in the API: the
/// static pod's own UID, a hash of its manifest, after which kubelet names
/// its cgroup (the mirror's `metadata.uid` is the API server's).
pub const MIRROR_KEY: &str = "kubernetes.io/config.mirror";

/// What we keep of a pod: its UID as the key, and the annotations the
/// rules read.
fn pod_info(pod: Pod) -> Option<(String, PodInfo)> {
    let meta = pod.metadata;
    let uid = meta.uid?;
    let namespace = meta.namespace.unwrap_or_default();
    let cgroup_uid = match meta.annotations.as_ref().and_then(|a| a.get(MIRROR_KEY)) {
        Some(hash) if is_config_hash(hash) => hash.clone(),
        _ => uid.clone(),
    };
    let annotations = keep_keys(meta.annotations, &[EXEMPT_KEY, AKS_NO_PROXY_KEY]);
    let addrs = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    let info = PodInfo {
        name: format!("{namespace}/{}", meta.name.unwrap_or_default()),
        namespace,
        uid: cgroup_uid,
        qos: pod
            .status
            .and_then(|s| s.qos_class)
            .and_then(|q| Qos::parse(&q)),
        annotations,
        host_network: pod.spec.and_then(|s| s.host_network) == Some(true),
        addrs,
    };
    Some((uid, info))
}

/// kubelet's hash of a static pod's manifest: 32 hex digits (md5). Anyone
/// who may create pods can write the mirror annotation, so nothing else is
/// taken: an API UID (a dashed UUID) there would name another pod's cgroup.
fn is_config_hash(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// What we keep of a namespace: its name and our label.
fn namespace_info(ns: Namespace) -> Option<(String, BTreeMap<String, String>)> {
    let name = ns.metadata.name?;
    Some((
        name,
        keep_keys(ns.metadata.labels, &[EXEMPT_KEY, PROFILE_LABEL]),
    ))
}

fn keep_keys(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect()
}

/// Who has which address and which namespace selects which profile, from
/// the mirror. hostNetwork pods share the node's address: not theirs.
fn pod_index(view: &View) -> PodIndex {
    let mut index = PodIndex::default();
    for pod in view.pods.values().filter(|p| !p.host_network) {
        let name = pod.name.rsplit('/').next().unwrap_or_default().to_owned();
        for addr in &pod.addrs {
            index.by_addr.insert(
                *addr,
                PodRef {
                    namespace: pod.namespace.clone(),
                    name: name.clone(),
                },
            );
        }
    }
    for (namespace, labels) in view.namespaces.iter() {
        if let Some(profile) = labels.get(PROFILE_LABEL) {
            index.profiles.insert(namespace.clone(), profile.clone());
        }
    }
    index
}

/// Follows the API until the process ends. Watch failures are logged and
/// retried with backoff; the exemptions in force stay while they last.
/// `directory` gets a fresh [`PodIndex`] after every event.
pub async fn run(
    client: Client,
    node_name: String,
    mut reconciler: Reconciler,
    directory: PodDirectory,
) {
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
    )
    .default_backoff();
    let namespaces =
        watcher(Api::<Namespace>::all(client), watcher::Config::default()).default_backoff();
    let mut pods = pin!(pods);
    let mut namespaces = pin!(namespaces);
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view = View::default();
    let mut changed = false;
    loop {
        tokio::select! {
            Some(event) = pods.next() => match event {
                Ok(event) => {
                    view.pods.handle(event, pod_info);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching pods failed; retrying, exemptions stay as they are");
                    continue;
                }
            },
            Some(event) = namespaces.next() => match event {
                Ok(event) => {
                    view.namespaces.handle(event, namespace_info);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching namespaces failed; retrying, exemptions stay as they are");
                    continue;
                }
            },
            _ = rescan.tick() => {}
        }
        // Partial lists too: a pod known is better than none, and a
        // namespace's profile label not yet seen leaves it on the top level.
        if std::mem::take(&mut changed) {
            directory.publish(pod_index(&view));
        }
        // Decide only from complete lists of both kinds: before them, a pod
        // would look un-exempt for lack of its namespace, and what an
        // earlier instance exempted would be dropped for lack of its pod.
        if view.pods.synced() && view.namespaces.synced() {
            reconciler.reconcile(&view);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        io::{BufRead, BufReader},
        path::Path,
        process::{Child, Command, Stdio},
        sync::Arc,
        time::Instant,
    };

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use kube::runtime::watcher::Event;

    #[test]
    fn pod_index_has_pods_by_address_and_namespace_profiles() {
        let pod = |name: &str, ip: &str, host_network: bool| {
            serde_json::from_value::<Pod>(json!({
                "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
                "spec": {"hostNetwork": host_network, "containers": []},
                "status": {"podIPs": [{"ip": ip}]}
            }))
            .unwrap()
        };
        let mut view = View::default();
        view.pods
            .handle(Event::Apply(pod("web-0", "10.0.0.5", false)), pod_info);
        view.pods
            .handle(Event::Apply(pod("agent", "10.9.0.1", true)), pod_info);
        let ns = serde_json::from_value::<Namespace>(json!({
            "metadata": {"name": "shop", "labels": {PROFILE_LABEL: "team-a", "other": "x"}}
        }))
        .unwrap();
        view.namespaces.handle(Event::Apply(ns), namespace_info);
        let index = pod_index(&view);
        let web = &index.by_addr[&"10.0.0.5".parse().unwrap()];
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("shop", "web-0")
        );
        assert!(
            !index.by_addr.contains_key(&"10.9.0.1".parse().unwrap()),
            "a hostNetwork pod's address is the node's"
        );
        assert_eq!(index.profiles["shop"], "team-a");
    }
    use crate::{exemption::reconcile::fake::FakeMap, hook::cgroup_id};

    /// tests/e2e/fake_apiserver.py on a free loopback port.
    struct FakeApi {
        child: Child,
        addr: String,
    }

    impl FakeApi {
        fn start(dir: &Path) -> Self {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/e2e/fake_apiserver.py"
            );
            let state = dir.join("state.json");
            let mut child = Command::new("python3")
                .arg(script)
                .args(["--listen", "127.0.0.1:0", "--state"])
                .arg(&state)
                .stdout(Stdio::piped())
                .spawn()
                .expect("this test needs python3 (the fake API server)");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let addr = line
                .split_whitespace()
                .find(|w| w.starts_with("127.0.0.1:"))
                .unwrap_or_else(|| panic!("fake API server said: {line:?}"))
                .to_string();
            Self { child, addr }
        }

        async fn control(&self, cmd: serde_json::Value) {
            let body = cmd.to_string();
            let mut s = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
            let req = format!(
                "POST /control HTTP/1.1\r\nHost: fake\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200"), "{cmd}: {resp}");
        }

        async fn pod(&self, name: &str, uid: &str, node: &str, annotations: serde_json::Value) {
            self.control(
                json!({"op": "pod", "namespace": "shop", "name": name, "uid": uid,
                "node": node, "qos": "Burstable", "annotations": annotations}),
            )
            .await;
        }
    }

    impl Drop for FakeApi {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits up to 10 s for the map to hold exactly `want`.
    async fn eventually(map: &FakeMap, want: &HashSet<u64>, what: &str) {
        let start = Instant::now();
        while map.ids() != *want {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: map {:?}, expected {want:?}",
                map.ids()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The watcher against an API server speaking the real list/watch
    /// protocol: label and annotation flips, the node's field selector,
    /// a 410 Gone with failing relists (the map stays), deletion.
    #[tokio::test(flavor = "multi_thread")]
    async fn follows_a_list_watch_api_server() {
        const A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
        const B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
        const C: &str = "cccccccc-0000-4000-8000-00000000000c";
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("kubepods.slice");
        let dir_a = root.join(format!(
            "kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            A.replace('-', "_")
        ));
        let dir_b = root.join(format!("kubepods-pod{}.slice", B.replace('-', "_")));
        let dir_c = root.join(format!(
            "kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            C.replace('-', "_")
        ));
        for d in [&dir_a, &dir_b, &dir_c] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (a, b) = (cgroup_id(&dir_a).unwrap(), cgroup_id(&dir_b).unwrap());

        let api = FakeApi::start(tmp.path());
        api.control(json!({"op": "ns", "name": "shop", "labels": {}}))
            .await;
        api.pod("a", A, "n1", json!({})).await;
        api.pod("b", B, "n1", json!({})).await;
        // exempt, but on another node: the field selector keeps it out
        api.pod("c", C, "n2", json!({EXEMPT_KEY: "true"})).await;

        let map = Arc::new(FakeMap::default());
        let reconciler = Reconciler::new(map.clone(), &root, HashSet::new());
        let config = kube::Config::new(format!("http://{}", api.addr).parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let task = tokio::spawn(run(
            client,
            "n1".into(),
            reconciler,
            PodDirectory::default(),
        ));

        api.control(json!({"op": "ns", "name": "shop", "labels": {EXEMPT_KEY: "true"}}))
            .await;
        eventually(&map, &HashSet::from([a, b]), "namespace labelled").await;
        api.pod("b", B, "n1", json!({EXEMPT_KEY: "false"})).await;
        eventually(&map, &HashSet::from([a]), "b re-included").await;

        // 410 Gone, and the relists fail for a while: nothing is dropped
        api.control(json!({"op": "fail-lists", "seconds": 2})).await;
        api.control(json!({"op": "gone"})).await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            assert_eq!(map.ids(), HashSet::from([a]), "during the relist");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // the watch recovered: changes are seen again
        api.control(json!({"op": "ns", "name": "shop", "labels": {}}))
            .await;
        api.pod("b", B, "n1", json!({AKS_NO_PROXY_KEY: "true"}))
            .await;
        eventually(&map, &HashSet::from([b]), "after the relist").await;
        api.control(json!({"op": "delete-pod", "namespace": "shop", "name": "b"}))
            .await;
        eventually(&map, &HashSet::new(), "b deleted").await;
        task.abort();
    }

    #[test]
    fn pods_keep_only_what_the_policy_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "ab-12",
                "annotations": {EXEMPT_KEY: "true", "other": "x", AKS_NO_PROXY_KEY: "false"}},
            "status": {"qosClass": "BestEffort"}
        }))
        .unwrap();
        let (key, info) = pod_info(pod).unwrap();
        assert_eq!(key, "ab-12");
        assert_eq!(info.name, "shop/web");
        assert_eq!(info.qos, Some(Qos::BestEffort));
        assert_eq!(info.annotations.len(), 2);
        assert!(!info.host_network);
        let host: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cni", "namespace": "shop", "uid": "cd-34"},
            "spec": {"hostNetwork": true, "containers": []}
        }))
        .unwrap();
        assert!(pod_info(host).unwrap().1.host_network);
        let no_uid: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(pod_info(no_uid).is_none());
    }

    /// A static pod's mirror: its cgroup is named after the config hash
    /// in the mirror annotation, while the API's UID stays the key (deletes
    /// carry it). A value that is not a config hash (another pod's API UID)
    /// is not taken.
    #[test]
    fn mirror_pods_name_their_cgroup_by_the_config_hash() {
        const HASH: &str = "df7cc47f8477b6b1226d7d23a904867b";
        let mirror = |value: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "etcd-n1", "namespace": "kube-system",
                    "uid": "6c1a8f0e-2b7d-4e59-9a3c-0d4e5f6a7b8c",
                    "annotations": {MIRROR_KEY: value, "kubernetes.io/config.source": "file"}},
                "status": {"qosClass": "Burstable"}
            }))
            .unwrap()
        };
        let (key, info) = pod_info(mirror(HASH)).unwrap();
        assert_eq!(key, "6c1a8f0e-2b7d-4e59-9a3c-0d4e5f6a7b8c");
        assert_eq!(info.uid, HASH);
        assert!(info.annotations.is_empty(), "{:?}", info.annotations);
        for forged in [
            "0a0a0a0a-1111-4222-8333-444444444444",
            "../../x",
            "",
            "df7cc47f",
        ] {
            let (_, info) = pod_info(mirror(forged)).unwrap();
            assert_eq!(
                info.uid, "6c1a8f0e-2b7d-4e59-9a3c-0d4e5f6a7b8c",
                "{forged:?}"
            );
        }
    }

    #[test]
    fn namespaces_keep_only_our_label() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {EXEMPT_KEY: "true", "team": "a"}}
        }))
        .unwrap();
        let (name, labels) = namespace_info(ns).unwrap();
        assert_eq!(name, "shop");
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            vec![(EXEMPT_KEY.to_string(), "true".to_string())]
        );
    }
}
