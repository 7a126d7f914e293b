"""The runtime harness's scenarios: the DaemonSet's pod, as rendered from
deploy/, run through CRI by the miniature kubelet (kubelet.py), client pods
as real sandboxes, and the product's behaviour checked from inside them.

Runs in containerd's network and mount namespaces (run.sh starts it there).
Every scenario asserts what the origin saw (the client address: the pod's
own when direct, mitmproxy's when proxied) and what mitmproxy logged.
"""

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import admission  # noqa: E402
import kubelet as kl  # noqa: E402

E = os.environ
WORK = E["RT_WORK"]
NODE = E["RT_NS_NODE"]
NODE_IP = E["RT_NODE_IP"]
INET_IP = E["RT_INET_IP"]      # mitmproxy
ORIGIN_IP = E["RT_ORIGIN_IP"]  # the origin: not the proxy's address, which the daemon bypasses
API = f"https://{E['RT_UP_IP']}:{E['RT_API_PORT']}"
FLOW_LOG = E["FLOW_LOG"]
CA_DIR = E["CA_DIR"]
REPO = E["REPO_DIR"]
CGROUP_ROOT = E.get("RT_CGROUP_ROOT", "")
UID_A = "0a0a0a0a-2020-4222-8333-444444444444"   # shop/curl-a, BestEffort
UID_B = "0b0b0b0b-2020-4222-8333-444444444444"   # ops/curl-b, Burstable
UID_D = "0d0d0d0d-2020-4222-8333-444444444444"   # the daemon
UID_X = "0e0e0e0e-2020-4222-8333-444444444444"   # the detach pod
UID_CI = "0c1c1c1c-2020-4222-8333-444444444444"  # cainject/curl-ca, CA injected
UID_CO = "0c0c0c0c-2020-4222-8333-444444444444"  # cainject/curl-ca-off, opted out
# The CA-injection webhook (`redirector webhook`), a process on the node.
WEBHOOK = {"address": NODE_IP, "port": 18443, "path": "/mutate",
           "service": "egress-redirector-ca-injector.egress-redirector.svc"}
WEBHOOK_CONFIG = "egress-redirector-ca-injector"
CAINJ_NS = "cainject"
BUNDLE = "egress-redirector-ca-bundle"
TOGGLE_S = 5.0
FAILED = []


