"""Connection sync under a steady stream of new connections: entries/s applied on
the backup and the sync lag it reports.

The pair lab (A master, B backup), a tiny C line server on each real server's
port 8081, and the C generator opening RATE short connections/s through the VIP
(connect, WHOAMI, reply, close, client first).  With the default [sync] settings
each such connection is sent 5 times: when its SYN is scheduled (`on_syn`, urgent),
when it enters ESTABLISHED (`on_established`, urgent), on its 3rd inbound packet
(the kernel's threshold), and at its two closing state changes (CLOSE_WAIT on the
client's FIN, TIME_WAIT on the server's); the kernel's rule alone sends the last 3.
`entries_per_conn` is the measured ratio.  Last, B is stopped and restarted with A's
table full: `resync_s` is how long until it holds as many connections as A again
(the restarted-backup test in tests/lab/test_sync.py judges only that it does).  B's
`/sync` is read before and after a steady window: `sync_entries_per_s` is its
receiver's entries_applied advance over the window, `sync_lag_p99_ms` the p99 of
its lag samples (apply time - the message's send time, wall clock, same box), one
per DATA message, over the receiver's last `lag_samples` messages.  A message is
sealed up to `flush_delay` (20 ms) after its first entry, before its send time is
stamped: an entry's own delay is at most lag + flush_delay (reported too).
A's node is pinned to CPU 1; B, the load and the servers share CPU 0.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from bench import cgen, common
from bench.conn_rate import PORT, _services

PREFIX = "tbsync"


#: how long the restarted backup may take to hold A's table before the figure is "none"
RESYNC_WAIT = 30.0


def _resync(prefix: str, topology) -> dict[str, Any]:
    """B stopped and restarted with A's table full (the load's connections, most in
    TIME_WAIT): seconds from the restart until B holds as many connections as A, as a
    restarted backup gets them, by the bulk it asks for."""
    topology.fault(prefix, "b", "stop")
    t0 = time.monotonic()
    topology.fault(prefix, "b", "restore")
    a = b = None
    while time.monotonic() - t0 < RESYNC_WAIT:
        try:
            b = common.status(prefix, "b", timeout=2.0)["conns"]["total"]
            a = common.status(prefix, "a", timeout=2.0)["conns"]["total"]
        except Exception:  # noqa: BLE001 - B still starting
            b = None
        if b is not None and a is not None and b >= a:
            return {"resync_s": round(time.monotonic() - t0, 2), "resync_conns": b}
        time.sleep(0.05)
    return {"resync_s": None, "resync_conns": b, "resync_conns_a": a}


def run(quick: bool = False) -> dict[str, Any]:
    from lab import topology
    t0 = time.monotonic()
    rate = 1000 if quick else 2000
    seconds = 4.0 if quick else 8.0
    warm = 1.0
    out: dict[str, Any] = {"rate_cps": rate, "load_seconds": seconds}
    if cgen.binary() is None:
        return {**out, "error": "no C compiler: generator unavailable", "seconds": 0}
    servers = []
    with common.lab(PREFIX, node=True, ha=True, config_extra={"services": _services()}):
        from lab import state as st
        recs = {p["name"]: p for p in st.load_state(PREFIX)["processes"]}
        cgen.pin(recs["node-a"]["pid"], cgen.DIRECTOR_CPU)
        cgen.pin(recs["node-b"]["pid"], cgen.LOAD_CPU)
        common.pin_echo_servers(PREFIX, cgen.LOAD_CPU)
        try:
            for r in topology.REAL_SERVERS:
                servers.append(cgen.start(common.ns(PREFIX, r["name"]),
                                          [str(cgen.binary()), "serve", "--port", str(PORT),
                                           "--name", r["name"], "--seconds", "300"],
                                          cpu=cgen.LOAD_CPU))
            box: dict[str, Any] = {}

            def load() -> None:
                try:
                    box["gen"] = cgen.run_gen(common.ns(PREFIX, "client"), "tcp", dst=topology.VIP,
                                              port=80, seconds=seconds, conns=64, rate=rate, timeout=2)
                except Exception as exc:  # noqa: BLE001 - reported
                    box["error"] = repr(exc)

            th = threading.Thread(target=load, daemon=True)
            th.start()
            time.sleep(warm)
            b1, a1, c1 = common.api_get(PREFIX, "b", "/sync"), common.api_get(PREFIX, "a", "/sync"), time.monotonic()
            time.sleep(max(0.5, seconds - warm - 0.5))
            b2, a2, c2 = common.api_get(PREFIX, "b", "/sync"), common.api_get(PREFIX, "a", "/sync"), time.monotonic()
            th.join(seconds + 20)
            a_status = common.status(PREFIX, "a", timeout=2.0)
            b_status = common.status(PREFIX, "b", timeout=2.0)
            resync = _resync(PREFIX, topology)
        finally:
            for p in servers:
                cgen.stop(p)
    dt = c2 - c1
    rb1, rb2 = b1["receiver"], b2["receiver"]
    sa1, sa2 = a1["sender"], a2["sender"]
    lag = b2["lag_ms"]
    data_msgs = rb2["data"] - rb1["data"]
    flush_ms = 20.0
    out.update({
        "sync_entries_per_s": round((rb2["entries_applied"] - rb1["entries_applied"]) / dt),
        "sync_lag_p50_ms": round(lag["p50"], 2) if lag["p50"] is not None else None,
        "sync_lag_p99_ms": round(lag["p99"], 2) if lag["p99"] is not None else None,
        "sync_lag_max_ms": round(lag["max"], 2) if lag["max"] is not None else None,
        "sync_entry_delay_p99_ms_bound": round(lag["p99"] + flush_ms, 2) if lag["p99"] is not None else None,
        "lag_samples": lag["samples"],
        "data_messages_in_window": data_msgs,
        "entries_per_conn": round(((rb2["entries_applied"] - rb1["entries_applied"]) / dt)
                                  / box["gen"]["cps"], 2) if (box.get("gen") or {}).get("cps") else None,
        "entries_per_message": round((rb2["entries_applied"] - rb1["entries_applied"]) / data_msgs, 1)
                               if data_msgs else None,
        "window_s": round(dt, 2),
        "sender_a": {k: sa2.get(k, 0) - sa1.get(k, 0) for k in sa2 if isinstance(sa2.get(k), int)},
        "receiver_b": {k: rb2.get(k, 0) - rb1.get(k, 0) for k in rb2 if isinstance(rb2.get(k), int)},
        "missing_on_b": b2.get("missing"),
        "conns_a": a_status.get("conns"), "conns_b": b_status.get("conns"),
        **resync,
        "load": box.get("gen"), "load_error": box.get("error"),
        "seconds": round(time.monotonic() - t0, 1),
    })
    out["sender_a"] = {k: v for k, v in out["sender_a"].items() if v}
    out["receiver_b"] = {k: v for k, v in out["receiver_b"].items() if v}
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
