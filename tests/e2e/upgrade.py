#!/usr/bin/env python3
"""The load of the upgrade tests (upgrade.sh), run in a pod: a steady
stream of new connections and a few long transfers, all checked, while the
daemon is upgraded, restarted or uninstalled. Python stdlib only.

  load --inet IP --pod IP --ca CERT [--origin-ca CERT] --control DIR --out FILE
       [--rate R] [--workers W] [--long N] [--long-bytes B] [--long-rate B/S]
       [--expect proxy|any]

Steady connections, round robin, each new and checked end to end:
  https  TLS to origin.test:443 (mitmproxy re-signs it with our CA), GET a
         unique path; the origin names the client address it saw
  http   plain HTTP, Host plain.test, a unique path (absolute form to
         mitmproxy)
  tcp    4 KiB echoed byte for byte on 7007 (a CONNECT tunnel)
`--expect proxy`: every answer must come through the proxy (the origin saw
the proxy's address); `--expect any`: through the proxy or direct (the pod's
own address), as while the hooks are detached.

Long transfers, started at once and paced to last (--long-rate), each
byte-exact and checksummed (sha256 of what arrived against what was sent):
  http-download   GET /bytes/N, plain HTTP
  https-download  GET /bytes/N over TLS
  tcp-echo        N bytes sent and echoed back on 7007

`stop` in --control ends the steady stream; the long transfers are waited
for; then one JSON object goes to --out:
  attempted, completed, failed, refused (ECONNREFUSED), by_kind, routes
  (proxy / direct), failures (the first 20: ms since start, kind, reason),
  long (one entry each: kind, bytes, verified, ok, reason, ms),
  bytes_verified (sum over the long transfers that arrived intact).
"""

import argparse
import errno
import hashlib
import json
import os
import socket
import ssl
import threading
import time

CHUNK = 64 * 1024


def now_ms():
    return int(time.time() * 1000)


