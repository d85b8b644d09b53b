"""Schedulers and persistence with real connections through the lab, in both forwarding
modes: "engine" (VIP, every packet through the engine) and "kernel" (KERNEL_VIP: the
engine schedules each new flow, the kernel forwards, the counts come from conntrack)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import topology as T
from lab.nsutil import http_get
from lab.plan import KERNEL_LADDRS, KERNEL_VIP
from lab.testing import client_env, lab_session, require_lab, run_in

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab


def service(proto, port, scheduler, weights, mode="engine", **extra):
    kernel = mode == "kernel"
    return {"proto": proto, "vip": KERNEL_VIP if kernel else T.VIP, "port": port,
            "scheduler": scheduler, "laddrs": list(KERNEL_LADDRS if kernel else T.LADDRS),
            "real_servers": [{"addr": r["addr"], "port": T.RS_PORT, "weight": w}
                             for r, w in zip(T.REAL_SERVERS, weights)],
            **({"forwarding": "kernel"} if kernel else {}), **extra}


@pytest.fixture(scope="module", params=["engine", "kernel"])
def lab(request):
    require_lab()
    mode = request.param
    services = [service("tcp", 80, "wrr", (3, 1, 1), mode), service("udp", 80, "wrr", (3, 1, 1), mode),
                service("tcp", 81, "rr", (1, 1, 1), mode, persistent=300),
                service("tcp", 83, "wlc", (1, 1, 1), mode)]
    prefix = "tsck" if mode == "kernel" else "tsch"
    with lab_session(prefix, node=True, config_extra={"services": services}) as info:
        info = dict(info, mode=mode)
        if mode == "kernel":
            info["vip"] = KERNEL_VIP
        yield info


def test_wrr_3_1_1_splits_5000_connections_60_20_20(lab):
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", 80,
               "--count", 5000, "--concurrency", 50, timeout=300)
    assert r["ok"] == 5000, r
    shares = {rs: n / 5000 for rs, n in r["by_server"].items()}
    for rs, want in (("rs1", 0.6), ("rs2", 0.2), ("rs3", 0.2)):
        assert abs(shares.get(rs, 0) - want) <= 0.03, shares


def test_persistent_service_sends_every_connection_of_a_client_to_one_server(lab):
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", 81,
               "--count", 200, "--concurrency", 10, timeout=120)
    assert r["ok"] == 200, r
    assert len(r["by_server"]) == 1, r["by_server"]


def test_held_connections_are_counted_active_on_their_real_servers(lab, tmp_path):
    """30 connections held to a wlc service: once established, the real servers' active
    counts add up to 30 (in kernel mode from conntrack events).  In kernel mode this failed
    before: every count stayed 0 once an event overrun (from the 5000-connection test) had
    cost the node its reader (uvloop stops polling a socket that reports POLLERR).  How
    wlc spreads the burst is not judged: as in IPVS, one established connection (overhead
    256) outweighs many half-open ones, so [1, 15, 14] is a correct outcome."""
    ready = tmp_path / "ready"
    held = subprocess.Popen(["ip", "netns", "exec", lab["client"]["ns"], sys.executable, "-m",
                             "lab.client", "hold", "--host", lab["vip"], "--port", "83",
                             "--conns", "30", "--seconds", "4", "--interval", "0.2",
                             "--ready-file", str(ready)],
                            cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE, text=True)
    try:
        a = lab["directors"][0]
        host, port = a["api"].removeprefix("http://").split(":")

        def actives():
            code, body = http_get(a["ns"], host, int(port), "/services", timeout=3.0)
            svc = next(s for s in json.loads(body)["services"] if s["port"] == 83)
            return [r["active"] for r in svc["real_servers"]]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (ready.exists() and sum(actives()) == 30):
            time.sleep(0.1)
        got = actives()
        out_text = held.communicate(timeout=60)[0]
        from lab import state as st
        logs = [p["log"] for p in st.load_state(lab["prefix"])["processes"] if p["name"] == "node-a"]
        tail = [ln for ln in (Path(logs[-1]).read_text().splitlines() if logs else [])
                if "kernel" in ln or "Traceback" in ln or "rror" in ln or "xception" in ln][-8:]
        code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
        k = json.loads(body).get("kernel") or {}
        assert sum(got) == 30, (got, {x: k.get(x) for x in ("overruns", "resyncs", "dump_failures", "event_batches", "read_errors", "watcher_errors")}, tail)
        out = json.loads(out_text.splitlines()[-1])
        assert (out["ok"], out["reset"]) == (30, 0), out
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
