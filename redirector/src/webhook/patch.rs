//! The JSON Patch (RFC 6902) that injects the trust bundle into one pod.
//!
//! Every container, init containers included, gets the bundle's ConfigMap
//! mounted read-only at [`MOUNT_DIR`], the PEM file over the system bundle
//! paths of Debian/Ubuntu/Alpine and RHEL ([`SYSTEM_PATHS`], `subPath`
//! mounts), and the variables of [`PEM_VARIABLES`] plus the JVM's
//! truststore options in `JAVA_TOOL_OPTIONS`.
//!
//! What the pod set itself wins: a variable it sets is kept (and
//! `JAVA_TOOL_OPTIONS` is extended, not replaced, unless it already names a
//! truststore), a path it mounts (or a directory above it) is left, and the
//! pod's [`STATUS_ANNOTATION`] lists each such case. When the pod cannot be
//! patched safely (our volume name taken by another volume) it is admitted
//! unchanged with a warning: never a pod that cannot start.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, VolumeMount};
use serde_json::{Value, json};

use super::{
    BUNDLE_NAME, MOUNT_DIR, OPT_OUT_ANNOTATION, P12_KEY, P12_PASSWORD, PEM_KEY, STATUS_ANNOTATION,
    review::Answer,
};

/// The system bundle files replaced by ours (each a `subPath` mount):
/// Debian/Ubuntu/Alpine (OpenSSL, Go, curl), RHEL/Fedora, and the
/// OpenSSL/LibreSSL `cert.pem` of Alpine and others.
pub const SYSTEM_PATHS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Variables set to the PEM bundle: OpenSSL (and what links it: curl,
/// Python's `ssl`, Ruby), Python `requests`, Node's extra CAs.
pub const PEM_VARIABLES: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"];

/// The JVM reads this variable's options before its command line's.
pub const JAVA_VARIABLE: &str = "JAVA_TOOL_OPTIONS";

/// The PEM bundle's path in containers.
pub fn pem_path() -> String {
    format!("{MOUNT_DIR}/{PEM_KEY}")
}

/// The JVM options that make our truststore the default one.
pub fn java_options() -> String {
    format!(
        "-Djavax.net.ssl.trustStore={MOUNT_DIR}/{P12_KEY} -Djavax.net.ssl.trustStoreType=PKCS12 \
         -Djavax.net.ssl.trustStorePassword={P12_PASSWORD}"
    )
}

/// The admission answer for `pod`.
pub fn mutate(pod: &Pod) -> Answer {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations
        .get(OPT_OUT_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    {
        return status_only(&annotations, "skipped: opted out by annotation");
    }
    let Some(spec) = &pod.spec else {
        return Answer {
            patch: None,
            warnings: vec!["egress-redirector: the pod has no spec; CA not injected".into()],
        };
    };
    let mut injected = false;
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == BUNDLE_NAME)
    {
        let ours = volume
            .config_map
            .as_ref()
            .is_some_and(|c| c.name == BUNDLE_NAME);
        if !ours {
            let why = format!(
                "skipped: the pod already has a volume named {BUNDLE_NAME} that is not the bundle"
            );
            let mut answer = status_only(&annotations, &why);
            answer
                .warnings
                .push(format!("egress-redirector: CA not injected: {why}"));
            return answer;
        }
        // A re-invocation (another webhook changed the pod after us): only
        // containers added since lack our mounts.
        injected = true;
    }

    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for (list, containers) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", &spec.containers[..]),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let has_ours = c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == BUNDLE_NAME);
            if has_ours {
                continue;
            }
            container_ops(&format!("/spec/{list}/{i}"), c, &mut ops, &mut kept);
        }
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        // Not in a create request from the API; if ever there, not ours to change.
        kept.push("ephemeral containers: left as they are".to_owned());
    }
    if injected {
        return Answer {
            patch: (!ops.is_empty()).then_some(ops),
            warnings: Vec::new(),
        };
    }
    let mut status = "injected".to_owned();
    if !kept.is_empty() {
        status = format!("{status}; kept: {}", kept.join("; "));
    }
    let volume = json!({"name": BUNDLE_NAME,
        "configMap": {"name": BUNDLE_NAME, "defaultMode": 0o444}});
    let mut patch = vec![annotation_op(&annotations, &status)];
    patch.push(match &spec.volumes {
        None => json!({"op": "add", "path": "/spec/volumes", "value": [volume]}),
        Some(_) => json!({"op": "add", "path": "/spec/volumes/-", "value": volume}),
    });
    patch.extend(ops);
    Answer {
        patch: Some(patch),
        warnings: Vec::new(),
    }
}

