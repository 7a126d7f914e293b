//! Offline validation of `deploy/`: every kustomization renders with
//! `kubectl kustomize`, and every rendered object validates strictly (unknown
//! fields, missing required ones, wrong types) against the Kubernetes API
//! schemas bundled by PyPI's `kubernetes-validate`. No API server is needed.
//!
//! Each rendering is also checked for least privilege ([`least_privilege`]):
//! the DaemonSets' containers drop every capability and add only the ones
//! listed in [`ALLOWED_CAPABILITIES`], run with a read-only root filesystem
//! and without privilege escalation, and the daemon's service account can
//! only read pods and namespaces, list and watch nodes, read the Service
//! and the EndpointSlice named `kubernetes` (limited by `resourceNames`),
//! plus, only where the daemon runs with `--remove-taint` (the
//! startup-taint component), get and patch nodes; with `--kube`, it must be
//! able to list and watch each of these. For placement ([`placement`]): the
//! daemon runs on Linux nodes only, never on virtual-kubelet or Fargate
//! nodes, as system-node-critical, with memory requests and limits and no
//! CPU limit. And for rolling updates ([`rollout::violations`]): a surge pod
//! beside the old one, no host port that would keep it from being
//! scheduled, and a grace period longer than the drain. And for the
//! CA-injection webhook ([`ca_injection::violations`]): a failure policy that
//! never blocks pods, its namespace selector, and its minimal RBAC.
//!
//! Run by `cargo xtask test` (stage `manifests`) and alone by
//! `cargo xtask manifests`. The tools come from `cargo xtask setup`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::counts::Counts;
pub mod ca_injection;
pub mod kind_plan;
pub mod rollout;

use crate::toolchain::{self, Paths, describe};

/// Kubernetes versions every object is validated against: the oldest the
/// manifests support (the downward API's `status.hostIPs` needs 1.29) and
/// the newest the validator bundles.
pub const KUBE_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// Renderings that need a newer Kubernetes than the oldest above (the
/// admission-policy component's ValidatingAdmissionPolicy v1 is 1.30's):
/// validated against that version instead of the older ones.
pub const MIN_VERSIONS: &[(&str, &str)] = &[("deploy/overlays/hardened", "1.30.0")];

/// The versions one rendering (by its path under the repository) is
/// validated against.
pub fn versions_for(rel: &Path) -> Vec<&'static str> {
    let number = |v: &str| -> Vec<u32> { v.split('.').filter_map(|n| n.parse().ok()).collect() };
    let Some((_, min)) = MIN_VERSIONS.iter().find(|(dir, _)| rel == Path::new(dir)) else {
        return KUBE_VERSIONS.to_vec();
    };
    let mut out = vec![*min];
    out.extend(
        KUBE_VERSIONS
            .iter()
            .filter(|v| number(v) > number(min))
            .copied(),
    );
    out
}

