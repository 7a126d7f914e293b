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
/// annotations.
pub fn is_exempt(
    namespace_labels: Option<&BTreeMap<String, String>>,
    pod_annotations: Option<&BTreeMap<String, String>>,
) -> bool {
    match flag(pod_annotations, EXEMPT_KEY) {
        Some(pod) => pod,
        None => {
            flag(pod_annotations, AKS_NO_PROXY_KEY) == Some(true)
                || flag(namespace_labels, EXEMPT_KEY) == Some(true)
        }
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
                is_exempt(Some(&ns), Some(&pod)),
                *want,
                "ns {ns:?} pod {pod:?}"
            );
        }
    }

    #[test]
    fn missing_maps_are_empty() {
        assert!(!is_exempt(None, None));
        assert!(is_exempt(Some(&map(&[(EXEMPT_KEY, "true")])), None));
        assert!(is_exempt(None, Some(&map(&[(EXEMPT_KEY, "true")]))));
    }
}
