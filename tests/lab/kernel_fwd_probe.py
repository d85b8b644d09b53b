"""Processes for tests/lab/test_kernel_rules.py, each run in its own namespace; each prints
one JSON line and exits by itself (every loop is bounded in count and time).

    echo   ADDR PORT SECONDS          TCP echo server; prints the peers it saw
    queue  NUM MARK SPORT SECONDS     NFQUEUE listener: accepts each packet with MARK, except
                                      packets from source port SPORT (accepted unmarked);
                                      prints how many packets it saw, by TCP source port
    client VIP PORT CONNS ROUNDS SPORT  CONNS echo connections of ROUNDS messages each, then
                                      one connection from SPORT that must not be forwarded
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time


def echo(addr: str, port: int, seconds: float) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(64)
    conns, peers, end = [], [], time.monotonic() + seconds
    print(json.dumps({"ready": True}), flush=True)
    while time.monotonic() < end:
        ready, _, _ = select.select([srv, *conns], [], [], 0.1)
        for s in ready:
            if s is srv:
                c, peer = srv.accept()
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


def queue(num: int, mark: int, unmarked_sport: int, seconds: float) -> None:
    from netfilterqueue import NetfilterQueue

    by_sport: dict[str, int] = {}

    def handle(pkt) -> None:
        payload = pkt.get_payload()
        ihl = (payload[0] & 0x0F) * 4
        sport = struct.unpack_from("!H", payload, ihl)[0]
        by_sport[str(sport)] = by_sport.get(str(sport), 0) + 1
        if sport != unmarked_sport:
            pkt.set_mark(mark)
        pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(num, handle)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([sock], [], [], 0.1)[0]:
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
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", unmarked_sport))
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


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "echo":
        echo(args[0], int(args[1]), float(args[2]))
    elif cmd == "queue":
        queue(int(args[0]), int(args[1], 0), int(args[2]), float(args[3]))
    else:
        client(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
