//! Bypass sources from the Kubernetes API (`--kube`), kept current by
//! watches:
//!
//! - every Node's `spec.podCIDRs` (`spec.podCIDR` on old objects): pods
//!   reach other pods directly, wherever they run;
//! - this Node's `status.addresses` (beside its interfaces, `node`);
//! - the ClusterIPs of the Service `default/kubernetes` and the addresses
//!   of its EndpointSlice (`default/kubernetes`, labelled
//!   `kubernetes.io/service-name=kubernetes`): the API server, which
//!   konnectivity-agent, CNI agents and operators in pods talk to with
//!   mTLS that a MITM proxy would break.
//!
//! Only objects the control plane writes: Nodes (the node controller, IPAM
//! and the kubelets) and the one Service and EndpointSlice the API server
//! reconciles itself, both watched by name. Never a Service or an
//! EndpointSlice a tenant can create, whose addresses a tenant chooses.
//!
//! A kind counts once its first complete list arrived; until then its
//! source stays as it was. What an earlier instance had in the kernel
//! (`earlier instance`) is dropped once every kind is complete, so a
//! restart, even with the API unreachable, opens no window in which pods'
//! connections to other pods or to the API server go to the proxy.
use std::{net::IpAddr, pin::pin, sync::Arc, time::Duration};

use futures_util::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use super::{BypassSet, Entry, Source, Sources, node::is_own_address};
use crate::exemption::reconcile::Mirror;

/// The API server's Service, EndpointSlice and their namespace.
pub const KUBERNETES: &str = "kubernetes";
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How soon a change the kernel refused is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What we keep of a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `spec.podCIDRs`, or `spec.podCIDR`.
    pub pod_cidrs: Vec<IpNet>,
    /// `status.addresses` that are IPs, with their type (`InternalIP`, ...).
    pub addresses: Vec<(String, IpAddr)>,
}

fn node_facts(node: Node) -> Option<(String, NodeFacts)> {
    let name = node.metadata.name?;
    let spec = node.spec.unwrap_or_default();
    let cidrs = match spec.pod_cidrs {
        Some(list) if !list.is_empty() => list,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    let pod_cidrs = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
    let addresses = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| Some((a.type_, a.address.parse().ok()?)))
        .collect();
    Some((
        name,
        NodeFacts {
            pod_cidrs,
            addresses,
        },
    ))
}

/// The ClusterIPs of `default/kubernetes` (the watch asks for it by name).
fn service_ips(service: Service) -> Option<(String, Vec<IpAddr>)> {
    let name = service.metadata.name?;
    if name != KUBERNETES {
        return None;
    }
    let spec = service.spec.unwrap_or_default();
    let ips = spec
        .cluster_ips
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    Some((name, ips))
}

