//! Which pods are exempt: a pure decision over the pod (its namespace,
//! annotations and `hostNetwork`), its namespace's label and the
//! operator's configuration.
//!
//! A pod is exempt when
//! - its namespace is in `exemptNamespaces` (default `["kube-system"]`), or
//!   it runs on the host network (`spec.hostNetwork: true`) while
//!   `exemptHostNetworkPods` is on (the default): the node's own traffic
//!   (CNI agents, kube-proxy, CoreDNS, konnectivity-agent,
//!   metrics-server) must not depend on the daemon, nor speak mTLS through
//!   a MITM proxy;
//! - its namespace has the label `egress-redirector/exempt=true`;
//! - the pod has the annotation `egress-redirector/exempt: "true"` or AKS's
//!   `kubernetes.azure.com/no-http-proxy-vars: "true"` (so AKS manifests
//!   work unchanged).
//!
//! The pod annotation `egress-redirector/exempt: "false"` re-includes a
//! pod, whatever else says (its namespace, `hostNetwork`): the most
//! specific word wins, and it errs towards the proxy.
//!
//! With `allowPodOptOut: false` a pod cannot exempt itself by annotation:
//! only the namespace label (changing it needs RBAC on namespaces, which a
//! pod's author usually lacks) and the operator's two keys exempt. The
//! re-including `"false"` still counts, as it can only send more traffic
//! through the proxy.
use std::{collections::BTreeMap, fmt};

use crate::config::ProxyConfig;

/// Namespace label and pod annotation of our own.
pub const EXEMPT_KEY: &str = "egress-redirector/exempt";
/// AKS's pod annotation that keeps proxy variables out of a pod.
pub const AKS_NO_PROXY_KEY: &str = "kubernetes.azure.com/no-http-proxy-vars";

/// What the configuration says about exemptions; it changes on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `allowPodOptOut`: pod annotations may exempt their pod.
    pub pod_opt_out: bool,
    /// `exemptNamespaces`: every pod of these namespaces is exempt.
    pub exempt_namespaces: Vec<String>,
    /// `exemptHostNetworkPods`: hostNetwork pods are exempt.
    pub exempt_host_network: bool,
}

impl Settings {
    /// The settings of a configuration.
    pub fn of(config: &ProxyConfig) -> Self {
        Self {
            pod_opt_out: config.allow_pod_opt_out,
            exempt_namespaces: config.exempt_namespaces.clone(),
            exempt_host_network: config.exempt_host_network_pods,
        }
    }
}

/// The configuration's defaults.
impl Default for Settings {
    fn default() -> Self {
        Self {
            pod_opt_out: true,
            exempt_namespaces: crate::config::DEFAULT_EXEMPT_NAMESPACES
                .iter()
                .map(|n| n.to_string())
                .collect(),
            exempt_host_network: true,
        }
    }
}

/// The pod as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    pub namespace: &'a str,
    /// Its annotations (only the ones the rules read are needed).
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
}

/// Why a pod is exempt, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `egress-redirector/exempt: "true"` on the pod.
    PodAnnotation,
    /// AKS's `kubernetes.azure.com/no-http-proxy-vars: "true"` on the pod.
    AksAnnotation,
    /// `egress-redirector/exempt=true` on its namespace.
    NamespaceLabel,
    /// Its namespace is in `exemptNamespaces`.
    ExemptNamespace,
    /// A hostNetwork pod, with `exemptHostNetworkPods` on.
    HostNetwork,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PodAnnotation => "pod annotation egress-redirector/exempt",
            Self::AksAnnotation => "pod annotation kubernetes.azure.com/no-http-proxy-vars",
            Self::NamespaceLabel => "namespace label egress-redirector/exempt",
            Self::ExemptNamespace => "exemptNamespaces",
            Self::HostNetwork => "hostNetwork (exemptHostNetworkPods)",
        })
    }
}

