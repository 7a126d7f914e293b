"""A miniature kubelet: turns a pod spec (from the rendered manifests) into
CRI calls against containerd, translating what the kubelet translates.

Covered: host network, the pod's cgroup parent in the kubelet's cgroupfs
layout (/[ROOT/]kubepods/{besteffort,burstable}/pod<uid>, Guaranteed pods
directly under kubepods), QoS from requests/limits, the security context
(capabilities, allowPrivilegeEscalation -> no_new_privs, readOnlyRootFilesystem,
runAsUser/Group, seccomp RuntimeDefault = containerd's own profile, the
kubelet's default masked and read-only /proc paths), hostPath volumes (type
checks, DirectoryOrCreate) and mount propagation, ConfigMap volumes (the
node's own, or the namespace's read from the API server, data and
binaryData; files written on the node, mounted read-only, subPath mounts),
the service account token volume and KUBERNETES_SERVICE_* env,
downward-API env (spec.nodeName, status.hostIP, status.hostIPs), $(VAR)
expansion in command and args, init containers run to completion in order,
resource limits (memory limit, CPU shares/quota, OOM score of
system-node-critical), and HTTP GET probes as the kubelet sends them
(status 200-399 is success). Mutating admission, the API server's part
before a pod reaches the kubelet, is admission.py's.

Not covered (a real cluster's kubelet does them): image pulls (images are
imported), restarts, eviction, status reporting, projected token rotation.
"""

import base64
import json
import os
import re
import ssl
import sys
import time
import urllib.request

import grpc

sys.path.insert(0, os.environ.get("CRI_STUBS", ""))
import api_pb2 as cri  # noqa: E402
import api_pb2_grpc as cri_grpc  # noqa: E402

# The kubelet's defaults (pkg/securitycontext: DefaultProcMount).
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
PROPAGATION = {None: cri.PROPAGATION_PRIVATE, "None": cri.PROPAGATION_PRIVATE,
               "HostToContainer": cri.PROPAGATION_HOST_TO_CONTAINER,
               "Bidirectional": cri.PROPAGATION_BIDIRECTIONAL}
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def quantity(q):
    """A Kubernetes quantity as a number (bytes, or cores for CPU)."""
    q = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * f
    return float(q)


def qos_class(spec):
    """BestEffort, Burstable or Guaranteed, as the API server computes it."""
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    req = [c.get("resources", {}).get("requests", {}) for c in containers]
    lim = [c.get("resources", {}).get("limits", {}) for c in containers]
    if not any(req) and not any(lim):
        return "BestEffort"
    guaranteed = all(
        l.get("cpu") and l.get("memory") and r.get("cpu", l["cpu"]) == l["cpu"]
        and r.get("memory", l["memory"]) == l["memory"]
        for r, l in zip(req, lim))
    return "Guaranteed" if guaranteed else "Burstable"


def cgroup_parent(root, qos, uid):
    """The pod's cgroup under the cgroupfs driver (kubelet --cgroup-root=ROOT)."""
    base = f"{root.rstrip('/')}/kubepods"
    if qos == "Guaranteed":
        return f"{base}/pod{uid}"
    return f"{base}/{qos.lower()}/pod{uid}"


