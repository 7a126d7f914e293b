#!/usr/bin/env python3
"""A name server for the end-to-end tests (stdlib only, UDP): A and AAAA
answers from a table, every query logged, so the tests control what the
daemon's resolver sees and can count what it asks. It runs in netns
rde-inet; the daemon's --resolv-conf points at it, so no test ever queries
the machine's real resolver.

  dns.py serve --listen IP [--port 53] --table FILE --log FILE
      Answer queries. Prints "dns ready" once bound.
  dns.py query NAME [--type A|AAAA] --server IP [--port 53]
      Ask once (for the harness's self-check). Prints "ADDR ttl=N" per
      answer, "NXDOMAIN" or "NODATA" (exit 0), or "timeout" (exit 1).

The table is re-read whenever its file changes (write a new file and
rename it over the old one). One entry per line, '#' starts a comment:

  NAME TTL ADDR...          A/AAAA records (IPv4 and IPv6 addresses mixed)
  NAME TTL ADDR... delay=MS  the same, answered MS milliseconds late
  NAME silent               never answered (a resolver timeout)

NAME is exact, or `*.SUFFIX` for every name under SUFFIX; an exact entry
wins. A name in no entry is NXDOMAIN, a name without records of the asked
type is NODATA; both carry an SOA with a 5 s negative TTL.

The log has one line per query, written before it is answered:

  QUERY <name> <A|AAAA|type number> <epoch ms>
"""

import argparse
import ipaddress
import os
import socket
import struct
import sys
import threading
import time

TYPE_A, TYPE_AAAA, TYPE_SOA = 1, 28, 6
CLASS_IN = 1
NEGATIVE_TTL = 5
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3


class Table:
    """The answers, re-read when the file's mtime or size changes."""

    def __init__(self, path):
        self.path = path
        self.stamp = None
        self.exact = {}
        self.wild = {}
        self.lock = threading.Lock()

    def _reload(self):
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.stamp:
            return
        exact, wild = {}, {}
        with open(self.path) as f:
            for raw in f:
                line = raw.split("#", 1)[0].split()
                if not line:
                    continue
                name = line[0].lower().rstrip(".")
                if line[1] == "silent":
                    entry = {"silent": True}
                else:
                    addrs, delay = [], 0.0
                    for item in line[2:]:
                        if item.startswith("delay="):
                            delay = int(item[len("delay="):]) / 1000
                        else:
                            addrs.append(ipaddress.ip_address(item))
                    entry = {"silent": False, "ttl": int(line[1]), "addrs": addrs, "delay": delay}
                if name.startswith("*."):
                    wild[name[2:]] = entry
                else:
                    exact[name] = entry
        self.exact, self.wild, self.stamp = exact, wild, stamp

    def find(self, name):
        with self.lock:
            self._reload()
            if name in self.exact:
                return self.exact[name]
            for suffix, entry in self.wild.items():
                if name.endswith("." + suffix):
                    return entry
            return None


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def parse_question(msg):
    """(id, flags, name, qtype, end of the question) of a query."""
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        raise ValueError("expected one question")
    labels, i = [], 12
    while msg[i] != 0:
        n = msg[i]
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", msg[i + 1:i + 5])
    return qid, flags, ".".join(labels), qtype, i + 5


def answer(query, table, log):
    qid, flags, name, qtype, qend = parse_question(query)
    kind = {TYPE_A: "A", TYPE_AAAA: "AAAA"}.get(qtype, str(qtype))
    log(f"QUERY {name.lower()} {kind} {int(time.time() * 1000)}")
    entry = table.find(name.lower().rstrip("."))
    if entry is not None and entry["silent"]:
        return None, 0
    rcode, records = RCODE_NOERROR, []
    if entry is None:
        rcode = RCODE_NXDOMAIN
    else:
        want = 4 if qtype == TYPE_A else 6 if qtype == TYPE_AAAA else None
        for addr in entry["addrs"]:
            if addr.version == want:
                records.append(struct.pack("!HHHIH", 0xC00C, qtype, CLASS_IN, entry["ttl"],
                                           len(addr.packed)) + addr.packed)
    authority = []
    if not records:
        soa = (encode_name("ns.test") + encode_name("hostmaster.test")
               + struct.pack("!IIIII", 1, 60, 60, 60, NEGATIVE_TTL))
        authority.append(struct.pack("!HHHIH", 0xC00C, TYPE_SOA, CLASS_IN, NEGATIVE_TTL, len(soa)) + soa)
    # QR, the query's opcode and RD, AA, RA, the rcode.
    out_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0400 | 0x0080 | rcode
    header = struct.pack("!HHHHHH", qid, out_flags, 1, len(records), len(authority), 0)
    delay = entry["delay"] if entry else 0.0
    return header + query[12:qend] + b"".join(records) + b"".join(authority), delay


def serve(args):
    table = Table(args.table)
    table.find("warm.up")  # a broken table fails here, not at the first query
    log_file = open(args.log, "a", buffering=1)
    log_lock = threading.Lock()

    def log(line):
        with log_lock:
            log_file.write(line + "\n")

    sock = socket.socket(socket.AF_INET6 if ":" in args.listen else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.listen, args.port))
    print("dns ready", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            reply, delay = answer(query, table, log)
        except (ValueError, IndexError, struct.error) as exc:
            log(f"BAD-QUERY {exc}")
            continue
        if reply is None:
            continue
        if delay:
            threading.Timer(delay, sock.sendto, (reply, peer)).start()
        else:
            sock.sendto(reply, peer)


def query(args):
    qtype = TYPE_AAAA if args.type == "AAAA" else TYPE_A
    qid = os.getpid() & 0xFFFF
    msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(args.name) + struct.pack("!HH", qtype, CLASS_IN)
    sock = socket.socket(socket.AF_INET6 if ":" in args.server else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.sendto(msg, (args.server, args.port))
    try:
        reply = sock.recv(4096)
    except socket.timeout:
        print("timeout")
        return 1
    _, flags, ancount = struct.unpack("!HHxxH", reply[:8])
    if flags & 0xF == RCODE_NXDOMAIN:
        print("NXDOMAIN")
        return 0
    if ancount == 0:
        print("NODATA")
        return 0
    i = len(msg)
    for _ in range(ancount):
        _, rtype, _, ttl, rdlen = struct.unpack("!HHHIH", reply[i:i + 12])
        data = reply[i + 12:i + 12 + rdlen]
        print(f"{ipaddress.ip_address(data)} ttl={ttl}")
        i += 12 + rdlen
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--table", required=True)
    s.add_argument("--log", required=True)
    q = sub.add_parser("query")
    q.add_argument("name")
    q.add_argument("--type", choices=["A", "AAAA"], default="A")
    q.add_argument("--server", required=True)
    q.add_argument("--port", type=int, default=53)
    args = p.parse_args()
    return serve(args) if args.cmd == "serve" else query(args)


if __name__ == "__main__":
    sys.exit(main())
