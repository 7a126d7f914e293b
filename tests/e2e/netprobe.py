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
  netprobe.py send-split HOST PORT --pause MS PART...
      Send the PARTs (Python escapes decoded) with a pause between them, as
      separate TCP segments, then read until the peer closes (at most 5 s).
      Prints "reply first-line=..." (exit 0 if any reply came) or
      "no reply ..." (exit 1).
  netprobe.py tls-hello HOST PORT --sni NAME [--pad N] [--split-at K] [--pause MS]
      Send a syntactically valid TLS ClientHello naming NAME (SNI; Python
      escapes such as \\r\\n are decoded), padded by N bytes (a large
      hello, like a post-quantum key share), in two writes split at byte K
      with a pause between. Waits up to 2 s for the first bytes of an answer
      (or the close). Only the first bytes matter (what a proxy or a peeking
      daemon makes of them): prints "hello sent bytes=N" (exit 0).
  netprobe.py raw-send HOST PORT DATA
      Connect, send DATA (Python escapes such as \\r\\n are decoded), read
      until the peer closes. Prints "closed bytes=0", "reset bytes=0",
      "timeout bytes=N" or "closed bytes=N data=..."; exit 0 if the peer
      accepted and then closed or reset the connection without sending a
      single byte (a refused connect, i.e. no listener, is a failure).
  netprobe.py tcp-echo ... --mptcp
      The same over an MPTCP socket (IPPROTO_MPTCP); the line also names the
      socket's protocol ("proto=262").
  netprobe.py udp-send HOST PORT [--connect] [--data TEXT] [--reply]
      Send one datagram with sendto(), or with connect() + send() (--connect).
      Prints "sent bytes=N" (then, with --reply, the answer or "no reply"),
      or "connect failed: ERRNO" / "send failed: ERRNO"; exit 0 only if
      sent (and answered, with --reply).
  netprobe.py listen HOST PORT --log FILE [--udp] [--reply TEXT]
      A recorder: prints "listening" once bound, then serves until killed.
      TCP: each connection is logged ("ACCEPT peer=IP port=N"), one line is
      read (at most 3 s) and logged ("DATA peer=IP port=N data=..."), TEXT
      (+CRLF) is sent back and the connection closed. UDP: each datagram is
      logged ("UDP peer=IP port=N data=...") and TEXT sent back. HOST "::"
      is dual-stack; the peer is logged without a ::ffff: prefix.
  netprobe.py bind-connect HOST PORT --source IP:PORT [--freebind]
                           [--transparent] [--nonblock] [--send TEXT]
                           [--read-secs N] [--hold SECS --release-file F]
                           [--abort]
      A TCP connect from a chosen source address and port (IP_FREEBIND or
      IP_TRANSPARENT let it be another host's address). Prints "bound ...",
      then "connected" / "connect failed: ERRNO", or with --nonblock
      "connect started: EINPROGRESS|connected|ERRNO" at once. --send: send
      TEXT (Python escapes decoded), read until the peer closes (at most
      --read-secs) and print "reply bytes=N data=...", "closed bytes=0",
      "reset bytes=0" or "timeout bytes=N". --hold: keep the socket until F
      exists (at most SECS), print its TCP state ("state=SYN_SENT"), close
      it (--abort: with SO_LINGER 0) and print "closed". Exit 1 only if the
      bind or a blocking connect failed.
  netprobe.py claim-many HOST PORT --source IP:FIRST --count N [--freebind]
                         [--transparent] [--spread-cpus] --hold SECS
                         --release-file F
      N non-blocking connects from IP and ports FIRST.. FIRST+N-1 (with
      --spread-cpus, each from the next CPU in turn). Prints
      "started N EINPROGRESS=N ..." (outcomes counted), holds the sockets
      until F exists (at most SECS), closes them and prints "closed".
"""

import argparse
import errno
import os
import socket
import sys
import threading
import time

TIMEOUT = 5.0
# Not in every Python's socket module.
IPPROTO_MPTCP = 262
IP_FREEBIND = 15
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
              9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def family_of(host, forced):
    if forced == "4":
        return socket.AF_INET
    if forced == "6":
        return socket.AF_INET6
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_conn(host, port, family, proto=0):
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
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
    proto = IPPROTO_MPTCP if args.mptcp else 0
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family), proto)
        proto = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
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
    print(f"echo ok bytes={len(payload)} proto={proto}")
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


def _decode(text):
    return text.encode().decode("unicode_escape").encode("latin-1")


def send_parts(sock, parts, pause_ms):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, part in enumerate(parts):
        if i:
            time.sleep(pause_ms / 1000)
        sock.sendall(part)


def read_reply(sock, secs, first_only=False):
    got = b""
    deadline = time.monotonic() + secs
    try:
        while time.monotonic() < deadline and not (first_only and got):
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, OSError):
        pass
    return got


def send_split(args):
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
        send_parts(sock, [_decode(p) for p in args.parts], args.pause)
        got = read_reply(sock, TIMEOUT)
        sock.close()
    except OSError as exc:
        print(f"no reply: {errname(exc)} ({exc})")
        return 1
    if not got:
        print("no reply: closed or timed out without a byte")
        return 1
    first = got.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"reply first-line={first} bytes={len(got)}")
    return 0


def client_hello(sni, pad):
    """A TLS 1.2/1.3 ClientHello with SNI and a padding extension (RFC 7685)."""
    def u16(n):
        return n.to_bytes(2, "big")

    def ext(kind, body):
        return u16(kind) + u16(len(body)) + body

    name = sni if isinstance(sni, bytes) else sni.encode()
    server_name = ext(0, u16(len(name) + 3) + b"\x00" + u16(len(name)) + name)
    groups = ext(10, u16(4) + u16(0x001D) + u16(0x0017))            # x25519, P-256
    sig_algs = ext(13, u16(6) + u16(0x0403) + u16(0x0804) + u16(0x0401))
    versions = ext(43, b"\x04" + u16(0x0304) + u16(0x0303))
    key_share = ext(51, u16(36) + u16(0x001D) + u16(32) + os.urandom(32))
    padding = ext(21, b"\x00" * pad) if pad else b""
    extensions = server_name + groups + sig_algs + versions + key_share + padding
    suites = u16(0x1301) + u16(0x1302) + u16(0xC02B) + u16(0xC02F)
    session_id = os.urandom(32)
    body = (u16(0x0303) + os.urandom(32) + bytes([len(session_id)]) + session_id
            + u16(len(suites)) + suites + b"\x01\x00" + u16(len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + u16(len(handshake)) + handshake


def tls_hello(args):
    hello = client_hello(_decode(args.sni), args.pad)
    k = args.split_at if 0 < args.split_at < len(hello) else len(hello)
    try:
        sock = open_conn(args.host, args.port, family_of(args.host, args.family))
        send_parts(sock, [hello[:k], hello[k:]] if k < len(hello) else [hello], args.pause)
        read_reply(sock, 2.0, first_only=True)
        sock.close()
    except OSError as exc:
        print(f"hello failed: {errname(exc)} ({exc})")
        return 1
    print(f"hello sent bytes={len(hello)} split_at={k}")
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


def udp_send(args):
    data = _decode(args.data)
    sock = socket.socket(family_of(args.host, args.family), socket.SOCK_DGRAM)
    sock.settimeout(3.0)
    step = "connect"
    try:
        if args.connect:
            sock.connect((args.host, args.port))
            step = "send"
            sock.send(data)
        else:
            step = "send"
            sock.sendto(data, (args.host, args.port))
    except OSError as exc:
        print(f"{step} failed: {errname(exc)}")
        return 1
    print(f"sent bytes={len(data)}")
    if not args.reply:
        return 0
    try:
        answer = sock.recv(65536)
    except OSError as exc:
        print(f"no reply: {errname(exc)}")
        return 1
    print(answer.decode(errors="replace"))
    return 0


def _log_line(path, line):
    with open(path, "a", buffering=1) as f:
        f.write(line + "\n")


def _printable(data):
    """One log line's worth: escapes for anything unprintable, at most 200 chars."""
    return data.strip()[:200].decode("latin-1").encode("unicode_escape").decode()


def _peer(addr):
    ip = addr[0]
    if ip.lower().startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return f"peer={ip} port={addr[1]}"


def listen(args):
    family = family_of(args.host, None)
    kind = socket.SOCK_DGRAM if args.udp else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and args.host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((args.host, args.port))
    reply = _decode(args.reply) + b"\r\n" if args.reply else b""
    if args.udp:
        print("listening", flush=True)
        while True:
            data, addr = sock.recvfrom(65536)
            _log_line(args.log, f"UDP {_peer(addr)} data={_printable(data)}")
            if reply:
                sock.sendto(reply, addr)
    sock.listen(64)
    print("listening", flush=True)

    def serve(conn, addr):
        _log_line(args.log, f"ACCEPT {_peer(addr)}")
        got = b""
        conn.settimeout(3.0)
        try:
            while b"\n" not in got:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        _log_line(args.log, f"DATA {_peer(addr)} data={_printable(got)}")
        try:
            if reply:
                conn.sendall(reply)
        except OSError:
            pass
        conn.close()

    while True:
        conn, addr = sock.accept()
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


def _read_until_close(sock, secs):
    got = b""
    deadline = time.monotonic() + secs
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return ("reply" if got else "closed"), got
            got += chunk
    except socket.timeout:
        return "timeout", got
    except ConnectionResetError:
        return ("reply" if got else "reset"), got
    except OSError as exc:
        return errname(exc), got
    return "timeout", got


def _source(text):
    ip, _, port = text.rpartition(":")
    return ip.strip("[]"), int(port)


def _bound_socket(args, ip, port):
    """A TCP socket for args.host's family bound to (ip, port), with
    IP(V6)_FREEBIND / IP(V6)_TRANSPARENT as asked; raises OSError."""
    family = family_of(args.host, args.family)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    v6 = family == socket.AF_INET6
    if args.freebind:
        sock.setsockopt(*((socket.IPPROTO_IPV6, IPV6_FREEBIND) if v6 else (socket.IPPROTO_IP, IP_FREEBIND)), 1)
    if args.transparent:
        sock.setsockopt(*((socket.IPPROTO_IPV6, IPV6_TRANSPARENT) if v6 else (socket.IPPROTO_IP, IP_TRANSPARENT)), 1)
    try:
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def _hold(args):
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        if args.release_file and os.path.exists(args.release_file):
            return
        time.sleep(0.05)


def bind_connect(args):
    try:
        sock = _bound_socket(args, *_source(args.source))
    except OSError as exc:
        print(f"bind failed: {errname(exc)}", flush=True)
        return 1
    print(f"bound {args.source}", flush=True)
    if args.nonblock:
        sock.setblocking(False)
        rc = sock.connect_ex((args.host, args.port))
        result = "connected" if rc == 0 else errno.errorcode.get(rc, str(rc))
        print(f"connect started: {result}", flush=True)
    else:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect((args.host, args.port))
        except OSError as exc:
            print(f"connect failed: {errname(exc)}", flush=True)
            return 1
        print("connected", flush=True)
    if args.send is not None:
        try:
            sock.setblocking(True)
            sock.sendall(_decode(args.send))
            outcome, got = _read_until_close(sock, args.read_secs)
        except (ConnectionResetError, BrokenPipeError):
            outcome, got = "reset", b""
        except OSError as exc:
            outcome, got = errname(exc), b""
        line = f"{outcome} bytes={len(got)}"
        if got:
            line += f" data={got[:200]!r}"
        print(line, flush=True)
    if args.hold:
        _hold(args)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        print(f"state={TCP_STATES.get(info[0], info[0])}", flush=True)
    if args.abort:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    print("closed", flush=True)
    return 0


def claim_many(args):
    ip, first = _source(args.source)
    socks, results = [], {}
    cpus = sorted(os.sched_getaffinity(0))
    for i, port in enumerate(range(first, first + args.count)):
        if args.spread_cpus:
            # A map's free and pending lists are per CPU: connect from
            # each CPU in turn, as a busy node's many clients would.
            os.sched_setaffinity(0, {cpus[i % len(cpus)]})
        try:
            sock = _bound_socket(args, ip, port)
        except OSError as exc:
            name = f"bind-{errname(exc)}"
            results[name] = results.get(name, 0) + 1
            continue
        sock.setblocking(False)
        rc = sock.connect_ex((args.host, args.port))
        name = "connected" if rc == 0 else errno.errorcode.get(rc, str(rc))
        results[name] = results.get(name, 0) + 1
        socks.append(sock)
    summary = " ".join(f"{k}={v}" for k, v in sorted(results.items()))
    print(f"started {args.count} {summary}", flush=True)
    _hold(args)
    for sock in socks:
        sock.close()
    print("closed", flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("tcp-echo", tcp_echo), ("udp-echo", udp_echo),
                     ("connect", connect), ("banner", banner),
                     ("send-split", send_split), ("tls-hello", tls_hello),
                     ("raw-send", raw_send), ("udp-send", udp_send),
                     ("listen", listen), ("bind-connect", bind_connect),
                     ("claim-many", claim_many)):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--family", choices=("4", "6"))
        if name == "tcp-echo":
            p.add_argument("--bytes", type=int, default=4096)
            p.add_argument("--mptcp", action="store_true")
        if name == "udp-send":
            p.add_argument("--connect", action="store_true")
            p.add_argument("--data", default="rde-udp-send")
            p.add_argument("--reply", action="store_true")
        if name == "listen":
            p.add_argument("--log", required=True)
            p.add_argument("--udp", action="store_true")
            p.add_argument("--reply", default="")
        if name in ("bind-connect", "claim-many"):
            p.add_argument("--source", required=True, help="IP:PORT ([IPv6]:PORT)")
            p.add_argument("--freebind", action="store_true")
            p.add_argument("--transparent", action="store_true")
            p.add_argument("--hold", type=float, default=0.0, help="seconds")
            p.add_argument("--release-file")
        if name == "bind-connect":
            p.add_argument("--nonblock", action="store_true")
            p.add_argument("--send")
            p.add_argument("--read-secs", type=float, default=TIMEOUT)
            p.add_argument("--abort", action="store_true")
        if name == "claim-many":
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--spread-cpus", action="store_true")
        if name == "raw-send":
            p.add_argument("data")
        if name in ("send-split", "tls-hello"):
            p.add_argument("--pause", type=int, default=200, help="milliseconds")
        if name == "send-split":
            p.add_argument("parts", nargs="+")
        if name == "tls-hello":
            p.add_argument("--sni", required=True)
            p.add_argument("--pad", type=int, default=0)
            p.add_argument("--split-at", type=int, default=0)
        p.set_defaults(fn=fn)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
