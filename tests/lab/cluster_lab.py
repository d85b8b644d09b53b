"""The cluster lab as a test module's fixture (lab.cluster.up, then down whatever happened)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from lab import cluster, topology
from lab.testing import client_env, require_lab

REPO = Path(__file__).resolve().parents[2]


def cluster_lab(prefix: str, directors: int = 3, kernel: bool = True,
                ipv6: bool = False) -> Iterator[dict[str, Any]]:
    """A test module's cluster lab (lab.cluster.up), taken down after it; a lab down that
    reports errors fails the module (it left something behind).  BIRD 2 is required.
    `kernel`: with the kernel-mode service (KERNEL_VIP) beside the engine-mode VIP; `ipv6`:
    dual-stack, with the IPv6 VIP."""
    require_lab()
    if shutil.which("bird") is None:
        pytest.fail("bird2 is not installed: run make setup")
    try:
        yield cluster.up(prefix, directors, kernel=kernel, ipv6=ipv6)
    finally:
        result = topology.down(prefix)
        assert not result["errors"], result


def start_hold(prefix: str, host: str, tmp: str, conns: int) -> tuple[subprocess.Popen, str]:
    """`conns` held connections from the lab's client to `host`:80, echoing every 100 ms
    (stall judged only after 15 s: what is judged is that every echo comes back, in
    order); returns once all are connected."""
    ready, stop = os.path.join(tmp, "ready"), os.path.join(tmp, "stop")
    held = subprocess.Popen(
        ["ip", "netns", "exec", f"{prefix}-client", sys.executable, "-m", "lab.client", "hold",
         "--host", host, "--port", "80", "--conns", str(conns), "--seconds", "60",
         "--interval", "0.1", "--timeout", "15", "--ready-file", ready, "--stop-file", stop],
        cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE, text=True)
    end = time.monotonic() + 30
    while not os.path.exists(ready):
        assert time.monotonic() < end and held.poll() is None, "hold never connected"
        time.sleep(0.05)
    assert json.load(open(ready))["connected"] == conns
    return held, stop


def wait_synced(prefix: str, conns: int, names: str = "abc", limit: float = 10.0) -> dict[str, int]:
    """Poll (bounded) until the `conns` held connections are each owned by one director and
    synced to the others (the echo of each one's first line makes it synced); how many each
    director owns."""
    end = time.monotonic() + limit
    while True:
        views = {n: cluster.status(prefix, n)["cluster"] for n in names}
        owned = {n: v["flows_owned"] for n, v in views.items()}
        if sum(owned.values()) >= conns and all(
                v["flows_owned"] + v["flows_foreign"] >= conns for v in views.values()):
            return owned
        assert time.monotonic() < end, views
        time.sleep(0.1)


def end_hold(held: subprocess.Popen, stop: str) -> dict:
    """Stop the held connections; the hold client's result."""
    Path(stop).touch()
    return json.loads(held.communicate(timeout=60)[0].splitlines()[-1])