/// The endpoint addresses of the EndpointSlice `default/kubernetes`, if it
/// carries the Service's label (the API server writes both).
fn slice_ips(slice: EndpointSlice) -> Option<(String, Vec<IpAddr>)> {
    let meta = slice.metadata;
    let name = meta.name?;
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_some_and(|v| v == KUBERNETES);
    if name != KUBERNETES || !labelled || slice.address_type == "FQDN" {
        return None;
    }
    let ips = slice
        .endpoints
        .into_iter()
        .flat_map(|e| e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect();
    Some((name, ips))
}

/// The objects the sources come from, as last listed and watched.
#[derive(Debug, Default)]
pub struct View {
    pub nodes: Mirror<NodeFacts>,
    pub services: Mirror<Vec<IpAddr>>,
    pub slices: Mirror<Vec<IpAddr>>,
}

impl View {
    /// Every kind has been listed completely.
    pub fn complete(&self) -> bool {
        self.nodes.synced() && self.services.synced() && self.slices.synced()
    }

    /// Brings the API sources in `sources` up to date with the view: each
    /// kind only once it is complete; `this_node`'s addresses only with
    /// `node_addresses`; the earlier instance's prefixes dropped once the
    /// view is complete.
    pub fn apply(&self, sources: &mut Sources, this_node: &str, node_addresses: bool) {
        let host =
            |ip: &IpAddr, detail: &str| is_own_address(*ip).then(|| Entry::host(*ip, detail));
        if self.nodes.synced() {
            let mut cidrs = Vec::new();
            for (name, node) in self.nodes.iter() {
                let detail = format!("node {name}");
                cidrs.extend(node.pod_cidrs.iter().map(|n| Entry::new(*n, &detail)));
            }
            sources.set(Source::PodCidrs, cidrs);
            let own = self
                .nodes
                .get(this_node)
                .filter(|_| node_addresses)
                .map(|node| {
                    node.addresses
                        .iter()
                        .filter_map(|(kind, ip)| host(ip, kind))
                        .collect()
                })
                .unwrap_or_default();
            sources.set(Source::NodeStatus, own);
        }
        if self.services.synced() {
            let ips = self.services.values().flatten();
            let detail = format!("{DEFAULT_NAMESPACE}/{KUBERNETES} ClusterIP");
            sources.set(
                Source::KubernetesService,
                ips.filter_map(|ip| host(ip, &detail)).collect(),
            );
        }
        if self.slices.synced() {
            let ips = self.slices.values().flatten();
            let detail = format!("EndpointSlice {DEFAULT_NAMESPACE}/{KUBERNETES}");
            sources.set(
                Source::ApiServerEndpoints,
                ips.filter_map(|ip| host(ip, &detail)).collect(),
            );
        }
        if self.complete() {
            sources.set(Source::EarlierInstance, Vec::new());
        }
    }
}

/// Logs a failed watch; the watcher retries with backoff and the sources
/// stay as they are meanwhile.
fn watch_failed(what: &str, e: &watcher::Error) {
    tracing::warn!(
        error = %e,
        "watching {what} failed (the daemon's role needs list and watch on it); \
         retrying, the bypassed prefixes stay as they are"
    );
}

/// Follows the API until the process ends, keeping the API sources of
/// `set` current. `this_node` names the daemon's node; `node_addresses`
/// says whether its `status.addresses` are bypassed.
pub async fn follow(client: Client, this_node: String, set: Arc<BypassSet>, node_addresses: bool) {
    let by_name = || watcher::Config::default().fields(&format!("metadata.name={KUBERNETES}"));
    let nodes =
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff();
    let services = watcher(
        Api::<Service>::namespaced(client.clone(), DEFAULT_NAMESPACE),
        by_name(),
    )
    .default_backoff();
    let slices = watcher(
        Api::<EndpointSlice>::namespaced(client, DEFAULT_NAMESPACE),
        by_name(),
    )
    .default_backoff();
    let (mut nodes, mut services, mut slices) = (pin!(nodes), pin!(services), pin!(slices));
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view = View::default();
    let mut failing = false;
    loop {
        tokio::select! {
            Some(event) = nodes.next() => match event {
                Ok(event) => view.nodes.handle(event, node_facts),
                Err(e) => { watch_failed("nodes", &e); continue; }
            },
            Some(event) = services.next() => match event {
                Ok(event) => view.services.handle(event, service_ips),
                Err(e) => { watch_failed("the Service default/kubernetes", &e); continue; }
            },
            Some(event) = slices.next() => match event {
                Ok(event) => view.slices.handle(event, slice_ips),
                Err(e) => { watch_failed("the EndpointSlice default/kubernetes", &e); continue; }
            },
            _ = retry.tick() => if !failing { continue },
        }
        match set.update("Kubernetes API", |s| {
            view.apply(s, &this_node, node_addresses)
        }) {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("bypass sources from the API applied after earlier failures");
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "cannot apply the bypass sources from the API; the kernel keeps what it had, retrying"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn node(name: &str, cidrs: &[&str], addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDRs": cidrs},
            "status": {"addresses": addresses.iter()
                .map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn shown(sources: &Sources) -> Vec<String> {
        sources
            .iter()
            .map(|(s, e)| {
                let e: Vec<String> = e.iter().map(Entry::to_string).collect();
                format!("{s}: {}", e.join(", "))
            })
            .collect()
    }

    /// One complete list of each kind, with the objects given.
    fn listed(
        view: &mut View,
        nodes: Vec<Node>,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    ) {
        view.nodes.handle(Event::Init, node_facts);
        for n in nodes {
            view.nodes.handle(Event::InitApply(n), node_facts);
        }
        view.nodes.handle(Event::InitDone, node_facts);
        view.services.handle(Event::Init, service_ips);
        for s in services {
            view.services.handle(Event::InitApply(s), service_ips);
        }
        view.services.handle(Event::InitDone, service_ips);
        view.slices.handle(Event::Init, slice_ips);
        for s in slices {
            view.slices.handle(Event::InitApply(s), slice_ips);
        }
        view.slices.handle(Event::InitDone, slice_ips);
    }

    fn kubernetes_service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00:10::1"]},
        }))
        .unwrap()
    }

    fn slice(name: &str, label: Option<&str>, addresses: &[&str]) -> EndpointSlice {
        let labels = label
            .map(|l| json!({SERVICE_NAME_LABEL: l}))
            .unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": addresses}],
        }))
        .unwrap()
    }

    #[test]
    fn sources_from_a_complete_view() {
        let mut view = View::default();
        let mut sources = Sources::default();
        sources.set(
            Source::EarlierInstance,
            vec![Entry::new("10.244.0.0/16".parse().unwrap(), "")],
        );
        // Nothing complete yet: nothing changes.
        view.apply(&mut sources, "n1", true);
        assert_eq!(shown(&sources), ["earlier instance: 10.244.0.0/16"]);

        listed(
            &mut view,
            vec![
                node(
                    "n1",
                    &["10.244.1.0/24", "fd00:244:1::/64"],
                    &[
                        ("InternalIP", "10.1.0.4"),
                        ("Hostname", "n1"),
                        ("ExternalIP", "127.0.0.1"),
                    ],
                ),
                node(
                    "n2",
                    &["10.244.2.0/24", "not-a-cidr"],
                    &[("InternalIP", "10.1.0.5")],
                ),
            ],
            vec![kubernetes_service()],
            vec![
                slice(
                    "kubernetes",
                    Some("kubernetes"),
                    &["10.1.0.100", "10.1.0.101"],
                ),
                // not the API server's: a tenant's slice is never read
                slice("kubernetes", Some("other"), &["203.0.113.7"]),
            ],
        );
        view.apply(&mut sources, "n1", true);
        assert_eq!(
            shown(&sources),
            [
                "node addresses (Node.status.addresses): 10.1.0.4/32 (InternalIP)",
                "pod CIDRs (Node.spec.podCIDRs): 10.244.1.0/24 (node n1), 10.244.2.0/24 (node n2), fd00:244:1::/64 (node n1)",
                "kubernetes Service: 10.0.0.1/32 (default/kubernetes ClusterIP), fd00:10::1/128 (default/kubernetes ClusterIP)",
                "API server endpoints: 10.1.0.100/32 (EndpointSlice default/kubernetes), 10.1.0.101/32 (EndpointSlice default/kubernetes)",
            ]
        );

        // A node goes; the node addresses switched off.
        view.nodes
            .handle(Event::Delete(node("n2", &[], &[])), node_facts);
        view.apply(&mut sources, "n1", false);
        assert_eq!(
            sources.get(&Source::PodCidrs).len(),
            2,
            "{:?}",
            shown(&sources)
        );
        assert!(sources.get(&Source::NodeStatus).is_empty());
    }

    #[test]
    fn old_nodes_have_pod_cidr_only() {
        let old: Node = serde_json::from_value(json!({
            "metadata": {"name": "old"}, "spec": {"podCIDR": "10.244.9.0/24"}
        }))
        .unwrap();
        let (name, facts) = node_facts(old).unwrap();
        assert_eq!(name, "old");
        assert_eq!(facts.pod_cidrs, ["10.244.9.0/24".parse::<IpNet>().unwrap()]);
        assert!(slice_ips(slice("kubernetes", None, &["10.1.0.9"])).is_none());
        assert!(slice_ips(slice("other", Some("kubernetes"), &["10.1.0.9"])).is_none());
    }
}
