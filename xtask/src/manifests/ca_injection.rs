//! What the CA-injection webhook's objects must keep (see
//! docs/deploy.md, "Trusted CA in pods"; deploy/components/ca-injection):
//!
//! - the MutatingWebhookConfiguration never blocks pod creation
//!   (`failurePolicy: Ignore`), is called only for namespaces labelled
//!   `egress-redirector/inject-ca=true`, declares `sideEffects: None` and a
//!   `timeoutSeconds` of at most [`MAX_TIMEOUT_SECS`];
//! - the webhook's service account is granted only [`GRANTS`], with the
//!   names limited where RBAC can limit them;
//! - its container runs as non-root, read-only, without capabilities.
use serde_json::Value;

use super::{name_of, roles_bound_to, strings, strings_or_objects};

pub const CONFIGURATION: &str = "egress-redirector-ca-injector";
pub const SERVICE_ACCOUNT: &str = "egress-redirector-ca-injector";
pub const LABEL: &str = "egress-redirector/inject-ca";
pub const MAX_TIMEOUT_SECS: i64 = 5;

/// (API group, resource, verb, the only names allowed or `None` for any).
pub const GRANTS: &[(&str, &str, &str, Option<&str>)] = &[
    ("", "namespaces", "list", None),
    ("", "namespaces", "watch", None),
    ("", "configmaps", "create", None),
    ("", "configmaps", "get", Some("egress-redirector-ca-bundle")),
    (
        "",
        "configmaps",
        "patch",
        Some("egress-redirector-ca-bundle"),
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "get",
        Some(CONFIGURATION),
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
        Some(CONFIGURATION),
    ),
    ("", "secrets", "create", None),
    (
        "",
        "secrets",
        "get",
        Some("egress-redirector-ca-injector-tls"),
    ),
    ("coordination.k8s.io", "leases", "create", None),
    ("coordination.k8s.io", "leases", "get", Some(CONFIGURATION)),
    (
        "coordination.k8s.io",
        "leases",
        "update",
        Some(CONFIGURATION),
    ),
];

/// Violations (empty: none, also when the component is not rendered).
pub fn violations(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for config in objects
        .iter()
        .filter(|o| o["kind"] == "MutatingWebhookConfiguration" && name_of(o) == CONFIGURATION)
    {
        for hook in strings_or_objects(&config["webhooks"]) {
            let what = format!("webhook {}", hook["name"].as_str().unwrap_or("?"));
            if hook["failurePolicy"] != "Ignore" {
                out.push(format!(
                    "{what}: failurePolicy must be Ignore (an outage must not block pods)"
                ));
            }
            if hook["sideEffects"] != "None" {
                out.push(format!("{what}: sideEffects must be None"));
            }
            if hook["timeoutSeconds"]
                .as_i64()
                .is_none_or(|t| t > MAX_TIMEOUT_SECS)
            {
                out.push(format!(
                    "{what}: timeoutSeconds must be set, at most {MAX_TIMEOUT_SECS}"
                ));
            }
            if hook["namespaceSelector"]["matchLabels"][LABEL] != "true" {
                out.push(format!("{what}: namespaceSelector must match {LABEL}=true"));
            }
        }
    }
    check_rbac(objects, &mut out);
    for deploy in objects.iter().filter(|o| {
        o["kind"] == "Deployment"
            && o["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    }) {
        let pod = &deploy["spec"]["template"]["spec"];
        for c in strings_or_objects(&pod["containers"]) {
            let sc = &c["securityContext"];
            let what = format!("Deployment {} container {}", name_of(deploy), c["name"]);
            if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
                out.push(format!(
                    "{what}: must have a read-only root and no privilege escalation"
                ));
            }
            if strings(&sc["capabilities"]["drop"]) != ["ALL"]
                || !sc["capabilities"]["add"].is_null()
            {
                out.push(format!("{what}: must drop ALL capabilities and add none"));
            }
            if pod["securityContext"]["runAsNonRoot"] != true && sc["runAsNonRoot"] != true {
                out.push(format!("{what}: must run as non-root"));
            }
        }
    }
    out
}

fn check_rbac(objects: &[Value], out: &mut Vec<String>) {
    for (what, role_obj) in roles_bound_to(objects, SERVICE_ACCOUNT, out) {
        for rule in strings_or_objects(&role_obj["rules"]) {
            let names = strings(&rule["resourceNames"]);
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        let allowed = GRANTS
                            .iter()
                            .find(|(g, r, v, _)| *g == group && *r == resource && *v == verb);
                        match allowed {
                            None => out.push(format!(
                                "{what}: grants {verb} on {resource} in group {group:?}, not needed"
                            )),
                            Some((_, _, _, Some(only)))
                                if names.is_empty() || names.iter().any(|n| n != only) =>
                            {
                                out.push(format!(
                                    "{what}: {verb} on {resource} must be limited to resourceNames [{only}]"
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Vec<Value> {
        vec![
            json!({"kind": "MutatingWebhookConfiguration", "metadata": {"name": CONFIGURATION},
                "webhooks": [{"name": "w", "failurePolicy": "Ignore", "sideEffects": "None",
                    "timeoutSeconds": 5, "namespaceSelector": {"matchLabels": {LABEL: "true"}}}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "r"}, "rules": [
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"],
                 "resourceNames": ["egress-redirector-ca-bundle"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "b"},
                "roleRef": {"kind": "ClusterRole", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}]}),
            json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {
                "serviceAccountName": SERVICE_ACCOUNT, "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "webhook", "securityContext": {
                    "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}}]}}}}),
        ]
    }

    #[test]
    fn the_good_objects_pass_and_each_violation_fails() {
        assert_eq!(violations(&good()), Vec::<String>::new());
        let cases: &[(usize, &str, Value, &str)] = &[
            (
                0,
                "/webhooks/0/failurePolicy",
                json!("Fail"),
                "failurePolicy",
            ),
            (0, "/webhooks/0/sideEffects", json!("Some"), "sideEffects"),
            (0, "/webhooks/0/timeoutSeconds", json!(30), "timeoutSeconds"),
            (
                0,
                "/webhooks/0/namespaceSelector",
                json!({}),
                "namespaceSelector",
            ),
            (
                1,
                "/rules/0/verbs",
                json!(["list", "watch", "delete"]),
                "grants delete on namespaces",
            ),
            (1, "/rules/1/resourceNames", json!([]), "resourceNames"),
            (
                1,
                "/rules/0/resources",
                json!(["pods"]),
                "grants list on pods",
            ),
            (
                3,
                "/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem",
                json!(false),
                "read-only",
            ),
            (
                3,
                "/spec/template/spec/securityContext/runAsNonRoot",
                json!(false),
                "non-root",
            ),
        ];
        for (i, pointer, value, want) in cases {
            let mut objs = good();
            *objs[*i].pointer_mut(pointer).unwrap() = value.clone();
            let v = violations(&objs);
            assert!(v.iter().any(|m| m.contains(want)), "{pointer}: {v:?}");
        }
    }
}
