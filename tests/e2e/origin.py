#!/usr/bin/env python3
"""Origin servers for the egress-redirector end-to-end test ("the internet").

Runs inside the rde-inet network namespace. Every listener is bound
dual-stack on [::] (IPV6_V6ONLY=0) so it answers on every address of the
namespace, IPv4 and IPv6 alike:

  * HTTPS on 443 (certificate given on the command line),
  * plain HTTP on 80,
  * raw TCP echo on 7007,
  * UDP echo on 7008,
  * a server-speaks-first banner on 7010 ("220 origin banner client=IP\r\n"
    on connect, then an echo), for clients that never send first.

The plain HTTP server answers a connection that opens with a TLS record
(e.g. a client that was told to speak TLS to an "https://" proxy that is
really plain HTTP) with "400 Bad Request" at once, as a real HTTP server or
proxy would, instead of waiting for a request line that never comes.

GET /bytes/N and /chunked/N on HTTP(S) answer N bytes (0..255 repeated),
with a Content-Length or chunked, for bulk transfers.

HTTP(S) responses and UDP answers name the client's source address as the
server saw it, so a test can tell "came via the proxy" (client = the proxy's
address) from "came directly" (client = the pod's address). Every request,
connection and datagram is appended to the log file, one flushed line each.

Usage: origin.py --log FILE --cert CERT --key KEY [--http 80] [--https 443]
                 [--echo 7007] [--udp 7008] [--banner 7010]
"""

import argparse
import http.server
import socket
import socketserver
import ssl
import sys
import threading

LOG_LOCK = threading.Lock()
LOG_FILE = None


def log(line):
    with LOG_LOCK:
        LOG_FILE.write(line + "\n")
        LOG_FILE.flush()


def client_ip(addr):
    """Source address without the ::ffff: prefix a dual-stack socket adds."""
    ip = addr[0]
    if ip.lower().startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip


def dual_stack_socket(kind):
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


class DualStackHTTPServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class OriginHandler(http.server.BaseHTTPRequestHandler):
    scheme = "http"
    protocol_version = "HTTP/1.1"

    def _answer(self, with_body):
        client = client_ip(self.client_address)
        host = self.headers.get("Host", "-")
        extra = f" bytes={self.body_bytes}" if self.command == "POST" else ""
        log(f"{self.scheme.upper()} client={client} method={self.command} "
            f"host={host} path={self.path}{extra}")
        if self.path.startswith(("/bytes/", "/chunked/")):
            return self._bulk(with_body)
        body = f"origin ok client={client} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _bulk(self, with_body):
        """/bytes/N: N bytes with a Content-Length; /chunked/N: N bytes in
        64 KiB chunks (Transfer-Encoding: chunked). The bytes repeat
        0..255, so a client can check them."""
        chunked = self.path.startswith("/chunked/")
        try:
            n = int(self.path.rsplit("/", 1)[1])
        except ValueError:
            n = 0
        block = bytes(range(256)) * 256  # 64 KiB
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if not with_body:
            return
        left = n
        while left > 0:
            part = block[:min(left, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            else:
                self.wfile.write(part)
            left -= len(part)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0") or "0")
        got = len(self.rfile.read(length)) if length else 0
        self.body_bytes = got
        self._answer(True)

    def log_message(self, fmt, *args):  # keep stderr quiet; we log ourselves
        pass


class PlainOriginHandler(OriginHandler):
    """Plain HTTP; a TLS ClientHello gets a prompt 400 (see the module doc)."""

    def handle(self):
        try:
            self.connection.settimeout(15)
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":  # TLS handshake record
            client = client_ip(self.client_address)
            log(f"HTTP-GOT-TLS client={client}")
            body = b"plain HTTP here; this is not a TLS server\n"
            try:
                self.connection.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.close_connection = True
            return
        self.connection.settimeout(None)
        super().handle()


class TLSOriginHandler(OriginHandler):
    scheme = "https"


class TLSHTTPServer(DualStackHTTPServer):
    """Wraps each accepted connection in TLS inside its own thread, so a
    slow or broken handshake never blocks the accept loop."""

    ssl_context = None

    def finish_request(self, request, client_address):
        try:
            request.settimeout(15)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log(f"HTTPS-HANDSHAKE-FAILED client={client_ip(client_address)} {exc}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        client = client_ip(self.client_address)
        log(f"ECHO client={client} open")
        self.request.settimeout(30)
        total = 0
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                total += len(data)
                self.request.sendall(data)
        except OSError:
            pass
        log(f"ECHO client={client} closed bytes={total}")


class BannerHandler(socketserver.BaseRequestHandler):
    """Server speaks first: a banner line on connect, then an echo."""

    def handle(self):
        client = client_ip(self.client_address)
        log(f"BANNER client={client} open")
        self.request.settimeout(30)
        total = 0
        try:
            self.request.sendall(f"220 origin banner client={client}\r\n".encode())
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                total += len(data)
                self.request.sendall(data)
        except OSError:
            pass
        log(f"BANNER client={client} closed bytes={total}")


class DualStackTCPServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def udp_echo(port):
    sock = dual_stack_socket(socket.SOCK_DGRAM)
    sock.bind(("::", port))
    while True:
        data, addr = sock.recvfrom(65536)
        client = client_ip(addr)
        log(f"UDP client={client} bytes={len(data)}")
        sock.sendto(b"udp ok client=" + client.encode() + b" data=" + data, addr)


def serve(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def main():
    global LOG_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--http", type=int, default=80)
    ap.add_argument("--https", type=int, default=443)
    ap.add_argument("--echo", type=int, default=7007)
    ap.add_argument("--udp", type=int, default=7008)
    ap.add_argument("--banner", type=int, default=7010)
    args = ap.parse_args()
    LOG_FILE = open(args.log, "a", buffering=1)

    http_srv = DualStackHTTPServer(("::", args.http), PlainOriginHandler)
    https_srv = TLSHTTPServer(("::", args.https), TLSOriginHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    https_srv.ssl_context = ctx
    echo_srv = DualStackTCPServer(("::", args.echo), EchoHandler)
    banner_srv = DualStackTCPServer(("::", args.banner), BannerHandler)

    threads = [serve(http_srv), serve(https_srv), serve(echo_srv), serve(banner_srv)]
    threads.append(threading.Thread(target=udp_echo, args=(args.udp,), daemon=True))
    threads[-1].start()
    log(f"STARTED http={args.http} https={args.https} echo={args.echo} udp={args.udp} "
        f"banner={args.banner}")
    print("origin ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
