#!/usr/bin/env python3
"""Helpers of cainject.sh: build AdmissionReviews, apply the webhook's JSON
Patch as the API server does, and play the kubelet for one container.

  cainject.py review NS POD.json                 -> an AdmissionReview v1 (stdout)
  cainject.py apply POD.json RESPONSE.json       -> the patched pod (stdout); fails
                                                    when the response is not allowed
  cainject.py kubelet POD.json CONFIGMAP.json ROOT HOSTS-LINE
      -> writes the ConfigMap's files to ROOT/vol and ROOT/run.sh, which, run in a
         private mount namespace, lays an overlay over /etc (the host's /etc is
         never written), bind-mounts the bundle as the pod's first container's
         volumeMounts say, adds HOSTS-LINE to /etc/hosts, and execs its
         arguments with exactly the container's env (plus PATH and HOME).
"""
import base64
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_apiserver import json_patch  # noqa: E402  (the same RFC 6902 code)

VOLUME = "egress-redirector-ca-bundle"


def review(ns, pod_file):
    with open(pod_file) as f:
        pod = json.load(f)
    print(json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "e2e-" + pod["metadata"]["name"],
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }}))


def apply(pod_file, response_file):
    with open(pod_file) as f:
        pod = json.load(f)
    with open(response_file) as f:
        resp = json.load(f)["response"]
    if resp.get("uid") != "e2e-" + pod["metadata"]["name"] or resp.get("allowed") is not True:
        sys.exit(f"unexpected response: {resp}")
    if "patch" in resp:
        if resp.get("patchType") != "JSONPatch":
            sys.exit(f"patchType {resp.get('patchType')!r}")
        pod = json_patch(pod, json.loads(base64.b64decode(resp["patch"])))
    print(json.dumps(pod))


def kubelet(pod_file, cm_file, root, hosts_line):
    with open(pod_file) as f:
        pod = json.load(f)
    with open(cm_file) as f:
        cm = json.load(f)
    vol = os.path.join(root, "vol")
    os.makedirs(vol, exist_ok=True)
    for key, text in (cm.get("data") or {}).items():
        with open(os.path.join(vol, key), "w") as f:
            f.write(text)
    for key, b64 in (cm.get("binaryData") or {}).items():
        with open(os.path.join(vol, key), "wb") as f:
            f.write(base64.b64decode(b64))
    for d in ("upper", "work"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    c = pod["spec"]["containers"][0]
    lines = ["set -e",
             f"mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/upper,workdir={root}/work /etc",
             f"echo {shlex.quote(hosts_line)} >>/etc/hosts"]
    for m in c.get("volumeMounts") or []:
        if m["name"] != VOLUME:
            continue
        target = m["mountPath"]
        if not target.startswith("/etc/"):
            sys.exit(f"only mounts below /etc are emulated: {target}")
        if m.get("subPath"):
            src = os.path.join(vol, m["subPath"])
            lines.append(f"mkdir -p {shlex.quote(os.path.dirname(target))}")
            lines.append(f"[ -e {shlex.quote(target)} ] || : >{shlex.quote(target)}")
        else:
            src = vol
            lines.append(f"mkdir -p {shlex.quote(target)}")
        lines.append(f"mount --bind -o ro {shlex.quote(src)} {shlex.quote(target)}")
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOME={root}"]
    for e in c.get("env") or []:
        if "value" in e:
            env.append(f"{e['name']}={e['value']}")
    lines.append("exec env -i " + " ".join(shlex.quote(x) for x in env) + ' "$@"')
    with open(os.path.join(root, "run.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"review": review, "apply": apply, "kubelet": kubelet}[cmd](*args)


if __name__ == "__main__":
    main()