/// The directories to render: `deploy/base`, `deploy/uninstall`, and every
/// overlay under `deploy/overlays` (components are rendered through the
/// overlays that use them).
pub fn kustomizations(paths: &Paths) -> Result<Vec<PathBuf>> {
    let deploy = paths.root.join("deploy");
    let mut dirs = vec![deploy.join("base"), deploy.join("uninstall")];
    let overlays = deploy.join("overlays");
    let mut found: Vec<PathBuf> = fs::read_dir(&overlays)
        .with_context(|| format!("reading {}", overlays.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    dirs.extend(found);
    for dir in &dirs {
        if !dir.join("kustomization.yaml").is_file() {
            bail!("{} has no kustomization.yaml", dir.display());
        }
    }
    Ok(dirs)
}

/// One validator line: `INFO FILE passed for resource KIND/NAME against
/// version V` or `ERROR FILE did not validate for resource KIND/NAME ...`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
}

pub fn parse_validator_line(line: &str) -> Option<Verdict> {
    if line.contains(" passed for resource ") {
        Some(Verdict::Passed)
    } else if line.contains(" did not validate for resource ") {
        Some(Verdict::Failed)
    } else {
        None
    }
}

/// `cargo xtask manifests`: [`check`], failing if anything failed.
pub fn validate(paths: &Paths) -> Result<()> {
    fail_on(check(paths)?)
}

/// An error when `counts` has failures.
pub fn fail_on(counts: Counts) -> Result<()> {
    if counts.failed > 0 {
        bail!("{} manifest check(s) failed", counts.failed);
    }
    Ok(())
}

/// Renders and validates everything; prints one line per failure and ends
/// with `manifests: N passed, M failed` (one count per object and Kubernetes
/// version; a kustomization that does not render counts as one failure).
/// Errors only when the tools are missing.
pub fn check(paths: &Paths) -> Result<Counts> {
    let counts = check_counting(paths)?;
    println!("manifests: {counts}");
    Ok(counts)
}

fn check_counting(paths: &Paths) -> Result<Counts> {
    let kubectl = toolchain::kubectl(paths).context(
        "no working kubectl (neither on PATH nor in target/tools/kubectl); run `cargo xtask setup`",
    )?;
    let validator = paths.validator();
    if !validator.is_file() {
        bail!(
            "{} is missing; run `cargo xtask setup`",
            validator.display()
        );
    }
    let out_dir = paths.root.join("target/deploy-check");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let mut counts = Counts::default();
    for dir in kustomizations(paths)? {
        let rel = dir.strip_prefix(&paths.root).unwrap_or(&dir);
        let name = rel.to_string_lossy().replace('/', "_");
        let rendered = out_dir.join(format!("{name}.yaml"));

        let mut render = Command::new(&kubectl);
        render.arg("kustomize").arg(&dir).stdin(Stdio::null());
        let out = render
            .output()
            .with_context(|| format!("starting `{}`", describe(&render)))?;
        if !out.status.success() {
            println!(
                "FAIL render {}: {}",
                rel.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            counts.failed += 1;
            continue;
        }
        fs::write(&rendered, &out.stdout)
            .with_context(|| format!("writing {}", rendered.display()))?;
        let objects = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("kind: "))
            .count();
        println!("rendered {} ({objects} objects)", rel.display());

        match rendered_objects(paths, &rendered) {
            Ok(docs) => {
                let mut checks = vec![
                    ("least privilege", least_privilege(&docs)),
                    ("placement", placement(&docs)),
                    ("rollout", rollout::violations(&docs)),
                    ("ca-injection", ca_injection::violations(&docs)),
                ];
                if rel == Path::new(kind_plan::DEMO_OVERLAY) {
                    let plan = kind_plan::violations(&docs, kind_plan::KIND_CONFIG);
                    checks.push(("kind-e2e plan", plan));
                }
                for (check, violations) in checks {
                    for v in &violations {
                        println!("FAIL {check} {}: {v}", rel.display());
                    }
                    if violations.is_empty() {
                        println!("  {} {check}: ok", rel.display());
                        counts.passed += 1;
                    } else {
                        counts.failed += violations.len() as u64;
                    }
                }
            }
            Err(e) => {
                println!("FAIL least privilege {}: {e:#}", rel.display());
                counts.failed += 1;
            }
        }
        validate_file(&validator, rel, &rendered, objects, &mut counts)?;
    }

    // What kind-e2e applies besides the overlay, with a made-up origin
    // address: valid objects, like the overlay's.
    let rel = Path::new("kind-e2e runtime objects");
    let rendered = out_dir.join("kind-e2e-runtime.yaml");
    let text = kind_plan::runtime_objects("172.18.0.9");
    fs::write(&rendered, &text).with_context(|| format!("writing {}", rendered.display()))?;
    let objects = text.lines().filter(|l| l.starts_with("kind: ")).count();
    validate_file(&validator, rel, &rendered, objects, &mut counts)?;
    Ok(counts)
}

/// Validates one rendered file (`objects` objects) against every version
/// `rel` needs, counting each object's verdict.
fn validate_file(
    validator: &Path,
    rel: &Path,
    rendered: &Path,
    objects: usize,
    counts: &mut Counts,
) -> Result<()> {
    for version in versions_for(rel) {
        let mut check = Command::new(validator);
        check
            .args(["--strict", "--no-warn", "-k", version])
            .arg(rendered)
            .stdin(Stdio::null());
        let out = check
            .output()
            .with_context(|| format!("starting `{}`", describe(&check)))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut passed, mut failed) = (0u64, 0u64);
        for line in text.lines() {
            match parse_validator_line(line) {
                Some(Verdict::Passed) => passed += 1,
                Some(Verdict::Failed) => {
                    failed += 1;
                    println!("FAIL {line}");
                }
                None => {}
            }
        }
        // A validator that failed without naming an object (a YAML
        // error, a crash) or saw fewer objects than rendered still fails.
        if (!out.status.success() && failed == 0) || passed + failed < objects as u64 {
            println!(
                "FAIL validate {} against {version} ({}): {}",
                rel.display(),
                out.status,
                text.trim()
            );
            failed += 1;
        }
        println!(
            "  {} against Kubernetes {version}: {passed} passed, {failed} failed",
            rel.display()
        );
        counts.passed += passed;
        counts.failed += failed;
    }
    Ok(())
}