def errname(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if getattr(exc, "errno", None) in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def connect(host, port, timeout=10.0):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def pattern(offset, n):
    """The origin's /bytes/N content at `offset`: 0..255 repeated."""
    start = offset % 256
    block = bytes(range(256))
    reps = (start + n) // 256 + 1
    return (block * reps)[start:start + n]


def read_head(sock):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("closed before the response head")
        head += chunk
        if len(head) > 65536:
            raise ValueError("response head too long")
    head, rest = head.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


class Load:
    KINDS = ("https", "http", "tcp")

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.by_kind = {k: {"attempted": 0, "completed": 0, "failed": 0} for k in self.KINDS}
        self.routes = {"proxy": 0, "direct": 0}
        self.failures = []
        self.refused = 0
        self.long = []
        self.seq = 0
        self.ctx = ssl.create_default_context(cafile=args.ca)
        if args.origin_ca:
            # Direct (hooks detached): the origin's own certificate.
            self.ctx.load_verify_locations(cafile=args.origin_ca)

    def stopped(self):
        return os.path.exists(os.path.join(self.args.control, "stop"))

    def since(self):
        return int((time.monotonic() - self.t0) * 1000)

    # ------------------------------------------------------------ steady

    def expect_client(self, body, path):
        """The route the origin's answer shows, checked against --expect."""
        a = self.args
        for route, ip in (("proxy", a.inet), ("direct", a.pod)):
            if body == f"origin ok client={ip} path={path}\n".encode():
                if route == "direct" and a.expect == "proxy":
                    raise ValueError("went direct")
                return route
        raise ValueError("unexpected body " + body[:60].decode(errors="replace").replace(" ", "_"))

    def request(self, kind, n):
        a = self.args
        if kind == "tcp":
            payload = b"RDE-UPGRADE\x00" + os.urandom(4096)
            sock = connect(a.inet, 7007)
            try:
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            finally:
                sock.close()
            if got != payload:
                raise ValueError(f"echo truncated: {len(got)} of {len(payload)} bytes")
            return None
        path = f"/upgrade/{kind}/{n}"
        sock = connect(a.inet, 443 if kind == "https" else 80)
        if kind == "https":
            sock = self.ctx.wrap_socket(sock, server_hostname="origin.test")
        host = "origin.test" if kind == "https" else "plain.test"
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            got = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        finally:
            sock.close()
        head, _, body = got.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ValueError("status " + head[:40].decode(errors="replace").replace(" ", "_"))
        return self.expect_client(body, path)

    def worker(self, index):
        a = self.args
        interval = a.workers / a.rate
        k = index
        next_at = time.monotonic()
        while not self.stopped():
            kind = self.KINDS[k % len(self.KINDS)]
            k += 1
            with self.lock:
                self.seq += 1
                n = self.seq
                self.by_kind[kind]["attempted"] += 1
            at = self.since()
            reason = route = None
            try:
                route = self.request(kind, n)
            except ValueError as exc:
                reason = str(exc)[:100]
            except (OSError, ssl.SSLError) as exc:
                reason = errname(exc)
            with self.lock:
                if reason is None:
                    self.by_kind[kind]["completed"] += 1
                    if route:
                        self.routes[route] += 1
                else:
                    self.by_kind[kind]["failed"] += 1
                    self.refused += reason == "ECONNREFUSED"
                    self.failures.append({"ms": at, "kind": kind, "reason": reason})
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - 2:
                next_at = time.monotonic()  # far behind: no burst

    # ------------------------------------------------------------ long

    def paced(self, done):
        """Sleeps so that `done` bytes took --long-rate."""
        due = done / self.args.long_rate
        ahead = due - (time.monotonic() - self.long_t0)
        if ahead > 0:
            time.sleep(ahead)

    def download(self, tls):
        a, n = self.args, self.args.long_bytes
        sock = connect(a.inet, 443 if tls else 80, timeout=30.0)
        if tls:
            sock = self.ctx.wrap_socket(sock, server_hostname="origin.test")
        try:
            host = "origin.test" if tls else "plain.test"
            sock.sendall(f"GET /bytes/{n} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head, body = read_head(sock)
            if not head.startswith("HTTP/1.1 200") or f"content-length: {n}" not in head.lower():
                raise ValueError("head " + head.splitlines()[0].replace(" ", "_"))
            got, want = hashlib.sha256(), hashlib.sha256()
            done, same = 0, True
            while True:
                if body:
                    same = same and body == pattern(done, len(body))
                    got.update(body)
                    want.update(pattern(done, len(body)))
                    done += len(body)
                    self.paced(done)
                if done >= n:
                    break
                body = sock.recv(CHUNK)
                if not body:
                    break
        finally:
            sock.close()
        return done, same and done == n and got.digest() == want.digest()

    def echo(self):
        a, n = self.args, self.args.long_bytes
        sock = connect(a.inet, 7007, timeout=30.0)
        sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
        received = [0]
        error = []

        def reader():
            try:
                while received[0] < n:
                    chunk = sock.recv(CHUNK)
                    if not chunk:
                        break
                    got_hash.update(chunk)
                    received[0] += len(chunk)
            except OSError as exc:
                error.append(errname(exc))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            sent = 0
            while sent < n:
                block = os.urandom(min(CHUNK, n - sent))
                sock.sendall(block)
                sent_hash.update(block)
                sent += len(block)
                self.paced(sent)
            t.join(60)
        finally:
            sock.close()
        if error:
            raise OSError(errno.ECONNRESET if error[0] == "ECONNRESET" else errno.EIO, error[0])
        return received[0], received[0] == n and got_hash.digest() == sent_hash.digest()

    def long_transfer(self, kind):
        start = time.monotonic()
        entry = {"kind": kind, "bytes": self.args.long_bytes, "verified": 0, "ok": False,
                 "reason": None, "start_ms": self.since()}
        try:
            if kind == "tcp-echo":
                done, intact = self.echo()
            else:
                done, intact = self.download(kind == "https-download")
            entry["received"] = done
            if intact:
                entry["ok"], entry["verified"] = True, done
            else:
                entry["reason"] = f"truncated or altered: {done} of {self.args.long_bytes} bytes"
        except ValueError as exc:
            entry["reason"] = str(exc)[:100]
        except (OSError, ssl.SSLError) as exc:
            entry["reason"] = errname(exc)
        entry["ms"] = int((time.monotonic() - start) * 1000)
        with self.lock:
            self.long.append(entry)

    # ------------------------------------------------------------ run

    def run(self):
        a = self.args
        self.long_t0 = time.monotonic()
        kinds = ("http-download", "https-download", "tcp-echo")
        longs = [threading.Thread(target=self.long_transfer, args=(kinds[i % len(kinds)],), daemon=True)
                 for i in range(a.long)]
        steady = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(a.workers)]
        for t in longs + steady:
            t.start()
        with open(os.path.join(a.control, "started"), "w") as f:
            f.write(str(now_ms()))
        for t in steady:
            t.join()
        for t in longs:
            t.join(120)
        attempted = sum(v["attempted"] for v in self.by_kind.values())
        completed = sum(v["completed"] for v in self.by_kind.values())
        out = {
            "attempted": attempted + len(self.long),
            "completed": completed + sum(e["ok"] for e in self.long),
            "failed": attempted - completed + sum(not e["ok"] for e in self.long),
            "refused": self.refused + sum(e["reason"] == "ECONNREFUSED" for e in self.long),
            "steady": {"attempted": attempted, "completed": completed, "by_kind": self.by_kind},
            "routes": self.routes,
            "failures": self.failures[:20],
            "long": self.long,
            "long_ok": sum(e["ok"] for e in self.long),
            "bytes_verified": sum(e["verified"] for e in self.long),
            "long_running": sum(t.is_alive() for t in longs),
            "duration_ms": self.since(),
        }
        with open(a.out + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(a.out + ".tmp", a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("--inet", required=True, help="the origin's (and proxy's) address")
    p.add_argument("--pod", required=True, help="this pod's address (a direct answer names it)")
    p.add_argument("--ca", required=True, help="the MITM proxy's CA")
    p.add_argument("--origin-ca", help="the origin's certificate, for direct HTTPS")
    p.add_argument("--control", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, default=24.0, help="new connections per second")
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--long", type=int, default=3)
    p.add_argument("--long-bytes", type=int, default=16 << 20)
    p.add_argument("--long-rate", type=float, default=2 << 20, help="bytes per second")
    p.add_argument("--expect", choices=("proxy", "any"), default="proxy")
    args = ap.parse_args()
    Load(args).run()


if __name__ == "__main__":
    main()