def info(msg):
    print(f"[runtime-e2e] {msg}", file=sys.stderr, flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def control(obj):
    req = urllib.request.Request(f"{API}/control", data=json.dumps(obj).encode(), method="POST")
    ctx = __import__("ssl")._create_unverified_context()
    urllib.request.urlopen(req, timeout=5, context=ctx).read()


def api(path, body=None):
    """GET (or POST `body` to) the fake API server, verified against its CA."""
    req = urllib.request.Request(f"{API}{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=os.path.join(WORK, "api-ca.pem"))
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        return json.load(r)


def mitm_ca_cn():
    """The MITM CA's common name (redirector gen-ca made it)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "multiline",
                          "-in", os.path.join(CA_DIR, "mitmproxy-ca-cert.pem")],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("=", 1)[1].strip() for line in out.splitlines() if "commonName" in line][0]


def render(path):
    out = subprocess.run([E["KUBECTL"], "kustomize", os.path.join(REPO, path)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"{kind}/{name} not in the rendered manifests")


def client_pod(name, namespace, resources, ca=True, annotations=None):
    """A pod of the client image (curl), with the MITM CA mounted at /ca
    unless `ca` is false."""
    pod = {"metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
           "spec": {"automountServiceAccountToken": False,
                    "containers": [{
                        "name": "curl", "image": E["CLIENT_REF"],
                        "command": ["/usr/bin/sleep", "infinity"], "resources": resources,
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "volumeMounts": [{"name": "ca", "mountPath": "/ca", "readOnly": True}]}],
                    "volumes": [{"name": "ca", "hostPath": {"path": CA_DIR, "type": "Directory"}}]}}
    if not ca:
        del pod["spec"]["volumes"], pod["spec"]["containers"][0]["volumeMounts"]
    return pod


class Harness:
    def __init__(self):
        docs = render("deploy/base")
        cm = find(docs, "ConfigMap", "egress-redirector-proxy")
        # The operator's settings: the proxy is the harness's mitmproxy.
        proxy = json.loads(cm["data"]["proxy.json"])
        proxy["httpProxy"] = proxy["httpsProxy"] = f"http://{INET_IP}:8080/"
        self.docs = docs
        self.proxy = proxy
        self.webhook = None   # the CA-injection webhook's process, once started
        sa = os.path.join(WORK, "serviceaccount")
        node = kl.Node(
            NODE, [NODE_IP], WORK, cgroup_root=CGROUP_ROOT,
            sa={"host": E["RT_UP_IP"], "port": int(E["RT_API_PORT"]), "dir": sa},
            configmaps={"egress-redirector-proxy": {"proxy.json": json.dumps(proxy)}},
            # Stand-ins for host paths the test must not write on this
            # machine: the trust store install-ca edits, and /run.
            host_path_map={"/": os.path.join(WORK, "host-root"),
                           "/run/egress-redirector": os.path.join(WORK, "run-egress-redirector")},
            dns=[INET_IP])
        # A Debian-looking stand-in: install-ca finds its trust store
        # directory there (the base's config has no trustedCA: nothing to
        # install, so no host tool runs).
        root = os.path.join(WORK, "host-root")
        os.makedirs(os.path.join(root, "etc"), exist_ok=True)
        os.makedirs(os.path.join(root, "usr/local/share/ca-certificates"), exist_ok=True)
        with open(os.path.join(root, "etc/debian_version"), "w") as f:
            f.write("12.0\n")
        self.k = kl.Kubelet(E["RT_SOCK"], node)
        self.pods = {}
        self.seq = 0

    # -------------------------------------------------------------- clients
    def start_clients(self):
        control({"op": "node", "name": NODE,
                 "addresses": [{"type": "InternalIP", "address": NODE_IP}]})
        for ns in ("egress-redirector", "shop", "ops"):
            control({"op": "ns", "name": ns, "labels": {}})
        for name, ns, uid, res, qos in (
                ("curl-a", "shop", UID_A, {}, "BestEffort"),
                ("curl-b", "ops", UID_B, {"requests": {"cpu": "10m", "memory": "16Mi"}}, "Burstable")):
            self.start_client(name, ns, uid, client_pod(name, ns, res), qos)

    def start_client(self, name, ns, uid, pod, qos="BestEffort"):
        """Runs `pod` (as admitted) and registers it with the fake API server."""
        sandbox, ids = self.k.run_pod(pod, ns, uid, log=info)
        ip = self.k.pod_ip(sandbox)
        self.pods[name] = (sandbox, ids["curl"], ip, ns, uid, qos)
        control({"op": "pod", "namespace": ns, "name": name, "uid": uid, "node": NODE,
                 "qos": qos, "annotations": pod["metadata"].get("annotations") or {}})
        info(f"{name}: {ip}")

    def curl(self, pod, *args, max_time=10):
        _, cid, *_ = self.pods[pod]
        return self.k.exec(cid, ["/usr/bin/curl", "-q", "-sS", "--max-time", str(max_time), *args],
                           timeout=max_time + 10)

    def flow_lines(self):
        with open(FLOW_LOG) as f:
            return f.read().splitlines()

    def route(self, pod):
        """'direct' or 'proxy' for one fresh plain-HTTP connection."""
        self.seq += 1
        path = f"/rt-{pod}-{self.seq}"
        before = len(self.flow_lines())
        # Short: a flip is polled with fresh connections, one hung
        # connection must not use up the budget.
        code, out, err = self.curl(pod, f"http://{ORIGIN_IP}{path}", max_time=2)
        seen = [line for line in self.flow_lines()[before:] if f"http://{ORIGIN_IP}{path} " in line]
        ip = self.pods[pod][2]
        if code == 0 and f"client={ip} path={path}" in out and not seen:
            return "direct"
        if code == 0 and any(f"client={a} path={path}" in out for a in (INET_IP, ORIGIN_IP)) and seen:
            return "proxy"
        return f"unclear: exit {code} {out!r} {err!r}"

    def expect_flip(self, pod, want, tag, budget=TOGGLE_S):
        start = time.time()
        misses = []
        while True:
            got = self.route(pod)
            if got == want:
                break
            misses.append(f"{time.time() - start:.1f}s {got[:60]}")
            check(time.time() - start < budget, f"{pod} ({tag}): still {got} after {budget}s, want {want}")
            time.sleep(0.2)
        info(f"  {pod}: {want} after {time.time() - start:.1f} s ({tag})"
             + (f"; before: {'; '.join(misses)}" if misses else ""))
        check(self.route(pod) == want, f"{pod} ({tag}): not {want} on the next connection")

    # -------------------------------------------------------------- the daemon
    def start_daemon(self, docs=None, uid=UID_D):
        ds = find(docs or self.docs, "DaemonSet", "egress-redirector")
        pod = {"metadata": {"name": "egress-redirector-rt", "namespace": "egress-redirector",
                            **{k: v for k, v in ds["spec"]["template"]["metadata"].items()}},
               "spec": ds["spec"]["template"]["spec"]}
        control({"op": "pod", "namespace": "egress-redirector", "name": "egress-redirector-rt",
                 "uid": uid, "node": NODE, "qos": kl.qos_class(pod["spec"]),
                 "annotations": {}, "hostNetwork": True})
        started = time.time()
        self.daemon_uid = uid
        sandbox, ids = self.k.run_pod(pod, "egress-redirector", uid, log=info)
        self.daemon = (sandbox, ids["redirector"], pod)
        c = pod["spec"]["containers"][0]
        try:
            ready = self.k.wait_probe(c, NODE_IP, "readinessProbe", started, attempts=6)
        except RuntimeError:
            info("daemon log:\n" + self.daemon_log())
            raise
        info(f"daemon ready (readinessProbe) {ready:.1f} s after the pod started")
        alive = self.k.wait_probe(c, NODE_IP, "livenessProbe", started, attempts=3)
        info(f"daemon live (livenessProbe) at {alive:.1f} s")
        return c

    def daemon_log(self):
        return self.k.logs(os.path.join(WORK, "pods", self.daemon_uid), "redirector")

    # -------------------------------------------------------------- the CA-injection webhook
    def start_webhook(self):
        """`redirector webhook` on the node against the fake API server (as
        tests/e2e/cainject.sh runs it), with the MITM CA as trustedCA and a
        namespace labelled for injection; returns the caBundle it wrote
        into its MutatingWebhookConfiguration."""
        if self.webhook is None:
            control({"op": "ns", "name": CAINJ_NS, "labels": {"egress-redirector/inject-ca": "true"}})
            api("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", {
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": WEBHOOK_CONFIG},
                "webhooks": [{"name": "inject-ca.egress-redirector.github.io",
                              "admissionReviewVersions": ["v1"], "sideEffects": "None",
                              "clientConfig": {"service": {
                                  "name": "egress-redirector-ca-injector", "namespace": "egress-redirector",
                                  "path": WEBHOOK["path"], "port": 443}}}]})
            with open(os.path.join(CA_DIR, "mitmproxy-ca-cert.pem"), "rb") as f:
                config = dict(self.proxy, trustedCA=base64.b64encode(f.read()).decode())
            config_file = os.path.join(WORK, "webhook-proxy.json")
            with open(config_file, "w") as f:
                json.dump(config, f)
            kubeconfig = os.path.join(WORK, "webhook.kubeconfig")
            with open(kubeconfig, "w") as f:
                yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "rt",
                                "clusters": [{"name": "rt", "cluster": {
                                    "server": API, "certificate-authority": os.path.join(WORK, "api-ca.pem")}}],
                                "contexts": [{"name": "rt", "context": {"cluster": "rt", "user": "rt"}}],
                                "users": [{"name": "rt", "user": {"token": "rt-fake-token"}}]}, f)
            self.webhook_log = os.path.join(WORK, "webhook.log")
            self.webhook = subprocess.Popen(
                [E["REDIRECTOR_BIN"], "webhook", "--proxy-config", config_file,
                 "--listen", f"{WEBHOOK['address']}:{WEBHOOK['port']}", "--namespace", "egress-redirector"],
                env=dict(E, KUBECONFIG=kubeconfig, POD_NAME="webhook-rt", RUST_LOG="info"),
                stdout=open(self.webhook_log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            check(self.webhook.poll() is None, f"the webhook exited: {self.webhook_tail()}")
            try:
                api(f"/api/v1/namespaces/{CAINJ_NS}/configmaps/{BUNDLE}")
                hook = api(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{WEBHOOK_CONFIG}")
                ca_bundle = hook["webhooks"][0]["clientConfig"].get("caBundle")
                if ca_bundle:
                    return base64.b64decode(ca_bundle).decode()
            except Exception as exc:
                if time.time() > deadline:
                    raise AssertionError(f"webhook not ready: {exc}; its log: {self.webhook_tail()}")
            check(time.time() < deadline, "the webhook wrote no caBundle")
            time.sleep(0.3)

    def webhook_tail(self):
        with open(self.webhook_log) as f:
            return f.read()[-1500:]

    def stop_webhook(self):
        if self.webhook is not None:
            self.webhook.terminate()
            self.webhook.wait(timeout=10)
            self.webhook = None

    def admitted_client(self, name, uid, annotations=None):
        """A client pod of the labelled namespace, admitted through the
        webhook and run from the patched spec; returns that spec."""
        ca_bundle = self.start_webhook()
        pod = client_pod(name, CAINJ_NS, {}, ca=False, annotations=annotations)
        patched, _ = admission.admit(pod, CAINJ_NS, WEBHOOK, ca_bundle)
        self.start_client(name, CAINJ_NS, uid, patched)
        return patched

    def stop_all(self):
        """Every sandbox, as the kubelet would on a drained node."""
        for sb in self.k.rt.ListPodSandbox(kl.cri.ListPodSandboxRequest()).items:
            try:
                self.k.stop_pod(sb.id, grace=5)
            except Exception as exc:  # best effort: run.sh's cleanup follows
                info(f"stopping sandbox {sb.id[:12]}: {exc}")


# ------------------------------------------------------------------ scenarios
def t_direct_before_daemon(h):
    for pod in ("curl-a", "curl-b"):
        check(h.route(pod) == "direct", f"{pod}: not direct before the daemon: {h.route(pod)}")


def t_daemon_container_as_specified(h):
    _, cid, pod = h.daemon
    st = h.k.status(cid)
    check(st.state == kl.cri.CONTAINER_RUNNING, f"daemon not running: {st}")
    log = h.daemon_log()
    check("kubepods" in log, "the daemon did not log the kubepods root it derived")
    # The pod's cgroup, as the kubelet lays it out.
    want = kl.cgroup_parent(CGROUP_ROOT, kl.qos_class(pod["spec"]), UID_D)
    found = [r for r, _, _ in os.walk("/sys/fs/cgroup") if r.endswith(want)]
    check(found, f"no cgroup directory {want} under /sys/fs/cgroup")
    info(f"  daemon cgroup: {found[0]}; memory limit {open(found[0] + '/memory.max').read().strip() if os.path.exists(found[0] + '/memory.max') else 'n/a (v1)'}")


def expect_mitm_https(h, pod, path, *curl_args):
    """HTTPS from `pod` to origin.test succeeds through mitmproxy: the
    origin saw mitmproxy, the certificate's issuer is the MITM CA (direct,
    it would be the origin's own self-signed CN=origin.test), and the flow
    is in mitmproxy's log."""
    before = len(h.flow_lines())
    code, out, err = h.curl(pod, "-v", *curl_args, "--resolve", f"origin.test:443:{ORIGIN_IP}",
                            f"https://origin.test{path}")
    check(code == 0, f"HTTPS from {pod} failed: {err[-800:]}")
    check(any(f"client={a} path={path}" in out for a in (INET_IP, ORIGIN_IP)),
          f"origin did not see mitmproxy: {out!r}")
    issuer = [line for line in err.splitlines() if "issuer:" in line]
    ca_cn = mitm_ca_cn()
    check(issuer and f"CN={ca_cn}" in issuer[0], f"certificate not issued by the MITM CA ({ca_cn}): {issuer}")
    flows = h.flow_lines()[before:]
    check(any(f"{ORIGIN_IP}:443" in f or "origin.test" in f for f in flows), f"no flow in mitmproxy's log: {flows}")
    info(f"  {pod}: {issuer[0].strip()}")


def t_https_through_mitm(h):
    expect_mitm_https(h, "curl-a", "/rt-https", "--cacert", "/ca/mitmproxy-ca-cert.pem")


def t_namespace_label_toggles(h):
    h.expect_flip("curl-a", "proxy", "before")
    control({"op": "ns", "name": "shop", "labels": {"egress-redirector/exempt": "true"}})
    h.expect_flip("curl-a", "direct", "ns labelled")
    check(h.route("curl-b") == "proxy", "curl-b (other namespace) not proxied")
    control({"op": "ns", "name": "shop", "labels": {}})
    h.expect_flip("curl-a", "proxy", "ns unlabelled")


def t_pod_annotation_toggles(h):
    _, _, _, ns, uid, qos = h.pods["curl-b"]
    ann = {"egress-redirector/exempt": "true"}
    control({"op": "pod", "namespace": ns, "name": "curl-b", "uid": uid, "node": NODE, "qos": qos, "annotations": ann})
    h.expect_flip("curl-b", "direct", "annotated")
    check(h.route("curl-a") == "proxy", "curl-a not proxied while curl-b is annotated")
    control({"op": "pod", "namespace": ns, "name": "curl-b", "uid": uid, "node": NODE, "qos": qos, "annotations": {}})
    h.expect_flip("curl-b", "proxy", "unannotated")


def t_pod_with_https_proxy(h):
    # A pod that sets HTTPS_PROXY itself (as AKS injects) keeps working.
    code, out, err = h.curl("curl-a", "-x", f"http://{INET_IP}:8080", "--cacert", "/ca/mitmproxy-ca-cert.pem",
                            "--resolve", f"origin.test:443:{ORIGIN_IP}", "https://origin.test/rt-env-proxy")
    check(code == 0 and "path=/rt-env-proxy" in out, f"HTTPS_PROXY pod failed: {code} {out!r} {err[-400:]!r}")


def t_cainject_opt_out_fails(h):
    """The control of the next scenario: a pod of the labelled namespace
    that opted out is admitted unpatched, and curl, with the image's public
    roots only, rejects the MITM's certificate."""
    pod = h.admitted_client("curl-ca-off", UID_CO, {"egress-redirector/inject-ca": "false"})
    check(BUNDLE not in json.dumps(pod["spec"]), f"the opted-out pod was patched: {pod['spec']}")
    check("opted out" in pod["metadata"]["annotations"].get("egress-redirector/inject-ca-status", ""),
          f"no opt-out status annotation: {pod['metadata']}")
    h.expect_flip("curl-ca-off", "proxy", "new pod")
    code, _, err = h.curl("curl-ca-off", "--resolve", f"origin.test:443:{ORIGIN_IP}", "https://origin.test/rt-ca-off")
    # 60: the peer's certificate is not signed by a known CA (direct, the
    # origin's self-signed one would say "self-signed certificate").
    check(code == 60 and "unable to get local issuer certificate" in err,
          f"curl-ca-off: not the MITM's certificate rejected: exit {code} {err[-400:]!r}")


def t_cainject_trusts_mitm(h):
    """A pod of the labelled namespace, admitted through the webhook and
    run from the patched spec (the bundle's ConfigMap mounted with subPath
    over the system bundle, the variables set) trusts the MITM CA with no
    option of its own."""
    pod = h.admitted_client("curl-ca", UID_CI)
    status = pod["metadata"]["annotations"].get("egress-redirector/inject-ca-status", "")
    check(status.startswith("injected"), f"status annotation: {status!r}")
    c = pod["spec"]["containers"][0]
    check(any(m["name"] == BUNDLE and m["mountPath"] == "/etc/ssl/certs/ca-certificates.crt"
              and m.get("subPath") for m in c["volumeMounts"]),
          f"no subPath mount over the system bundle: {c}")
    h.expect_flip("curl-ca", "proxy", "new pod")
    expect_mitm_https(h, "curl-ca", "/rt-ca-injected")


def t_detach_removes_hooks(h):
    docs = render("deploy/uninstall")
    ds = find(docs, "DaemonSet", "egress-redirector-detach")
    pod = {"metadata": {"name": "detach-rt", "namespace": ds["metadata"]["namespace"]},
           "spec": ds["spec"]["template"]["spec"]}
    pins = "/sys/fs/bpf/redirector"
    check(os.path.isdir(pins) and os.listdir(pins), f"no pins in {pins} before detach")
    sandbox, _ = h.k.run_pod(pod, ds["metadata"]["namespace"], UID_X, log=info)
    left = os.listdir(pins) if os.path.isdir(pins) else []
    check(not [p for p in left if p.startswith("link") or "connect" in p or "sock" in p],
          f"pins left after detach: {left}")
    try:
        h.expect_flip("curl-a", "direct", "detached")
    except AssertionError:
        # What is still attached, for the report (bpftool when installed).
        for cmd in (["bpftool", "cgroup", "tree", "/sys/fs/cgroup/unified"], ["bpftool", "link", "list"]):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                info(f"$ {' '.join(cmd)}\n{out.stdout[-3000:]}{out.stderr[-500:]}")
            except OSError:
                pass
        raise
    h.k.stop_pod(sandbox)
    info(f"  pins left in {pins}: {left or 'none'}")


def t_overlays_run_as_specified(h):
    """Each overlay's DaemonSet in turn replaces the running one as a rolling
    update does (maxSurge 1, maxUnavailable 0): the new pod starts beside
    the old, takes over through the hand-over socket, passes its probes and
    redirects; then the old pod is stopped (SIGTERM, grace 60 s) and must
    exit quickly, its drain ended by the take-over rather than the 50 s
    drain timeout."""
    for i, overlay in enumerate(("hardened", "credentials", "demo")):
        docs = render(f"deploy/overlays/{overlay}")
        if overlay == "hardened":
            # The startup taint the hardened overlay's daemon must remove.
            control({"op": "node", "name": NODE, "taints": [
                {"key": "egress-redirector/not-ready", "effect": "NoSchedule"}]})
        info(f"  overlay {overlay}")
        old = h.daemon
        old_uid = h.daemon_uid
        h.start_daemon(docs, f"0d0d0d0d-2020-4222-8333-00000000000{i}")
        h.expect_flip("curl-a", "proxy", f"overlay {overlay}")
        started = time.time()
        h.k.stop_pod(old[0], grace=60)
        took = time.time() - started
        old_log = h.k.logs(os.path.join(WORK, "pods", old_uid), "redirector")
        check(took < 20, f"the replaced daemon took {took:.0f} s to stop (drain not ended by the take-over)")
        check("handed over: a new instance accepts" in old_log,
              f"the replaced daemon's log says nothing of a hand-over: {old_log[-1500:]}")
        info(f"  the replaced pod stopped {took:.1f} s after SIGTERM")
        h.expect_flip("curl-a", "proxy", f"overlay {overlay}, old pod gone")
        if overlay == "hardened":
            with open(os.path.join(WORK, "fake-apiserver.json")) as f:
                node = json.load(f)["nodes"][NODE]
            taints = node.get("spec", {}).get("taints") or []
            check(not [t for t in taints if t.get("key") == "egress-redirector/not-ready"],
                  f"startup taint not removed: {taints}")


SCENARIOS = [t_direct_before_daemon, "daemon", t_daemon_container_as_specified, t_https_through_mitm,
             t_namespace_label_toggles, t_pod_annotation_toggles, t_pod_with_https_proxy,
             t_cainject_opt_out_fails, t_cainject_trusts_mitm, t_overlays_run_as_specified, t_detach_removes_hooks]
# The kind-like pass (kubelet --cgroup-root=/kubelet): the basics again.
SCENARIOS_PREFIXED = [t_direct_before_daemon, "daemon", t_daemon_container_as_specified,
                      t_https_through_mitm, t_namespace_label_toggles]


def main():
    h = Harness()
    h.start_clients()
    passed = 0
    only = set(filter(None, E.get("RT_ONLY", "").split()))
    try:
        for t in SCENARIOS_PREFIXED if CGROUP_ROOT else SCENARIOS:
            if t == "daemon":
                try:
                    h.start_daemon()
                except Exception as exc:  # nothing after this can run
                    FAILED.append("the DaemonSet's pod")
                    info(f"FAIL the DaemonSet's pod: {exc}")
                    break
                continue
            if only and t.__name__ not in only:
                continue
            info(f"--- {t.__name__}")
            try:
                t(h)
                passed += 1
                info(f"PASS {t.__name__}")
            except Exception as exc:  # one scenario's failure is reported, the rest run
                FAILED.append(t.__name__)
                info(f"FAIL {t.__name__}: {exc}")
    finally:
        h.stop_webhook()   # a process of this script, not a pod: never left behind
    if FAILED and getattr(h, "daemon_uid", None):
        info("daemon log (tail):\n" + h.daemon_log()[-3000:])
    if not E.get("RT_KEEP"):
        h.stop_all()
    print(f"runtime-e2e{CGROUP_ROOT}: {passed} passed, {len(FAILED)} failed" + (f" ({' '.join(FAILED)})" if FAILED else ""))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
