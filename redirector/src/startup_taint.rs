//! `--remove-taint KEY`: the startup-taint pattern. Nodes are created with
//! a taint that keeps pods off them until the daemon's hooks are attached
//! (opt-in: `deploy/components/startup-taint`); the daemon removes it from
//! its own node once every readiness condition is met (programs attached,
//! listeners up, configuration loaded, with `--kube` the first complete
//! view of the API applied).
//!
//! Only that taint goes, with every effect it is set with, and nothing
//! else changes: the patch is a JSON patch that tests, for each of our
//! taints, that it still sits at the index we saw before removing it, so a
//! concurrent change to the node's taints fails the patch (422) instead of
//! being overwritten, and the next attempt starts from a fresh read.
//! Idempotent: a node without the taint is left alone. Failures (API down,
//! RBAC missing) are logged and retried with backoff, forever: the node
//! stays tainted, which is the safe side.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use thiserror::Error;

use crate::readiness::Readiness;

/// How often readiness is looked at while the daemon starts.
const READY_POLL: Duration = Duration::from_millis(100);
/// Backoff between failed attempts: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why one attempt failed.
#[derive(Debug, Error)]
pub enum TaintError {
    #[error("reading node {node}: {source}")]
    Read { node: String, source: kube::Error },
    #[error(
        "patching node {node}: {source}{hint}",
        hint = forbidden_hint(source)
    )]
    Patch { node: String, source: kube::Error },
    #[error("building the patch: {0}")]
    Build(#[from] serde_json::Error),
}

/// Points a 403 at the RBAC rule the daemon needs.
fn forbidden_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) if status.code == 403 => {
            " (the service account needs get and patch on nodes: \
             deploy/components/startup-taint grants them)"
        }
        _ => "",
    }
}

/// Whether `key` is a valid taint key: an optional DNS-subdomain prefix
/// and `/`, then a name of at most 63 characters (as for label keys).
pub fn parse_taint_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "`{key}` is not a taint key ([DNS-subdomain/]name, the name at most 63 \
             letters, digits, `-`, `_` or `.`), e.g. egress-redirector/not-ready"
        ))
    }
}

/// The JSON patch that removes every taint with `key` from `taints` (the
/// node's, as read), each removal guarded by a test that the element still
/// has our key; `None` when there is none to remove. Highest index first,
/// so that a removal does not shift the ones still to come.
pub fn removal_patch(taints: &[Taint], key: &str) -> Option<Value> {
    let ours: Vec<usize> = taints
        .iter()
        .enumerate()
        .filter(|(_, t)| t.key == key)
        .map(|(i, _)| i)
        .collect();
    if ours.is_empty() {
        return None;
    }
    let ops: Vec<Value> = ours
        .iter()
        .rev()
        .flat_map(|i| {
            [
                json!({"op": "test", "path": format!("/spec/taints/{i}/key"), "value": key}),
                json!({"op": "remove", "path": format!("/spec/taints/{i}")}),
            ]
        })
        .collect();
    Some(Value::Array(ops))
}

/// What one successful attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The taint was there (with these effects) and is gone now.
    Removed(Vec<String>),
    /// The taint was not there.
    Absent,
}

/// One attempt: read the node, and patch our taints away if it has any.
pub async fn remove_once(api: &Api<Node>, node: &str, key: &str) -> Result<Outcome, TaintError> {
    let current = api.get(node).await.map_err(|source| TaintError::Read {
        node: node.to_owned(),
        source,
    })?;
    let taints = current
        .spec
        .and_then(|spec| spec.taints)
        .unwrap_or_default();
    let Some(patch) = removal_patch(&taints, key) else {
        return Ok(Outcome::Absent);
    };
    let params = PatchParams {
        field_manager: Some("egress-redirector".to_owned()),
        ..PatchParams::default()
    };
    api.patch(
        node,
        &params,
        &Patch::Json::<()>(serde_json::from_value(patch)?),
    )
    .await
    .map_err(|source| TaintError::Patch {
        node: node.to_owned(),
        source,
    })?;
    Ok(Outcome::Removed(
        taints
            .iter()
            .filter(|t| t.key == key)
            .map(|t| t.effect.clone())
            .collect(),
    ))
}

