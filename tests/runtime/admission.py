"""Mutating admission, the API server's part before a pod reaches the
kubelet: the pod's AdmissionReview goes to the webhook over TLS, checked
against the caBundle of its MutatingWebhookConfiguration for the Service's
DNS name (what the API server checks), and the returned JSON Patch is
applied to the pod (the fake API server's RFC 6902 code).
"""

import base64
import http.client
import json
import os
import socket
import ssl
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from fake_apiserver import json_patch  # noqa: E402


class _ServiceConnection(http.client.HTTPSConnection):
    """HTTPS to `address`, the certificate checked for the name `host`
    (a Service's DNS name no resolver here knows)."""

    def __init__(self, address, host, port, context):
        super().__init__(host, port, timeout=10, context=context)
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def admit(pod, namespace, webhook, ca_bundle_pem):
    """(patched pod, the review's response). `webhook`: {"address", "port",
    "service" (DNS name), "path"}. Raises when the webhook does not allow
    the pod or answers something else than a JSON Patch."""
    uid = "rt-" + pod["metadata"]["name"]
    review = {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False}}
    # Only the caBundle: not the system roots.
    context = ssl.create_default_context(cadata=ca_bundle_pem)
    conn = _ServiceConnection(webhook["address"], webhook["service"], webhook["port"], context)
    try:
        conn.request("POST", webhook["path"], json.dumps(review),
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = reply.read()
    finally:
        conn.close()
    if reply.status != 200:
        raise RuntimeError(f"webhook answered {reply.status}: {body[:300]!r}")
    resp = json.loads(body)["response"]
    if resp.get("uid") != uid or resp.get("allowed") is not True:
        raise RuntimeError(f"webhook did not allow the pod: {resp}")
    if "patch" not in resp:
        return pod, resp
    if resp.get("patchType") != "JSONPatch":
        raise RuntimeError(f"patchType {resp.get('patchType')!r}")
    return json_patch(pod, json.loads(base64.b64decode(resp["patch"]))), resp
