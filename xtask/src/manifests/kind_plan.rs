//! What `cargo xtask kind-e2e` relies on in `deploy/`, checked without a
//! cluster.
//!
//! The run itself needs Docker and kind; everything it assumes about the
//! manifests does not. [`violations`] reads the rendered demo overlay (the
//! namespaces, pods, Services and proxy configuration the checks use) and
//! the kind cluster's configuration, and [`runtime_objects`] is the YAML the
//! run applies besides the overlay, which `cargo xtask manifests` validates
//! against the API schemas like the overlay itself. So a change to
//! `deploy/` that would break the kind run fails `cargo xtask test` here.

use serde_json::Value;

/// The overlay kind-e2e deploys, relative to the repository.
pub const DEMO_OVERLAY: &str = "deploy/overlays/demo";

/// kind's cluster configuration: its ranges spelled out, because the demo
/// must bypass them.
pub const KIND_CONFIG: &str = "\
# Written by `cargo xtask kind-e2e`. kind's default ranges, spelled out:
# the demo overlay's proxy configuration names the service range.
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
nodes:
  - role: control-plane
";

/// The origin: a container on kind's Docker network, outside the node's
/// addresses and the cluster's ranges (which are never proxied), so a pod's
/// connect to it is redirected like one to the internet.
pub const ORIGIN_CONTAINER: &str = "egress-redirector-e2e-origin";
pub const ORIGIN_HTTP_PORT: u16 = 18080;
pub const ORIGIN_HTTPS_PORT: u16 = 18443;
/// A headless Service without selector names the origin, so that mitmproxy
/// resolves the TLS SNI the client sends (the daemon CONNECTs by name).
pub const ORIGIN_SERVICE: &str = "origin";
pub const DEMO_PROXY_NS: &str = "egress-demo-proxy";

/// The origin's name as clients and mitmproxy resolve it.
pub fn origin_host() -> String {
    format!("{ORIGIN_SERVICE}.{DEMO_PROXY_NS}.svc.cluster.local")
}

/// nginx's configuration of the origin: plain HTTP and TLS (with a
/// self-signed certificate: mitmproxy runs with `ssl_insecure`), each
/// answering with the client address it saw and the path.
pub fn origin_nginx_conf() -> String {
    let body =
        r#"default_type text/plain; return 200 "origin ok client=$remote_addr path=$uri\n";"#;
    format!(
        "server {{\n  listen {ORIGIN_HTTP_PORT};\n  location / {{ {body} }}\n}}\n\
         server {{\n  listen {ORIGIN_HTTPS_PORT} ssl;\n  \
         ssl_certificate /certs/origin.pem;\n  ssl_certificate_key /certs/origin.pem;\n  \
         location / {{ {body} }}\n}}\n"
    )
}

/// The pod in `kube-system` that shows the namespace is left alone.
pub const SYSTEM_PROBE: &str = "egress-e2e-probe";

/// What the run applies besides the overlay: the origin's headless Service
/// and its EndpointSlice (the origin's address is known only once its
/// container runs), and a curl pod in `kube-system`.
pub fn runtime_objects(origin_ip: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata:
  name: {ORIGIN_SERVICE}
  namespace: {DEMO_PROXY_NS}
spec:
  clusterIP: None
  ports:
    - name: http
      port: {ORIGIN_HTTP_PORT}
    - name: https
      port: {ORIGIN_HTTPS_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {ORIGIN_SERVICE}-kind-network
  namespace: {DEMO_PROXY_NS}
  labels:
    kubernetes.io/service-name: {ORIGIN_SERVICE}
addressType: IPv4
endpoints:
  - addresses: [\"{origin_ip}\"]
ports:
  - name: http
    port: {ORIGIN_HTTP_PORT}
  - name: https
    port: {ORIGIN_HTTPS_PORT}
---
apiVersion: v1
kind: Pod
metadata:
  name: {SYSTEM_PROBE}
  namespace: kube-system
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: curl
      image: {CURL_IMAGE}
      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 3600 & wait; done\"]
"
    )
}

/// The curl image of the demo's clients, also used for the probe.
pub const CURL_IMAGE: &str = "curlimages/curl:8.11.1";

/// A kind config's `networking.<key>` value.
fn kind_range(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

fn find<'a>(objects: &'a [Value], kind: &str, ns: Option<&str>, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        o["kind"] == kind
            && o["metadata"]["name"] == name
            && ns.is_none_or(|ns| o["metadata"]["namespace"] == ns)
    })
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj["metadata"]["labels"][key].as_str()
}

