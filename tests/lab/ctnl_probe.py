"""Run inside a namespace by tests/lab/test_ctnetlink.py: make real flows, inject NAT
entries, read the kernel's events and dump through proto.ctnetlink; print JSON.

Every wait is bounded (0.5 s of quiet, 5 s in all)."""
from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from proto import ctnetlink as c  # noqa: E402

GROUPS = (1 << (c.GROUP_NEW - 1)) | (1 << (c.GROUP_UPDATE - 1)) | (1 << (c.GROUP_DESTROY - 1))
# the injected FULLNAT entries: client -> VIP, DNAT to the real server, SNAT to laddr:lport
INJECT = [
    (c.Tuple(6, ipaddress.ip_address("198.18.1.10").packed, ipaddress.ip_address("198.18.0.100").packed,
             40000, 80), "198.18.2.21", 8080, "198.18.2.100", 5000),
    (c.Tuple(17, ipaddress.ip_address("2001:2::10").packed, ipaddress.ip_address("2001:2::100").packed,
             40001, 53), "2001:2::21", 5353, "2001:2::200", 5001),
]


def jsonable(ct: c.Conntrack) -> dict:
    def tup(t: c.Tuple | None):
        if t is None:
            return None
        return [t.proto, str(ipaddress.ip_address(t.src)), str(ipaddress.ip_address(t.dst)), t.sport, t.dport]
    return {"orig": tup(ct.orig), "reply": tup(ct.reply), "status": ct.status, "mark": ct.mark,
            "id": ct.id, "timeout": ct.timeout,
            "tcp_state": ct.tcp.state if ct.tcp else None,
            "tcp_flags": [ct.tcp.flags_orig, ct.tcp.flags_reply] if ct.tcp else None}


def request(sock: socket.socket, data: bytes, seq: int) -> list:
    """Send one request; the messages up to its Ack or Done."""
    sock.send(data)
    out, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        for m in c.decode(sock.recv(1 << 16)):
            out.append(m)
            if isinstance(m, (c.Ack, c.Done)) and m.seq == seq:
                return out
    raise TimeoutError(f"no answer to request {seq}")


def flows() -> list:
    """One TCP connection (IPv4 and IPv6) and one UDP exchange over loopback."""
    made = []
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = socket.socket(fam)
        srv.bind((host, 0))
        srv.listen()
        cl = socket.create_connection(srv.getsockname()[:2])
        acc, _ = srv.accept()
        cl.sendall(b"x")
        acc.recv(1)
        made.append([6, host, host, cl.getsockname()[1], srv.getsockname()[1]])
        cl.close(); acc.close(); srv.close()
    u, v = socket.socket(type=socket.SOCK_DGRAM), socket.socket(type=socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0)); v.bind(("127.0.0.1", 0))
    v.sendto(b"q", u.getsockname())
    made.append([17, "127.0.0.1", "127.0.0.1", v.getsockname()[1], u.getsockname()[1]])
    u.close(); v.close()
    return made


def main() -> None:
    events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, c.NETLINK_NETFILTER)
    events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    events.bind((0, GROUPS))
    ctl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, c.NETLINK_NETFILTER)
    ctl.bind((0, 0))
    made = flows()
    acks = []
    for seq, (orig, raddr, rport, laddr, lport) in enumerate(INJECT, 1):
        ct = c.injection(orig, c.NatRange(ipaddress.ip_address(raddr).packed, rport),
                         c.NatRange(ipaddress.ip_address(laddr).packed, lport), 300, mark=seq)
        acks += [m.errno for m in request(ctl, c.new_request(ct, seq), seq) if isinstance(m, c.Ack)]
    dump = [jsonable(m.ct) for m in request(ctl, c.dump_request(10), 10) if isinstance(m, c.Message)]
    # delete the first injected entry: the kernel sends its DESTROY event at once
    acks += [m.errno for m in request(ctl, c.delete_request(INJECT[0][0], 11), 11)
             if isinstance(m, c.Ack)]
    seen, deadline = [], time.monotonic() + 5
    events.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data = events.recv(1 << 16)
        except socket.timeout:
            break
        seen += [{"event": m.event, **jsonable(m.ct)} for m in c.decode(data) if isinstance(m, c.Message)]
    print(json.dumps({"flows": made, "acks": acks, "dump": dump, "events": seen}))


if __name__ == "__main__":
    main()