/// Waits until the daemon is ready, then removes the taint from `node`,
/// retrying with backoff until an attempt succeeds.
pub async fn run(client: Client, node: String, key: String, readiness: Readiness) {
    while !readiness.is_ready() {
        tokio::time::sleep(READY_POLL).await;
    }
    let api: Api<Node> = Api::all(client);
    let mut backoff = BACKOFF_FIRST;
    loop {
        match remove_once(&api, &node, &key).await {
            Ok(Outcome::Removed(effects)) => {
                tracing::info!(%node, taint = %key, ?effects, "hooks attached: startup taint removed");
                return;
            }
            Ok(Outcome::Absent) => {
                tracing::info!(%node, taint = %key, "startup taint not on the node: nothing to remove");
                return;
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    retry_in = ?backoff,
                    "removing the startup taint failed; the node stays tainted"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "egress-redirector/not-ready";

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            ..Taint::default()
        }
    }

    #[test]
    fn nothing_to_remove_is_no_patch() {
        assert_eq!(removal_patch(&[], KEY), None);
        let others = [taint("node.kubernetes.io/not-ready", "NoSchedule")];
        assert_eq!(removal_patch(&others, KEY), None);
    }

    #[test]
    fn removes_only_ours_highest_index_first_each_tested() {
        let taints = [
            taint("a", "NoSchedule"),
            taint(KEY, "NoSchedule"),
            taint("b", "NoExecute"),
            taint(KEY, "NoExecute"),
        ];
        let patch = removal_patch(&taints, KEY).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/taints/3/key", "value": KEY},
                {"op": "remove", "path": "/spec/taints/3"},
                {"op": "test", "path": "/spec/taints/1/key", "value": KEY},
                {"op": "remove", "path": "/spec/taints/1"},
            ])
        );
        // It is a JSON patch kube accepts.
        let _: Patch<()> = Patch::Json(serde_json::from_value(patch).unwrap());
    }

    #[test]
    fn the_patch_applied_keeps_other_taints_in_order() {
        // Applies the ops as an API server does, on the node's taints.
        fn apply(taints: &mut Vec<Value>, patch: &Value) -> Result<(), String> {
            for op in patch.as_array().unwrap() {
                let path = op["path"].as_str().unwrap();
                let rest = path.strip_prefix("/spec/taints/").unwrap();
                match op["op"].as_str().unwrap() {
                    "test" => {
                        let (i, field) = rest.split_once('/').unwrap();
                        let i: usize = i.parse().unwrap();
                        if taints.get(i).map(|t| &t[field]) != Some(&op["value"]) {
                            return Err(format!("test {path} failed"));
                        }
                    }
                    "remove" => {
                        taints.remove(rest.parse::<usize>().unwrap());
                    }
                    other => panic!("unexpected op {other}"),
                }
            }
            Ok(())
        }
        let read = [
            taint("a", "NoSchedule"),
            taint(KEY, "NoSchedule"),
            taint("b", "NoExecute"),
        ];
        let patch = removal_patch(&read, KEY).unwrap();
        let node: Vec<Value> = read
            .iter()
            .map(|t| serde_json::to_value(t).unwrap())
            .collect();
        let mut applied = node.clone();
        apply(&mut applied, &patch).unwrap();
        let keys: Vec<&str> = applied.iter().map(|t| t["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["a", "b"]);
        // Someone prepended a taint meanwhile: the first test fails, so
        // nothing is removed, and the next attempt reads again.
        let mut raced = node.clone();
        raced.insert(0, serde_json::to_value(taint("c", "NoSchedule")).unwrap());
        let before = raced.clone();
        assert!(apply(&mut raced, &patch).is_err());
        assert_eq!(raced, before);
    }

    #[test]
    fn taint_keys() {
        for good in [
            KEY,
            "not-ready",
            "startup-taint.cluster-autoscaler.kubernetes.io/egress-redirector",
            "a.b/c_d.e",
        ] {
            assert_eq!(parse_taint_key(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "",
            "/x",
            "x/",
            "Egress.IO/x",
            "a/b/c",
            "-x",
            "x-",
            "x y",
            "x:NoSchedule",
            &"x".repeat(64),
        ] {
            let err = parse_taint_key(bad).unwrap_err();
            assert!(err.contains("not a taint key"), "{bad}: {err}");
        }
    }
}