fn env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// Everything the run needs that the rendered demo overlay (`demo`) or the
/// kind configuration lacks (empty: nothing).
pub fn violations(demo: &[Value], kind_config: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            out.push(what.to_owned());
        }
    };
    const EXEMPT: &str = "egress-redirector/exempt";

    // Namespaces and their exemption, as the checks expect them.
    for (ns, exempt) in [
        ("egress-demo", false),
        ("egress-demo-exempt", true),
        (DEMO_PROXY_NS, true),
    ] {
        match find(demo, "Namespace", None, ns) {
            Some(obj) => need(
                (label(obj, EXEMPT) == Some("true")) == exempt,
                &format!(
                    "namespace {ns} must {}be labelled {EXEMPT}=true",
                    if exempt { "" } else { "not " }
                ),
            ),
            None => need(false, &format!("no namespace {ns}")),
        }
    }
    // The clients: curl in both namespaces, curl-env with the proxy variables.
    for (ns, pod) in [
        ("egress-demo", "curl"),
        ("egress-demo-exempt", "curl"),
        ("egress-demo", "curl-env"),
    ] {
        need(
            find(demo, "Pod", Some(ns), pod).is_some(),
            &format!("no pod {ns}/{pod}"),
        );
    }

    // The proxy: mitmproxy's Service, and the configuration naming it.
    let proxy_url = format!("http://mitmproxy.{DEMO_PROXY_NS}.svc.cluster.local:8080/");
    let service_port = find(demo, "Service", Some(DEMO_PROXY_NS), "mitmproxy")
        .and_then(|s| s["spec"]["ports"].as_array())
        .is_some_and(|ports| ports.iter().any(|p| p["port"] == 8080));
    need(
        service_port,
        "no Service egress-demo-proxy/mitmproxy on port 8080",
    );
    let mitm = find(demo, "Deployment", Some(DEMO_PROXY_NS), "mitmproxy")
        .map(|d| d["spec"]["template"].to_string())
        .unwrap_or_default();
    need(
        mitm.contains("ssl_insecure=true"),
        "mitmproxy must run with ssl_insecure=true (the origin's certificate is self-signed)",
    );
    need(
        mitm.contains("X-Egress-Proxy"),
        "mitmproxy must add the X-Egress-Proxy header the checks look for",
    );
    let config = find(demo, "ConfigMap", None, "egress-redirector-proxy")
        .and_then(|c| c["data"]["proxy.json"].as_str())
        .map(serde_json::from_str::<Value>);
    match config {
        Some(Ok(json)) => {
            for key in ["httpProxy", "httpsProxy"] {
                need(
                    json[key] == proxy_url.as_str(),
                    &format!("proxy.json's {key} is not {proxy_url}"),
                );
            }
            // kind's service range must be bypassed, or pod-to-Service
            // connections go to the proxy: from the config or the flag.
            let services = kind_range(kind_config, "serviceSubnet").unwrap_or_default();
            let in_config = json["serviceCidrs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == services.as_str()));
            let in_flags = daemon_args(demo)
                .iter()
                .any(|a| *a == format!("--cluster-cidr={services}"));
            need(
                !services.is_empty() && (in_config || in_flags),
                &format!("kind's service range {services} is not bypassed (serviceCidrs)"),
            );
        }
        Some(Err(e)) => need(false, &format!("proxy.json does not parse: {e}")),
        None => need(
            false,
            "no ConfigMap egress-redirector-proxy with proxy.json",
        ),
    }
    for (pod, var) in [("curl-env", "HTTPS_PROXY"), ("curl-env", "HTTP_PROXY")] {
        let value = find(demo, "Pod", Some("egress-demo"), pod).and_then(|p| env(p, var));
        need(
            value == Some(proxy_url.as_str()),
            &format!("pod egress-demo/{pod}: {var} is not {proxy_url}"),
        );
    }

    // The in-cluster peer and its Service.
    need(
        find(demo, "Deployment", Some("egress-demo"), "peer").is_some()
            && find(demo, "Service", Some("egress-demo"), "peer").is_some(),
        "no Deployment and Service egress-demo/peer",
    );

    // kind's kubelet puts pods under kubelet.slice: a fixed kubepods root
    // would be wrong there, so the daemon must derive its own.
    let args = daemon_args(demo);
    need(
        !args.is_empty(),
        "no DaemonSet egress-redirector with a redirector container",
    );
    need(
        !args.iter().any(|a| a.starts_with("--cgroup")),
        "the daemon must derive its cgroup root on kind (no --cgroup): pods live under kubelet.slice there",
    );
    need(
        args.contains(&"--kube"),
        "the daemon must follow the API (--kube)",
    );
    out
}

