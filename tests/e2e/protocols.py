#!/usr/bin/env python3
"""Peers of the protocol tests (protocols.sh, issue 13). Standard library
only, except h2c-server (the `h2` package: run it with mitmproxy's Python).

  protocols.py second-proxy --listen IP:PORT --source IP --log FILE
      A proxy of the pod's own (what HTTPS_PROXY/HTTP_PROXY point at), not
      known to the redirector. Logs each request line as it arrived
      ("SECOND <request line> client=IP"), then serves it: CONNECT
      host:port is answered 200 and tunnelled; an absolute-form request is
      sent on in origin form (with Connection: close) and the answer
      relayed; anything else gets 400. Its own connections leave from
      --source, so the origin tells "through the second proxy" apart.
      *.test names are the origin's address (--test-ip), other names are
      refused: never DNS.
  protocols.py ws-server --listen IP:PORT --log FILE
      A WebSocket (RFC 6455) server: after the handshake it sends the text
      message "hello from the server" unasked, then echoes every data
      message back with "echo:" before it, and answers a close with a
      close. Logs "WS client=IP open path=P", "WS client=IP got=N bytes" and
      "WS client=IP closed".
  protocols.py ws-client HOST PORT --host-header NAME:PORT [--path P]
      Connects, upgrades with a real handshake (checks the 101 and
      Sec-WebSocket-Accept), waits for the server's unasked message, sends
      masked messages (text, a 70,000-byte binary one: a 64-bit length,
      another text), checks each echo, closes. Prints one JSON line with
      what it saw; exit 0 only if every check held.
  protocols.py h2c-server --listen IP:PORT --log FILE
      HTTP/2 with prior knowledge (h2c) only: checks that the connection
      starts with the exact client preface, logs "H2C client=IP preface=ok
      path=P" (or preface=bad:HEX), answers every request 200 with
      "h2c ok client=IP path=P".
"""

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import select
import socket
import socketserver
import struct
import sys
import threading