/// A label or annotation value read as a boolean; anything other than
/// `true`/`false` (case and surrounding space ignored) says nothing.
fn flag(map: Option<&BTreeMap<String, String>>, key: &str) -> Option<bool> {
    let value = map?.get(key)?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Why `pod` is exempt, or `None` when it is redirected. The pod's own
/// words come first (its `"false"` above all), then its namespace's label,
/// then the operator's keys.
pub fn exemption(
    pod: &Pod<'_>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Option<Reason> {
    match flag(pod.annotations, EXEMPT_KEY) {
        Some(false) => return None,
        Some(true) if settings.pod_opt_out => return Some(Reason::PodAnnotation),
        _ => {}
    }
    if settings.pod_opt_out && flag(pod.annotations, AKS_NO_PROXY_KEY) == Some(true) {
        Some(Reason::AksAnnotation)
    } else if flag(namespace_labels, EXEMPT_KEY) == Some(true) {
        Some(Reason::NamespaceLabel)
    } else if settings
        .exempt_namespaces
        .iter()
        .any(|n| n == pod.namespace)
    {
        Some(Reason::ExemptNamespace)
    } else if settings.exempt_host_network && pod.host_network {
        Some(Reason::HostNetwork)
    } else {
        None
    }
}

/// Whether a pod is exempt by labels and annotations alone (no operator
/// keys: an ordinary namespace, not on the host network); `pod_opt_out`
/// is the configuration's `allowPodOptOut`.
pub fn is_exempt(
    namespace_labels: Option<&BTreeMap<String, String>>,
    pod_annotations: Option<&BTreeMap<String, String>>,
    pod_opt_out: bool,
) -> bool {
    let pod = Pod {
        namespace: "",
        annotations: pod_annotations,
        host_network: false,
    };
    let settings = Settings {
        pod_opt_out,
        exempt_namespaces: Vec::new(),
        exempt_host_network: false,
    };
    exemption(&pod, namespace_labels, &settings).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decision_table() {
        let ns_exempt = [(EXEMPT_KEY, "true")];
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let table: &[(Pairs, Pairs, bool)] = &[
            // (namespace labels, pod annotations, exempt)
            (&[], &[], false),
            (&ns_exempt, &[], true),
            (&[(EXEMPT_KEY, "false")], &[], false),
            (&[(EXEMPT_KEY, "yes")], &[], false),
            (&[(EXEMPT_KEY, "TRUE")], &[], true),
            (&[], &[(EXEMPT_KEY, "true")], true),
            (&[], &[(EXEMPT_KEY, " true ")], true),
            (&[], &[(AKS_NO_PROXY_KEY, "true")], true),
            (&[], &[(AKS_NO_PROXY_KEY, "false")], false),
            (&[], &[(AKS_NO_PROXY_KEY, "1")], false),
            // re-included in an exempt namespace
            (&ns_exempt, &[(EXEMPT_KEY, "false")], false),
            // our explicit "false" beats AKS's annotation too
            (
                &[],
                &[(EXEMPT_KEY, "false"), (AKS_NO_PROXY_KEY, "true")],
                false,
            ),
            // a value that says nothing leaves the namespace's word
            (&ns_exempt, &[(EXEMPT_KEY, "maybe")], true),
            (&ns_exempt, &[(AKS_NO_PROXY_KEY, "false")], true),
            // the label on the pod, or the annotation on the namespace, do not count
            (&[("other", "true")], &[("other", "true")], false),
            (&[(AKS_NO_PROXY_KEY, "true")], &[], false),
        ];
        for (ns, pod, want) in table {
            let (ns, pod) = (map(ns), map(pod));
            assert_eq!(
                is_exempt(Some(&ns), Some(&pod), true),
                *want,
                "ns {ns:?} pod {pod:?}"
            );
        }
    }

    /// `allowPodOptOut: false`: pod annotations cannot exempt, the
    /// namespace label still does, and re-including still works.
    #[test]
    fn without_pod_opt_out_only_namespaces_exempt() {
        let ns_exempt = [(EXEMPT_KEY, "true")];
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let table: &[(Pairs, Pairs, bool)] = &[
            (&[], &[], false),
            (&[], &[(EXEMPT_KEY, "true")], false),
            (&[], &[(AKS_NO_PROXY_KEY, "true")], false),
            (
                &[],
                &[(EXEMPT_KEY, "true"), (AKS_NO_PROXY_KEY, "true")],
                false,
            ),
            (&ns_exempt, &[], true),
            (&ns_exempt, &[(EXEMPT_KEY, "true")], true),
            (&ns_exempt, &[(AKS_NO_PROXY_KEY, "false")], true),
            (&ns_exempt, &[(EXEMPT_KEY, "false")], false),
        ];
        for (ns, pod, want) in table {
            let (ns, pod) = (map(ns), map(pod));
            assert_eq!(
                is_exempt(Some(&ns), Some(&pod), false),
                *want,
                "ns {ns:?} pod {pod:?}"
            );
        }
    }

    #[test]
    fn missing_maps_are_empty() {
        for opt_out in [true, false] {
            assert!(!is_exempt(None, None, opt_out));
            assert!(is_exempt(
                Some(&map(&[(EXEMPT_KEY, "true")])),
                None,
                opt_out
            ));
        }
        assert!(is_exempt(None, Some(&map(&[(EXEMPT_KEY, "true")])), true));
        assert!(!is_exempt(None, Some(&map(&[(EXEMPT_KEY, "true")])), false));
    }

    /// The operator's keys beside labels and annotations: `exemptNamespaces`
    /// and `exemptHostNetworkPods`, each switchable; the pod's `"false"`
    /// still re-includes (most specific wins); `allowPodOptOut: false`
    /// does not touch the operator's keys.
    #[test]
    fn operator_keys_table() {
        let on = Settings::default();
        let off = Settings {
            exempt_namespaces: vec![],
            exempt_host_network: false,
            ..Settings::default()
        };
        let no_opt_out = Settings {
            pod_opt_out: false,
            ..Settings::default()
        };
        let extra = Settings {
            exempt_namespaces: vec!["kube-system".into(), "calico-system".into()],
            ..Settings::default()
        };
        let none = map(&[]);
        let reinclude = map(&[(EXEMPT_KEY, "false")]);
        let annotated = map(&[(EXEMPT_KEY, "true")]);
        let ns_label = map(&[(EXEMPT_KEY, "true")]);
        use Reason::*;
        type Map = BTreeMap<String, String>;
        type Row<'a> = (
            &'a Settings,
            &'a str,
            bool,
            &'a Map,
            Option<&'a Map>,
            Option<Reason>,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            // (settings, namespace, hostNetwork, pod annotations, namespace labels, want)
            (&on, "kube-system", false, &none, None, Some(ExemptNamespace)),
            (&on, "shop", true, &none, None, Some(HostNetwork)),
            (&on, "kube-system", true, &none, None, Some(ExemptNamespace)),
            (&on, "shop", false, &none, None, None),
            (&on, "kube-system-2", false, &none, None, None),
            // switched off
            (&off, "kube-system", false, &none, None, None),
            (&off, "shop", true, &none, None, None),
            // other switches leave them alone
            (&off, "shop", true, &annotated, None, Some(PodAnnotation)),
            (&off, "kube-system", false, &none, Some(&ns_label), Some(NamespaceLabel)),
            // the pod's "false" re-includes, whatever else says
            (&on, "kube-system", false, &reinclude, None, None),
            (&on, "shop", true, &reinclude, None, None),
            (&on, "kube-system", true, &reinclude, Some(&ns_label), None),
            // allowPodOptOut: false ignores the pod's "true", not the operator's keys
            (&no_opt_out, "shop", false, &annotated, None, None),
            (&no_opt_out, "kube-system", false, &annotated, None, Some(ExemptNamespace)),
            (&no_opt_out, "shop", true, &none, None, Some(HostNetwork)),
            (&no_opt_out, "shop", true, &reinclude, None, None),
            // operators add namespaces
            (&extra, "calico-system", false, &none, None, Some(ExemptNamespace)),
            (&on, "calico-system", false, &none, None, None),
            // the pod's own word names the reason first
            (&on, "kube-system", true, &annotated, None, Some(PodAnnotation)),
        ];
        for (settings, ns, host_network, annotations, labels, want) in table {
            let pod = Pod {
                namespace: ns,
                annotations: Some(annotations),
                host_network: *host_network,
            };
            assert_eq!(
                exemption(&pod, *labels, settings),
                *want,
                "{settings:?} ns {ns} hostNetwork {host_network} {annotations:?} {labels:?}"
            );
        }
    }
}