/// The daemon container's arguments in the rendered overlay.
fn daemon_args(objects: &[Value]) -> Vec<&str> {
    find(objects, "DaemonSet", None, "egress-redirector")
        .and_then(|ds| ds["spec"]["template"]["spec"]["containers"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["name"] == "redirector"))
        .and_then(|c| c["args"].as_array())
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo() -> Vec<Value> {
        let proxy = "http://mitmproxy.egress-demo-proxy.svc.cluster.local:8080/";
        let ns = |name: &str, exempt: bool| {
            let labels = if exempt {
                json!({"egress-redirector/exempt": "true"})
            } else {
                json!({})
            };
            json!({"kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        };
        let pod = |ns: &str, name: &str, env: Value| {
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns},
                   "spec": {"containers": [{"name": "curl", "env": env}]}})
        };
        let config = json!({"httpProxy": proxy, "httpsProxy": proxy,
                            "serviceCidrs": ["10.96.0.0/12"]});
        vec![
            ns("egress-demo", false),
            ns("egress-demo-exempt", true),
            ns(DEMO_PROXY_NS, true),
            pod("egress-demo", "curl", json!([])),
            pod("egress-demo-exempt", "curl", json!([])),
            pod(
                "egress-demo",
                "curl-env",
                json!([{"name": "HTTPS_PROXY", "value": proxy},
                                                  {"name": "HTTP_PROXY", "value": proxy}]),
            ),
            json!({"kind": "Service", "metadata": {"name": "mitmproxy", "namespace": DEMO_PROXY_NS},
                   "spec": {"ports": [{"port": 8080}]}}),
            json!({"kind": "Deployment", "metadata": {"name": "mitmproxy", "namespace": DEMO_PROXY_NS},
                   "spec": {"template": {"spec": {"containers": [{"command": [
                       "mitmdump --set ssl_insecure=true --set modify_headers=/~s/X-Egress-Proxy/mitmproxy"]}]}}}}),
            json!({"kind": "ConfigMap", "metadata": {"name": "egress-redirector-proxy"},
                   "data": {"proxy.json": config.to_string()}}),
            json!({"kind": "Deployment", "metadata": {"name": "peer", "namespace": "egress-demo"}}),
            json!({"kind": "Service", "metadata": {"name": "peer", "namespace": "egress-demo"}}),
            json!({"kind": "DaemonSet", "metadata": {"name": "egress-redirector"},
                   "spec": {"template": {"spec": {"containers": [{"name": "redirector",
                       "args": ["run", "--kube"]}]}}}}),
        ]
    }

    #[test]
    fn a_complete_demo_passes() {
        assert_eq!(violations(&demo(), KIND_CONFIG), Vec::<String>::new());
    }

    #[test]
    fn each_missing_piece_is_named() {
        let edit = |f: &dyn Fn(&mut Vec<Value>)| {
            let mut d = demo();
            f(&mut d);
            violations(&d, KIND_CONFIG)
        };
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                edit(&|d| {
                    d.remove(1);
                }),
                "no namespace egress-demo-exempt",
            ),
            (
                edit(&|d| d[0]["metadata"]["labels"] = json!({"egress-redirector/exempt": "true"})),
                "namespace egress-demo must not be labelled",
            ),
            (
                edit(&|d| {
                    d.remove(5);
                }),
                "no pod egress-demo/curl-env",
            ),
            (
                edit(&|d| d[6]["spec"]["ports"][0]["port"] = json!(3128)),
                "mitmproxy on port 8080",
            ),
            (edit(&|d| d[7]["spec"] = json!({})), "ssl_insecure"),
            (
                edit(&|d| d[8]["data"]["proxy.json"] = json!("{")),
                "does not parse",
            ),
            (
                edit(&|d| d[8]["data"]["proxy.json"] = json!(r#"{"httpProxy": "http://x:1/"}"#)),
                "kind's service range 10.96.0.0/12 is not bypassed",
            ),
            (
                edit(&|d| {
                    d.remove(10);
                }),
                "egress-demo/peer",
            ),
            (
                edit(&|d| {
                    d[11]["spec"]["template"]["spec"]["containers"][0]["args"] = json!([
                        "run",
                        "--kube",
                        "--cgroup=/host/sys/fs/cgroup/kubepods.slice"
                    ])
                }),
                "derive its cgroup root",
            ),
            (
                edit(&|d| {
                    d[11]["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["run"])
                }),
                "--kube",
            ),
        ];
        for (found, want) in cases {
            assert!(
                found.iter().any(|v| v.contains(want)),
                "expected {want:?} in {found:?}"
            );
        }
        // The service range by flag counts as much as by the config key.
        let by_flag = edit(&|d| {
            d[8]["data"]["proxy.json"] = json!(
                json!({
                "httpProxy": "http://mitmproxy.egress-demo-proxy.svc.cluster.local:8080/",
                "httpsProxy": "http://mitmproxy.egress-demo-proxy.svc.cluster.local:8080/"})
                .to_string()
            );
            d[11]["spec"]["template"]["spec"]["containers"][0]["args"] =
                json!(["run", "--kube", "--cluster-cidr=10.96.0.0/12"]);
        });
        assert_eq!(by_flag, Vec::<String>::new());
    }

    #[test]
    fn kind_ranges_are_read_from_its_config() {
        assert_eq!(
            kind_range(KIND_CONFIG, "podSubnet").as_deref(),
            Some("10.244.0.0/16")
        );
        assert_eq!(
            kind_range(KIND_CONFIG, "serviceSubnet").as_deref(),
            Some("10.96.0.0/12")
        );
        assert_eq!(kind_range(KIND_CONFIG, "nothing"), None);
    }

    #[test]
    fn the_origin_serves_both_ports_with_the_runtime_names() {
        let conf = origin_nginx_conf();
        assert!(
            conf.contains("listen 18080;") && conf.contains("listen 18443 ssl;"),
            "{conf}"
        );
        let objects = runtime_objects("172.18.0.9");
        assert!(objects.contains("addresses: [\"172.18.0.9\"]"), "{objects}");
        assert!(
            objects.contains("kubernetes.io/service-name: origin"),
            "{objects}"
        );
        assert_eq!(origin_host(), "origin.egress-demo-proxy.svc.cluster.local");
    }
}
