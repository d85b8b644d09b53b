"""Failover in the pair lab: election, takeover, and connections that survive it.

What these tests judge is what a client and the protocol can tell apart whatever the
machine's load: no connection lost, reset or stalled, every echo back in order and
intact (the hold client's `ok`), never two masters, the right node became master, once,
after the fault, for the reason RFC 5798 gives for that fault.  How long the takeover
took is measured by `make bench` (bench/takeover.py: takeover and VRRP times at 10 ms
and at the default 100 ms adverts, docs/benchmarks.md), never asserted here: a timing
bound here failed under a CPU hog with nothing wrong.

The pair serves both data-plane modes (issue 13): VIP:80 through the engine and
KERNEL_VIP:80 with `forwarding = "kernel"` (the first packet through the engine, the rest
by the kernel's conntrack NAT, the backup's conntrack filled by sync as entries arrive).
Each failover test runs for both (`forwarding`), judged alike.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lab import drill, topology
from lab.drill_pairs import LabPair
from lab.nsutil import http_get
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab
from lab.topology import sync_loss

pytestmark = pytest.mark.lab

ADVERT = 0.1

#: how the new master's VRRP machine explains its change to master, per fault (ha/vrrp.py):
#: a dead or cut-off master is noticed by the Master_Down timer, a stopped one by its
#: priority-0 advert, and the restored higher-priority node preempts the live backup
TAKEOVER_REASON = {
    "kill": "master down timer expired",
    "link": "master down timer expired",
    "stop": "priority 0 from",
    "restore": "preempting lower priority",
}


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with lab_session("tfo", node=True, ha=True, advert_interval=ADVERT, kernel=True) as info:
        yield info


FORWARDING = pytest.mark.parametrize("forwarding", ["engine", "kernel"])


def check(r: dict, conns: int) -> None:
    """Every connection kept going across the fault (echoes in order, content intact,
    none reset or stalled), the drill measured their gaps, and never two masters."""
    assert (r["survived"], r["reset"], r["stalled"]) == (conns, 0, 0), r
    assert r["gap_ms"]["max"] is not None, r
    assert r["dual_master_ms"] == 0.0, r


def took_over(prefix: str, r: dict, fault: str, want: str) -> dict:
    """`want` is master now, and its own role log says it became master exactly once
    since the fault, after it, for the reason the protocol gives for this fault."""
    assert r["new_master"] == want, r
    st = topology.node_status(prefix, want, timeout=5.0)
    since = [c for c in st["role_changes"] if c["at"] >= r["fault_at"] - 0.001]
    to_master = [c for c in since if c["to"] == "master"]
    assert len(to_master) == 1, since
    assert to_master[0]["reason"].startswith(TAKEOVER_REASON[fault]), to_master
    assert r["vrrp_takeover_ms"] is not None and r["vrrp_takeover_ms"] >= 0, r
    return to_master[0]


@FORWARDING
@pytest.mark.parametrize("fault", ["kill", "link", "stop"])
def test_fault_then_failback_keeps_all_500_connections(pair, fault, forwarding):
    lp = LabPair("tfo", forwarding=forwarding)
    r = drill.run("tfo", fault, conns=500, interval=0.1, duration=4.0, lead=1.0, pair=lp)
    check(r, 500)
    assert (r["old_master"], r["new_master"]) == ("a", "b")
    took_over("tfo", r, fault, "b")
    if fault != "stop":
        # a silent master: every connection was cut (the Master_Down interval, 3 x 100 ms
        # + skew, outlasts the 250 ms a 100 ms echo rhythm counts as a cut) and came back
        assert r["interrupted"] == 500 and r["takeover_ms"] is not None, r
    back = drill.run("tfo", "restore", conns=500, interval=0.1, duration=5.0, lead=1.0, target="a",
                     pair=lp)
    check(back, 500)
    took_over("tfo", back, "restore", "a")    # A preempts again


#: how old the connections are at the kill: in kernel mode 50 ms (their entries come from
#: the conntrack events: a new flow's and its ESTABLISHED, each sent at once)
YOUNG_LEAD = {"engine": 0.5, "kernel": 0.05}


@FORWARDING
def test_young_connections_survive_a_kill(pair, forwarding):
    lp = LabPair("tfo", forwarding=forwarding)
    r = drill.run("tfo", "kill", conns=200, interval=0.02, duration=3.0, lead=YOUNG_LEAD[forwarding],
                  pair=lp)
    check(r, 200)
    took_over("tfo", r, "kill", "b")
    drill.run("tfo", "restore", conns=10, duration=3.0, lead=0.5, target="a", pair=lp)


SIX_FAULTS = ("kill", "restore", "stop", "restore", "link", "restore")


@FORWARDING
def test_six_faults_in_a_row_lose_no_new_connection(pair, forwarding):
    """Short connections opened at 20 a second across six faults in a row (kill, restore,
    stop, restore, link, restore of director a), beside 100 held connections per fault.

    A connection whose handshake completed on the old master must not be lost: its entry
    is sent to the peer when its SYN is scheduled and again the moment it enters
    ESTABLISHED (the kernel's ip_vs_sync_conn_needed waits for the third packet), so even
    a client ACK still queued on a killed master finds the entry; and a planned release (stop, being preempted) sends what is
    pending before the addresses go.  A SYN that meets the outage is retransmitted by the
    client's TCP and scheduled by the new master, so with a timeout longer than TCP's SYN
    backoff every one of the ~600 exchanges must complete.  In kernel mode the entries come
    from the conntrack events (a new flow's, then its ESTABLISHED, each sent at once)."""
    lp = LabPair("tfo", forwarding=forwarding)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-six-"))
    stop = tmp / "stop"
    argv = ["ip", "netns", "exec", topology.ns_name("tfo", "client"), sys.executable, "-m",
            "lab.client", "tcp-whoami", "--host", lp.vip, "--port", "80", "--count", "3000",
            "--rate", "20", "--stop-file", str(stop), "--timeout", "20", "--deadline", "170"]
    short = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=client_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for fault in SIX_FAULTS:
            r = drill.run("tfo", fault, conns=100, interval=0.1, duration=4.0, lead=1.0, target="a",
                          pair=lp)
            check(r, 100)
            took_over("tfo", r, fault, "a" if fault == "restore" else "b")
        stop.touch()
        res = drill._result(short, 60)
    finally:
        if short.poll() is None:
            short.kill()
            short.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
    assert res["count"] >= 400 and res["ok"] == res["count"] and res["failed"] == 0, \
        {k: res.get(k) for k in ("count", "ok", "failed", "errors", "seconds")}


def sync_receiver(prefix: str, name: str) -> dict:
    d = next(x for x in topology.DIRECTORS if x["name"] == name)
    code, body = http_get(topology.ns_name(prefix, name), d["front_addr"], topology.API_PORT,
                          "/sync", timeout=5.0)
    assert code == 200, body
    return json.loads(body)["receiver"]


def test_fast_adverts_take_over_with_sync_loss_and_lose_no_connection():
    """10 ms adverts and 20 % of sync datagrams dropped: the backup notices the dead master
    by its Master_Down timer at the 10 ms interval (3 x 10 ms + skew), and every
    connection survives, its entry repaired by NACK or bulk where the datagram was lost.
    Then the same again through the kernel-mode service, in the same lab once a has taken
    the addresses back: b's conntrack must hold every flow, injected from entries that
    the loss made it ask for again.
    (Takeover at 10 ms adverts, p50 and max: `make bench`, `takeover_ms_*_10ms`.)"""
    require_lab()
    with lab_session("tf10", node=True, ha=True, advert_interval=0.01, kernel=True):
        sync_loss("tf10", 20)
        start = sync_receiver("tf10", "b")
        for forwarding in ("engine", "kernel"):
            r = drill.run("tf10", "kill", conns=200, interval=0.02, duration=3.0, lead=1.5,
                          pair=LabPair("tf10", forwarding=forwarding))
            check(r, 200)
            change = took_over("tf10", r, "kill", "b")
            assert "3 x 10 ms" in change["reason"], change
            if forwarding == "engine":          # a back, as master, b its backup again
                topology.fault("tf10", "a", "restore")
                topology.wait_role("tf10", "a", "master", 20)
                topology.wait_role("tf10", "b", "backup", 20)
        # the loss was real: b found sequence gaps (or a lost last message) and repaired
        # them.  Judged over both drills, not each: one drill's few dozen datagrams can,
        # by chance, lose none whose loss shows as a gap (CI saw 3 gaps before and after)
        end = sync_receiver("tf10", "b")
        assert end["gaps"] + end["tail_gaps"] > start["gaps"] + start["tail_gaps"], (start, end)
