"""Processes for tests/lab/test_kernel_sync.py, each run in its own namespace; each prints
JSON lines and exits by itself (every loop is bounded in count and time).

    (master and standby stop at a line on stdin, or after SECONDS)
    master  PEER PORT SECONDS     conntrack events -> syncd.kernel_source -> signed DATA
                                  datagrams to PEER:PORT; prints its counters at the end
    standby ADDR PORT SECONDS     signed DATA datagrams -> director.ct_inject -> ctnetlink;
                                  prints its counters at the end
    held    VIP PORT CONNS BULK   CONNS echo connections of 5 round trips each, then a line
                                  on stdout and a wait for a line on stdin, then 20 more round
                                  trips on each and BULK bytes echoed on each
    garp    IFNAME ADDR...        three rounds of gratuitous ARP for ADDR on IFNAME
    ours                          our marked conntrack entries, as [orig, reply, state, timeout]
"""
from __future__ import annotations

import json
import select
import socket
import sys
import time

KEY = b"ksync-lab-key-0123456789abcdef!!"
MARK = 0x54440001


def _ours(mark: int | None) -> bool:
    from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
    return (mark or 0) & MARK_PREFIX_MASK == MARK_BASE


def master(peer: str, port: int, seconds: float) -> None:
    from director.ct_events import EventSocket
    from director.protocol import make_protocols
    from proto import sync as S
    from schema import keys as K
    from syncd.kernel_source import KernelSyncSource
    from syncd.policy import SyncPolicy

    protos = make_protocols(K.TIMEOUTS.defaults())
    src = KernelSyncSource(SyncPolicy(), lambda p, s: protos[p].timeouts[s], _ours, active=True)
    events = EventSocket()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq, sent = 0, 0
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready = select.select([events, sys.stdin], [], [], 0.05)[0]
        if sys.stdin in ready:
            break
        if events in ready:
            msgs, overrun = events.read()
            assert not overrun, "events lost"
            now = time.monotonic()
            entries = [e for m in msgs for e, _ in src.apply(m, now)]
        else:
            entries = [e for e, _ in src.poll(time.monotonic())]
        if entries:
            for raw in S.pack_entries({"sync_id": 0, "node_id": "m", "epoch": 1,
                                       "send_time": time.time(), "seq": seq + 1}, entries, KEY):
                out.sendto(raw, (peer, port))
                seq += 1
            sent += len(entries)
    print(json.dumps({"stats": src.stats, "sent": sent, "flows": len(src.flows)}), flush=True)


def standby(addr: str, port: int, seconds: float) -> None:
    from director.ct_inject import InjectSocket, Injector
    from proto import sync as S

    inj = Injector(lambda e: MARK)
    nl = InjectSocket()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready = select.select([sock, sys.stdin], [], [], 0.05)[0]
        if sys.stdin in ready:
            break
        if sock in ready:
            msg = S.decode(sock.recv(65536), KEY, 0)
            for e in msg.entries:
                inj.offer(e)
        nl.run(inj)
    print(json.dumps({"stats": inj.stats, "errors": inj.errors, "known": len(inj.known)}),
          flush=True)


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


def _bulk(s: socket.socket, size: int) -> int:
    """Echo `size` bytes in 64 KiB blocks; the bytes that came back equal."""
    block = bytes(range(256)) * 256
    good = 0
    while good < size:
        s.sendall(block)
        got = b""
        while len(got) < len(block):
            chunk = s.recv(len(block) - len(got))
            if not chunk:
                return good
            got += chunk
        if got != block:
            return good
        good += len(block)
    return good


def held(vip: str, port: int, conns: int, bulk: int) -> None:
    socks = [socket.create_connection((vip, port), timeout=10) for _ in range(conns)]
    before = [_rounds(s, f"a{i}.", 5) for i, s in enumerate(socks)]
    print(json.dumps({"before": before, "sports": [s.getsockname()[1] for s in socks]}), flush=True)
    sys.stdin.readline()
    after, bulks, errors = [], [], []
    for i, s in enumerate(socks):
        try:
            after.append(_rounds(s, f"b{i}.", 20))
            bulks.append(_bulk(s, bulk))
        except OSError as exc:          # ConnectionResetError is an RST
            errors.append(f"{type(exc).__name__}: {exc}")
            after.append(-1)
            bulks.append(-1)
    for s in socks:
        s.close()
    print(json.dumps({"after": after, "bulk": bulks, "errors": errors}), flush=True)


def garp(ifname: str, *addrs: str) -> None:
    from proto.arp import ETH_P_ARP, garp_frame

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((ifname, 0))
    mac = s.getsockname()[4]
    for _ in range(3):
        for a in addrs:
            s.send(garp_frame(mac, a))
        time.sleep(0.05)
    s.close()
    print(json.dumps({"sent": 3 * len(addrs)}), flush=True)


def ours() -> None:
    from director.ct_events import dump

    rows = []
    for e in dump():
        if _ours(e.mark) and e.orig is not None and e.reply is not None:
            rows.append([[socket.inet_ntoa(e.orig.src), e.orig.sport, socket.inet_ntoa(e.orig.dst),
                          e.orig.dport],
                         [socket.inet_ntoa(e.reply.src), e.reply.sport,
                          socket.inet_ntoa(e.reply.dst), e.reply.dport],
                         e.tcp.state if e.tcp else None, e.timeout,
                         e.tcp.flags_orig if e.tcp else None])
    print(json.dumps(sorted(rows)), flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "master":
        master(args[0], int(args[1]), float(args[2]))
    elif cmd == "standby":
        standby(args[0], int(args[1]), float(args[2]))
    elif cmd == "held":
        held(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "garp":
        garp(args[0], *args[1:])
    elif cmd == "ours":
        ours()
