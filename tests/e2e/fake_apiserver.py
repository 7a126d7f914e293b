#!/usr/bin/env python3
"""A fake Kubernetes API server for the redirector's --kube tests.

Plain HTTP. Speaks the real list/watch protocol for the resources the
daemon follows, as kube-rs's watcher uses it:

  GET /api/v1/pods?fieldSelector=spec.nodeName=N[&limit=..]    -> PodList
  GET /api/v1/namespaces                                       -> NamespaceList
  GET /api/v1/nodes                                            -> NodeList
  GET /api/v1/namespaces/NS/services?fieldSelector=metadata.name=N    -> ServiceList
  GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?fieldSelector=metadata.name=N
                                                               -> EndpointSliceList
  GET ...?watch=true&resourceVersion=RV&allowWatchBookmarks=true[&timeoutSeconds=T]
      -> a chunked stream of JSON lines {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
         "object": ...}: the changes after RV, then live ones, a BOOKMARK each
         second. An RV older than the history kept gets an ERROR event with
         code 410 (Gone), which makes a client relist.

And the two calls of the daemon's --remove-taint (startup taint):

  GET   /api/v1/nodes/NAME                                     -> Node
  PATCH /api/v1/nodes/NAME  (application/json-patch+json)      -> Node; ops
        test, remove, add and replace on paths below the object; a failed
        test answers 422 and changes nothing. Each PATCH is logged with its
        result and, when the node names a pins directory, the program links
        pinned there at that moment ("links=a,b,...").

And, for the CA-injection webhook (`redirector webhook`), plain named objects
without watches (PATH = /api/v1/namespaces/NS/configmaps|secrets,
/apis/coordination.k8s.io/v1/namespaces/NS/leases,
/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations):

  GET   PATH/NAME                                   -> the object, or 404
  POST  PATH                                        -> create; 409 if it exists
  PUT   PATH/NAME                                   -> replace; 409 when the body's
        resourceVersion is not the stored one (optimistic concurrency)
  PATCH PATH/NAME  application/apply-patch+yaml     -> server-side apply, simplified:
        create, or replace the top-level fields given (labels merged)
  PATCH PATH/NAME  application/json-patch+json      -> as for nodes

A control endpoint lets the test change the cluster (one JSON object per POST):

  POST /control {"op": "ns", "name": N, "labels": {...}}        create or relabel
  POST /control {"op": "pod", "namespace": NS, "name": N, "uid": U, "node": NODE,
                 "qos": "Burstable", "annotations": {...}, "hostNetwork": false,
                 "podIPs": ["10.249.40.2"]}
                                                          create or modify
  POST /control {"op": "delete-pod", "namespace": NS, "name": N}
  POST /control {"op": "gone"}           forget the history and end every watch
                                          with a 410 (clients must relist)
  POST /control {"op": "fail-lists", "seconds": S}   lists answer 500 for S s
  POST /control {"op": "node", "name": N, "taints": [...], "pins": DIR,
                 "podCIDRs": [...], "addresses": [{"type": "InternalIP", "address": A}]}
                                          create a node or set what is given
                                          (a key left out keeps its value)
  POST /control {"op": "delete-node", "name": N}
  POST /control {"op": "service", "namespace": NS, "name": N, "clusterIPs": [...]}
  POST /control {"op": "endpointslice", "namespace": NS, "name": N, "labels": {...},
                 "addresses": [...], "addressType": "IPv4"}     create or modify
  POST /control {"op": "delete-endpointslice", "namespace": NS, "name": N}
  POST /control {"op": "race-taints", "taint": {...}}  before the next PATCH
                                          of a node, prepend this taint to its
                                          taints (a concurrent writer), once
  GET  /control                          the state, for debugging

The state is saved to --state FILE after each change and loaded at start, so a
restarted server comes back with the same objects (and a history that starts
at its current resourceVersion, like a real apiserver after compaction).

Usage: fake_apiserver.py --listen 127.0.0.1:PORT --state FILE [--log FILE]
                         [--tls-cert PEM --tls-key PEM]   (HTTPS instead)
(PORT 0 picks a free port; the "ready" line on stdout names it.)
"""

import argparse
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import urllib.parse

LOCK = threading.Condition()
STATE = {"rv": 1, "pods": {}, "namespaces": {}, "nodes": {}, "services": {}, "endpointslices": {},
         "objects": {}}
