"""mitmproxy addon: one flushed line per proxy event, for test assertions.

  CONNECT <host:port> client=<ip> conn=<id> proxy_tls=yes|no user=<name>|-
      -- a CONNECT request arrived
  REQUEST <METHOD> <url> client=<ip> conn=<id> form=absolute|origin proxy_tls=yes|no user=<name>|-
      -- an HTTP request: form= is the request line's form as the client
         sent it: absolute (`GET http://host/path`, a plain proxy request)
         or origin (`GET /path`, inside a CONNECT tunnel; HTTP/2 counts
         as origin)
  TCP <host:port> client=<ip> conn=<id>     -- a raw TCP stream started
  NAME-REFUSED <host:port> client=<ip> conn=<id>
      -- mitmproxy was about to connect to a host name that is not a test
         name; the connection was killed instead of asking DNS

`client` is the proxy client's address, i.e. where the CONNECT came from
(the redirector daemon's upstream socket, or a test process); `conn` is a
short id of that client connection (one per upstream connection the daemon
opened); `proxy_tls` says whether that connection was TLS-wrapped (an
`https://` proxy URL); `user` is the proxy-auth user name when mitmproxy
runs with `proxyauth` and the credentials were valid (never the password).
Inside a CONNECT tunnel (REQUEST form=origin) `proxy_tls` is the
tunnel connection's, as on its CONNECT line (mitmproxy's own view of the
connection turns TLS when it intercepts the pod's TLS).

Names never reach DNS: the `server_connect` hook pins every `*.test` name
to a test address (`test_hosts`, default all of them to 10.249.0.2) and
kills the server connection for any other name that is not an IP literal,
so a test that sends a wrong name fails instead of leaking a look-up.

Options (set with --set NAME=VALUE):
  flowlog    file to append the lines to (required)
  raw_ports  comma-separated destination ports to force into raw TCP mode.
             mitmproxy's own `tcp_hosts` option matches the destination host
             only, never the port, and the echo server shares its address with
             the HTTP origins, so the port decision is made here instead.
  refuse_ports  ports whose CONNECT gets 403 (a proxy ACL in miniature)
  test_hosts comma-separated NAME=IP pins, checked before the `*.test`
             default; NAME may start with "." for a whole domain
  test_ip    the address every other `*.test` name is pinned to

Loaded with `mitmdump -s flowlog.py`.
"""

import ipaddress
import threading

from mitmproxy import ctx, http
from mitmproxy.net.http import http1 as _http1
from mitmproxy.proxy import layers
from mitmproxy.proxy import server_hooks


# mitmproxy rewrites every HTTP/1 request to origin-form before any addon
# hook sees it, so the request line's form is noted while it is parsed (the
# HTTP/1 layer calls `http1.read_request_head` through the module).
def _noting_form(read_request_head):
    def read(lines):
        req = read_request_head(lines)
        req._rde_absolute = bool(req.authority) and req.method != "CONNECT"
        return req

    read._rde_noting_form = True
    return read


if not getattr(_http1.read_request_head, "_rde_noting_form", False):
    _http1.read_request_head = _noting_form(_http1.read_request_head)


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


def _conn(client_conn):
    return f"conn={client_conn.id[:8]}"


def _proxy_tls(flow, at_connect):
    """Whether the connection to the proxy itself is TLS. Inside a CONNECT
    tunnel mitmproxy's client connection turns TLS when it intercepts (the
    pod's TLS, re-signed), so what the connection was at its CONNECT is
    what counts there."""
    tls = at_connect.get(flow.client_conn.id, flow.client_conn.tls_established)
    return "proxy_tls=" + ("yes" if tls else "no")


def _user(flow):
    auth = flow.metadata.get("proxyauth")
    return "user=" + (auth[0] if auth else "-")


def _is_ip(host):
    try:
        ipaddress.ip_address(str(host).strip("[]"))
        return True
    except ValueError:
        return False


class FlowLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._file = None
        # client connection id -> whether it was TLS when its CONNECT came
        self._tls_at_connect = {}

    def client_disconnected(self, client):
        self._tls_at_connect.pop(client.id, None)

    def load(self, loader):
        loader.add_option("flowlog", str, "", "file to append flow lines to")
        loader.add_option("raw_ports", str, "", "ports forced to raw TCP (comma-separated)")
        loader.add_option("refuse_ports", str, "", "ports whose CONNECT gets 403 (comma-separated)")
        loader.add_option("test_hosts", str, "", "NAME=IP pins for test names (comma-separated)")
        loader.add_option("test_ip", str, "10.249.0.2", "address of every other *.test name")

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

    def _pin(self, host):
        """The test address for a host name, or None if it is not a test name."""
        host = host.lower().rstrip(".")
        for item in ctx.options.test_hosts.split(","):
            name, sep, ip = item.strip().partition("=")
            if not sep:
                continue
            name = name.lower()
            if host == name or (name.startswith(".") and host.endswith(name)):
                return ip
        if host.endswith(".test"):
            return ctx.options.test_ip
        return None

    # mitmproxy resolves host names through the machine's resolver when it
    # opens a server connection: pin test names here, refuse everything else.
    def server_connect(self, data: server_hooks.ServerConnectionHookData):
        addr = data.server.address
        if not addr or _is_ip(addr[0]):
            return
        host, port = addr[0], addr[1]
        ip = self._pin(host)
        if ip is None:
            self._write(f"NAME-REFUSED {_authority(host, port)} client="
                        f"{data.client.peername[0] if data.client.peername else '-'} "
                        f"{_conn(data.client)}")
            data.server.error = f"flowlog.py: {host} is not a test name (no DNS in tests)"
            return
        data.server.address = (ip, port)

    def http_connect(self, flow):
        req = flow.request
        self._write(f"CONNECT {_authority(req.host, req.port)} client={_client(flow)} "
                    f"{_conn(flow.client_conn)} {_proxy_tls(flow, self._tls_at_connect)} {_user(flow)}")
        self._tls_at_connect[flow.client_conn.id] = flow.client_conn.tls_established
        # A corporate proxy's ACL, in miniature: refuse CONNECT to some ports.
        if req.port in self._refuse_ports():
            flow.response = http.Response.make(403, b"blocked by test policy\n")

    def request(self, flow):
        req = flow.request
        if req.method == "CONNECT":  # already logged by http_connect
            return
        form = "absolute" if getattr(req, "_rde_absolute", False) else "origin"
        self._write(f"REQUEST {req.method} {_url(req)} client={_client(flow)} "
                    f"{_conn(flow.client_conn)} form={form} {_proxy_tls(flow, self._tls_at_connect)} "
                    f"{_user(flow)}")

    def tcp_start(self, flow):
        addr = flow.server_conn.address
        where = _authority(addr[0], addr[1]) if addr else "-"
        self._write(f"TCP {where} client={_client(flow)} {_conn(flow.client_conn)}")


addons = [FlowLog()]
