#!/usr/bin/env python3
"""Hostile clients, fake peers and the soak's load for the end-to-end tests
(hostile.sh, soak.sh). Python stdlib only. Every client is time-bound and
prints one JSON object on stdout (the shell reads it with `jget`).

Peers (run in rde-inet):
  proxy --listen IP:PORT --mode-file FILE --log FILE [--sink-port 9]
      A scriptable upstream proxy. The mode file is read for every new
      connection (one line):
        tunnel             CONNECT (and absolute-form HTTP) to test addresses
        close              read the request head, close without a word (FIN)
        status CODE        answer CODE (403, 407, 502, ...) and close
        delay SECS         wait SECS before answering 200, then tunnel
        hang               read the head, never answer
        abort-after BYTES  tunnel; after BYTES towards the client, RST both
        garbage            answer a non-HTTP line, then hold
        endless-head       answer "HTTP/1.1 200" and header bytes forever
      CONNECT to port --sink-port is answered 200 by the proxy itself,
      which then reads and discards (a peer that holds connections cheaply).
      Only test addresses (10.249.0.0/16, fd42:e9e5::/32, *.test pinned to
      10.249.0.2) are ever dialled; anything else gets a 403.
      Log lines: CONNECT AUTH conn=N peer=IP mode=M / REQUEST METHOD URL ... /
      END conn=N result=R up=N down=N ms=N.
  eof-server --listen IP:PORT --log FILE
      Reads until the client's EOF, then answers
      "got N sha256=HEX client=IP" and closes: only a relay that keeps the
      other direction open after a half-close gets the answer back.

Clients (run in a pod):
  conns HOST PORT --count N --hold SECS [--ready FILE] [--send BYTES]
      N connections at once, held SECS, silent or sending BYTES once
      connected; counts which stay open, which the peer closes or resets,
      and how fast (from the connect() call, and from its completion).
  endless-hello HOST PORT --seconds S [--variant records|huge-record]
      A TLS handshake announcing a 16 MiB ClientHello, then bytes for S s.
  endless-header HOST PORT --seconds S
      An HTTP request line, then one header line that never ends.
  slow HOST PORT --count N --seconds S [--prefix P] [--drip D] [--interval 1]
      Slowloris: P at once, then one byte of D per interval.
  half-close HOST PORT --bytes N
      Send N bytes, shutdown(SHUT_WR), expect the eof-server's answer.
  half-close-http HOST PORT --host NAME --path P
      A GET with Connection: close, shutdown(SHUT_WR), read the answer.
  steady HOST PORT --stop FILE [--interval 0.2] [--seconds 120]
      A well-behaved client: a 4 KiB echo on a new connection each
      interval, until FILE exists.
  soak-load --control DIR --out FILE --ca CERT [--rate R] [--workers W]
      The soak's mixed traffic (see soak_load).
  soak-point --status FILE --metrics FILE ... (soak.sh's idle points)
  map-entries --pid PID
      Entry counts of every BPF map the process holds, pinned or not.
"""

import argparse
import asyncio
import errno
import hashlib
import ipaddress
import json
import os
import random
import resource
import select
import selectors
import socket
import ssl
import sys
import threading
import time

TEST_NETS = [ipaddress.ip_network("10.249.0.0/16"), ipaddress.ip_network("fd42:e9e5::/32")]
TEST_NAME_IP = "10.249.0.2"  # where *.test names go (as flowlog.py pins them)
MAX_HEAD = 64 * 1024


def now_ms():
    return int(time.time() * 1000)


def raise_nofile():
    """Soft open-files limit up to the hard one: N connections need N fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def errname(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if getattr(exc, "errno", None) in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(host, port, timeout=5.0):
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


def decode(text):
    """Python escapes (\\r\\n, \\x16) in a command-line argument to bytes."""
    return text.encode().decode("unicode_escape").encode("latin-1")


def percentiles(values):
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pick(q):
        return round(v[min(len(v) - 1, int(q * len(v)))], 1)

    return {"n": len(v), "p50": pick(0.50), "p99": pick(0.99), "max": round(v[-1], 1)}


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


# ---------------------------------------------------------------- fake proxy


class Log:
    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def line(self, text):
        self.file.write(text + "\n")
        self.file.flush()


def test_target(host):
    """The address to dial for a test host, or None for anything else."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return TEST_NAME_IP if host.lower().endswith(".test") else None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip) if any(ip in n for n in TEST_NETS) else None


