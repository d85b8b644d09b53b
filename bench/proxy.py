"""Per-packet cost of a PROXY-v2 and a TOA service next to a plain one (the sans-IO engine alone).

TCP: the three services are TCP on the same VIP with the same real servers; only
`client_address` differs.  Each flow is opened (SYN, the real server's SYN-ACK
with an MSS option, first data segment: the PROXY one gets its header there,
the TOA one its option) and then timed: client data segments sent before the
real server sent anything (18 bytes; on the TOA service each still carries the
option, as it might complete the server's handshake), server ACKs carrying one
SACK block (ack and both edges shifted back on the PROXY service; the TOA one
drops its state on the first), and client data segments after that (sequence
numbers shifted on the PROXY service, nothing left to do on the TOA one).

UDP: the same for two UDP services: established flows' client datagrams (18
bytes; the PROXY one grows by its 28-byte header, lengths and checksums
updated) and the real servers' replies (unchanged on both).  Best of N rounds
of process CPU time, as bench.engine.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Any

from director.config import parse
from director.engine import Engine
from proto.checksum import checksum, ones_sum, pseudo_header_sum
from proto.consts import TCP, UDP

VIP = "198.18.0.100"
REALS = [f"198.18.2.{21 + i}" for i in range(4)]
PAYLOAD = b"tandem-bench-0001!"
_SACK = b"\x01\x01\x05\x0a" + struct.pack("!LL", 1100, 1200)    # NOP NOP SACK(1 block)
_MSS = b"\x02\x04\x05\xb4"                                       # MSS 1460
#: the services' ports by `client_address` (TCP and UDP alike)
PORTS = {"none": 80, "proxy-v2": 81, "toa": 82}


def _config():
    svc = lambda proto, port, mode: {
        "proto": proto, "vip": VIP, "port": port, "scheduler": "rr", "laddrs": ["198.18.2.100"],
        "client_address": mode, "real_servers": [{"addr": a, "port": 8080} for a in REALS]}
    return parse({"node": {"name": "bench"}, "services": [
        svc("tcp", 80, "none"), svc("tcp", 81, "proxy-v2"), svc("tcp", 82, "toa"),
        svc("udp", 80, "none"), svc("udp", 81, "proxy-v2")]}, "bench")


def _udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = ~((ones_sum(seg) + pseudo_header_sum(s, d, UDP, len(seg))) % 0xFFFF) & 0xFFFF
    seg = seg[:6] + struct.pack("!H", c or 0xFFFF) + seg[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, UDP, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + seg


def _tcp4(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int,
          payload: bytes = b"", opts: bytes = b"") -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    seg = struct.pack("!HHLLBBHHH", sport, dport, seq, ack, (20 + len(opts)) // 4 << 4, flags,
                      65535, 0, 0) + opts + payload
    c = ~((ones_sum(seg) + pseudo_header_sum(s, d, TCP, len(seg))) % 0xFFFF) & 0xFFFF
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, TCP, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + seg


def _service(port: int, n_flows: int, reps: int, rounds: int, proto: int = TCP) -> dict[str, float]:
    eng = Engine(_config())
    ins = []
    for i in range(n_flows):
        client = f"198.19.{i >> 8}.{i & 0xFF}"
        if proto == UDP:
            eng.handle(_udp4(client, VIP, 40000, port, PAYLOAD), 0.0)
            ins.append(_udp4(client, VIP, 40000, port, PAYLOAD))
            continue
        eng.handle(_tcp4(client, VIP, 40000, port, 0x02, 1000, 0), 0.0)
        ins.append(_tcp4(client, VIP, 40000, port, 0x18, 1001 + len(PAYLOAD), 1, PAYLOAD))
    if proto == UDP:
        outs = [_udp4(socket.inet_ntoa(c.daddr), socket.inet_ntoa(c.laddr), c.dport, c.lport, PAYLOAD)
                for c in eng.table]
    else:
        back = [(socket.inet_ntoa(c.daddr), socket.inet_ntoa(c.laddr), c.dport, c.lport,
                 socket.inet_ntoa(c.caddr)) for c in eng.table]
        for real, laddr, dport, lport, client in back:      # the SYN-ACK: server ISN 0
            eng.handle(_tcp4(real, laddr, dport, lport, 0x12, 0, 1001, opts=_MSS), 0.0)
            eng.handle(_tcp4(client, VIP, 40000, port, 0x18, 1001, 1, PAYLOAD), 0.0)
        outs = [_tcp4(real, laddr, dport, lport, 0x10, 1, 2000, opts=_SACK)
                for real, laddr, dport, lport, _ in back]

    def best(pkts: list[bytes]) -> float:
        batch, handle, times = pkts * reps, eng.handle, []
        for _ in range(rounds):
            t0 = time.process_time()
            for p in batch:
                handle(p, 1.0)
            times.append(time.process_time() - t0)
        return round(min(times) / len(batch) * 1e6, 3)

    if proto == UDP:
        res = {"dgram_in_us": best(ins), "reply_out_us": best(outs)}
    else:       # in this order: the server's first ACK ends the early segments
        res = {"early_data_in_us": best(ins)}
        toa_early = eng.stats["toa_inserted"]
        res["sack_ack_out_us"] = best(outs)
        res["data_in_us"] = best(ins)
        if port == PORTS["toa"] and (toa_early < n_flows * reps * rounds
                                     or eng.stats["toa_inserted"] != toa_early):
            raise RuntimeError(f"the TOA bench timed other segments than it says: {eng.stats}")
    if any(eng.drops.values()):
        raise RuntimeError(f"packets dropped in the PROXY bench: {eng.drops}")
    return res


def run(quick: bool = False) -> dict[str, Any]:
    n, reps, rounds = (300, 5, 3) if quick else (1000, 20, 7)
    return {"plain": _service(PORTS["none"], n, reps, rounds),
            "proxy_v2": _service(PORTS["proxy-v2"], n, reps, rounds),
            "toa": _service(PORTS["toa"], n, reps, rounds),
            "udp_plain": _service(PORTS["none"], n, reps, rounds, UDP),
            "udp_proxy_v2": _service(PORTS["proxy-v2"], n, reps, rounds, UDP),
            "flows": n, "packet": f"IPv4 TCP, {len(PAYLOAD)}-byte data in; ACK + 1 SACK block out",
            "udp_packet": f"IPv4 UDP, {len(PAYLOAD)}-byte datagram in (+28-byte header on proxy-v2); "
                          f"{len(PAYLOAD)}-byte reply out"}


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
