"""mitmproxy addon: one flushed line per proxy event, for test assertions.

  CONNECT <host:port> client=<ip>           -- a CONNECT request arrived
  REQUEST <METHOD> <url> client=<ip>        -- an HTTP request (inside a tunnel or plain)
  TCP <host:port> client=<ip>               -- a raw TCP stream started

`client` is the proxy client's address, i.e. where the CONNECT came from
(the redirector daemon's upstream socket, or a test process).

Options (set with --set NAME=VALUE):
  flowlog    file to append the lines to (required)
  raw_ports  comma-separated destination ports to force into raw TCP mode.
             mitmproxy's own `tcp_hosts` option matches the destination host
             only, never the port, and the echo server shares its address with
             the HTTP origins, so the port decision is made here instead.

Loaded with `mitmdump -s flowlog.py`.
"""

import threading

from mitmproxy import ctx, http
from mitmproxy.proxy import layers


def _authority(host, port):
    if ":" in str(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _url(req):
    # Like req.pretty_url, but keeps the brackets of an IPv6 host.
    default = {"http": 80, "https": 443}.get(req.scheme)
    host = req.pretty_host
    where = _authority(host, req.port) if req.port != default else (
        f"[{host}]" if ":" in host else host)
    return f"{req.scheme}://{where}{req.path}"


def _client(flow):
    peer = flow.client_conn.peername
    return peer[0] if peer else "-"


class FlowLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._file = None

    def load(self, loader):
        loader.add_option("flowlog", str, "", "file to append flow lines to")
        loader.add_option("raw_ports", str, "", "ports forced to raw TCP (comma-separated)")
        loader.add_option("refuse_ports", str, "", "ports whose CONNECT gets 403 (comma-separated)")

    def configure(self, updated):
        if "flowlog" in updated and ctx.options.flowlog:
            self._file = open(ctx.options.flowlog, "a", buffering=1)

    def _write(self, line):
        if self._file is None:
            return
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def _raw_ports(self):
        return {int(p) for p in ctx.options.raw_ports.split(",") if p.strip()}

    # Runs before mitmproxy's built-in NextLayer addon (script addons are
    # consulted first), which leaves a layer set here untouched.
    def next_layer(self, nextlayer):
        if nextlayer.layer is not None:
            return
        context = nextlayer.context
        addr = context.server.address
        if (
            addr
            and context.client.transport_protocol == "tcp"
            and addr[1] in self._raw_ports()
            # Only inside a CONNECT tunnel: the proxy's own HTTP layer
            # already sits on the stack.
            and len(context.layers) > 1
        ):
            nextlayer.layer = layers.TCPLayer(context)

    def _refuse_ports(self):
        return {int(p) for p in ctx.options.refuse_ports.split(",") if p.strip()}

    def http_connect(self, flow):
        req = flow.request
        self._write(f"CONNECT {_authority(req.host, req.port)} client={_client(flow)}")
        # A corporate proxy's ACL, in miniature: refuse CONNECT to some ports.
        if req.port in self._refuse_ports():
            flow.response = http.Response.make(403, b"blocked by test policy\n")

    def request(self, flow):
        req = flow.request
        if req.method == "CONNECT":  # already logged by http_connect
            return
        self._write(f"REQUEST {req.method} {_url(req)} client={_client(flow)}")

    def tcp_start(self, flow):
        addr = flow.server_conn.address
        where = _authority(addr[0], addr[1]) if addr else "-"
        self._write(f"TCP {where} client={_client(flow)}")


addons = [FlowLog()]
