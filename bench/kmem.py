"""tandem's own memory per kernel-forwarded connection, at 1M connections.

    python -m bench.kmem [--quick] [--flows N]      -> one JSON object

In kernel mode the node keeps two views of each flow: director.kernel_flows.KernelFlows
(mark, active/inactive, for the schedulers) and syncd.kernel_source.KernelSyncSource (what
sync sends and refreshes), both in one shared proto.flow_table.FlowTable, as
tandem.kernel_sync wires them.  Both are fed here as the node feeds them (KernelFlows.apply,
its watcher calling the source's apply), from real ctnetlink event datagrams decoded by
proto.ctnetlink: per flow a NEW event (the tracker's SYN_SENT, reply tuple already
translated, tandem's mark) and an update into ESTABLISHED (SEEN_REPLY, ASSURED), as a
master sees a connection open.  The source is active (a master), so each flow also holds
its refresh slot.  Flows differ in client address and port and in the SNAT port.

The events are applied with the time they are read, as the node does (the view arms each
flow's deadline, director.kernel_expiry), the wheel is looked at every TICK_FLOWS flows as
the node's tick does, and it is then advanced past the SYN timeout before measuring: the
steady state of established flows.

Measured: the RSS delta (/proc/self/statm, after gc.collect) over the fill, per flow; and,
on a smaller fill with tracemalloc, the memory still held at the end by the file that
allocated it.  The kernel's own conntrack entry comes on top: its slab object size
(/proc/slabinfo, `nf_conntrack`, root only) is reported beside it.
"""
from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import time
import tracemalloc
from typing import Any

from director.kernel_flows import KernelFlows
from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
from proto import ctnetlink as ct
from syncd.kernel_source import KernelSyncSource
from syncd.policy import SyncPolicy

FLOWS = 1_000_000
QUICK_FLOWS = 100_000
TRACE_FLOWS = 50_000
#: flows between two looks at the deadline wheel: the node's once-a-second tick at 10,000
#: new connections a second
TICK_FLOWS = 10_000
#: markers in the template event, replaced per flow
_SRC = bytes((198, 19, 77, 77))
_SPORT, _LPORT = 0xABCD, 0xBCDE
_IP = lambda s: ipaddress.ip_address(s).packed  # noqa: E731


def _template(state: int, status: int, create: bool) -> bytes:
    orig = ct.Tuple(6, _SRC, _IP("198.18.0.101"), _SPORT, 80)
    reply = ct.Tuple(6, _IP("198.18.2.21"), _IP("198.18.2.102"), 8080, _LPORT)
    c = ct.Conntrack(orig=orig, reply=reply, status=status, timeout=120, mark=MARK_BASE | 1,
                     id=0x38109AB6, use=1, tcp=ct.TcpInfo(state, 7, 7, (0x23, 0), (0x23, 0)))
    flags = ct.NLM_F_CREATE | ct.NLM_F_EXCL if create else 0
    return ct.encode(ct.Message(ct.MSG_NEW, flags, 0, 2, c))


def _offsets(buf: bytes) -> tuple[int, int, int]:
    def one(pat: bytes) -> int:
        i = buf.find(pat)
        if i < 0 or buf.find(pat, i + 1) >= 0:
            raise RuntimeError(f"marker {pat.hex()} not unique in the template")
        return i
    return one(_SRC), one(_SPORT.to_bytes(2, "big")), one(_LPORT.to_bytes(2, "big"))


class Events:
    """The two event datagrams of flow i (client 198.19.x.y:port, SNAT port)."""

    def __init__(self) -> None:
        S = ct.IPS_CONFIRMED | ct.IPS_SRC_NAT | ct.IPS_DST_NAT | ct.IPS_SRC_NAT_DONE | ct.IPS_DST_NAT_DONE
        self.templates = [_template(ct.TCP_CT_SYN_SENT, S, True),
                          _template(ct.TCP_CT_ESTABLISHED, S | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED, False)]
        self.offsets = [_offsets(t) for t in self.templates]

    def of(self, i: int) -> list[bytes]:
        src = bytes((198, 19, (i >> 14) & 0xFF, (i >> 6) & 0xFF))
        sport = (1024 + (i & 63) * 1000 + (i >> 22)).to_bytes(2, "big")
        lport = (1024 + i % 60000).to_bytes(2, "big")
        out = []
        for t, (o_src, o_sport, o_lport) in zip(self.templates, self.offsets):
            b = bytearray(t)
            b[o_src:o_src + 4] = src
            b[o_sport:o_sport + 2] = sport
            b[o_lport:o_lport + 2] = lport
            out.append(bytes(b))
        return out