/// Only the status annotation (the pod is otherwise unchanged).
fn status_only(annotations: &std::collections::BTreeMap<String, String>, status: &str) -> Answer {
    Answer {
        patch: Some(vec![annotation_op(annotations, status)]),
        warnings: Vec::new(),
    }
}

fn annotation_op(annotations: &std::collections::BTreeMap<String, String>, status: &str) -> Value {
    if annotations.is_empty() {
        // Also when the map is absent: "add" of the whole map either way.
        json!({"op": "add", "path": "/metadata/annotations",
               "value": {STATUS_ANNOTATION: status}})
    } else {
        json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(STATUS_ANNOTATION)),
               "value": status})
    }
}

/// A JSON Pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Mounts and variables for one container at `at` (`/spec/containers/0`).
fn container_ops(at: &str, c: &Container, ops: &mut Vec<Value>, kept: &mut Vec<String>) {
    let existing: &[VolumeMount] = c.volume_mounts.as_deref().unwrap_or(&[]);
    let mut mounts = Vec::new();
    let dir_free = match blocking_mount(existing, MOUNT_DIR) {
        Some(by) => {
            kept.push(format!(
                "{}: {MOUNT_DIR} (mounted by the pod at {by})",
                c.name
            ));
            false
        }
        None => {
            mounts.push(json!({"name": BUNDLE_NAME, "mountPath": MOUNT_DIR, "readOnly": true}));
            true
        }
    };
    for path in SYSTEM_PATHS {
        match blocking_mount(existing, path) {
            Some(by) => kept.push(format!("{}: {path} (mounted by the pod at {by})", c.name)),
            None => mounts.push(json!({"name": BUNDLE_NAME, "mountPath": path,
                                       "subPath": PEM_KEY, "readOnly": true})),
        }
    }
    append(
        ops,
        &format!("{at}/volumeMounts"),
        c.volume_mounts.is_none(),
        mounts,
    );

    let env: &[EnvVar] = c.env.as_deref().unwrap_or(&[]);
    let mut added = Vec::new();
    if !dir_free {
        // Variables would point at files that are not there.
        kept.push(format!(
            "{}: no variables set (the bundle directory is not mounted)",
            c.name
        ));
        append(ops, &format!("{at}/env"), c.env.is_none(), added);
        return;
    }
    let set: BTreeSet<&str> = env.iter().map(|e| e.name.as_str()).collect();
    for var in PEM_VARIABLES {
        if set.contains(var) {
            kept.push(format!("{}: {var} (set by the pod)", c.name));
        } else {
            added.push(json!({"name": var, "value": pem_path()}));
        }
    }
    // The last definition is the one in force (as the kubelet reads env).
    match env.iter().rposition(|e| e.name == JAVA_VARIABLE) {
        None => added.push(json!({"name": JAVA_VARIABLE, "value": java_options()})),
        Some(i) => match (&env[i].value, &env[i].value_from) {
            (_, Some(_)) => kept.push(format!(
                "{}: {JAVA_VARIABLE} (set from a reference, not merged)",
                c.name
            )),
            (Some(v), None) if v.contains("javax.net.ssl.trustStore=") => kept.push(format!(
                "{}: {JAVA_VARIABLE} (names its own truststore)",
                c.name
            )),
            (v, None) => {
                let v = v.as_deref().unwrap_or("").trim();
                let merged = if v.is_empty() {
                    java_options()
                } else {
                    format!("{v} {}", java_options())
                };
                // "add", not "replace": an entry may have no value at all
                // (an empty variable), and "add" on a member sets it either way.
                ops.push(json!({"op": "add", "path": format!("{at}/env/{i}/value"),
                                "value": merged}));
                kept.push(format!("{}: {JAVA_VARIABLE} (extended)", c.name));
            }
        },
    }
    append(ops, &format!("{at}/env"), c.env.is_none(), added);
}