HISTORY = []        # (rv, resource, type, object), oldest first
FLOOR = [1]         # the oldest RV a watch can start from (410 below it)
EPOCH = [0]         # bumped by "gone": running watches end with a 410
FAIL_LISTS_UNTIL = [0.0]
RACE_TAINT = []          # a taint to prepend before the next node PATCH
ARGS = None


def log(msg):
    if ARGS and ARGS.log:
        with open(ARGS.log, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")


def save():
    with open(ARGS.state + ".tmp", "w") as f:
        json.dump(STATE, f)
    import os
    os.replace(ARGS.state + ".tmp", ARGS.state)


def bump(resource, etype, obj):
    """Record a change (LOCK held): new resourceVersion, history, wake watches."""
    STATE["rv"] += 1
    obj["metadata"]["resourceVersion"] = str(STATE["rv"])
    HISTORY.append((STATE["rv"], resource, etype, json.loads(json.dumps(obj))))
    save()
    LOCK.notify_all()


def pod_object(c):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": c["name"], "namespace": c["namespace"], "uid": c["uid"],
                     "annotations": c.get("annotations") or {}},
        "spec": {"nodeName": c["node"], "containers": [{"name": "c", "image": "none"}],
                 "hostNetwork": bool(c.get("hostNetwork"))},
        "status": {"phase": "Running", "qosClass": c.get("qos", "Burstable"),
                   "podIPs": [{"ip": ip} for ip in c.get("podIPs") or []]},
    }


def control(cmd):
    op = cmd["op"]
    with LOCK:
        if op == "ns":
            name = cmd["name"]
            obj = STATE["namespaces"].get(name) or {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": "ns-" + name}}
            etype = "MODIFIED" if name in STATE["namespaces"] else "ADDED"
            obj["metadata"]["labels"] = cmd.get("labels") or {}
            STATE["namespaces"][name] = obj
            bump("namespaces", etype, obj)
        elif op == "pod":
            key = cmd["namespace"] + "/" + cmd["name"]
            etype = "MODIFIED" if key in STATE["pods"] else "ADDED"
            obj = pod_object(cmd)
            STATE["pods"][key] = obj
            bump("pods", etype, obj)
        elif op == "delete-pod":
            obj = STATE["pods"].pop(cmd["namespace"] + "/" + cmd["name"])
            bump("pods", "DELETED", obj)
        elif op == "gone":
            HISTORY.clear()
            FLOOR[0] = STATE["rv"]
            EPOCH[0] += 1
            LOCK.notify_all()
        elif op == "fail-lists":
            FAIL_LISTS_UNTIL[0] = time.time() + float(cmd["seconds"])
        elif op == "node":
            name = cmd["name"]
            obj = STATE["nodes"].get(name) or {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": "node-" + name}, "spec": {}}
            etype = "MODIFIED" if name in STATE["nodes"] else "ADDED"
            if "taints" in cmd:
                obj["spec"]["taints"] = cmd["taints"] or []
            if "podCIDRs" in cmd:
                obj["spec"]["podCIDRs"] = cmd["podCIDRs"] or []
                obj["spec"]["podCIDR"] = (cmd["podCIDRs"] or [""])[0]
            if "addresses" in cmd:
                obj.setdefault("status", {})["addresses"] = cmd["addresses"] or []
            # where to look for pinned links at PATCH time (not in the object)
            if "pins" in cmd or name not in STATE.get("node_pins", {}):
                STATE.setdefault("node_pins", {})[name] = cmd.get("pins") or ""
            STATE["nodes"][name] = obj
            bump("nodes", etype, obj)
        elif op == "delete-node":
            obj = STATE["nodes"].pop(cmd["name"])
            bump("nodes", "DELETED", obj)
        elif op == "service":
            key = cmd["namespace"] + "/" + cmd["name"]
            etype = "MODIFIED" if key in STATE["services"] else "ADDED"
            ips = cmd.get("clusterIPs") or []
            obj = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": cmd["name"], "namespace": cmd["namespace"],
                                "uid": "svc-" + key},
                   "spec": {"clusterIP": ips[0] if ips else "None", "clusterIPs": ips,
                            "ports": [{"port": 443, "protocol": "TCP"}]}}
            STATE["services"][key] = obj
            bump("services", etype, obj)
        elif op == "endpointslice":
            key = cmd["namespace"] + "/" + cmd["name"]
            etype = "MODIFIED" if key in STATE["endpointslices"] else "ADDED"
            obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": cmd["name"], "namespace": cmd["namespace"],
                                "uid": "eps-" + key, "labels": cmd.get("labels") or {}},
                   "addressType": cmd.get("addressType", "IPv4"),
                   "endpoints": [{"addresses": [a]} for a in cmd.get("addresses") or []],
                   "ports": [{"port": 6443, "protocol": "TCP"}]}
            STATE["endpointslices"][key] = obj
            bump("endpointslices", etype, obj)
        elif op == "delete-endpointslice":
            obj = STATE["endpointslices"].pop(cmd["namespace"] + "/" + cmd["name"])
            bump("endpointslices", "DELETED", obj)
        elif op == "race-taints":
            RACE_TAINT[:] = [cmd["taint"]]

        else:
            raise ValueError(f"unknown op {op}")
        return {"rv": STATE["rv"]}


