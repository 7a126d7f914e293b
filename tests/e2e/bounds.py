#!/usr/bin/env python3
"""Peers for bounds.sh (issue 12, items 7-10). Python stdlib only; every
client is time-bound and prints one JSON object (read with `jget`).

Peer (run in rde-inet):
  tls-proxy --listen IP:PORT --cert PEM --key PEM --log FILE [--flood-port 9]
      An `https://` proxy: TLS, then CONNECT. To --flood-port it answers 200
      and then sends without end and never reads: with a client that does
      not read either, every buffer on the way fills. Other test addresses
      (10.249.0.0/16, fd42:e9e5::/32) are tunnelled; the rest get 403.
      Log lines: CONNECT TARGET peer=IP / END result=R.

Clients (run in a pod):
  flood HOST PORT --count N --seconds S [--ready FILE] [--read]
      N connections at once; each writes whenever it can and never reads
      (with --read: also reads whatever comes), for S seconds. Counts which
      stayed open, which were reset or closed.
  bound-connect HOST PORT --source-port P [--send BYTES] [--expect TEXT]
      One connection from source port P: send BYTES, read what comes back
      within 3 s; says whether TEXT was in it, or how it ended.
"""

import argparse
import asyncio
import errno
import json
import os
import selectors
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile  # noqa: E402  (the shared helpers)

BLOCK = b"\x5a" * 65536


class TlsProxy:
    def __init__(self, args):
        self.flood_port = args.flood_port
        self.log = hostile.Log(args.log)

    async def handle(self, reader, writer):
        peer = writer.get_extra_info("peername")[0]
        result = "?"
        try:
            result = await self.serve(peer, reader, writer)
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            result = hostile.errname(exc)
        finally:
            try:
                writer.close()
            except (OSError, ssl.SSLError):
                pass
            self.log.line(f"END result={result}")

    async def serve(self, peer, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or parts[0] != "CONNECT":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return "not-connect"
        self.log.line(f"CONNECT {parts[1]} peer={peer}")
        host, port = hostile.split_authority(parts[1], 443)
        if port == self.flood_port:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while True:  # until the daemon resets or the client goes
                writer.write(BLOCK)
                await writer.drain()
        ip = hostile.test_target(host)
        if ip is None:
            writer.write(b"HTTP/1.1 403 Not A Test Address\r\nContent-Length: 0\r\n\r\n")
            return "refused-target"
        o_reader, o_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError, ssl.SSLError):
                pass

        await asyncio.gather(pipe(reader, o_writer), pipe(o_reader, writer))
        o_writer.close()
        return "tunnel"


async def run_tls_proxy(args):
    hostile.raise_nofile()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    proxy = TlsProxy(args)
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(proxy.handle, host.strip("[]"), int(port),
                                        ssl=ctx, reuse_address=True, backlog=4096)
    proxy.log.line(f"STARTED {args.listen}")
    print("tls proxy ready", flush=True)
    async with server:
        await server.serve_forever()


def cmd_tls_proxy(args):
    asyncio.run(run_tls_proxy(args))


def cmd_flood(args):
    """Many connections that write whenever they can and never read."""
    hostile.raise_nofile()
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(args.count):
        sock = socket.socket(hostile.family_of(args.host), socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((args.host, args.port))
        c = {"sock": sock, "state": "connecting", "sent": 0}
        if err not in (0, errno.EINPROGRESS):
            c["state"] = "connect_failed"
            sock.close()
        else:
            sel.register(sock, selectors.EVENT_WRITE, c)
        conns.append(c)
    events = selectors.EVENT_WRITE | (selectors.EVENT_READ if args.read else 0)
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    ready_written = False
    while time.monotonic() < deadline:
        if not ready_written and (time.monotonic() - t0 > 3
                                  or all(c["state"] != "connecting" for c in conns)):
            ready_written = True
            if args.ready:
                with open(args.ready + ".tmp", "w") as f:
                    f.write(json.dumps(hostile.summary_states(conns)) + "\n")
                os.replace(args.ready + ".tmp", args.ready)
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            sock = c["sock"]
            if c["state"] == "connecting":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    c["state"] = "reset" if err == errno.ECONNRESET else "connect_failed"
                    sel.unregister(sock)
                    sock.close()
                    continue
                c["state"] = "open"
                sel.modify(sock, events, c)
            try:
                while args.read and sock.recv(65536):
                    pass
            except BlockingIOError:
                pass
            except OSError:
                pass  # the send below sees what happened
            try:
                while True:
                    c["sent"] += sock.send(BLOCK)
            except BlockingIOError:
                pass
            except OSError as exc:
                c["state"] = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else hostile.errname(exc)
                sel.unregister(sock)
                sock.close()
    out = hostile.summary_states(conns)
    out.update({"count": args.count, "sent_total": sum(c["sent"] for c in conns),
                "stalled": sum(1 for c in conns if c["state"] == "open" and c["sent"] > 0)})
    for c in conns:
        if c["state"] == "open":
            c["sock"].close()
    hostile.emit(out)
    return 0


def cmd_bound_connect(args):
    sock = socket.socket(hostile.family_of(args.host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(3)
    out = {"source_port": args.source_port}
    try:
        sock.bind(("", args.source_port))
        sock.connect((args.host, args.port))
        if args.send:
            sock.sendall(hostile.decode(args.send))
        got = b""
        while args.expect.encode() not in got:
            data = sock.recv(4096)
            if not data:
                out["outcome"] = "closed"
                break
            got += data
        else:
            out["outcome"] = "answered"
        out["reply"] = got[:200].decode("latin-1")
    except OSError as exc:
        out["outcome"] = "reset" if getattr(exc, "errno", None) == errno.ECONNRESET else hostile.errname(exc)
    finally:
        sock.close()
    hostile.emit(out)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("tls-proxy")
    p.add_argument("--listen", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--flood-port", type=int, default=9)
    p.set_defaults(fn=cmd_tls_proxy)

    p = sub.add_parser("flood")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--ready")
    p.add_argument("--read", action="store_true")
    p.set_defaults(fn=cmd_flood)

    p = sub.add_parser("bound-connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--source-port", type=int, required=True)
    p.add_argument("--send", default="")
    p.add_argument("--expect", default="")
    p.set_defaults(fn=cmd_bound_connect)

    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
