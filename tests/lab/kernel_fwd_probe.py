"""Processes for tests/lab/test_kernel_rules.py, each run in its own namespace; each prints
one JSON line and exits by itself (every loop is bounded in count and time).  The two
servers end at SECONDS, or sooner at a line "stop" on stdin (the test is done with them;
an empty stdin does not end them).

    echo   ADDR[,ADDR] PORT SECONDS   TCP echo server; prints the peers it saw
    queue  NUM MARK MARK6 SPORT SECS  NFQUEUE listener: accepts each packet with MARK (MARK6
                                      for IPv6), except packets from source port SPORT
                                      (accepted unmarked); prints how many packets it saw,
                                      by TCP source port
    client VIP PORT CONNS ROUNDS SPORT  CONNS echo connections of ROUNDS messages each, then
                                      one connection from SPORT that must not be forwarded
    paused VIP PORT BULK              one connection: 20 round trips, then a line on stdout and
                                      a wait for a line on stdin, then 20 more and BULK bytes
    reinject                          (director) dump our marked entries, delete them and
                                      create them again from the dump with NAT, as a backup
                                      injects synced connections
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time


class _Stdin:
    """Watches stdin for the line "stop" (at EOF it stops watching)."""

    def __init__(self) -> None:
        self.watch = [sys.stdin]
        self.stop = False

    def check(self, ready: list) -> bool:
        if sys.stdin in ready:
            line = sys.stdin.readline()
            self.stop = line.strip() == "stop"
            if not line:
                self.watch = []
        return self.stop


def echo(addrs: str, port: int, seconds: float) -> None:
    servers = []
    for addr in addrs.split(","):
        srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(64)
        servers.append(srv)
    conns, peers, end = [], [], time.monotonic() + seconds
    stdin = _Stdin()
    print(json.dumps({"ready": True}), flush=True)
    while time.monotonic() < end:
        ready, _, _ = select.select([*servers, *conns, *stdin.watch], [], [], 0.1)
        if stdin.check(ready):
            break
        for s in ready:
            if s is sys.stdin:
                continue
            if s in servers:
                c, peer = s.accept()
                conns.append(c)
                peers.append(peer[0])
                continue
            data = s.recv(4096)
            if data:
                s.sendall(data)
            else:
                conns.remove(s)
                s.close()
    print(json.dumps({"peers": peers}), flush=True)


def queue(num: int, mark: int, mark6: int, unmarked_sport: int, seconds: float) -> None:
    from netfilterqueue import NetfilterQueue

    by_sport: dict[str, int] = {}

    def handle(pkt) -> None:
        payload = pkt.get_payload()
        v6 = payload[0] >> 4 == 6
        sport = struct.unpack_from("!H", payload, 40 if v6 else (payload[0] & 0x0F) * 4)[0]
        by_sport[str(sport)] = by_sport.get(str(sport), 0) + 1
        if sport != unmarked_sport:
            pkt.set_mark(mark6 if v6 else mark)
        pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(num, handle)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    stdin = _Stdin()
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready = select.select([sock, *stdin.watch], [], [], 0.1)[0]
        if stdin.check(ready):
            break
        if sock in ready:
            nfq.run(block=False)
    nfq.unbind()
    print(json.dumps({"by_sport": by_sport}), flush=True)


def client(vip: str, port: int, conns: int, rounds: int, unmarked_sport: int) -> None:
    results = []
    for i in range(conns):
        s = socket.create_connection((vip, port), timeout=5)
        ok = 0
        for r in range(rounds):
            msg = f"c{i}r{r};".encode()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    break
                got += chunk
            ok += got == msg
        results.append({"sport": s.getsockname()[1], "ok": ok})
        s.close()
    # an unmarked flow: the guard drops it, so the client sees a timeout, never an RST
    v6 = ":" in vip
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "0.0.0.0", unmarked_sport))
    s.settimeout(1.5)
    try:
        s.connect((vip, port))
        unmarked = "connected"
    except socket.timeout:
        unmarked = "timeout"
    except ConnectionRefusedError:
        unmarked = "refused"
    finally:
        s.close()
    print(json.dumps({"conns": results, "unmarked": unmarked}), flush=True)


def _rounds(s: socket.socket, tag: str, n: int) -> int:
    ok = 0
    for r in range(n):
        msg = f"{tag}{r};".encode()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                return ok
            got += chunk
        ok += got == msg
    return ok


def paused(vip: str, port: int, bulk: int) -> None:
    s = socket.create_connection((vip, port), timeout=10)
    before = _rounds(s, "a", 20)
    print(json.dumps({"sport": s.getsockname()[1], "before": before}), flush=True)
    sys.stdin.readline()
    after = _rounds(s, "b", 20)
    sent = received = 0
    block = bytes(range(256)) * 256          # 64 KiB
    echoed_ok = True
    while sent < bulk:
        s.sendall(block)
        sent += len(block)
        got = b""
        while len(got) < len(block):
            chunk = s.recv(len(block) - len(got))
            if not chunk:
                break
            got += chunk
        received += len(got)
        echoed_ok = echoed_ok and got == block
    print(json.dumps({"after": after, "bulk_sent": sent, "bulk_received": received,
                      "bulk_ok": echoed_ok}), flush=True)
    sys.stdin.readline()            # still open (ESTABLISHED) until told
    s.close()


def timeouts() -> None:
    """(director) the timeouts of our marked entries now."""
    from director.ct_events import dump
    from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK

    print(json.dumps([e.timeout for e in dump() if (e.mark or 0) & MARK_PREFIX_MASK == MARK_BASE]))


def reinject() -> None:
    from director.ct_events import dump
    from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
    from proto import ctnetlink as c

    ours = [e for e in dump() if (e.mark or 0) & MARK_PREFIX_MASK == MARK_BASE]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, c.NETLINK_NETFILTER)
    sock.bind((0, 0))
    errors = []
    for seq, e in enumerate(ours, 1):
        assert e.orig is not None and e.reply is not None
        for req in (c.delete_request(e.orig, 2 * seq),
                    c.new_request(c.injection(e.orig, c.NatRange(e.reply.src, e.reply.sport),
                                              c.NatRange(e.reply.dst, e.reply.dport), 200,
                                              tcp_state=e.tcp.state if e.tcp else None,
                                              mark=e.mark), 2 * seq + 1)):
            sock.send(req)
            errors += [m.errno for m in c.decode(sock.recv(65536)) if isinstance(m, c.Ack)]
    after = [e for e in dump() if (e.mark or 0) & MARK_PREFIX_MASK == MARK_BASE]
    print(json.dumps({"entries": len(ours), "errnos": errors,
                      "same_tuples": sorted(map(str, [(e.orig, e.reply) for e in ours]))
                      == sorted(map(str, [(e.orig, e.reply) for e in after])),
                      # the kernel may give a new entry the id of the old one; the timeout
                      # tells them apart (900 s before, the injected 200 s after)
                      "timeouts_before": [e.timeout for e in ours],
                      "timeouts_after": [e.timeout for e in after]}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "echo":
        echo(args[0], int(args[1]), float(args[2]))
    elif cmd == "queue":
        queue(int(args[0]), int(args[1], 0), int(args[2], 0), int(args[3]), float(args[4]))
    elif cmd == "paused":
        paused(args[0], int(args[1]), int(args[2]))
    elif cmd == "reinject":
        reinject()
    elif cmd == "timeouts":
        timeouts()
    else:
        client(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