/// `dir` rendered by `kubectl kustomize`, as JSON objects.
pub fn render(paths: &Paths, dir: &Path) -> Result<Vec<Value>> {
    let kubectl =
        toolchain::kubectl(paths).context("no working kubectl; run `cargo xtask setup`")?;
    let mut render = Command::new(&kubectl);
    render.arg("kustomize").arg(dir).stdin(Stdio::null());
    let out = render
        .output()
        .with_context(|| format!("starting `{}`", describe(&render)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(&render),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out_dir = paths.root.join("target/deploy-check");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let rendered = out_dir.join("render.yaml");
    fs::write(&rendered, &out.stdout).with_context(|| format!("writing {}", rendered.display()))?;
    rendered_objects(paths, &rendered)
}

/// The rendered YAML as JSON objects, converted by the validator venv's
/// Python (PyYAML comes with kubernetes-validate), so the checks below need
/// no YAML crate.
fn rendered_objects(paths: &Paths, rendered: &Path) -> Result<Vec<Value>> {
    let python = paths.validator_venv().join("bin/python");
    let mut cmd = Command::new(&python);
    cmd.args([
        "-c",
        "import json, sys, yaml\n\
         json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
    ])
    .arg(rendered)
    .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the converted manifests")
}

/// The daemon's service account, whose RBAC is checked.
pub const SERVICE_ACCOUNT: &str = "egress-redirector";

/// Capabilities each container of our DaemonSets may add (all others drop
/// ALL and add nothing). The daemon's set must be exactly this: BPF for
/// bpf(), NET_ADMIN for cgroup sock_addr/sock_ops programs and SO_MARK.
pub const ALLOWED_CAPABILITIES: &[(&str, &[&str])] = &[
    ("redirector", &["BPF", "NET_ADMIN"]),
    // chroot into the host root to run its CA tool; write its 0444 bundles
    ("install-ca", &["SYS_CHROOT", "DAC_OVERRIDE"]),
];

/// One kind of object the service account may be granted.
struct Grant {
    group: &'static str,
    resource: &'static str,
    /// The `resourceNames` a rule must be limited to, if any.
    names: Option<&'static [&'static str]>,
    verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const WATCH: &[&str] = &["list", "watch"];

/// What the service account may do: read pods and namespaces (exemptions),
/// list and watch nodes (pod CIDRs, the node's addresses), read the API
/// server's own Service and EndpointSlice, by name (the kernel's bypass).
const GRANTS: &[Grant] = &[
    Grant {
        group: "",
        resource: "pods",
        names: None,
        verbs: READ,
    },
    Grant {
        group: "",
        resource: "namespaces",
        names: None,
        verbs: READ,
    },
    Grant {
        group: "",
        resource: "nodes",
        names: None,
        verbs: WATCH,
    },
    Grant {
        group: "",
        resource: "services",
        names: Some(&["kubernetes"]),
        verbs: READ,
    },
    Grant {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        names: Some(&["kubernetes"]),
        verbs: READ,
    },
];
/// And with `--remove-taint` (the startup-taint component): read its node
/// and patch the taint away.
const NODE_VERBS: &[&str] = &["get", "patch"];

/// Whether the daemon runs with `--kube` (and so watches what [`GRANTS`] lists).
fn follows_the_api(objects: &[Value]) -> bool {
    objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet" && name_of(o) == "egress-redirector")
        .flat_map(|ds| strings_or_objects(&ds["spec"]["template"]["spec"]["containers"]))
        .filter(|c| c["name"] == "redirector")
        .any(|c| strings(&c["args"]).contains(&"--kube"))
}

/// The taint key the daemon's `--remove-taint` names, if it has one.
fn startup_taint(objects: &[Value]) -> Option<String> {
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && name_of(o) == "egress-redirector")?;
    let container = strings_or_objects(&ds["spec"]["template"]["spec"]["containers"])
        .find(|c| c["name"] == "redirector")?;
    let args = strings(&container["args"]);
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--remove-taint") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            Some("") => args.get(i + 1).map(|k| (*k).to_owned()),
            _ => None,
        })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("?")
}

/// Least-privilege violations in a set of rendered objects (empty: none).
pub fn least_privilege(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let taint = startup_taint(objects);
    for ds in objects.iter().filter(|o| o["kind"] == "DaemonSet") {
        check_daemonset(ds, taint.as_deref(), &mut out);
    }
    check_rbac(objects, taint.as_deref(), &mut out);
    out
}

