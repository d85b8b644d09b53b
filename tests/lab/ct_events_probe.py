"""Run inside a namespace by tests/lab/test_ct_events.py; prints one JSON object.

Two event sockets listen while 60 short TCP connections (marked by an nftables rule) come
and go over loopback: one with a large buffer, read as the events come, and one with a tiny
buffer, read only afterwards, so the kernel must drop events for it (ENOBUFS).  Each feeds
a KernelFlows view; the starved one repairs with a dump.  Every loop is bounded."""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from director.ct_events import EventSocket, dump  # noqa: E402
from director.kernel_flows import KernelFlows, _flow  # noqa: E402

CONNS = 60


def drain(sock: EventSocket, view: KernelFlows) -> bool:
    """Read until quiet (0.3 s, 5 s at most); True if an overrun was seen."""
    overran, deadline, quiet_since = False, time.monotonic() + 5, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.3:
        msgs, lost = sock.read()
        for m in msgs:
            view.apply(m)
        if lost:
            overran = True
            view.overrun()
        if msgs or lost:
            quiet_since = time.monotonic()
        else:
            time.sleep(0.02)
    return overran


def main() -> None:
    healthy, starved = EventSocket(), EventSocket(rcvbuf=1024)
    good, bad = KernelFlows(), KernelFlows()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 8080))
    srv.listen(128)
    open_conns = []
    for i in range(CONNS):
        c = socket.create_connection(("127.0.0.1", 8080))
        a, _ = srv.accept()
        if i % 3 == 0:
            open_conns.append((c, a))       # stays ESTABLISHED: active
        else:
            c.close(); a.close()            # TIME_WAIT / closing: inactive
        msgs, lost = healthy.read()
        for m in msgs:
            good.apply(m)
        assert not lost, "the large buffer overran"
    good_overran = drain(healthy, good)
    bad_overran = drain(starved, bad)
    table = dump()
    expected = {c.orig: _flow(c) for c in table if _flow(c) is not None}
    stale = sum(1 for k, f in expected.items() if bad.flows.get(k) != f) + \
        sum(1 for k in bad.flows if k not in expected)
    repaired = bad.resync(table) if bad.needs_resync else 0
    bad_matches = bad.flows == expected
    # the starved socket still delivers events after its overrun
    c = socket.create_connection(("127.0.0.1", 8080))
    a, _ = srv.accept()
    new_before = bad.stats["new"]
    drain(starved, bad)
    after_overrun = bad.stats["new"] - new_before
    c.close(); a.close()
    print(json.dumps({
        "expected": len(expected), "active_expected": sum(f.active for f in expected.values()),
        "good_overran": good_overran, "good_matches": good.flows == expected,
        "good_counts": good.counts, "good_stats": good.stats,
        "bad_overran": bad_overran, "bad_stale_before": stale, "bad_repaired": repaired,
        "bad_matches": bad_matches, "bad_stats": bad.stats,
        "bad_new_after_overrun": after_overrun,
    }))
    for c, a in open_conns:
        c.close(); a.close()


if __name__ == "__main__":
    main()