def split_authority(authority, default_port):
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, port = authority.split(":")
    else:
        host, port = authority, ""
    return host, int(port) if port.isdigit() else default_port


def rst(writer):
    """Close with RST (SO_LINGER 0), not FIN."""
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    writer.transport.abort()


class FakeProxy:
    def __init__(self, args):
        self.mode_file = args.mode_file
        self.sink_port = args.sink_port
        self.log = Log(args.log)
        self.next_id = 0

    def mode(self):
        try:
            with open(self.mode_file) as f:
                words = f.read().split()
        except OSError:
            words = []
        return words or ["tunnel"]

    async def read_head(self, reader):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await reader.read(4096)
            if not chunk:
                return None
            head += chunk
            if len(head) > MAX_HEAD:
                return None
        return head

    async def handle(self, reader, writer):
        self.next_id += 1
        cid = self.next_id
        peer = writer.get_extra_info("peername")[0]
        started = time.monotonic()
        stats = {"up": 0, "down": 0, "result": "?"}
        try:
            await self.serve(cid, peer, reader, writer, stats)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            stats["result"] = stats["result"] if stats["result"] != "?" else errname(exc)
        finally:
            try:
                writer.close()
            except OSError:
                pass
            ms = int((time.monotonic() - started) * 1000)
            self.log.line(f"END conn={cid} result={stats['result']} up={stats['up']} "
                          f"down={stats['down']} ms={ms}")

    async def serve(self, cid, peer, reader, writer, stats):
        mode = self.mode()
        head = await self.read_head(reader)
        if head is None:
            stats["result"] = "no-head"
            return
        head, _, early = head.partition(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3:
            stats["result"] = "bad-request-line"
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        method, target, _ = parts
        connect = method == "CONNECT"
        if connect:
            self.log.line(f"CONNECT {target} conn={cid} peer={peer} mode={' '.join(mode)}")
        else:
            self.log.line(f"REQUEST {method} {target} conn={cid} peer={peer} mode={' '.join(mode)}")

        kind = mode[0]
        if kind == "close":
            stats["result"] = "closed-unanswered"
            return
        if kind == "status":
            code = mode[1] if len(mode) > 1 else "502"
            writer.write(f"HTTP/1.1 {code} Fake {code}\r\nContent-Length: 0\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            stats["result"] = f"status-{code}"
            return
        if kind == "hang":
            stats["result"] = "hung"
            while await reader.read(65536):
                pass
            return
        if kind == "garbage":
            writer.write(b"SSH-2.0-NotAnHttpProxy\r\n")
            await writer.drain()
            stats["result"] = "garbage"
            while await reader.read(65536):
                pass
            return
        if kind == "endless-head":
            writer.write(b"HTTP/1.1 200 Connection established\r\nX-Pad: ")
            stats["result"] = "endless-head"
            block = b"a" * 16384
            while True:
                writer.write(block)
                await writer.drain()
                stats["down"] += len(block)
        if kind == "delay":
            await asyncio.sleep(float(mode[1]) if len(mode) > 1 else 5.0)

        # tunnel (also after a delay, and abort-after)
        abort_after = int(mode[1]) if kind == "abort-after" and len(mode) > 1 else None
        if connect:
            host, port = split_authority(target, 443)
        else:
            if not target.startswith("http://"):
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                stats["result"] = "not-absolute"
                return
            authority, _, path = target[len("http://"):].partition("/")
            host, port = split_authority(authority, 80)
        if connect and port == self.sink_port:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            stats["result"] = "sink"
            stats["up"] += len(early)
            while True:
                chunk = await reader.read(262144)
                if not chunk:
                    return
                stats["up"] += len(chunk)
        ip = test_target(host)
        if ip is None:
            self.log.line(f"REFUSED-TARGET {target} conn={cid}")
            writer.write(b"HTTP/1.1 403 Not A Test Address\r\nContent-Length: 0\r\n\r\n")
            stats["result"] = "refused-target"
            return
        try:
            o_reader, o_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
        except (OSError, asyncio.TimeoutError) as exc:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            stats["result"] = f"dial-{errname(exc)}"
            return
        if connect:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = early
        else:
            # origin form for the origin; the rest of the head as it came
            lines = head.split(b"\r\n")
            lines[0] = f"{method} /{path} HTTP/1.1".encode()
            first = b"\r\n".join(lines) + b"\r\n\r\n" + early
        if first:
            o_writer.write(first)
            stats["up"] += len(first)
        stats["result"] = "tunnel"
        await self.relay(reader, writer, o_reader, o_writer, stats, abort_after)

    async def relay(self, reader, writer, o_reader, o_writer, stats, abort_after):
        aborted = asyncio.Event()

        async def pipe(src, dst, key):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
                    stats[key] += len(data)
                    if abort_after is not None and stats["down"] >= abort_after:
                        aborted.set()
                        return
                # half-close: pass the EOF on, keep the other direction
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        tasks = {asyncio.ensure_future(pipe(reader, o_writer, "up")),
                 asyncio.ensure_future(pipe(o_reader, writer, "down"))}
        waiter = asyncio.ensure_future(aborted.wait())
        while tasks and not aborted.is_set():
            done, _ = await asyncio.wait(tasks | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            tasks -= done
        if aborted.is_set():
            stats["result"] = "aborted"
            for t in tasks:
                t.cancel()
            rst(writer)
            rst(o_writer)
            return
        waiter.cancel()
        o_writer.close()


async def run_proxy(args):
    raise_nofile()
    proxy = FakeProxy(args)
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(proxy.handle, host.strip("[]"), int(port),
                                        reuse_address=True, backlog=4096)
    proxy.log.line(f"STARTED {args.listen}")
    print("fake proxy ready", flush=True)
    async with server:
        await server.serve_forever()


def cmd_proxy(args):
    asyncio.run(run_proxy(args))


async def run_eof_server(args):
    log = Log(args.log)

    async def handle(reader, writer):
        peer = writer.get_extra_info("peername")[0]
        if peer.startswith("::ffff:"):
            peer = peer[7:]
        digest = hashlib.sha256()
        n = 0
        try:
            while n < 64 << 20:
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                if not chunk:
                    break
                digest.update(chunk)
                n += len(chunk)
            # Only now, after the client's EOF: a relay that closed this
            # direction on the half-close never delivers it.
            await asyncio.sleep(0.2)
            writer.write(f"got {n} sha256={digest.hexdigest()} client={peer}\n".encode())
            await writer.drain()
            log.line(f"EOF-SERVER client={peer} bytes={n} answered")
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.line(f"EOF-SERVER client={peer} bytes={n} failed={errname(exc)}")
        finally:
            writer.close()

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host.strip("[]"), int(port), reuse_address=True)
    log.line(f"STARTED {args.listen}")
    print("eof server ready", flush=True)
    async with server:
        await server.serve_forever()


def cmd_eof_server(args):
    asyncio.run(run_eof_server(args))


# ---------------------------------------------------------------- hostile clients


def cmd_conns(args):
    """Many silent connections at once (non-blocking connects, one epoll)."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    conns = []
    failed = {}
    for _ in range(args.count):
        sock = socket.socket(family_of(args.host), socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((args.host, args.port))
        c = {"sock": sock, "start": time.monotonic(), "state": "connecting"}
        if err not in (0, errno.EINPROGRESS):
            failed[errno.errorcode.get(err, str(err))] = failed.get(errno.errorcode.get(err, str(err)), 0) + 1
            c["state"] = "connect_failed"
            sock.close()
        else:
            sel.register(sock, selectors.EVENT_WRITE, c)
        conns.append(c)
    opened_ms = (time.monotonic() - t0) * 1000
    connect_ms, end_ms, after_connect_ms = [], [], []
    send = decode(args.send) if args.send else b""
    received = 0
    ready_written = False
    deadline = t0 + args.hold
    while True:
        now = time.monotonic()
        if not ready_written and (all(c["state"] != "connecting" for c in conns) or now - t0 > 5):
            ready_written = True
            if args.ready:
                with open(args.ready + ".tmp", "w") as f:
                    f.write(json.dumps(summary_states(conns)) + "\n")
                os.replace(args.ready + ".tmp", args.ready)
        if now >= deadline:
            break
        for key, events in sel.select(timeout=min(0.2, deadline - now)):
            c = key.data
            sock = c["sock"]
            if c["state"] == "connecting":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                c["connected"] = time.monotonic()
                if err == errno.ECONNRESET:
                    # Established, then reset before we looked (a RST to a
                    # SYN would be ECONNREFUSED).
                    c["state"] = "reset"
                    end_ms.append((c["connected"] - c["start"]) * 1000)
                    after_connect_ms.append(0.0)
                    sel.unregister(sock)
                    sock.close()
                    continue
                if err:
                    name = errno.errorcode.get(err, str(err))
                    failed[name] = failed.get(name, 0) + 1
                    c["state"] = "connect_failed"
                    sel.unregister(sock)
                    sock.close()
                    continue
                c["state"] = "open"
                connect_ms.append((c["connected"] - c["start"]) * 1000)
                sel.modify(sock, selectors.EVENT_READ, c)
                if send:
                    try:
                        sock.send(send)
                    except OSError:
                        pass  # the read below sees what happened
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                c["state"] = "reset" if exc.errno == errno.ECONNRESET else errname(exc)
                data = None
            if data:
                received += len(data)
                continue
            if data == b"":
                c["state"] = "closed"
            end_ms.append((time.monotonic() - c["start"]) * 1000)
            after_connect_ms.append((time.monotonic() - c["connected"]) * 1000)
            sel.unregister(sock)
            sock.close()
    out = summary_states(conns)
    out.update({
        "count": args.count,
        "connect_failed_errnos": failed,
        "open_ms": round(opened_ms, 1),
        "connect_ms": percentiles(connect_ms),
        "end_ms": percentiles(end_ms),
        "end_after_connect_ms": percentiles(after_connect_ms),
        "received_bytes": received,
    })
    for c in conns:
        if c["state"] in ("open", "connecting"):
            c["sock"].close()
    emit(out)
    return 0


def summary_states(conns):
    counts = {"open": 0, "closed": 0, "reset": 0, "connect_failed": 0, "connecting": 0, "other": 0}
    for c in conns:
        counts[c["state"] if c["state"] in counts else "other"] += 1
    return counts


def stream_forever(sock, first, block, seconds, read_reply=True):
    """Send `first`, then `block` again and again for `seconds` (as fast as
    the peer takes it); stop when the peer closes or resets. Any answer is
    collected. Returns the outcome as a dict."""
    sock.setblocking(False)
    pending = first
    sent = 0
    reply = b""
    outcome = "open"
    t0 = time.monotonic()
    end_at = None
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        r, w, _ = select.select([sock], [sock], [], 0.2)
        if r:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as exc:
                outcome = "reset" if exc.errno == errno.ECONNRESET else errname(exc)
                break
            if data == b"":
                outcome = "closed"
                break
            if data:
                reply += data[: 4096 - len(reply)] if len(reply) < 4096 else b""
        if w:
            if not pending:
                pending = block
            try:
                n = sock.send(pending)
                sent += n
                pending = pending[n:]
            except BlockingIOError:
                pass
            except OSError as exc:
                outcome = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else errname(exc)
                break
    end_at = time.monotonic()
    if outcome != "open" and read_reply:
        # whatever else was already queued for us
        try:
            sock.settimeout(0.5)
            while len(reply) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    sock.close()
    first_line = reply.split(b"\r\n", 1)[0].decode("latin-1") if reply else ""
    return {"sent_bytes": sent, "outcome": outcome, "ms": int((end_at - t0) * 1000),
            "reply_bytes": len(reply), "reply_first_line": first_line}


def cmd_endless_hello(args):
    """A ClientHello that announces 16 MiB and never ends. `records`: valid
    16 KiB records continuing the one handshake message; `huge-record`: one
    record header announcing 65535 bytes (over TLS's 16 KiB + 2 KiB)."""
    body = b"\x03\x03" + os.urandom(32) + b"\x00"  # version, random, empty session
    hs = b"\x01" + (0xFFFFFF).to_bytes(3, "big") + body
    if args.variant == "huge-record":
        first = b"\x16\x03\x01\xff\xff" + hs
        block = bytes(range(256)) * 64
    else:
        first = b"\x16\x03\x01\x40\x00" + hs + b"\x00" * (16384 - len(hs))
        block = b"\x16\x03\x01\x40\x00" + bytes(range(256)) * 64
    return stream_to(args, first, block)


def stream_to(args, first, block):
    """Connects to HOST:PORT and streams FIRST then BLOCK forever."""
    try:
        sock = connect(args.host, args.port)
    except OSError as exc:
        emit({"outcome": "connect_failed", "error": errname(exc)})
        return 1
    emit(stream_forever(sock, first, block, args.seconds))
    return 0


def cmd_endless_header(args):
    first = (b"GET /endless HTTP/1.1\r\nHost: endless.test\r\nUser-Agent: hostile\r\n"
             b"X-Endless: ")
    block = b"a" * 16384
    return stream_to(args, first, block)


def cmd_slow(args):
    """Slowloris: N connections, each sends PREFIX at once and then one byte
    of DRIP per interval until the peer ends it or SECONDS pass."""
    prefix, drip = decode(args.prefix), decode(args.drip)
    t0 = time.monotonic()
    conns = []
    for _ in range(args.count):
        try:
            sock = connect(args.host, args.port)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if prefix:
                sock.sendall(prefix)
            sock.setblocking(False)
            conns.append({"sock": sock, "state": "open", "sent": len(prefix), "reply": b""})
        except OSError as exc:
            conns.append({"sock": None, "state": "connect_failed", "error": errname(exc),
                          "sent": 0, "reply": b""})
    end_ms = []
    i = 0
    deadline = t0 + args.seconds
    next_tick = time.monotonic()
    while time.monotonic() < deadline and any(c["state"] == "open" for c in conns):
        live = [c["sock"] for c in conns if c["state"] == "open"]
        timeout = max(0.0, min(next_tick, deadline) - time.monotonic())
        r, _, _ = select.select(live, [], [], timeout)
        for c in conns:
            if c["state"] != "open" or c["sock"] not in r:
                continue
            try:
                data = c["sock"].recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, c["state"] = None, "reset" if exc.errno == errno.ECONNRESET else errname(exc)
            if data:
                c["reply"] += data[:512]
                continue
            if data == b"":
                c["state"] = "closed"
            end_ms.append((time.monotonic() - t0) * 1000)
            c["sock"].close()
        if time.monotonic() >= next_tick:
            byte = drip[i % len(drip): i % len(drip) + 1]
            i += 1
            next_tick += args.interval
            for c in conns:
                if c["state"] != "open":
                    continue
                try:
                    c["sock"].send(byte)
                    c["sent"] += 1
                except BlockingIOError:
                    pass
                except OSError as exc:
                    c["state"] = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else errname(exc)
                    end_ms.append((time.monotonic() - t0) * 1000)
                    c["sock"].close()
    states = {}
    for c in conns:
        states[c["state"]] = states.get(c["state"], 0) + 1
        if c["state"] == "open":
            c["sock"].close()
    replies = sorted({c["reply"].split(b"\r\n", 1)[0].decode("latin-1") for c in conns if c["reply"]})
    emit({"count": args.count, "states": states, "open": states.get("open", 0),
          "end_ms": percentiles(end_ms), "sent_max": max(c["sent"] for c in conns),
          "sent_total": sum(c["sent"] for c in conns),
          "replies": replies, "ms": int((time.monotonic() - t0) * 1000)})
    return 0


def read_to_eof(sock, secs):
    got = b""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return got, "timeout"
        except OSError as exc:
            return got, errname(exc)
        if not chunk:
            return got, "eof"
        got += chunk
    return got, "timeout"


def cmd_half_close(args):
    payload = os.urandom(args.bytes)
    t0 = time.monotonic()
    try:
        sock = connect(args.host, args.port)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got, how = read_to_eof(sock, 10)
        sock.close()
    except OSError as exc:
        emit({"ok": False, "error": errname(exc)})
        return 1
    line = got.decode(errors="replace").strip()
    want = f"got {len(payload)} sha256={hashlib.sha256(payload).hexdigest()} "
    ok = line.startswith(want) and how == "eof"
    client = line.rsplit("client=", 1)[1] if "client=" in line else ""
    emit({"ok": ok, "reply": line[:200], "end": how, "client": client,
          "ms": int((time.monotonic() - t0) * 1000)})
    return 0 if ok else 1


def cmd_half_close_http(args):
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n"
               f"Connection: close\r\n\r\n").encode()
    t0 = time.monotonic()
    try:
        sock = connect(args.host, args.port)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        got, how = read_to_eof(sock, 10)
        sock.close()
    except OSError as exc:
        emit({"ok": False, "error": errname(exc)})
        return 1
    text = got.decode(errors="replace")
    status = text.split("\r\n", 1)[0]
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    ok = status.startswith("HTTP/1.1 200") and "origin ok" in body
    emit({"ok": ok, "status": status, "body": body.strip()[:200], "end": how,
          "ms": int((time.monotonic() - t0) * 1000)})
    return 0 if ok else 1


def echo_once(host, port, size=4096, timeout=3.0):
    payload = b"RDE-ECHO\x00" + os.urandom(size)
    sock = connect(host, port, timeout)
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
        raise ValueError(f"echo mismatch: {len(got)} of {len(payload)} bytes")


def cmd_steady(args):
    """The well-behaved neighbour: must keep succeeding meanwhile."""
    t0 = time.monotonic()
    attempts, ok, failures, lat = 0, 0, [], []
    while not os.path.exists(args.stop) and time.monotonic() - t0 < args.seconds:
        start = time.monotonic()
        attempts += 1
        try:
            echo_once(args.host, args.port)
            ok += 1
        except (OSError, ValueError) as exc:
            failures.append(f"{int((start - t0) * 1000)}ms:{errname(exc)}")
        lat.append((time.monotonic() - start) * 1000)
        time.sleep(max(0.0, args.interval - (time.monotonic() - start)))
    emit({"attempts": attempts, "ok": ok, "failed": attempts - ok, "failures": failures[:10],
          "ms": percentiles(lat)})
    return 0


# ---------------------------------------------------------------- soak load


class SoakLoad:
    """Mixed traffic for the soak, one new connection per request, each
    checked: the origin names the address it saw, so a proxied, a direct
    and a kernel-bypassed request are told apart.

      https   TLS (SNI origin.test) via the hook to mitmproxy: client=proxy
      http    plain HTTP (Host plain.test), absolute form to mitmproxy
      tcp     4 KiB raw TCP echo through a CONNECT tunnel
      direct  plain HTTP, Host direct.test (a noProxy name): the daemon
              dials it itself, the origin sees the node
      bypass  plain HTTP to the noProxy CIDR: the kernel skips it, the
              origin sees the pod

    Control files in --control: `pause` (finish what is under way, then
    write `paused` with the counts so far), `stop`."""

    KINDS = ("https", "http", "tcp", "direct", "bypass")

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.counts = {k: {"sent": 0, "ok": 0, "errors": 0} for k in self.KINDS}
        self.errors = []  # (epoch ms, kind, reason)
        self.latency = {k: [] for k in self.KINDS}
        self.busy = 0
        self.seq = 0
        self.ctx = ssl.create_default_context(cafile=args.ca)

    def control(self, name):
        return os.path.join(self.args.control, name)

    def request(self, kind, n):
        a = self.args
        path = f"/soak/{kind}/{n}"
        if kind == "tcp":
            echo_once(a.inet, 7007, 4096, 10.0)
            return
        if kind == "https":
            raw = connect(a.inet, 443, 10.0)
            sock = self.ctx.wrap_socket(raw, server_hostname="origin.test")
            host, want = "origin.test", a.inet
        elif kind == "http":
            sock, host, want = connect(a.inet, 80, 10.0), "plain.test", a.inet
        elif kind == "direct":
            sock, host, want = connect(a.inet, 80, 10.0), "direct.test", a.node
        else:
            sock, host, want = connect(a.bypass, 80, 10.0), "bypass.test", a.pod
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
        expect = f"origin ok client={want} path={path}\n".encode()
        if not got.startswith(b"HTTP/1.1 200") or not got.endswith(expect):
            raise ValueError("unexpected answer " + got[:80].decode(errors="replace").replace(" ", "_"))

    def worker(self, index):
        a = self.args
        per_worker = a.rate / a.workers
        k = index
        next_at = time.monotonic()
        while not os.path.exists(self.control("stop")):
            if os.path.exists(self.control("pause")):
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            kind = self.KINDS[k % len(self.KINDS)]
            k += 1
            with self.lock:
                self.busy += 1
                self.seq += 1
                n = self.seq
                self.counts[kind]["sent"] += 1
            start = time.monotonic()
            reason = None
            try:
                self.request(kind, n)
            except ValueError as exc:
                reason = str(exc)[:80]
            except OSError as exc:
                reason = errname(exc)
            ms = (time.monotonic() - start) * 1000
            with self.lock:
                self.busy -= 1
                if reason is None:
                    self.counts[kind]["ok"] += 1
                    self.latency[kind].append(ms)
                else:
                    self.counts[kind]["errors"] += 1
                    self.errors.append((now_ms(), kind, reason))
            next_at += 1.0 / per_worker
            time.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - 5:
                next_at = time.monotonic()  # far behind (a stall): do not burst

    def snapshot(self):
        with self.lock:
            return {"t": now_ms(), "counts": json.loads(json.dumps(self.counts)),
                    "errors": len(self.errors)}

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.args.workers)]
        for t in threads:
            t.start()
        while not os.path.exists(self.control("stop")):
            pause, paused = self.control("pause"), self.control("paused")
            if os.path.exists(pause) and not os.path.exists(paused):
                with self.lock:
                    idle = self.busy == 0
                if idle:
                    with open(paused + ".tmp", "w") as f:
                        json.dump(self.snapshot(), f)
                    os.replace(paused + ".tmp", paused)
            elif not os.path.exists(pause) and os.path.exists(paused):
                os.unlink(paused)
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        out = self.snapshot()
        out["errors_list"] = self.errors[:2000]
        out["latency_ms"] = {k: percentiles(v) for k, v in self.latency.items()}
        out["threads_alive"] = sum(t.is_alive() for t in threads)
        with open(self.args.out + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(self.args.out + ".tmp", self.args.out)


def cmd_soak_load(args):
    raise_nofile()
    SoakLoad(args).run()
    return 0


# bpf(2) commands and the x86_64 / aarch64 syscall numbers.
BPF_MAP_GET_NEXT_KEY, BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 4, 14, 15
NR_BPF = {"x86_64": 321, "aarch64": 280}


def bpf_maps_of(pid):
    """Every BPF map the process holds an fd of, with its entry count:
    {name: {"entries": N, "max": M}}. Reads map ids from /proc/PID/fdinfo,
    opens each by id and walks its keys (needs CAP_SYS_ADMIN). This sees
    maps that are not pinned, such as the daemon's original-destination
    maps, which `redirector status` cannot."""
    import ctypes
    import platform
    libc = ctypes.CDLL(None, use_errno=True)
    nr = NR_BPF[platform.machine()]

    def bpf(cmd, attr):
        r = libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
        if r < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return r

    class ById(ctypes.Structure):
        _fields_ = [("map_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                    ("open_flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 116)]

    class Info(ctypes.Structure):
        _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                    ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                    ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                    ("name", ctypes.c_char * 16), ("rest", ctypes.c_uint8 * 256)]

    class GetInfo(ctypes.Structure):
        _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                    ("info", ctypes.c_uint64), ("pad", ctypes.c_uint8 * 112)]

    class NextKey(ctypes.Structure):
        _fields_ = [("map_fd", ctypes.c_uint32), ("pad0", ctypes.c_uint32),
                    ("key", ctypes.c_uint64), ("next_key", ctypes.c_uint64),
                    ("flags", ctypes.c_uint64), ("pad", ctypes.c_uint8 * 96)]

    ids = set()
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as f:
                for line in f:
                    if line.startswith("map_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    out = {}
    for map_id in sorted(ids):
        fd = bpf(BPF_MAP_GET_FD_BY_ID, ById(map_id=map_id))
        try:
            info = Info()
            bpf(BPF_OBJ_GET_INFO_BY_FD, GetInfo(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                                info=ctypes.addressof(info)))
            key = ctypes.create_string_buffer(info.key_size)
            nxt = ctypes.create_string_buffer(info.key_size)
            n, first = 0, True
            limit = 2 * info.max_entries + 16
            while n < limit:
                attr = NextKey(map_fd=fd, key=0 if first else ctypes.addressof(key),
                               next_key=ctypes.addressof(nxt))
                try:
                    bpf(BPF_MAP_GET_NEXT_KEY, attr)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        break
                    n = None  # arrays and the like: no keys to walk
                    break
                n += 1
                first = False
                ctypes.memmove(key, nxt, info.key_size)
            name = info.name.decode(errors="replace")
            out[name] = {"entries": n, "max": info.max_entries, "id": map_id}
        finally:
            os.close(fd)
    return out


def cmd_map_entries(args):
    emit(bpf_maps_of(args.pid))
    return 0


def cmd_soak_point(args):
    """One idle point of the soak as a JSON line: daemon RSS and fds, map
    entries (`redirector status --json`), the metrics, the load's counts."""
    metrics = {}
    with open(args.metrics) as f:
        for line in f:
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            try:
                metrics[key] = float(value)
            except ValueError:
                pass
    with open(args.status) as f:
        status = json.load(f)
    maps = {m["name"]: {"entries": m.get("entries"), "max": m.get("max_entries")}
            for m in status.get("maps", [])}
    # the daemon's unpinned maps (DST_BY_CLIENT, DST_BY_COOKIE), by its fds
    for name, m in bpf_maps_of(args.pid).items():
        maps.setdefault(name, {"entries": m["entries"], "max": m["max"]})
    with open(args.client) as f:
        client = json.load(f)
    emit({"kind": "point", "name": args.name, "instance": args.instance, "t": now_ms(),
          "rss_kb": args.rss_kb, "fds": args.fds, "sockets": args.sockets, "pipes": args.pipes,
          "maps": maps, "metrics": metrics,
          "client": client})
    return 0


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("proxy")
    p.add_argument("--listen", required=True)
    p.add_argument("--mode-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--sink-port", type=int, default=9)
    p.set_defaults(fn=cmd_proxy)

    p = sub.add_parser("eof-server")
    p.add_argument("--listen", required=True)
    p.add_argument("--log", required=True)
    p.set_defaults(fn=cmd_eof_server)

    def target(p):
        p.add_argument("host")
        p.add_argument("port", type=int)

    p = sub.add_parser("conns")
    target(p)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--ready")
    p.add_argument("--send", help="bytes (Python escapes) to send once connected")
    p.set_defaults(fn=cmd_conns)

    p = sub.add_parser("endless-hello")
    target(p)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--variant", choices=("records", "huge-record"), default="records")
    p.set_defaults(fn=cmd_endless_hello)

    p = sub.add_parser("endless-header")
    target(p)
    p.add_argument("--seconds", type=float, default=5.0)
    p.set_defaults(fn=cmd_endless_header)

    p = sub.add_parser("slow")
    target(p)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--prefix", default="")
    p.add_argument("--drip", default="a")
    p.add_argument("--interval", type=float, default=1.0)
    p.set_defaults(fn=cmd_slow)

    p = sub.add_parser("half-close")
    target(p)
    p.add_argument("--bytes", type=int, default=100000)
    p.set_defaults(fn=cmd_half_close)

    p = sub.add_parser("half-close-http")
    target(p)
    p.add_argument("--host-header", required=True)
    p.add_argument("--path", default="/half-close")
    p.set_defaults(fn=cmd_half_close_http)

    p = sub.add_parser("steady")
    target(p)
    p.add_argument("--stop", required=True)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--seconds", type=float, default=120.0)
    p.set_defaults(fn=cmd_steady)

    p = sub.add_parser("soak-load")
    p.add_argument("--control", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--rate", type=float, default=25.0)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--inet", default="10.249.0.2")
    p.add_argument("--bypass", default="10.249.3.2")
    p.add_argument("--node", default="10.249.0.1")
    p.add_argument("--pod", default="10.249.1.2")
    p.set_defaults(fn=cmd_soak_load)

    p = sub.add_parser("map-entries")
    p.add_argument("--pid", type=int, required=True)
    p.set_defaults(fn=cmd_map_entries)

    p = sub.add_parser("soak-point")
    p.add_argument("--name", required=True)
    p.add_argument("--instance", type=int, required=True)
    p.add_argument("--rss-kb", type=int, required=True)
    p.add_argument("--fds", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--sockets", type=int, required=True)
    p.add_argument("--pipes", type=int, required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--client", required=True)
    p.set_defaults(fn=cmd_soak_point)

    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