fn check_daemonset(ds: &Value, taint: Option<&str>, out: &mut Vec<String>) {
    let ds_name = name_of(ds);
    let pod = &ds["spec"]["template"]["spec"];
    if let Some(key) = taint.filter(|_| ds_name == "egress-redirector") {
        let tolerated = strings_or_objects(&pod["tolerations"]).any(|t| {
            (t["key"].is_null() && t["operator"] == "Exists") || t["key"].as_str() == Some(key)
        });
        if !tolerated {
            out.push(format!(
                "DaemonSet {ds_name}: does not tolerate {key}, the taint it removes"
            ));
        }
    }
    for field in ["hostPID", "hostIPC"] {
        if pod[field] == true {
            out.push(format!("DaemonSet {ds_name}: {field}: true"));
        }
    }
    let containers =
        strings_or_objects(&pod["initContainers"]).chain(strings_or_objects(&pod["containers"]));
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let what = format!("DaemonSet {ds_name} container {name}");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            out.push(format!("{what}: privileged: true"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!("{what}: allowPrivilegeEscalation is not false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            out.push(format!("{what}: readOnlyRootFilesystem is not true"));
        }
        let drop = strings(&sc["capabilities"]["drop"]);
        if !drop.contains(&"ALL") {
            out.push(format!("{what}: capabilities.drop lacks ALL ({drop:?})"));
        }
        let allowed = ALLOWED_CAPABILITIES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, caps)| *caps);
        let add = strings(&sc["capabilities"]["add"]);
        let extra: Vec<&str> = add
            .iter()
            .map(|c| c.trim_start_matches("CAP_"))
            .filter(|c| !allowed.contains(c))
            .collect();
        if !extra.is_empty() {
            out.push(format!("{what}: adds {extra:?}; allowed: {allowed:?}"));
        }
        // The daemon cannot work with less: a missing one is a broken
        // manifest, not a safer one, so flag it too.
        if name == "redirector" {
            for cap in allowed {
                if !add.iter().any(|c| c.trim_start_matches("CAP_") == *cap) {
                    out.push(format!(
                        "{what}: does not add {cap}, which the daemon needs"
                    ));
                }
            }
        }
    }
}

/// Node labels whose nodes run pods outside this node's kernel
/// (virtual-kubelet, EKS Fargate): the daemon's pod could never run there.
pub const FOREIGN_NODES: &[(&str, &str)] = &[
    ("type", "virtual-kubelet"),
    ("eks.amazonaws.com/compute-type", "fargate"),
];

/// Where and how big the daemon's pods are (empty: as they should be):
/// Linux nodes only, never a virtual-kubelet or Fargate node, node-critical
/// priority, and a memory request and limit (the limit sets the
/// connection cap) without a CPU limit (throttling a relay delays every
/// pod on the node).
pub fn placement(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let daemons = objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet" && name_of(o) == "egress-redirector");
    for ds in daemons {
        let pod = &ds["spec"]["template"]["spec"];
        let what = format!("DaemonSet {}", name_of(ds));
        if pod["nodeSelector"]["kubernetes.io/os"] != "linux" {
            out.push(format!(
                "{what}: nodeSelector lacks kubernetes.io/os: linux"
            ));
        }
        let terms = strings_or_objects(
            &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        );
        let mut terms = terms.peekable();
        if terms.peek().is_none() {
            out.push(format!(
                "{what}: no required node affinity (virtual-kubelet, Fargate)"
            ));
        }
        // Terms are ORed: each one must keep the daemon off every foreign node.
        for (i, term) in terms.enumerate() {
            for (key, value) in FOREIGN_NODES {
                let excluded = strings_or_objects(&term["matchExpressions"]).any(|e| {
                    e["key"] == *key
                        && e["operator"] == "NotIn"
                        && strings(&e["values"]).contains(value)
                });
                if !excluded {
                    out.push(format!(
                        "{what}: node affinity term {i} does not exclude {key}={value}"
                    ));
                }
            }
        }
        if pod["priorityClassName"] != "system-node-critical" {
            out.push(format!(
                "{what}: priorityClassName is not system-node-critical"
            ));
        }
        let daemon = strings_or_objects(&pod["containers"]).find(|c| c["name"] == "redirector");
        let Some(daemon) = daemon else {
            out.push(format!("{what}: no container named redirector"));
            continue;
        };
        let resources = &daemon["resources"];
        for field in ["requests", "limits"] {
            if resources[field]["memory"].is_null() {
                out.push(format!("{what}: redirector has no memory {field}"));
            }
        }
        if !resources["limits"]["cpu"].is_null() {
            out.push(format!("{what}: redirector has a CPU limit"));
        }
    }
    out
}