/// Adds `items` to the array at `path`: the whole array when it is absent,
/// else one "add ... /-" each.
fn append(ops: &mut Vec<Value>, path: &str, absent: bool, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if absent {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    } else {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        }
    }
}

/// The pod's mount that stands in the way of a mount at `path`: the same
/// path, a directory above it (our mount point would have to be made inside
/// the pod's volume, which may be read-only), or a mount below it.
fn blocking_mount(existing: &[VolumeMount], path: &str) -> Option<String> {
    existing
        .iter()
        .map(|m| match m.mount_path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        })
        .find(|&m| m == path || within(path, m) || within(m, path))
        .map(str::to_owned)
}

/// Whether `path` is strictly below directory `dir`.
fn within(path: &str, dir: &str) -> bool {
    dir == "/" && path != "/"
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::review;

    /// A real AdmissionReview around `pod` (JSON), decoded as the server does.
    fn answer_for(pod: &str) -> Answer {
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
              "uid":"u1","kind":{{"group":"","version":"v1","kind":"Pod"}},
              "resource":{{"group":"","version":"v1","resource":"pods"}},
              "namespace":"shop","operation":"CREATE","userInfo":{{"username":"alice"}},
              "object":{pod},"oldObject":null,"dryRun":false}}}}"#
        );
        let req = review::decode(body.as_bytes()).unwrap();
        mutate(&req.pod().unwrap())
    }

    /// The patched pod, by applying the patch with a minimal RFC 6902 "add"
    /// (all this module emits; "replace" checked as the standard says).
    fn apply(pod: &str, answer: &Answer) -> Value {
        let mut doc: Value = serde_json::from_str(pod).unwrap();
        for op in answer.patch.as_ref().unwrap() {
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            let target = doc
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("no {parent}"));
            match (op["op"].as_str().unwrap(), target) {
                ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
                ("add" | "replace", Value::Object(o)) => {
                    if op["op"] == "replace" {
                        assert!(o.contains_key(&last), "replace of missing {path}");
                    }
                    o.insert(last, op["value"].clone());
                }
                ("replace", Value::Array(a)) => {
                    a[last.parse::<usize>().unwrap()] = op["value"].clone()
                }
                (o, t) => panic!("unexpected {o} on {t}"),
            }
        }
        doc
    }

    fn env_of(c: &Value, name: &str) -> Option<String> {
        c["env"]
            .as_array()?
            .iter()
            .rev()
            .find(|e| e["name"] == name)?["value"]
            .as_str()
            .map(str::to_owned)
    }

    fn mount_paths(c: &Value) -> Vec<String> {
        c["volumeMounts"].as_array().map_or(vec![], |m| {
            m.iter()
                .map(|m| m["mountPath"].as_str().unwrap().to_owned())
                .collect()
        })
    }

    const PLAIN: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},
        "spec":{"containers":[{"name":"web","image":"nginx"}]}}"#;

    #[test]
    fn a_plain_pod_gets_the_volume_mounts_variables_and_status() {
        let answer = answer_for(PLAIN);
        assert!(answer.warnings.is_empty());
        let pod = apply(PLAIN, &answer);
        assert_eq!(
            pod["metadata"]["annotations"][STATUS_ANNOTATION],
            "injected"
        );
        assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], BUNDLE_NAME);
        let c = &pod["spec"]["containers"][0];
        let mut want = vec![MOUNT_DIR.to_owned()];
        want.extend(SYSTEM_PATHS.iter().map(|s| s.to_string()));
        assert_eq!(mount_paths(c), want);
        for m in c["volumeMounts"].as_array().unwrap() {
            assert_eq!(m["readOnly"], true);
        }
        for var in PEM_VARIABLES {
            assert_eq!(
                env_of(c, var).unwrap(),
                "/etc/egress-redirector/ca/ca-certificates.crt"
            );
        }
        assert_eq!(env_of(c, JAVA_VARIABLE).unwrap(), java_options());
        assert!(java_options().contains("trustStoreType=PKCS12"));
    }

    #[test]
    fn init_containers_and_existing_lists_are_appended_to() {
        let pod = r#"{"metadata":{"name":"p","annotations":{"a/b":"c"}},
          "spec":{"volumes":[{"name":"data","emptyDir":{}}],
            "initContainers":[{"name":"fetch","image":"curl","env":[{"name":"X","value":"1"}]}],
            "containers":[{"name":"app","image":"app","volumeMounts":[{"name":"data","mountPath":"/data"}]}]}}"#;
        let answer = answer_for(pod);
        let out = apply(pod, &answer);
        assert_eq!(out["metadata"]["annotations"]["a/b"], "c");
        assert_eq!(
            out["metadata"]["annotations"][STATUS_ANNOTATION],
            "injected"
        );
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(env_of(init, "X").unwrap(), "1");
        assert!(env_of(init, "SSL_CERT_FILE").is_some());
        assert_eq!(mount_paths(init).len(), 4);
        let app = &out["spec"]["containers"][0];
        assert_eq!(mount_paths(app)[0], "/data");
        assert_eq!(mount_paths(app).len(), 5);
    }

    #[test]
    fn what_the_pod_sets_is_kept_and_said() {
        let pod = r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"app",
            "env":[{"name":"SSL_CERT_FILE","value":"/mine.pem"},
                   {"name":"JAVA_TOOL_OPTIONS","value":"-Xmx512m"}],
            "volumeMounts":[{"name":"certs","mountPath":"/etc/ssl/certs/"},
                            {"name":"x","mountPath":"/etc/ssl/cert.pem"}]}],
            "volumes":[{"name":"certs","configMap":{"name":"corp"}},{"name":"x","emptyDir":{}}]}}"#;
        let answer = answer_for(pod);
        let out = apply(pod, &answer);
        let c = &out["spec"]["containers"][0];
        assert_eq!(env_of(c, "SSL_CERT_FILE").unwrap(), "/mine.pem");
        assert_eq!(
            env_of(c, JAVA_VARIABLE).unwrap(),
            format!("-Xmx512m {}", java_options())
        );
        assert!(env_of(c, "REQUESTS_CA_BUNDLE").is_some());
        // The pod's /etc/ssl/certs directory and cert.pem mounts stay; only
        // the RHEL path and our directory are added.
        assert_eq!(
            mount_paths(c)[2..],
            [
                MOUNT_DIR.to_owned(),
                "/etc/pki/tls/certs/ca-bundle.crt".to_owned()
            ]
        );
        let status = out["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap();
        for said in [
            "app: /etc/ssl/certs/ca-certificates.crt (mounted by the pod at /etc/ssl/certs)",
            "app: /etc/ssl/cert.pem (mounted by the pod at /etc/ssl/cert.pem)",
            "app: SSL_CERT_FILE (set by the pod)",
            "app: JAVA_TOOL_OPTIONS (extended)",
        ] {
            assert!(status.contains(said), "{said} not in {status}");
        }
    }

    #[test]
    fn an_empty_java_variable_gets_ours() {
        // Found by the admission_review fuzz target: no "value" member, so
        // a "replace" would not apply and the pod would be refused.
        let pod = r#"{"metadata":{},"spec":{"containers":[
            {"name":"a","env":[{"name":"JAVA_TOOL_OPTIONS"}]}]}}"#;
        let answer = answer_for(pod);
        for op in answer.patch.as_ref().unwrap() {
            assert_ne!(op["op"], "replace", "{op}");
        }
        let out = apply(pod, &answer);
        assert_eq!(
            env_of(&out["spec"]["containers"][0], JAVA_VARIABLE).unwrap(),
            java_options()
        );
    }

    #[test]
    fn a_java_truststore_or_reference_is_left_alone() {
        let pod = r#"{"metadata":{},"spec":{"containers":[
            {"name":"a","env":[{"name":"JAVA_TOOL_OPTIONS","value":"-Djavax.net.ssl.trustStore=/x.jks"}]},
            {"name":"b","env":[{"name":"JAVA_TOOL_OPTIONS","valueFrom":{"configMapKeyRef":{"name":"j","key":"k"}}}]}]}}"#;
        let out = apply(pod, &answer_for(pod));
        assert_eq!(
            env_of(&out["spec"]["containers"][0], JAVA_VARIABLE).unwrap(),
            "-Djavax.net.ssl.trustStore=/x.jks"
        );
        assert!(out["spec"]["containers"][1]["env"][0]["valueFrom"].is_object());
        let status = out["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(
            status.contains("a: JAVA_TOOL_OPTIONS (names its own truststore)"),
            "{status}"
        );
        assert!(
            status.contains("b: JAVA_TOOL_OPTIONS (set from a reference, not merged)"),
            "{status}"
        );
    }

    #[test]
    fn opt_out_taken_name_reinvocation_and_odd_specs() {
        let pod = r#"{"metadata":{"annotations":{"egress-redirector/inject-ca":"false"}},
            "spec":{"containers":[{"name":"a"}]}}"#;
        let out = apply(pod, &answer_for(pod));
        assert_eq!(
            out["metadata"]["annotations"][STATUS_ANNOTATION],
            "skipped: opted out by annotation"
        );
        assert!(out["spec"].get("volumes").is_none());

        let pod = r#"{"metadata":{},"spec":{"containers":[{"name":"a"}],
            "volumes":[{"name":"egress-redirector-ca-bundle","emptyDir":{}}]}}"#;
        let answer = answer_for(pod);
        assert_eq!(answer.warnings.len(), 1, "{answer:?}");
        assert_eq!(answer.patch.as_ref().unwrap().len(), 1, "only the status");

        // Already injected (reinvocationPolicy): unchanged, no patch; a
        // container added since by another webhook gets its mounts alone.
        let mut once = apply(PLAIN, &answer_for(PLAIN));
        assert_eq!(answer_for(&once.to_string()), Answer::default());
        once["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        let again = apply(&once.to_string(), &answer_for(&once.to_string()));
        assert_eq!(again["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(mount_paths(&again["spec"]["containers"][1]).len(), 4);
        assert_eq!(
            again["spec"]["containers"][0],
            once["spec"]["containers"][0]
        );

        // A mount of "/" or of our own directory's parent blocks everything
        // below it; variables are not set without the directory.
        let pod = r#"{"metadata":{},"spec":{"containers":[{"name":"a",
            "volumeMounts":[{"name":"v","mountPath":"/etc"}]}],"volumes":[{"name":"v","emptyDir":{}}]}}"#;
        let out = apply(pod, &answer_for(pod));
        let c = &out["spec"]["containers"][0];
        assert_eq!(mount_paths(c), vec!["/etc"]);
        assert!(c.get("env").is_none());
        let status = out["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(status.contains("no variables set"), "{status}");

        // readOnlyRootFilesystem: mounts are made before the root turns
        // read-only, so such a pod is patched as any other.
        let pod = r#"{"metadata":{},"spec":{"containers":[{"name":"a",
            "securityContext":{"readOnlyRootFilesystem":true}}]}}"#;
        let out = apply(pod, &answer_for(pod));
        assert_eq!(mount_paths(&out["spec"]["containers"][0]).len(), 4);

        // Ephemeral containers (never in a create from the API) are left.
        let pod = r#"{"metadata":{},"spec":{"containers":[{"name":"a"}],
            "ephemeralContainers":[{"name":"dbg","image":"busybox"}]}}"#;
        let out = apply(pod, &answer_for(pod));
        assert!(out["spec"]["ephemeralContainers"][0].get("env").is_none());
        let status = out["metadata"]["annotations"][STATUS_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(status.contains("ephemeral containers: left"), "{status}");
    }

    #[test]
    fn mount_blocking_is_by_path_components() {
        let m = |p: &str| VolumeMount {
            mount_path: p.into(),
            name: "v".into(),
            ..Default::default()
        };
        assert_eq!(
            blocking_mount(&[m("/etc/ssl")], "/etc/ssl/cert.pem").as_deref(),
            Some("/etc/ssl")
        );
        assert_eq!(blocking_mount(&[m("/etc/ss")], "/etc/ssl/cert.pem"), None);
        assert_eq!(
            blocking_mount(&[m("/etc/ssl/cert.pem.d")], "/etc/ssl/cert.pem"),
            None
        );
        assert_eq!(
            blocking_mount(&[m("/")], "/etc/ssl/cert.pem").as_deref(),
            Some("/")
        );
        assert!(blocking_mount(&[m("/etc/egress-redirector/ca/x")], MOUNT_DIR).is_some());
    }
}
