//! What a rolling update of the daemon needs from its DaemonSet (see
//! docs/deploy.md, "Rolling updates and uninstall"): the new pod starts
//! beside the old one and takes its sockets over, so
//!
//! - the update strategy surges (`maxSurge` not 0) and never removes the
//!   old pod first (`maxUnavailable: 0`);
//! - the daemon's container declares no port: on the host network every
//!   declared port is a hostPort, and the scheduler would never place the
//!   new pod on a node whose old pod holds it (the rollout would hang);
//! - `terminationGracePeriodSeconds` is longer than the daemon's
//!   `--drain-timeout`, or the kubelet's SIGKILL would cut the drain.
use serde_json::Value;

use super::{name_of, strings, strings_or_objects};

/// The daemon's `--drain-timeout` when none is given, in seconds (see
/// redirector/src/cli.rs).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: f64 = 50.0;
/// Kubernetes' default grace period, when the manifest sets none.
const DEFAULT_GRACE_SECS: f64 = 30.0;

/// Violations of the rules above (empty: none).
pub fn violations(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let daemons = objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet" && name_of(o) == "egress-redirector");
    for ds in daemons {
        let what = format!("DaemonSet {}", name_of(ds));
        let strategy = &ds["spec"]["updateStrategy"];
        let rolling = &strategy["rollingUpdate"];
        if strategy["type"] != "RollingUpdate"
            || is_zero(&rolling["maxSurge"])
            || !is_zero(&rolling["maxUnavailable"])
        {
            out.push(format!(
                "{what}: updateStrategy must be RollingUpdate with maxSurge 1 and \
                 maxUnavailable 0 (found {strategy})"
            ));
        }
        let pod = &ds["spec"]["template"]["spec"];
        let Some(daemon) =
            strings_or_objects(&pod["containers"]).find(|c| c["name"] == "redirector")
        else {
            out.push(format!("{what}: no container named redirector"));
            continue;
        };
        for port in strings_or_objects(&daemon["ports"]) {
            if pod["hostNetwork"] == true || !port["hostPort"].is_null() {
                out.push(format!(
                    "{what}: redirector declares port {} ({}), a host port: the new pod of a \
                     rolling update could not be scheduled beside the old one",
                    port["containerPort"],
                    port["name"].as_str().unwrap_or("unnamed")
                ));
            }
        }
        let drain = match drain_timeout(&strings(&daemon["args"])) {
            Ok(secs) => secs,
            Err(e) => {
                out.push(format!("{what}: {e}"));
                continue;
            }
        };
        let grace = pod["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap_or(DEFAULT_GRACE_SECS);
        if grace <= drain {
            out.push(format!(
                "{what}: terminationGracePeriodSeconds {grace} is not above --drain-timeout \
                 {drain}: the kubelet would kill the daemon in the middle of its drain"
            ));
        }
    }
    out
}

/// `maxSurge`/`maxUnavailable`: absent, 0 or "0%" count as zero.
fn is_zero(v: &Value) -> bool {
    v.is_null() || v == 0 || v.as_str().is_some_and(|s| s.trim_end_matches('%') == "0")
}

/// `--drain-timeout` in the daemon's arguments, or its default.
fn drain_timeout(args: &[&str]) -> Result<f64, String> {
    let value =
        args.iter()
            .enumerate()
            .find_map(|(i, a)| match a.strip_prefix("--drain-timeout") {
                Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
                Some("") => args.get(i + 1).map(|v| (*v).to_owned()),
                _ => None,
            });
    match value {
        None => Ok(DEFAULT_DRAIN_TIMEOUT_SECS),
        Some(v) => v
            .parse::<f64>()
            .map_err(|_| format!("--drain-timeout `{v}` is not a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(strategy: Value, grace: Value, args: Value, ports: Value) -> Vec<Value> {
        vec![
            json!({"kind": "DaemonSet", "metadata": {"name": "egress-redirector"},
          "spec": {"updateStrategy": strategy,
            "template": {"spec": {"hostNetwork": true,
              "terminationGracePeriodSeconds": grace,
              "containers": [{"name": "redirector", "args": args, "ports": ports}]}}}}),
        ]
    }

    fn surge() -> Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    }

    #[test]
    fn the_base_shape_passes() {
        let good = ds(
            surge(),
            json!(60),
            json!(["run", "--drain-timeout=50"]),
            Value::Null,
        );
        assert_eq!(violations(&good), Vec::<String>::new());
        let default_drain = ds(surge(), json!(60), json!(["run"]), json!([]));
        assert_eq!(violations(&default_drain), Vec::<String>::new());
    }

    #[test]
    fn each_violation_fails() {
        let args = json!(["run"]);
        let cases = [
            (
                ds(
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                    json!(60),
                    args.clone(),
                    Value::Null,
                ),
                "maxSurge 1 and maxUnavailable 0",
            ),
            (
                ds(
                    json!({"type": "OnDelete"}),
                    json!(60),
                    args.clone(),
                    Value::Null,
                ),
                "maxSurge 1",
            ),
            (
                ds(
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "10%", "maxUnavailable": "10%"}}),
                    json!(60),
                    args.clone(),
                    Value::Null,
                ),
                "maxUnavailable 0",
            ),
            (
                ds(
                    surge(),
                    json!(60),
                    args.clone(),
                    json!([{"name": "redirect", "containerPort": 15001, "hostPort": 15001}]),
                ),
                "declares port 15001 (redirect), a host port",
            ),
            (
                ds(
                    surge(),
                    json!(60),
                    args.clone(),
                    json!([{"name": "metrics", "containerPort": 9465}]),
                ),
                "declares port 9465 (metrics)",
            ),
            (
                ds(surge(), json!(30), args.clone(), Value::Null),
                "terminationGracePeriodSeconds 30 is not above --drain-timeout 50",
            ),
            (
                ds(
                    surge(),
                    json!(60),
                    json!(["run", "--drain-timeout", "90"]),
                    Value::Null,
                ),
                "not above --drain-timeout 90",
            ),
            (
                ds(surge(), Value::Null, args.clone(), Value::Null),
                "terminationGracePeriodSeconds 30",
            ),
            (
                ds(
                    surge(),
                    json!(60),
                    json!(["run", "--drain-timeout=soon"]),
                    Value::Null,
                ),
                "`soon` is not a number",
            ),
        ];
        for (objects, want) in cases {
            let found = violations(&objects);
            assert!(
                found.iter().any(|v| v.contains(want)),
                "expected a violation containing {want:?}, got {found:?}"
            );
        }
    }

    #[test]
    fn a_surge_percentage_counts() {
        let pct = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "0%"}});
        assert_eq!(
            violations(&ds(pct, json!(60), json!(["run"]), Value::Null)),
            Vec::<String>::new()
        );
    }
}