fn strings_or_objects(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The roles bound to service account `account`, each with a line naming
/// its binding for messages. A binding to a role not in the rendering (e.g.
/// a built-in like cluster-admin) cannot be checked, and an aggregated role
/// grants whatever it collects: both are violations.
pub(super) fn roles_bound_to<'a>(
    objects: &'a [Value],
    account: &str,
    out: &mut Vec<String>,
) -> Vec<(String, &'a Value)> {
    let bindings = objects.iter().filter(|o| {
        (o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
            && strings_or_objects(&o["subjects"])
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
    });
    let mut roles = Vec::new();
    for binding in bindings {
        let (kind, role) = (
            binding["roleRef"]["kind"].as_str().unwrap_or("?"),
            binding["roleRef"]["name"].as_str().unwrap_or("?"),
        );
        let what = format!(
            "{} {} binds {account} to {kind} {role}",
            binding["kind"].as_str().unwrap_or("?"),
            name_of(binding)
        );
        let Some(role_obj) = objects
            .iter()
            .find(|o| o["kind"] == kind && name_of(o) == role)
        else {
            out.push(format!("{what}, which is not defined here"));
            continue;
        };
        if !role_obj["aggregationRule"].is_null() {
            out.push(format!(
                "{what}: an aggregated role grants whatever it collects"
            ));
        }
        roles.push((what, role_obj));
    }
    roles
}

/// Every role bound to the service account grants only what [`GRANTS`]
/// allows, and with `--remove-taint` get and patch on nodes (which must
/// then be there); with `--kube`, list and watch on each of [`GRANTS`]
/// must be there. A binding to a role not in the rendering (e.g. a
/// built-in like cluster-admin) cannot be checked and fails.
fn check_rbac(objects: &[Value], taint: Option<&str>, out: &mut Vec<String>) {
    // (group, resource, verb) granted, for the checks at the end.
    let mut granted: Vec<(&str, &str, &str)> = Vec::new();
    for (what, role_obj) in roles_bound_to(objects, SERVICE_ACCOUNT, out) {
        for rule in strings_or_objects(&role_obj["rules"]) {
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            if !rule["nonResourceURLs"].is_null() {
                out.push(format!("{what}: grants nonResourceURLs"));
            }
            let names = strings(&rule["resourceNames"]);
            for group in &groups {
                for resource in &resources {
                    let Some(grant) = GRANTS
                        .iter()
                        .find(|g| g.group == *group && g.resource == *resource)
                    else {
                        out.push(format!(
                            "{what}: grants resources [{resource:?}] in API group {group:?} \
                             (only {:?})",
                            GRANTS
                                .iter()
                                .map(|g| if g.group.is_empty() {
                                    g.resource.to_owned()
                                } else {
                                    format!("{}/{}", g.group, g.resource)
                                })
                                .collect::<Vec<_>>()
                        ));
                        continue;
                    };
                    let extra = if *resource == "nodes" && taint.is_some() {
                        NODE_VERBS
                    } else {
                        &[]
                    };
                    let bad: Vec<_> = verbs
                        .iter()
                        .filter(|v| !grant.verbs.contains(v) && !extra.contains(v))
                        .collect();
                    if !bad.is_empty() {
                        let why = if *resource == "nodes" && taint.is_none() {
                            ", get and patch only with the startup-taint component (--remove-taint)"
                        } else {
                            ""
                        };
                        out.push(format!(
                            "{what}: grants verbs {bad:?} on {resource} (only {:?}{why})",
                            grant.verbs
                        ));
                    }
                    if let Some(allowed) = grant.names
                        && (names.is_empty() || names.iter().any(|n| !allowed.contains(n)))
                    {
                        out.push(format!(
                            "{what}: {resource} must be limited to resourceNames {allowed:?} \
                             (has {names:?})"
                        ));
                    }
                    granted.extend(verbs.iter().map(|v| (grant.group, grant.resource, *v)));
                }
            }
        }
    }
    let has = |group: &str, resource: &str, verb: &str| granted.contains(&(group, resource, verb));
    if let Some(key) = taint
        && !NODE_VERBS.iter().all(|v| has("", "nodes", v))
    {
        out.push(format!(
            "the daemon removes taint {key} (--remove-taint) but no role bound to \
             {SERVICE_ACCOUNT} grants {NODE_VERBS:?} on nodes"
        ));
    }
    if follows_the_api(objects) {
        for grant in GRANTS {
            if !WATCH.iter().all(|v| has(grant.group, grant.resource, v)) {
                out.push(format!(
                    "the daemon follows the API (--kube) but no role bound to \
                     {SERVICE_ACCOUNT} grants {WATCH:?} on {}",
                    grant.resource
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The base's objects, reduced to what the checks read.
    fn good() -> Vec<Value> {
        let sc = |add: Value| {
            json!({"privileged": false, "allowPrivilegeEscalation": false,
                   "readOnlyRootFilesystem": true,
                   "capabilities": {"drop": ["ALL"], "add": add}})
        };
        vec![
            json!({"kind": "DaemonSet", "metadata": {"name": "egress-redirector"},
              "spec": {"template": {"spec": {"hostNetwork": true,
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "priorityClassName": "system-node-critical",
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
                        {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn",
                         "values": ["fargate"]}]}]}}},
                "initContainers": [{"name": "install-ca",
                    "securityContext": sc(json!(["SYS_CHROOT", "DAC_OVERRIDE"]))}],
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "redirector",
                    "args": ["run", "--kube"],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"memory": "512Mi"}},
                    "securityContext": sc(json!(["BPF", "NET_ADMIN"]))}]}}}}),
            json!({"kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}}),
            json!({"kind": "ClusterRole", "metadata": {"name": "egress-redirector"},
              "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces"],
                         "verbs": ["get", "list", "watch"]},
                        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
                        {"apiGroups": [""], "resources": ["services"],
                         "resourceNames": ["kubernetes"], "verbs": ["get", "list", "watch"]},
                        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                         "resourceNames": ["kubernetes"], "verbs": ["get", "list", "watch"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "egress-redirector"},
              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                          "name": "egress-redirector"},
              "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                            "namespace": "egress-redirector"}]}),
        ]
    }

    /// `good()` with one value set at a JSON pointer (`/OBJECT-INDEX/...`),
    /// adding the last key if it is not there.
    fn with(pointer: &str, value: Value) -> Vec<Value> {
        let mut objs = good();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let (index, parent) = parent[1..].split_once('/').unwrap_or((&parent[1..], ""));
        let obj = &mut objs[index.parse::<usize>().unwrap()];
        let target = if parent.is_empty() {
            obj
        } else {
            obj.pointer_mut(&format!("/{parent}"))
                .unwrap_or_else(|| panic!("no {pointer}"))
        };
        match target {
            Value::Object(map) => {
                map.insert(key.to_owned(), value);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
            _ => panic!("{pointer}: not in an object or array"),
        }
        objs
    }

    const MAIN: &str = "/0/spec/template/spec/containers/0/securityContext";
    const INIT: &str = "/0/spec/template/spec/initContainers/0/securityContext";

    #[test]
    fn the_good_manifest_passes() {
        assert_eq!(least_privilege(&good()), Vec::<String>::new());
    }

    #[test]
    fn each_violation_fails() {
        let cases: Vec<(Vec<Value>, &str)> = vec![
            (
                with(
                    &format!("{MAIN}/capabilities/add"),
                    json!(["BPF", "NET_ADMIN", "SYS_ADMIN"]),
                ),
                "adds [\"SYS_ADMIN\"]",
            ),
            (
                with(
                    &format!("{MAIN}/capabilities/add"),
                    json!(["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]),
                ),
                "adds [\"PERFMON\"]",
            ),
            (
                with(&format!("{MAIN}/capabilities/add"), json!(["BPF"])),
                "does not add NET_ADMIN",
            ),
            (
                with(&format!("{MAIN}/capabilities/drop"), json!(["NET_RAW"])),
                "capabilities.drop lacks ALL",
            ),
            (
                with(&format!("{MAIN}/readOnlyRootFilesystem"), json!(false)),
                "container redirector: readOnlyRootFilesystem is not true",
            ),
            (
                with(&format!("{MAIN}/allowPrivilegeEscalation"), json!(true)),
                "allowPrivilegeEscalation is not false",
            ),
            (
                with(&format!("{MAIN}/privileged"), json!(true)),
                "privileged: true",
            ),
            (
                with(
                    &format!("{INIT}/capabilities/add"),
                    json!(["SYS_CHROOT", "SYS_ADMIN"]),
                ),
                "container install-ca: adds [\"SYS_ADMIN\"]",
            ),
            (
                with(&format!("{INIT}/readOnlyRootFilesystem"), Value::Null),
                "container install-ca: readOnlyRootFilesystem is not true",
            ),
            (
                with("/0/spec/template/spec/hostPID", json!(true)),
                "hostPID: true",
            ),
            (
                with("/2/rules/0/verbs", json!(["get", "list", "watch", "patch"])),
                "grants verbs [\"patch\"]",
            ),
            (
                with("/2/rules/0/verbs", json!(["*"])),
                "grants verbs [\"*\"]",
            ),
            (
                with("/2/rules/0/resources", json!(["pods", "secrets"])),
                "grants resources [\"secrets\"]",
            ),
            (
                with("/2/rules/0/apiGroups", json!(["", "apps"])),
                "in API group \"apps\"",
            ),
            (
                with("/3/roleRef/name", json!("cluster-admin")),
                "ClusterRole cluster-admin, which is not defined here",
            ),
        ];
        for (objs, want) in cases {
            let found = least_privilege(&objs);
            assert!(
                found.iter().any(|v| v.contains(want)),
                "expected a violation containing {want:?}, got {found:?}"
            );
        }
    }

    #[test]
    fn the_good_manifest_is_placed_right() {
        assert_eq!(placement(&good()), Vec::<String>::new());
    }

    #[test]
    fn each_misplacement_fails() {
        const POD: &str = "/0/spec/template/spec";
        const TERM: &str = "/0/spec/template/spec/affinity/nodeAffinity/\
            requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms";
        let cases: Vec<(Vec<Value>, &str)> = vec![
            (
                with(&format!("{POD}/nodeSelector"), Value::Null),
                "kubernetes.io/os: linux",
            ),
            (
                with(
                    &format!("{POD}/nodeSelector"),
                    json!({"kubernetes.io/os": "windows"}),
                ),
                "kubernetes.io/os: linux",
            ),
            (
                with(&format!("{POD}/affinity"), Value::Null),
                "no required node affinity",
            ),
            (
                with(
                    &format!("{TERM}/0"),
                    json!({"matchExpressions": [
                        {"key": "type", "operator": "In", "values": ["virtual-kubelet"]}]}),
                ),
                "does not exclude type=virtual-kubelet",
            ),
            (
                // A second term ORed in lets the daemon onto Fargate nodes.
                with(
                    TERM,
                    json!([{"matchExpressions": [
                        {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
                        {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn",
                         "values": ["fargate"]}]},
                        {"matchExpressions": [
                        {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]}]}]),
                ),
                "term 1 does not exclude eks.amazonaws.com/compute-type=fargate",
            ),
            (
                with(&format!("{POD}/priorityClassName"), Value::Null),
                "system-node-critical",
            ),
            (
                with(
                    &format!("{POD}/containers/0/resources/limits"),
                    json!({"cpu": "1"}),
                ),
                "no memory limits",
            ),
            (
                with(
                    &format!("{POD}/containers/0/resources/limits"),
                    json!({"cpu": "1", "memory": "512Mi"}),
                ),
                "has a CPU limit",
            ),
            (
                with(&format!("{POD}/containers/0/resources"), Value::Null),
                "no memory requests",
            ),
        ];
        for (objs, want) in cases {
            let found = placement(&objs);
            assert!(
                found.iter().any(|v| v.contains(want)),
                "expected a violation containing {want:?}, got {found:?}"
            );
        }
    }

    /// `good()` with the startup-taint component applied: the flag, and a
    /// role of its own for nodes.
    fn with_startup_taint(verbs: Value) -> Vec<Value> {
        let mut objs = with(
            "/0/spec/template/spec/containers/0/args",
            json!([
                "run",
                "--kube",
                "--remove-taint=egress-redirector/not-ready"
            ]),
        );
        objs.push(json!({"kind": "ClusterRole", "metadata": {"name": "taint"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": verbs}]}));
        objs.push(
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "taint"},
            "roleRef": {"kind": "ClusterRole", "name": "taint"},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}]}),
        );
        objs
    }

    #[test]
    fn node_writes_only_with_the_startup_taint_flag() {
        assert_eq!(
            least_privilege(&with_startup_taint(json!(["get", "patch"]))),
            Vec::<String>::new()
        );
        // The base: no flag, so no get or patch on nodes.
        let mut objs = with_startup_taint(json!(["get", "patch"]));
        objs[0]["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["run", "--kube"]);
        let found = least_privilege(&objs);
        assert!(
            found.iter().any(|v| v.contains(
                "grants verbs [\"get\", \"patch\"] on nodes (only [\"list\", \"watch\"], \
                 get and patch only with the startup-taint component"
            )),
            "{found:?}"
        );
        // More than get and patch.
        let found = least_privilege(&with_startup_taint(json!(["get", "patch", "update"])));
        assert!(
            found
                .iter()
                .any(|v| v.contains("grants verbs [\"update\"] on nodes")),
            "{found:?}"
        );
        // Nodes mixed into the pods rule get `get` on nodes, beyond what is allowed.
        let found = least_privilege(&with(
            "/2/rules/0/resources",
            json!(["pods", "namespaces", "nodes"]),
        ));
        assert!(
            found
                .iter()
                .any(|v| v.contains("grants verbs [\"get\"] on nodes")),
            "{found:?}"
        );
        // The flag without the role is a broken manifest.
        let found = least_privilege(&with_startup_taint(json!(["get"])));
        assert!(
            found.iter().any(|v| v.contains("no role bound to")),
            "{found:?}"
        );
        // The flag as two arguments counts too; the DaemonSet must tolerate it.
        let mut objs = with_startup_taint(json!(["get", "patch"]));
        let spec = &mut objs[0]["spec"]["template"]["spec"];
        spec["containers"][0]["args"] =
            json!(["run", "--remove-taint", "egress-redirector/not-ready"]);
        spec["tolerations"] = json!([{"key": "other", "operator": "Exists"}]);
        let found = least_privilege(&objs);
        assert!(
            found
                .iter()
                .any(|v| v.contains("does not tolerate egress-redirector/not-ready")),
            "{found:?}"
        );
        spec_tolerates(
            &mut objs,
            json!([{"key": "egress-redirector/not-ready",
                                           "operator": "Exists"}]),
        );
        assert_eq!(least_privilege(&objs), Vec::<String>::new());
    }

    fn spec_tolerates(objs: &mut [Value], tolerations: Value) {
        objs[0]["spec"]["template"]["spec"]["tolerations"] = tolerations;
    }

    #[test]
    fn newer_renderings_skip_older_versions() {
        assert_eq!(versions_for(Path::new("deploy/base")), KUBE_VERSIONS);
        assert_eq!(
            versions_for(Path::new("deploy/overlays/hardened")),
            ["1.30.0", "1.37.0"]
        );
    }

    /// The API server's Service and EndpointSlice: only by name; with
    /// `--kube`, list and watch on everything the daemon follows.
    #[test]
    fn services_and_endpointslices_only_by_name() {
        let found = least_privilege(&with("/2/rules/2/resourceNames", json!([])));
        assert!(
            found.iter().any(|v| v
                .contains("services must be limited to resourceNames [\"kubernetes\"] (has [])")),
            "{found:?}"
        );
        let found = least_privilege(&with(
            "/2/rules/3/resourceNames",
            json!(["kubernetes", "other"]),
        ));
        assert!(
            found
                .iter()
                .any(|v| v.contains("endpointslices must be limited to resourceNames")),
            "{found:?}"
        );
        // endpointslices in the core group are not the discovery ones.
        let found = least_privilege(&with("/2/rules/3/apiGroups", json!([""])));
        assert!(
            found
                .iter()
                .any(|v| v.contains("grants resources [\"endpointslices\"] in API group \"\"")),
            "{found:?}"
        );
        // A rule missing: the daemon with --kube could not follow it.
        let found = least_privilege(&with("/2/rules/1/verbs", json!(["list"])));
        assert!(
            found.iter().any(|v| v.contains(
                "the daemon follows the API (--kube) but no role bound to egress-redirector \
                 grants [\"list\", \"watch\"] on nodes"
            )),
            "{found:?}"
        );
        // Without --kube it needs none of them.
        let mut objs = with("/2/rules", json!([]));
        objs[0]["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["run"]);
        assert_eq!(least_privilege(&objs), Vec::<String>::new());
    }

    #[test]
    fn a_second_binding_is_checked_too() {
        let mut objs = good();
        objs.push(json!({"kind": "RoleBinding", "metadata": {"name": "extra"},
            "roleRef": {"kind": "Role", "name": "secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}]}));
        objs.push(json!({"kind": "Role", "metadata": {"name": "secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}));
        let found = least_privilege(&objs);
        assert!(
            found
                .iter()
                .any(|v| v.contains("RoleBinding extra") && v.contains("secrets")),
            "{found:?}"
        );
    }

    #[test]
    fn other_containers_may_add_nothing() {
        let objs = vec![
            json!({"kind": "DaemonSet", "metadata": {"name": "egress-redirector-detach"},
            "spec": {"template": {"spec": {"initContainers": [{"name": "detach",
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": ["BPF"]}}}]}}}}),
        ];
        let found = least_privilege(&objs);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("container detach: adds [\"BPF\"]"),
            "{found:?}"
        );
    }

    #[test]
    fn validator_lines() {
        assert_eq!(
            parse_validator_line(
                "INFO x.yaml passed for resource daemonset/egress-redirector against version 1.32"
            ),
            Some(Verdict::Passed)
        );
        assert_eq!(
            parse_validator_line(
                "ERROR x.yaml did not validate for resource daemonset/x against version 1.32: \
                 spec.template.spec: Additional properties are not allowed"
            ),
            Some(Verdict::Failed)
        );
        assert_eq!(parse_validator_line("WARN something"), None);
    }
}
