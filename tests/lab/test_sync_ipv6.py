"""A pair that syncs over IPv6 only (issue 15): `tandem lab up --sync-ipv6`, each node's sync
on ff02::81 of its back link, none on IPv4.  IPv4 and IPv6 connections held through the
VIPs travel in that one stream: B holds every connection A holds, of both families, with
the same addresses and state; with a fifth of the sync datagrams dropped, the gaps are
NACKed and repaired; a restarted B gets everything back by bulk resync."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import topology as T
from lab.nsutil import http_get
from lab.plan6 import VIP6
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab

pytestmark = pytest.mark.lab
PREFIX = "ts6"
#: held connections per family
N = 300


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with lab_session(PREFIX, node=True, ha=True, sync_ipv6=True) as info:
        yield info


def get(name: str, path: str) -> dict:
    d = next(x for x in T.DIRECTORS if x["name"] == name)
    code, body = http_get(T.ns_name(PREFIX, name), d["front_addr"], T.API_PORT, path, timeout=5.0)
    assert code == 200, (path, code)
    return json.loads(body)


def conns_of(name: str, created: dict | None = None) -> dict[tuple, tuple]:
    """(proto, client) -> (local, real, state) of the director's connections to port 80."""
    created = {} if created is None else created
    out, offset = {}, 0
    while True:
        page = get(name, f"/conns?limit=2000&offset={offset}")
        for c in page["conns"]:
            if c["vip"].endswith(":80"):
                out[(c["proto"], c["client"])] = (c["local"], c["real"], c["state"])
                created[(c["proto"], c["client"])] = c["created"]
        offset += page["limit"]
        if offset >= page["total"]:
            return out


def wait_same(want: int, limit: float) -> tuple[dict, dict, dict]:
    """Poll (bounded) until B holds every connection A holds (read between two reads of A,
    as tests/lab/test_sync.py does), and A holds at least `want`."""
    end = time.monotonic() + limit
    while True:
        born_b: dict = {}
        a1, b = conns_of("a"), conns_of("b", born_b)
        a2 = conns_of("a")
        missing = [k for k, v in a2.items() if b.get(k) not in (v, a1.get(k))
                   and not (v[2] == "CLOSE" and k not in b)]
        if len(a2) >= want and not missing:
            return a2, b, born_b
        if time.monotonic() > end:
            raise AssertionError(f"B lacks {len(missing)} of A's {len(a2)} connections, e.g. "
                                 f"{[(k, a2[k], b.get(k)) for k in missing[:3]]}")
        time.sleep(0.05)


class Held:
    """N connections through `host`, one line every 2 s each; ended by PID."""

    def __init__(self, host: str, seconds: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-sync6-"))
        self.ready = self.dir / "ready.json"
        argv = ["ip", "netns", "exec", T.ns_name(PREFIX, "client"), sys.executable, "-m",
                "lab.client", "hold", "--host", host, "--port", "80", "--conns", str(N),
                "--seconds", str(seconds), "--interval", "2.0", "--ready-file", str(self.ready),
                "--timeout", "30"]
        self.proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=client_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, limit: float = 60.0) -> None:
        end = time.monotonic() + limit
        while not self.ready.exists():
            assert self.proc.poll() is None and time.monotonic() < end, self.proc.communicate()
            time.sleep(0.01)

    def result(self) -> dict:
        out, _ = self.proc.communicate(timeout=120)
        return json.loads(out.splitlines()[-1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def both_families(seconds: float) -> list[Held]:
    held = [Held(T.VIP, seconds), Held(VIP6, seconds)]
    for h in held:
        h.wait_ready()
    return held


def families(conns: dict) -> set[int]:
    """The address families of the connections' clients (/conns writes addr:port, an IPv6
    address unbracketed)."""
    return {6 if c.count(":") > 1 else 4 for _, c in conns}


def test_the_pair_syncs_on_the_ipv6_group_only(pair):
    for name in T.DIRECTOR_NAMES:
        out = subprocess.run(["ip", "netns", "exec", T.ns_name(PREFIX, name), "ss", "-uanH"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        sync = [ln for ln in out.splitlines() if f":{T.SYNC_PORT} " in ln]
        assert sync and all("ff02::81" in ln for ln in sync), out
    b = get("b", "/sync")
    assert b["transport"]["rx"] > 0 and b["receiver"]["bad_mac"] == 0, b


def test_both_families_in_one_stream_even_with_a_fifth_of_it_lost(pair):
    T.sync_loss(PREFIX, 20)
    held = []
    try:
        before = get("b", "/sync")["receiver"]
        held = both_families(10.0)
        a, b, _ = wait_same(2 * N, 15.0)
        assert families(a) == families(b) == {4, 6}, sorted(a)[:3]
        after, sender = get("b", "/sync")["receiver"], get("a", "/sync")["sender"]
        assert after["gaps"] > before["gaps"] and after["nacks_sent"] > before["nacks_sent"], after
        assert sender["resends"] > 0 or after["resync_requests"] > before["resync_requests"], sender
        for h in held:
            r = h.result()
            assert r["ok"] == N, r
    finally:
        T.sync_loss(PREFIX, 0)
        for h in held:
            h.close()


def test_a_restarted_backup_gets_both_families_back_by_bulk_resync(pair):
    held = []
    try:
        held = both_families(20.0)
        wait_same(2 * N, 15.0)
        T.fault(PREFIX, "b", "stop")
        t0 = time.monotonic()
        T.fault(PREFIX, "b", "restore")
        a, b, born_b = wait_same(2 * N, 20.0)
        assert families(b) == {4, 6}
        assert min(born_b[k] for k in a if k in born_b) > t0, "an entry on B predates its restart"
        assert get("b", "/sync")["receiver"]["bulks_answered"] >= 1
        for h in held:
            r = h.result()
            assert r["ok"] == N, r
    finally:
        for h in held:
            h.close()