class PatchFailed(Exception):
    """A JSON patch that does not apply: 422, nothing changed."""


def pointer(doc, path):
    """The parent container and last key of a JSON pointer below doc."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    if not parts:
        raise PatchFailed(f"empty path {path!r}")
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        last = len(parent) if last == "-" else int(last)
    return parent, last


def json_patch(doc, ops):
    """RFC 6902 test/remove/add/replace on a copy of doc; PatchFailed if any fails."""
    doc = json.loads(json.dumps(doc))
    for op in ops:
        try:
            parent, key = pointer(doc, op["path"])
            kind = op["op"]
            if kind == "test":
                if parent[key] != op["value"]:
                    raise PatchFailed(f"test {op['path']} failed")
            elif kind == "remove":
                del parent[key]
            elif kind == "add":
                if isinstance(parent, list):
                    parent.insert(key, op["value"])
                else:
                    parent[key] = op["value"]
            elif kind == "replace":
                parent[key]   # must exist
                parent[key] = op["value"]
            else:
                raise PatchFailed(f"unsupported op {kind}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise PatchFailed(f"{op.get('op')} {op.get('path')}: {e!r}")
    return doc


def pinned_links(name):
    pins = STATE.get("node_pins", {}).get(name)
    if not pins:
        return "-"
    import os
    try:
        return ",".join(sorted(os.listdir(os.path.join(pins, "links")))) or "none"
    except FileNotFoundError:
        return "none"


# What each resource's list is called, and its group/version.
KINDS = {"pods": ("Pod", "v1"), "namespaces": ("Namespace", "v1"), "nodes": ("Node", "v1"),
         "services": ("Service", "v1"),
         "endpointslices": ("EndpointSlice", "discovery.k8s.io/v1")}


def resource_of(path):
    """(resource, namespace or None) for a collection path, or None."""
    fixed = {"/api/v1/pods": "pods", "/api/v1/namespaces": "namespaces", "/api/v1/nodes": "nodes"}
    if path in fixed:
        return fixed[path], None
    m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/services", path)
    if m:
        return "services", m.group(1)
    m = re.fullmatch(r"/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices", path)
    if m:
        return "endpointslices", m.group(1)
    return None


# Named objects without watches (the webhook's): path -> (resource key, name or None).
OBJECT_PATH = re.compile(
    r"(?P<base>/api/v1|/apis/[^/]+/v1)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<res>configmaps|secrets|leases|mutatingwebhookconfigurations)(?:/(?P<name>[^/]+))?")


def object_of(path):
    m = OBJECT_PATH.fullmatch(path)
    if not m:
        return None
    return f"{m.group('res')}/{m.group('ns') or ''}", m.group("name")


def store_object(key, obj):
    """Save obj under key/name with a new resourceVersion (LOCK held)."""
    STATE["rv"] += 1
    meta = obj.setdefault("metadata", {})
    meta["resourceVersion"] = str(STATE["rv"])
    meta.setdefault("uid", f"uid-{STATE['rv']}")
    STATE.setdefault("objects", {})[key + "/" + meta["name"]] = obj
    save()
    return obj


def object_request(handler, method, path, body, content_type):
    """Serve one named-object request; True if path was one."""
    found = object_of(path)
    if found is None:
        return False
    key, name = found
    ns = key.split("/", 1)[1]
    with LOCK:
        objects = STATE.setdefault("objects", {})
        current = objects.get(f"{key}/{name}") if name else None
        if method == "GET":
            if current is None:
                handler.send_json(404, status(404, "NotFound", f"{path} not found"))
            else:
                handler.send_json(200, current)
            return True
        try:
            doc = json.loads(body) if body else {}
        except ValueError as e:
            handler.send_json(400, status(400, "BadRequest", str(e)))
            return True
        if method == "POST" and name is None:
            name = doc.get("metadata", {}).get("name", "")
            if f"{key}/{name}" in objects:
                handler.send_json(409, status(409, "AlreadyExists", f"{name} already exists"))
                return True
            if ns:
                doc["metadata"]["namespace"] = ns
            log(f"CREATE {key}/{name}")
            handler.send_json(201, store_object(key, doc))
            return True
        if method == "PUT" and name:
            if current is None:
                handler.send_json(404, status(404, "NotFound", f"{path} not found"))
                return True
            rv = doc.get("metadata", {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                handler.send_json(409, status(409, "Conflict", "the object has been modified"))
                return True
            log(f"REPLACE {key}/{name}")
            handler.send_json(200, store_object(key, doc))
            return True
        if method == "PATCH" and name:
            if content_type == "application/apply-patch+yaml":
                merged = json.loads(json.dumps(current)) if current else {"metadata": {"name": name}}
                for field, value in doc.items():
                    if field == "metadata":
                        labels = merged["metadata"].setdefault("labels", {})
                        labels.update(value.get("labels") or {})
                    else:
                        merged[field] = value
                if ns:
                    merged["metadata"]["namespace"] = ns
                log(f"APPLY {key}/{name}")
                handler.send_json(200, store_object(key, merged))
                return True
            if content_type == "application/json-patch+json":
                if current is None:
                    handler.send_json(404, status(404, "NotFound", f"{path} not found"))
                    return True
                try:
                    patched = json_patch(current, doc)
                except PatchFailed as e:
                    handler.send_json(422, status(422, "Invalid", f"the patch did not apply: {e}"))
                    return True
                log(f"PATCH {key}/{name} body={body.decode()[:200]}")
                handler.send_json(200, store_object(key, patched))
                return True
            handler.send_json(415, status(415, "UnsupportedMediaType", content_type))
            return True
        handler.send_json(405, status(405, "MethodNotAllowed", f"{method} {path}"))
        return True


def field_filter(query):
    """(field, value) of the fieldSelector, or None; only the two the daemon uses."""
    sel = query.get("fieldSelector", [""])[0]
    if not sel:
        return None
    key, _, value = sel.partition("=")
    if key not in ("spec.nodeName", "metadata.name"):
        raise ValueError(f"unsupported fieldSelector {sel}")
    return key, value


def matches(resource, obj, sel, namespace=None):
    if namespace is not None and obj["metadata"].get("namespace") != namespace:
        return False
    if sel is None:
        return True
    key, value = sel
    if key == "spec.nodeName":
        return resource == "pods" and obj["spec"]["nodeName"] == value
    return obj["metadata"]["name"] == value


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        log("%s %s" % (self.address_string(), fmt % args))

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def object_call(self, method):
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))) if method != "GET" else b""
        content_type = self.headers.get("Content-Type", "").split(";")[0]
        return object_request(self, method, url.path, body, content_type)

    def do_PUT(self):
        if not self.object_call("PUT"):
            self.send_json(404, status(404, "NotFound", self.path))

    def do_POST(self):
        if object_of(urllib.parse.urlsplit(self.path).path) is not None:
            return self.object_call("POST")
        if self.path != "/control":
            return self.send_json(404, status(404, "NotFound", self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            self.send_json(200, control(json.loads(body)))
        except (KeyError, ValueError) as e:
            self.send_json(400, {"error": str(e)})

    def do_PATCH(self):
        if object_of(urllib.parse.urlsplit(self.path).path) is not None:
            return self.object_call("PATCH")
        url = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        name = url.path[len("/api/v1/nodes/"):] if url.path.startswith("/api/v1/nodes/") else ""
        if not name or "/" in name:
            return self.send_json(404, status(404, "NotFound", url.path))
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json-patch+json":
            return self.send_json(415, status(415, "UnsupportedMediaType", "JSON patch only (test)"))
        with LOCK:
            node = STATE["nodes"].get(name)
            if node is None:
                return self.send_json(404, status(404, "NotFound", f'nodes "{name}" not found'))
            links = pinned_links(name)
            if RACE_TAINT:
                node["spec"].setdefault("taints", []).insert(0, RACE_TAINT.pop())
                bump("nodes", "MODIFIED", node)
                log(f"PATCH node {name}: a concurrent writer prepended a taint first")
            try:
                patched = json_patch(node, json.loads(body))
            except PatchFailed as e:
                log(f"PATCH node {name} result=422 links={links} body={body.decode()}")
                return self.send_json(422, status(422, "Invalid", f"the patch did not apply: {e}"))
            STATE["nodes"][name] = patched
            bump("nodes", "MODIFIED", patched)
            log(f"PATCH node {name} result=200 links={links} body={body.decode()}")
            self.send_json(200, patched)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if object_of(url.path) is not None:
            return self.object_call("GET")
        if url.path == "/control":
            with LOCK:
                return self.send_json(200, {"state": STATE, "floor": FLOOR[0]})
        if url.path.startswith("/api/v1/nodes/"):
            with LOCK:
                node = STATE["nodes"].get(url.path[len("/api/v1/nodes/"):])
                if node is None:
                    return self.send_json(404, status(404, "NotFound", url.path))
                return self.send_json(200, node)
        found = resource_of(url.path)
        if found is None:
            return self.send_json(404, status(404, "NotFound", url.path))
        resource, namespace = found
        try:
            sel = field_filter(query)
        except ValueError as e:
            return self.send_json(400, status(400, "BadRequest", str(e)))
        if query.get("watch", ["false"])[0] in ("true", "1"):
            return self.watch(resource, sel, namespace, query)
        if time.time() < FAIL_LISTS_UNTIL[0]:
            return self.send_json(500, status(500, "InternalError", "lists failing (test)"))
        with LOCK:
            items = [o for o in STATE[resource].values() if matches(resource, o, sel, namespace)]
            kind, api_version = KINDS[resource]
            body = {"apiVersion": api_version, "kind": kind + "List",
                    "metadata": {"resourceVersion": str(STATE["rv"])}, "items": items}
        self.send_json(200, body)

    def chunk(self, event):
        data = (json.dumps(event) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, resource, sel, namespace, query):
        try:
            since = int(query.get("resourceVersion", ["0"])[0] or "0")
        except ValueError:
            return self.send_json(400, status(400, "BadRequest", "resourceVersion"))
        timeout = float(query.get("timeoutSeconds", ["290"])[0])
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.time() + timeout
        try:
            with LOCK:
                epoch = EPOCH[0]
                if since < FLOOR[0]:
                    log(f"watch {resource} rv={since}: too old (floor {FLOOR[0]}), 410")
                    self.chunk({"type": "ERROR", "object": status(410, "Expired", "too old resource version")})
                    return self.end_chunks()
                sent = since
                while time.time() < deadline:
                    if EPOCH[0] != epoch:
                        log(f"watch {resource}: history gone, 410")
                        self.chunk({"type": "ERROR", "object": status(410, "Expired", "too old resource version")})
                        break
                    for rv, res, etype, obj in HISTORY:
                        if rv > sent and res == resource and matches(resource, obj, sel, namespace):
                            self.chunk({"type": etype, "object": obj})
                    sent = STATE["rv"]
                    if bookmarks:
                        kind, api_version = KINDS[resource]
                        self.chunk({"type": "BOOKMARK", "object": {
                            "apiVersion": api_version, "kind": kind,
                            "metadata": {"resourceVersion": str(sent)}}})
                    LOCK.wait(timeout=1.0)
            self.end_chunks()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--log")
    # HTTPS, as a pod's in-cluster config dials it (tests/runtime)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    ARGS = p.parse_args()
    try:
        with open(ARGS.state) as f:
            STATE.update(json.load(f))
    except FileNotFoundError:
        pass
    FLOOR[0] = STATE["rv"]
    host, _, port = ARGS.listen.rpartition(":")
    server = Server((host, int(port)), Handler)
    if ARGS.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    # port 0: the kernel picks one; say which
    print(f"fake apiserver ready on {host}:{server.server_address[1]} rv={STATE['rv']}", flush=True)
    log(f"started rv={STATE['rv']}")
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