def expand(text, env):
    """$(VAR) expansion of command and args; $$(VAR) escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  text)


class Node:
    """What the kubelet knows of its node, and where it keeps pod files."""

    def __init__(self, name, ips, work, cgroup_root="", sa=None, configmaps=None,
                 host_path_map=None, dns=None):
        self.name, self.ips, self.work, self.cgroup_root = name, ips, work, cgroup_root
        self.sa = sa                    # {"host": IP, "port": P, "dir": DIR}
        self.configmaps = configmaps or {}   # name -> {key: text}
        self.host_path_map = host_path_map or {}  # hostPath -> stand-in directory
        self.dns = dns or []


class Kubelet:
    def __init__(self, socket, node):
        self.chan = grpc.insecure_channel(f"unix://{socket}")
        self.rt = cri_grpc.RuntimeServiceStub(self.chan)
        self.node = node

    # ------------------------------------------------------------ the pod
    def run_pod(self, pod, namespace, uid, host_network=None, log=print):
        """Creates the sandbox, runs the init containers to completion, then
        starts the containers. Returns (sandbox id, {container name: id})."""
        spec = pod["spec"]
        meta = pod.get("metadata", {})
        name = meta.get("name", "pod")
        if host_network is None:
            host_network = bool(spec.get("hostNetwork"))
        qos = qos_class(spec)
        parent = cgroup_parent(self.node.cgroup_root, qos, uid)
        pod_dir = os.path.join(self.node.work, "pods", uid)
        os.makedirs(os.path.join(pod_dir, "logs"), exist_ok=True)
        ns_mode = cri.NamespaceOption(
            network=cri.NODE if host_network else cri.POD,
            pid=cri.CONTAINER, ipc=cri.POD)
        dns = cri.DNSConfig(servers=self.node.dns,
                            searches=[f"{namespace}.svc.cluster.local", "svc.cluster.local",
                                      "cluster.local"],
                            options=["ndots:5"]) if self.node.dns else None
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname="" if host_network else name,
            log_directory=os.path.join(pod_dir, "logs"),
            dns_config=dns,
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            annotations=meta.get("annotations", {}),
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=parent,
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=ns_mode,
                    seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)),
            ),
        )
        sandbox = self.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
        log(f"sandbox {namespace}/{name} uid={uid} qos={qos} cgroup={parent} id={sandbox[:12]}")
        ids = {}
        for c in spec.get("initContainers", []):
            cid = self.start_container(sandbox, config, pod, c, pod_dir, ns_mode, qos)
            code = self.wait_exit(cid, timeout=60)
            logs = self.logs(pod_dir, c["name"])
            if code != 0:
                raise RuntimeError(f"init container {c['name']} exited {code}: {logs}")
            log(f"init container {c['name']} exited 0")
            ids[c["name"]] = cid
        for c in spec["containers"]:
            ids[c["name"]] = self.start_container(sandbox, config, pod, c, pod_dir, ns_mode, qos)
            log(f"container {c['name']} started ({ids[c['name']][:12]})")
        return sandbox, ids

    def stop_pod(self, sandbox, grace=10):
        for c in self.rt.ListContainers(cri.ListContainersRequest(
                filter=cri.ContainerFilter(pod_sandbox_id=sandbox))).containers:
            if c.state == cri.CONTAINER_RUNNING:
                self.rt.StopContainer(cri.StopContainerRequest(container_id=c.id, timeout=grace))
        self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox))
        self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox))

    # ------------------------------------------------------------ one container
    def env_of(self, c, pod):
        node = self.node
        env = {}
        if node.sa and pod["spec"].get("automountServiceAccountToken", True):
            env["KUBERNETES_SERVICE_HOST"] = node.sa["host"]
            env["KUBERNETES_SERVICE_PORT"] = str(node.sa["port"])
            env["KUBERNETES_PORT"] = f"tcp://{node.sa['host']}:{node.sa['port']}"
        fields = {"spec.nodeName": node.name, "status.hostIP": node.ips[0],
                  "status.hostIPs": ",".join(node.ips),
                  "metadata.name": pod.get("metadata", {}).get("name", ""),
                  "metadata.namespace": pod.get("metadata", {}).get("namespace", "")}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "fieldRef" in (e.get("valueFrom") or {}):
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise ValueError(f"env {e['name']}: fieldPath {path} not supported here")
                env[e["name"]] = fields[path]
            else:
                raise ValueError(f"env {e['name']}: only value and fieldRef are supported here")
        return env

    def configmap(self, namespace, name):
        """{key: str or bytes}: the node's own, else the API server's
        (data and binaryData), read with the node's credentials."""
        if name in self.node.configmaps:
            return self.node.configmaps[name]
        sa = self.node.sa
        with open(os.path.join(sa["dir"], "token")) as f:
            token = f.read().strip()
        req = urllib.request.Request(
            f"https://{sa['host']}:{sa['port']}/api/v1/namespaces/{namespace}/configmaps/{name}",
            headers={"Authorization": f"Bearer {token}"})
        ctx = ssl.create_default_context(cafile=os.path.join(sa["dir"], "ca.crt"))
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            cm = json.load(r)
        files = dict(cm.get("data") or {})
        files.update({k: base64.b64decode(b) for k, b in (cm.get("binaryData") or {}).items()})
        return files

    @staticmethod
    def write_files(directory, files):
        os.makedirs(directory, exist_ok=True)
        for key, content in files.items():
            with open(os.path.join(directory, key), "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)

    def mounts_of(self, c, pod, pod_dir, namespace):
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = []
        for m in c.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "hostPath" in v:
                path = v["hostPath"]["path"]
                host = self.node.host_path_map.get(path, path)
                kind = v["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    os.makedirs(host, mode=0o755, exist_ok=True)
                elif kind == "Directory" and not os.path.isdir(host):
                    raise RuntimeError(f"hostPath {path} ({host}) is not a directory")
            elif "configMap" in v:
                host = os.path.join(pod_dir, "volumes", "configmap", m["name"])
                self.write_files(host, self.configmap(namespace, v["configMap"]["name"]))
            elif "secret" in v:
                sec = v["secret"]["secretName"]
                host = os.path.join(pod_dir, "volumes", "secret", m["name"])
                os.makedirs(host, exist_ok=True)
                for key, text in self.node.configmaps[sec].items():
                    with open(os.path.join(host, key), "w") as f:
                        f.write(text)
            elif "emptyDir" in v:
                host = os.path.join(pod_dir, "volumes", "empty-dir", m["name"])
                os.makedirs(host, exist_ok=True)
            else:
                raise ValueError(f"volume {m['name']}: kind not supported here: {v}")
            if m.get("subPath"):
                host = os.path.join(host, m["subPath"])
            mounts.append(cri.Mount(container_path=m["mountPath"], host_path=host,
                                    readonly=bool(m.get("readOnly")) or "configMap" in v,
                                    propagation=PROPAGATION[m.get("mountPropagation")]))
        if self.node.sa and pod["spec"].get("automountServiceAccountToken", True):
            mounts.append(cri.Mount(container_path=SA_DIR, host_path=self.node.sa["dir"],
                                    readonly=True))
        return mounts

    def resources_of(self, c, pod, qos):
        r = c.get("resources", {})
        req, lim = r.get("requests", {}), r.get("limits", {})
        cpu_req = quantity(req.get("cpu", lim.get("cpu", 0)))
        res = cri.LinuxContainerResources(
            cpu_shares=max(2, int(cpu_req * 1024)) if cpu_req else 2,
            cpu_period=100000,
            cpu_quota=int(quantity(lim["cpu"]) * 100000) if "cpu" in lim else 0,
            memory_limit_in_bytes=int(quantity(lim["memory"])) if "memory" in lim else 0,
        )
        prio = pod["spec"].get("priorityClassName", "")
        if prio in ("system-node-critical", "system-cluster-critical"):
            res.oom_score_adj = -997
        elif qos == "BestEffort":
            res.oom_score_adj = 1000
        elif qos == "Guaranteed":
            res.oom_score_adj = -997
        else:
            res.oom_score_adj = 500
        return res

    def security_of(self, c, ns_mode):
        sc = c.get("securityContext", {}) or {}
        caps = sc.get("capabilities", {}) or {}
        seccomp = (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        profile = {"RuntimeDefault": cri.SecurityProfile.RuntimeDefault,
                   "Unconfined": cri.SecurityProfile.Unconfined}[seccomp]
        out = cri.LinuxContainerSecurityContext(
            capabilities=cri.Capability(add_capabilities=caps.get("add", []),
                                        drop_capabilities=caps.get("drop", [])),
            privileged=bool(sc.get("privileged")),
            namespace_options=ns_mode,
            readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
            no_new_privs=sc.get("allowPrivilegeEscalation") is False,
            seccomp=cri.SecurityProfile(profile_type=profile),
            masked_paths=[] if sc.get("privileged") else MASKED_PATHS,
            readonly_paths=[] if sc.get("privileged") else READONLY_PATHS,
        )
        if "runAsUser" in sc:
            out.run_as_user.value = sc["runAsUser"]
        if "runAsGroup" in sc:
            out.run_as_group.value = sc["runAsGroup"]
        return out

    def start_container(self, sandbox, sandbox_config, pod, c, pod_dir, ns_mode, qos):
        env = self.env_of(c, pod)
        image = c["image"]
        if "/" not in image.split(":")[0]:
            image = "docker.io/library/" + image
        if ":" not in image.rsplit("/", 1)[-1]:
            image += ":latest"
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=c["name"], attempt=0),
            image=cri.ImageSpec(image=image),
            command=[expand(x, env) for x in c.get("command", [])],
            args=[expand(x, env) for x in c.get("args", [])],
            envs=[cri.KeyValue(key=k, value=v) for k, v in env.items()],
            mounts=self.mounts_of(c, pod, pod_dir, sandbox_config.metadata.namespace),
            log_path=f"{c['name']}.log",
            labels={"io.kubernetes.container.name": c["name"]},
            linux=cri.LinuxContainerConfig(
                resources=self.resources_of(c, pod, qos),
                security_context=self.security_of(c, ns_mode)),
        )
        cid = self.rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sandbox, config=config, sandbox_config=sandbox_config)).container_id
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid))
        return cid

    def status(self, cid):
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status

    def wait_exit(self, cid, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.status(cid)
            if st.state == cri.CONTAINER_EXITED:
                return st.exit_code
            time.sleep(0.2)
        raise TimeoutError(f"container {cid[:12]} still running after {timeout}s")

    def logs(self, pod_dir, name):
        try:
            with open(os.path.join(pod_dir, "logs", f"{name}.log")) as f:
                return f.read()[-4000:]
        except FileNotFoundError:
            return ""

    def exec(self, cid, cmd, timeout=20):
        r = self.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))
        return r.exit_code, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def pod_ip(self, sandbox):
        st = self.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox)).status
        return st.network.ip

    # ------------------------------------------------------------ probes
    def probe(self, c, host, kind):
        """One HTTP GET probe as the kubelet sends it; True on 200-399."""
        p = c[kind]["httpGet"]
        url = f"http://{p.get('host', host)}:{p['port']}{p.get('path', '/')}"
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    url, headers={"User-Agent": "kube-probe/1.33"}),
                    timeout=c[kind].get("timeoutSeconds", 1)) as r:
                return 200 <= r.status < 400
        except Exception:
            return False

    def wait_probe(self, c, host, kind, started, attempts):
        """Probes from initialDelaySeconds on, every periodSeconds, up to
        `attempts` times; returns the seconds since start at success."""
        spec = c[kind]
        time.sleep(max(0.0, started + spec.get("initialDelaySeconds", 0) - time.time()))
        for _ in range(attempts):
            if self.probe(c, host, kind):
                return time.time() - started
            time.sleep(spec.get("periodSeconds", 10))
        raise RuntimeError(f"{kind} of {c['name']} failed {attempts} times")