def views(now: float) -> tuple[KernelFlows, KernelSyncSource]:
    """The node's two views, wired as tandem.kernel_sync wires them (an active source, the
    view's table shared)."""
    flows = KernelFlows()
    timeouts = {0: 120.0}
    src = KernelSyncSource(SyncPolicy(), lambda proto, state: 900.0 if state == 1 else timeouts[0],
                           lambda mark: mark & MARK_PREFIX_MASK == MARK_BASE, active=True,
                           table=flows.table)
    flows.watch(lambda msg, f: src.apply(msg, now))
    return flows, src


def fill(flows: KernelFlows, n: int, events: Events, start: int = 0, now: float = 1000.0) -> float:
    """Feed n flows' events, each with the time it is read, as the node does (it arms the
    flow's deadline from the time its entry has left), and look at the deadline wheel
    every TICK_FLOWS flows, as the node's tick does once a second; seconds taken."""
    decode, apply, due = ct.decode, flows.apply, flows.due
    t0 = time.perf_counter()
    for i in range(start, start + n):
        for datagram in events.of(i):
            for msg in decode(datagram):
                apply(msg, now)
        if i % TICK_FLOWS == 0:
            due(now)
    return time.perf_counter() - t0


def settle(flows: KernelFlows, now: float = 1000.0) -> int:
    """What the node's tick does once the flows' SYN timeout has passed: the deadline
    wheel drops the filings their NEW events left (they are ESTABLISHED now, and keep no
    deadline: director.kernel_flows._lasting).  The filings it held, for the report."""
    held = flows.deadlines.filed()
    assert flows.due(now + 3600.0) == [], "an ESTABLISHED flow is never due"
    return held


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def conntrack_slab() -> dict[str, Any] | None:
    """The kernel's nf_conntrack slab: object size and objects in use (root only)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                v = line.split()
                if v and v[0] == "nf_conntrack":
                    return {"objsize": int(v[3]), "active_objs": int(v[1]), "objperslab": int(v[4])}
    except OSError:
        return None
    return None


def measure_rss(n: int) -> dict[str, Any]:
    events = Events()
    flows, src = views(1000.0)
    fill(flows, 1000, events, start=n)           # warm the structures and the codec
    gc.collect()
    r0 = rss()
    secs = fill(flows, n, events)
    filings = settle(flows)
    gc.collect()
    r1 = rss()
    assert len(flows.flows) == n + 1000 and len(src.flows) == n + 1000, "every flow kept"
    return {"flows": n, "bytes_per_conn": round((r1 - r0) / n), "fill_s": round(secs, 1),
            "events_per_s": round(2 * n / secs), "kernel_flows_len": len(flows.flows),
            "source_flows_len": len(src.flows), "refresh_slots": sum(len(q) for q in src._due.values()),
            "deadline_filings_settled": filings}


def measure_traced(n: int) -> dict[str, Any]:
    """Memory still held after n flows, by the file that allocated it (tracemalloc)."""
    events = Events()
    flows, src = views(1000.0)
    fill(flows, 1000, events, start=n)
    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    fill(flows, n, events)
    settle(flows)
    gc.collect()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_file: dict[str, int] = {}
    for stat in snap.compare_to(base, "filename"):
        name = stat.traceback[0].filename
        # namedtuple's generated __new__ runs in "<string>": the decoded Tuple objects
        short = "namedtuple __new__ (ctnetlink tuples)" if name == "<string>" else "/".join(name.split("/")[-2:])
        by_file[short] = by_file.get(short, 0) + stat.size_diff
    top = sorted(((k, round(v / n, 1)) for k, v in by_file.items() if v / n >= 1), key=lambda kv: -kv[1])
    return {"flows": n, "bytes_per_conn": round(sum(by_file.values()) / n),
            "by_file": dict(top)}


def run(quick: bool = False, n: int | None = None) -> dict[str, Any]:
    n = n or (QUICK_FLOWS if quick else FLOWS)
    out: dict[str, Any] = {"method": "RSS delta over feeding n flows (2 decoded ctnetlink events each) "
                                     "to KernelFlows and an active KernelSyncSource"}
    out["rss"] = measure_rss(n)
    gc.collect()
    out["traced"] = measure_traced(min(n, TRACE_FLOWS))
    out["kernel_bytes_per_conn"] = out["rss"]["bytes_per_conn"]
    slab = conntrack_slab()
    out["conntrack_slab"] = slab
    out["conntrack_objsize"] = slab["objsize"] if slab else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--flows", type=int)
    a = ap.parse_args()
    print(json.dumps(run(a.quick, a.flows)))


if __name__ == "__main__":
    main()
