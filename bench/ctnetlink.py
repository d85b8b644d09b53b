"""Decode cost of one conntrack event: proto.ctnetlink against pyroute2's nfct parser.

    python -m bench.ctnetlink [--quick]      -> one JSON object

The event is the one the kernel sends for a FULLNAT flow turning ESTABLISHED (both tuples,
status, timeout, id, use, mark, TCP protoinfo), built with the codec itself; no root needed.
`ctnetlink_decode_us` is per event, best of 5 runs (`ctevent_decode_us`: the event socket's
narrower decoder, proto.ctevent); pyroute2's figure walks every attribute
(what reading the tuples costs), as the fast-path issue measured it.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import time
from typing import Any

from proto import ctnetlink as c
from proto.ctevent import decode_event


def sample_event() -> bytes:
    ip = lambda s: ipaddress.ip_address(s).packed  # noqa: E731
    orig = c.Tuple(6, ip("198.18.1.10"), ip("198.18.0.100"), 40000, 80)
    reply = c.Tuple(6, ip("198.18.2.21"), ip("198.18.2.100"), 8080, 5000)
    ct = c.Conntrack(orig=orig, reply=reply, status=0x1BE, timeout=900, mark=7, id=0x38109AB6,
                     use=1, tcp=c.TcpInfo(c.TCP_CT_ESTABLISHED, 7, 7, (0x23, 0), (0x23, 0)))
    return c.encode(c.Message(c.MSG_NEW, 0, 0, 2, ct))


def _per_call_us(fn, data: bytes, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def _pyroute2(data: bytes) -> None:
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    m = nfct_msg(data)
    m.decode()
    m.get_nested("CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_IP_V4_SRC")
    m.get_nested("CTA_TUPLE_REPLY", "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT")
    m.get_nested("CTA_PROTOINFO", "CTA_PROTOINFO_TCP", "CTA_PROTOINFO_TCP_STATE")


def run(quick: bool = False) -> dict[str, Any]:
    data = sample_event()
    n = 2000 if quick else 20000
    ours = _per_call_us(c.decode, data, n)
    event = _per_call_us(decode_event, data, n)
    theirs = _per_call_us(_pyroute2, data, max(200, n // 20))
    return {"ctnetlink_decode_us": round(ours, 2), "ctevent_decode_us": round(event, 2),
            "pyroute2_decode_us": round(theirs, 1),
            "ctnetlink_event_bytes": len(data), "ctnetlink_speedup": round(theirs / ours, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick)))


if __name__ == "__main__":
    main()