LOG_LOCK = threading.Lock()
LOG = None
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def log(line):
    with LOG_LOCK:
        LOG.write(line + "\n")
        LOG.flush()


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def read_head(sock, limit=65536):
    """Bytes up to the end of an HTTP head, and whatever came after."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("head too long")
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def pump(a, b):
    """Both ways until both sides are done (a half-close passed on), or 30 s
    without a byte."""
    peer = {a: b, b: a}
    reading = {a, b}
    while reading:
        ready = select.select(list(reading), [], [], 30)[0]
        if not ready:
            return
        for src in ready:
            data = src.recv(65536)
            if data:
                peer[src].sendall(data)
                continue
            try:
                peer[src].shutdown(socket.SHUT_WR)
            except OSError:
                pass
            reading.discard(src)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


# ---------------------------------------------------------------- second proxy

class SecondProxy(socketserver.BaseRequestHandler):
    source = None
    test_ip = None

    def pinned(self, host):
        """*.test names and IP literals only: nothing here asks DNS."""
        if host.lower().rstrip(".").endswith(".test"):
            return self.test_ip
        return str(ipaddress.ip_address(host.strip("[]")))

    def dial(self, host, port):
        s = socket.create_connection((self.pinned(host), port), timeout=10,
                                     source_address=(self.source, 0))
        s.settimeout(None)
        return s

    def handle(self):
        client = self.client_address[0]
        try:
            head, rest = read_head(self.request)
        except (OSError, ConnectionError) as exc:
            log(f"SECOND-ERROR client={client} {exc}")
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        log(f"SECOND {line} client={client}")
        method, target, _version = line.split(" ", 2)
        try:
            if method == "CONNECT":
                host, port = split_addr(target)
                upstream = self.dial(host, port)
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            elif "://" not in target:
                self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                                     b"Content-Length: 0\r\n\r\n")
                return
            else:
                _scheme, _, after = target.partition("://")
                authority, slash, path = after.partition("/")
                host, _, port = authority.partition(":")
                upstream = self.dial(host, int(port or 80))
                fields = [f for f in head.split(b"\r\n")[1:]
                          if f and not f.lower().startswith((b"connection:", b"proxy-"))]
                upstream.sendall(f"{method} {slash or '/'}{path} HTTP/1.1\r\n".encode()
                                 + b"\r\n".join(fields + [b"Connection: close"])
                                 + b"\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            pump(self.request, upstream)
        except (OSError, ValueError) as exc:
            log(f"SECOND-ERROR client={client} {exc}")


def second_proxy(args):
    SecondProxy.source = args.source
    SecondProxy.test_ip = args.test_ip
    srv = Server(split_addr(args.listen), SecondProxy)
    print("second proxy ready", flush=True)
    srv.serve_forever()


# ---------------------------------------------------------------- WebSocket

def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def recv_exact(sock, n, buf):
    """n bytes from buf (bytes already read) and then sock."""
    while len(buf[0]) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-frame")
        buf[0] += chunk
    out, buf[0] = buf[0][:n], buf[0][n:]
    return out


def ws_read(sock, buf):
    """One frame: (opcode, payload), unmasked."""
    b0, b1 = recv_exact(sock, 2, buf)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(sock, 2, buf))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(sock, 8, buf))[0]
    mask = recv_exact(sock, 4, buf) if b1 & 0x80 else None
    payload = recv_exact(sock, n, buf)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return b0 & 0x0F, payload


def ws_frame(opcode, payload, masked):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n | (0x80 if masked else 0))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126 | (0x80 if masked else 0), n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127 | (0x80 if masked else 0), n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


class WsServer(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.client_address[0]
        sock = self.request
        sock.settimeout(15)
        try:
            head, rest = read_head(sock)
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (l.partition(":") for l in lines[1:] if l)}
            path = lines[0].split(" ")[1]
            log(f"WS client={client} open path={path}")
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                         + ws_accept(fields["sec-websocket-key"]).encode() + b"\r\n\r\n")
            sock.sendall(ws_frame(1, b"hello from the server", masked=False))
            buf = [rest]
            while True:
                opcode, payload = ws_read(sock, buf)
                if opcode == 8:
                    sock.sendall(ws_frame(8, payload, masked=False))
                    break
                log(f"WS client={client} got={len(payload)} bytes")
                sock.sendall(ws_frame(opcode, b"echo:" + payload, masked=False))
        except (OSError, ConnectionError, KeyError) as exc:
            log(f"WS-ERROR client={client} {exc!r}")
            return
        log(f"WS client={client} closed")


def ws_server(args):
    srv = Server(split_addr(args.listen), WsServer)
    print("ws server ready", flush=True)
    srv.serve_forever()


def ws_client(args):
    seen = {"switched": False, "accept_ok": False, "hello": None, "echoes": [], "closed": False}
    ok = False
    try:
        sock = socket.create_connection((args.host, args.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head, rest = read_head(sock)
        text = head.decode("latin-1")
        seen["status"] = text.split("\r\n", 1)[0]
        seen["switched"] = seen["status"].startswith("HTTP/1.1 101")
        seen["accept_ok"] = f"sec-websocket-accept: {ws_accept(key)}".lower() in text.lower()
        buf = [rest]
        _, hello = ws_read(sock, buf)
        seen["hello"] = hello.decode(errors="replace")
        messages = [(1, b"first message"), (2, bytes(range(256)) * 273 + b"x" * 112),
                    (1, "third, \u00fcnicode".encode())]
        all_echoed = True
        for opcode, payload in messages:
            sock.sendall(ws_frame(opcode, payload, masked=True))
            got_op, got = ws_read(sock, buf)
            echoed = got_op == opcode and got == b"echo:" + payload
            all_echoed &= echoed
            seen["echoes"].append({"sent": len(payload), "ok": echoed})
        sock.sendall(ws_frame(8, struct.pack("!H", 1000), masked=True))
        got_op, _ = ws_read(sock, buf)
        seen["closed"] = got_op == 8
        ok = (seen["switched"] and seen["accept_ok"] and seen["hello"] == "hello from the server"
              and all_echoed and seen["closed"])
    except (OSError, ConnectionError, ValueError) as exc:
        seen["error"] = repr(exc)
    seen["ok"] = ok
    print(json.dumps(seen))
    return 0 if ok else 1


# ---------------------------------------------------------------- h2c

def h2c_server(args):
    import h2.config
    import h2.connection
    import h2.events

    class H2c(socketserver.BaseRequestHandler):
        def handle(self):
            client = self.client_address[0]
            sock = self.request
            sock.settimeout(15)
            try:
                first = b""
                while len(first) < len(H2_PREFACE):
                    chunk = sock.recv(len(H2_PREFACE) - len(first))
                    if not chunk:
                        break
                    first += chunk
                preface = "ok" if first == H2_PREFACE else "bad:" + first.hex()
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                if preface != "ok":
                    log(f"H2C client={client} preface={preface}")
                    return
                conn.receive_data(first)
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            path = dict(event.headers).get(b":path", b"?").decode()
                            log(f"H2C client={client} preface={preface} path={path}")
                            body = f"h2c ok client={client} path={path}\n".encode()
                            conn.send_headers(event.stream_id, [
                                (":status", "200"), ("content-type", "text/plain"),
                                ("content-length", str(len(body)))])
                            conn.send_data(event.stream_id, body, end_stream=True)
                    sock.sendall(conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError) as exc:
                log(f"H2C-ERROR client={client} {exc!r}")

    srv = Server(split_addr(args.listen), H2c)
    print("h2c server ready", flush=True)
    srv.serve_forever()


def main():
    global LOG
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("second-proxy")
    p.add_argument("--listen", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--test-ip", default="10.249.0.2")
    p.add_argument("--log", required=True)
    p = sub.add_parser("ws-server")
    p.add_argument("--listen", required=True)
    p.add_argument("--log", required=True)
    p = sub.add_parser("ws-client")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--host-header", required=True)
    p.add_argument("--path", default="/chat")
    p = sub.add_parser("h2c-server")
    p.add_argument("--listen", required=True)
    p.add_argument("--log", required=True)
    args = ap.parse_args()
    if getattr(args, "log", None):
        LOG = open(args.log, "a", buffering=1)
    return {"second-proxy": second_proxy, "ws-server": ws_server, "ws-client": ws_client,
            "h2c-server": h2c_server}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
