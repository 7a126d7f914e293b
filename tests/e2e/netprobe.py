#!/usr/bin/env python3
"""Small socket probes for the end-to-end tests. Every probe is time-bound.

  netprobe.py tcp-echo HOST PORT [--family 4|6] [--bytes N]
      Connect, send N random bytes, expect exactly them back.
      Prints "echo ok bytes=N" (exit 0) or what went wrong (exit 1).
  netprobe.py udp-echo HOST PORT
      Send one datagram, print the answer (exit 0) or "timeout" (exit 1).
  netprobe.py connect HOST PORT
      Try a TCP connect. Prints "connected" or the errno name (e.g.
      ECONNREFUSED) and the elapsed milliseconds; exit 0 only if connected.
  netprobe.py banner HOST PORT
      Server speaks first: connect, send NOTHING, read one line. Prints
      "banner ok elapsed_ms=N line=..." where N counts from connect() to the
      line's end, then checks that the connection still echoes (exit 0), or
      what went wrong (exit 1).
  netprobe.py raw-send HOST PORT DATA
      Connect, send DATA (Python escapes such as \\r\\n are decoded), read
      until the peer closes. Prints "closed bytes=0", "reset bytes=0",
      "timeout bytes=N" or "closed bytes=N data=..."; exit 0 if the peer
      accepted and then closed or reset the connection without sending a
      single byte (a refused connect, i.e. no listener, is a failure).
"""

import argparse
import errno
import os
import socket
import sys
import time

TIMEOUT = 5.0


def family_of(host, forced):
    if forced == "4":
        return socket.AF_INET
    if forced == "6":
        return socket.AF_INET6
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_conn(host, port, family):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect((host, port))
    return sock


def errname(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if getattr(exc, "errno", None) in errno.errorcode:
        return errno.errorcode[exc.errno]
    return repr(exc)


def tcp_echo(args):
    # A fixed printable tag first: it is neither a TLS record nor an HTTP
    # request line, whatever random bytes follow.
    payload = b"RDE-ECHO\x00" + os.urandom(args.bytes)
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
        sock.sendall(payload)
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        sock.close()
    except OSError as exc:
        print(f"echo failed: {errname(exc)} ({exc})")
        return 1
    if got != payload:
        print(f"echo mismatch: sent {len(payload)} bytes, got {len(got)} bytes back")
        return 1
    print(f"echo ok bytes={len(payload)}")
    return 0


def udp_echo(args):
    sock = socket.socket(family_of(args.host, args.family), socket.SOCK_DGRAM)
    sock.settimeout(3.0)
    try:
        sock.sendto(b"rde-udp-probe", (args.host, args.port))
        data, _ = sock.recvfrom(65536)
    except OSError as exc:
        print(f"udp failed: {errname(exc)}")
        return 1
    print(data.decode(errors="replace"))
    return 0


def connect(args):
    start = time.monotonic()
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
        sock.close()
        result, code = "connected", 0
    except OSError as exc:
        result, code = errname(exc), 1
    print(f"{result} elapsed_ms={int((time.monotonic() - start) * 1000)}")
    return code


def banner(args):
    start = time.monotonic()
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
        got = b""
        while b"\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                print(f"banner failed: closed after {len(got)} bytes {got[:200]!r}")
                return 1
            got += chunk
        elapsed = int((time.monotonic() - start) * 1000)
        line = got.split(b"\n", 1)[0].rstrip(b"\r").decode(errors="replace")
        sock.sendall(b"after-banner\n")
        echo = b""
        while b"after-banner\n" not in echo:
            chunk = sock.recv(4096)
            if not chunk:
                break
            echo += chunk
        sock.close()
    except OSError as exc:
        print(f"banner failed: {errname(exc)} after "
              f"{int((time.monotonic() - start) * 1000)} ms ({exc})")
        return 1
    if b"after-banner\n" not in echo:
        print(f"banner ok but no echo afterwards: {echo[:200]!r}")
        return 1
    print(f"banner ok elapsed_ms={elapsed} line={line}")
    return 0


def raw_send(args):
    data = args.data.encode().decode("unicode_escape").encode("latin-1")
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
    except ConnectionResetError:
        # The handshake completed (a SYN answered by RST would be
        # ECONNREFUSED) and the peer reset before connect() returned.
        print("reset bytes=0 (during connect)")
        return 0
    except OSError as exc:
        print(f"connect failed: {errname(exc)}")
        return 1
    got = b""
    try:
        sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        outcome = "closed"
    except socket.timeout:
        outcome = "timeout"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except OSError as exc:
        outcome = errname(exc)
    finally:
        sock.close()
    line = f"{outcome} bytes={len(got)}"
    if got:
        line += f" data={got[:200]!r}"
    print(line)
    return 0 if outcome in ("closed", "reset") and not got else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("tcp-echo", tcp_echo), ("udp-echo", udp_echo),
                     ("connect", connect), ("banner", banner),
                     ("raw-send", raw_send)):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--family", choices=("4", "6"))
        if name == "tcp-echo":
            p.add_argument("--bytes", type=int, default=4096)
        if name == "raw-send":
            p.add_argument("data")
        p.set_defaults(fn=fn)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
