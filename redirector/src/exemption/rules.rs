//! Which pods are exempt: a pure decision over the namespace's label and
//! the pod's annotations.
//!
//! A pod is exempt when its namespace has the label
//! `egress-redirector/exempt=true`, or the pod has the annotation
//! `egress-redirector/exempt: "true"` or AKS's
//! `kubernetes.azure.com/no-http-proxy-vars: "true"` (so AKS manifests work
//! unchanged). The pod annotation `egress-redirector/exempt: "false"`
//! re-includes a pod, whatever else says: the most specific word wins, and
//! it errs towards the proxy.
//!
//! With `allowPodOptOut: false` a pod cannot exempt itself: only the
//! namespace label exempts (changing it needs RBAC on namespaces, which a
//! pod's author usually lacks). The re-including `"false"` still counts, as
//! it can only send more traffic through the proxy.
use std::collections::BTreeMap;

/// Namespace label and pod annotation of our own.
pub const EXEMPT_KEY: &str = "egress-redirector/exempt";
/// AKS's pod annotation that keeps proxy variables out of a pod.
pub const AKS_NO_PROXY_KEY: &str = "kubernetes.azure.com/no-http-proxy-vars";

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

/// Whether a pod is exempt, from its namespace's labels and its own
/// annotations; `pod_opt_out` is the configuration's `allowPodOptOut`.
pub fn is_exempt(
    namespace_labels: Option<&BTreeMap<String, String>>,
    pod_annotations: Option<&BTreeMap<String, String>>,
    pod_opt_out: bool,
) -> bool {
    let namespace = flag(namespace_labels, EXEMPT_KEY) == Some(true);
    match flag(pod_annotations, EXEMPT_KEY) {
        Some(false) => false,
        Some(true) if pod_opt_out => true,
        _ => (pod_opt_out && flag(pod_annotations, AKS_NO_PROXY_KEY) == Some(true)) || namespace,
    }
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
}
