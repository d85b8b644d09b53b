"""Cluster mode end to end (`tandem lab up --cluster 3`, lab/cluster.py): three directors
running `tandem node` in cluster mode behind a router with BIRD 2 and ECMP, each director's
BIRD told what to announce by its node (ha/bird_io.py), connection sync among the three
(unicast mesh), real servers behind the router.  One bring-up for the module (prefix
``tcl``), deleted by name whatever happens.

What is judged is content, never timing: every held connection's echoes come back, all of
them, in order (the hold client's `ok`: no reset, no mismatch, nothing left unanswered),
and new connections all succeed.  How long the takeover took is printed, not asserted."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import bgp, cluster
from lab.testing import client_env, run_in
from tests.lab.cluster_lab import cluster_lab, end_hold, start_hold as cluster_hold, wait_synced

pytestmark = pytest.mark.lab

PREFIX = "tcl"
REPO = Path(__file__).resolve().parents[2]
HELD = 60
#: the drain test's new connections come from these ports on: below the client's ephemeral
#: range (32768 and up), so no earlier connection in the lab used them
DRAIN_PORTS = 20000


@pytest.fixture(scope="module")
def lab():
    # the engine-mode VIP alone: what each check here names (test_cluster_sequence drills
    # the kernel-mode one too)
    yield from cluster_lab(PREFIX, kernel=False)


def addr(lab, name: str) -> str:
    return next(d["front_addr"] for d in lab["directors"] if d["name"] == name)


def laddr(lab, name: str) -> str:
    return next(d["laddrs"][0] for d in lab["directors"] if d["name"] == name)


def view(name: str) -> dict:
    return cluster.status(PREFIX, name)["cluster"]


def test_up_lists_the_directors_and_the_routers_routes(lab):
    assert [d["name"] for d in lab["directors"]] == ["a", "b", "c"]
    routes = lab["router"]["routes"]
    assert routes[f"{lab['vip']}/32"] == [addr(lab, n) for n in "abc"]
    for n in "abc":
        assert routes[f"{laddr(lab, n)}/32"] == [addr(lab, n)]
        v = view(n)
        assert v["announced"] == sorted([f"{lab['vip']}/32", f"{laddr(lab, n)}/32"])
        assert v["bird_has"] == v["announced"] and v["reason"] == "healthy"
        assert all(m["alive"] for m in v["members"].values())
    # the ipvsadm listing's cluster block, from a's own API inside its namespace
    cp = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-a", sys.executable, "-m",
                         "director.ipvsadm", "-L", "-n", "--api", f"http://{addr(lab, 'a')}:9100"],
                        cwd=str(REPO), env=client_env(), capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    table, _, block = cp.stdout.partition("\n\n")
    assert f"TCP  {lab['vip']}:80 maglev" in table
    lines = block.splitlines()
    assert lines[0] == "Cluster member a: active (healthy; 3 members, 3 alive)"
    assert lines[1] == f"  Announced: {lab['vip']}/32 {laddr(lab, 'a')}/32"
    rows = {ln.split()[0]: ln.split() for ln in lines[lines.index(
        "  Member           Said      Alive Heard    Flows      Laddrs (served by another)") + 1:]}
    assert {n: (r[1], r[2], r[-1]) for n, r in rows.items()} == {
        n: ("active", "yes", laddr(lab, n)) for n in "abc"}


def start_hold(lab, tmp: str, conns: int) -> tuple[subprocess.Popen, str]:
    return cluster_hold(PREFIX, lab["vip"], tmp, conns)


def the_adopter(lab, of: str, among: str) -> str:
    """The one director of `among` that announces `of`'s laddr (waited for)."""
    end = time.monotonic() + 10
    while True:
        adopters = [n for n in among if laddr(lab, of) in view(n)["adopted"]]
        if len(adopters) == 1:
            return adopters[0]
        assert time.monotonic() < end, {n: view(n) for n in among}
        time.sleep(0.05)


def test_kill_one_director_every_held_connection_survives(lab):
    """Connections spread over all three directors (each owns some, by its /status), held
    and echoing; b crashes (link down, node and BIRD SIGKILLed).  The router's BFD drops b's
    next hops; b's flows that land on a or c are forwarded with b's laddr from their synced
    entries, and one survivor (chosen by rendezvous hashing) announces b's laddr so the real
    servers' replies reach it.  Every held connection survives with all its echoes in order;
    new connections keep succeeding.  Then b is restored: it announces again and the
    adopter gives b's laddr back."""
    client = f"{PREFIX}-client"
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            owned = wait_synced(PREFIX, HELD)
            assert all(owned[n] > 0 for n in "abc"), owned    # each director owns some

            t0 = time.monotonic()
            cluster.fault(PREFIX, "b", "kill")
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a"), addr(lab, "c")], wait=20)
            withdrawn = time.monotonic() - t0
            adopter = the_adopter(lab, "b", "ac")
            bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, adopter)], wait=20)
            adopted = time.monotonic() - t0
            print(f"\n[cluster] b killed: VIP via a, c after {withdrawn:.2f} s; b's laddr via "
                  f"{adopter} after {adopted:.2f} s (owned before: {owned})")
            new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 60,
                         "--concurrency", 6)
            assert new["ok"] == 60, new
            # none depends on b: every laddr they came from is routed via a or c (b's own
            # only when the client reused the port of a connection b had opened, whose
            # synced entry a survivor holds: it forwards it as IPVS would, and b's laddr is
            # the adopter's now)
            for x in {a for p in new["peers"].values() for a in p}:
                assert bgp.nexthops(PREFIX, x) in ([addr(lab, "a")], [addr(lab, "c")]), (x, new)
            time.sleep(1.0)         # echoes after the new connections too
        finally:
            out = end_hold(held, stop)
    assert out["ok"] == HELD and out["echoes"] == out["sent"], out

    # restore: b comes back, announces, and the adopter gives its laddr back
    cluster.fault(PREFIX, "b", "restore")
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
    bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, "b")], wait=30)
    assert view(adopter)["adopted"] == []


def test_a_crashed_node_whose_bird_runs_on_is_withdrawn_by_the_service_managers_command(lab):
    """b's node alone crashes (SIGKILL) while its BIRD runs on (`lab fault b crash`).  Until
    the withdrawal a and c hear b no more, but the router still lists b as a next hop of
    the VIP (BIRD announces what the dead node left: the new flows hashed to b die there)
    and routes b's laddr to b alone: a and c see so in the router's view and adopt nothing
    (b might be cut from sync only).  `tandem cluster withdraw`, which the fault then runs
    in b's namespace as a service manager would after the node's exit, empties b's
    include: b's next hop goes, one survivor adopts b's laddr, every held connection
    keeps every echo in order and new connections all succeed.  Restore starts b's node
    again (its BIRD never stopped): b announces, and the adopter gives the laddr back."""
    client, vip = f"{PREFIX}-client", f"{lab['vip']}/32"
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            time.sleep(0.5)
            out = cluster.fault(PREFIX, "b", "crash", show_gap=True)
            assert out["killed_pid"] and out["withdraw"]["rc"] == 0, out
            assert out["withdraw"]["said"].startswith("withdrawn: "), out
            adopter = out["adopted_by"][laddr(lab, "b")]
            assert adopter in ("a", "c") and out["silent_to"] == ["a", "c"], out
            before = out["routes_before_withdraw"]
            assert addr(lab, "b") in before[vip], before                    # the gap, shown
            assert before[f"{laddr(lab, 'b')}/32"] == [addr(lab, "b")], before  # not adopted
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a"), addr(lab, "c")], wait=20)
            bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, adopter)], wait=20)
            assert "BIRD" in bgp.birdc(PREFIX, "b", "show", "status")     # it ran on throughout
            print(f"\n[cluster] b's node crashed, its BIRD on: before the withdrawal VIP via "
                  f"{before[vip]}, b's laddr via {before[laddr(lab, 'b') + '/32']}; after: "
                  f"VIP via a, c; laddr via {adopter}")
            new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 60,
                         "--concurrency", 6)
            assert new["ok"] == 60, new
            time.sleep(1.0)
        finally:
            res = end_hold(held, stop)
    assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    cluster.fault(PREFIX, "b", "restore")
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
    bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, "b")], wait=30)
    assert view(adopter)["adopted"] == []


def test_graceful_stop_of_one_director_keeps_every_held_connection(lab):
    """c stops (SIGTERM): it tells its peers it leaves, withdraws its routes, and keeps
    forwarding for a moment; a survivor adopts c's laddr at once (c said it leaves: no
    wait for it to fall silent).  Every held connection keeps every echo, in order.  Then
    c is started again and takes its laddr back."""
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            time.sleep(0.5)
            out = cluster.fault(PREFIX, "c", "stop")
            assert out["stopped"] == "terminated", out
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a"), addr(lab, "b")], wait=20)
            adopter = the_adopter(lab, "c", "ab")
            bgp.wait_nexthops(PREFIX, laddr(lab, "c"), [addr(lab, adopter)], wait=20)
            assert view(adopter)["members"]["c"]["leaving"] or not view(adopter)["members"]["c"]["alive"]
            time.sleep(1.0)
        finally:
            res = end_hold(held, stop)
    assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    cluster.fault(PREFIX, "c", "restore")
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
    bgp.wait_nexthops(PREFIX, laddr(lab, "c"), [addr(lab, "c")], wait=30)


def test_drain_of_one_director_keeps_every_held_connection(lab):
    """a drains (POST /cluster/drain through `lab fault a drain`): its VIP route goes at
    once, its laddr stays announced while it holds connections (drain_timeout 300 s), and
    no peer adopts it (they hear it say `draining`).  a's flows that the router now sends
    to b or c are forwarded with a's laddr; the real servers' replies still reach a.  Every
    held connection keeps every echo in order; new connections succeed, none through a's
    laddr.  Restore cancels the drain: a announces the VIP again."""
    client = f"{PREFIX}-client"
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            time.sleep(0.5)
            out = cluster.fault(PREFIX, "a", "drain")
            assert out["cluster"]["state"] == "draining", out
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "b"), addr(lab, "c")], wait=20)
            assert bgp.nexthops(PREFIX, laddr(lab, "a")) == [addr(lab, "a")]
            for n in "bc":
                v = view(n)
                assert v["members"]["a"]["said"] == "draining" and v["adopted"] == [], v
            # from ports no earlier connection used: a client port reused from a flow a
            # forwarded, whose synced entry a peer still holds, would be forwarded with a's
            # binding, as IPVS does, and say nothing about the drain
            new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 30,
                         "--concurrency", 6, "--source-ports", DRAIN_PORTS)
            assert new["ok"] == 30, new
            assert laddr(lab, "a") not in {x for p in new["peers"].values() for x in p}, new
            time.sleep(1.0)
        finally:
            res = end_hold(held, stop)
    assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    assert view("a")["state"] == "draining"
    cluster.fault(PREFIX, "a", "restore")
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
    assert view("a")["state"] == "active"


def test_a_director_cut_from_sync_but_still_routed_keeps_its_laddr(lab):
    """b loses its peers' sync (every sync datagram in and out dropped) while its link and
    BGP stay up: the split brain of docs/cluster.md section 6.  The router still routes b's
    laddr via b, and every director sees so in the routes it sends back (the router's
    view), so a and c adopt nothing and b, hearing nobody, keeps announcing: b's laddr stays
    routed via b alone, never via two.  Every held connection keeps every echo in order
    and new connections succeed.  Restore: b hears its peers again."""
    client = f"{PREFIX}-client"
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            time.sleep(0.5)
            cluster.fault(PREFIX, "b", "partition")
            end = time.monotonic() + 20
            while not all(not view(n)["members"]["b"]["alive"] for n in "ac"):
                assert time.monotonic() < end, {n: view(n) for n in "ac"}
                time.sleep(0.1)
            time.sleep(1.0)                     # steps enough for an adoption, were it made
            for n in "ac":
                v = view(n)
                assert "b" in v["routed"] and v["adopted"] == [], v
            b = view("b")
            assert b["state"] == "active" and f"{laddr(lab, 'b')}/32" in b["announced"], b
            assert sorted(b["routed"]) == ["a", "c"], b
            assert bgp.nexthops(PREFIX, laddr(lab, "b")) == [addr(lab, "b")]
            assert bgp.nexthops(PREFIX, lab["vip"]) == [addr(lab, n) for n in "abc"]
            new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 30,
                         "--concurrency", 6)
            assert new["ok"] == 30, new
            time.sleep(0.5)
        finally:
            res = end_hold(held, stop)
    assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    cluster.fault(PREFIX, "b", "restore")
    end = time.monotonic() + 20
    while not all(view(n)["members"]["b"]["alive"] for n in "ac"):
        assert time.monotonic() < end, {n: view(n) for n in "ac"}
        time.sleep(0.1)
    assert bgp.nexthops(PREFIX, laddr(lab, "b")) == [addr(lab, "b")]


def test_two_directors_killed_one_after_the_other_the_last_one_serves_everything(lab):
    """b crashes, then c: a hears only itself, a minority of three, but the router's view
    shows b and c routed no more, so a keeps announcing the VIP and adopts b's and c's
    laddrs.  Every held connection (spread over all three) keeps every echo in order, and
    new connections succeed, all through a.  Then both are restored."""
    client = f"{PREFIX}-client"
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(lab, tmp, HELD)
        try:
            end = time.monotonic() + 10
            while not all(view(n)["flows_owned"] > 0 for n in "abc"):
                assert time.monotonic() < end, {n: view(n)["flows_owned"] for n in "abc"}
                time.sleep(0.1)
            cluster.fault(PREFIX, "b", "kill")
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a"), addr(lab, "c")], wait=20)
            bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, the_adopter(lab, "b", "ac"))],
                              wait=20)
            time.sleep(0.5)
            t0 = time.monotonic()
            cluster.fault(PREFIX, "c", "kill")
            bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a")], wait=20)
            withdrawn = time.monotonic() - t0
            for n in "bc":
                bgp.wait_nexthops(PREFIX, laddr(lab, n), [addr(lab, "a")], wait=20)
            print(f"\n[cluster] c killed after b: VIP via a alone after {withdrawn:.2f} s, b's "
                  f"and c's laddrs via a after {time.monotonic() - t0:.2f} s")
            a = view("a")
            assert a["state"] == "active" and a["routed"] == [], a
            assert sorted(a["adopted"]) == sorted([laddr(lab, "b"), laddr(lab, "c")]), a
            assert f"{lab['vip']}/32" in a["announced"], a
            new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 30,
                         "--concurrency", 6)
            assert new["ok"] == 30, new
            # every one through a: from a's own laddr, or from one it adopted when the client
            # reused the port of a connection b or c had opened, whose synced entry a holds
            # (CI saw b's laddr so)
            held_by_a = {laddr(lab, "a"), *a["adopted"]}
            assert {x for p in new["peers"].values() for x in p} <= held_by_a, new
            time.sleep(1.0)
        finally:
            res = end_hold(held, stop)
            for n in "bc":           # whatever happened: the next test needs all three
                cluster.fault(PREFIX, n, "restore")
    assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
    for n in "bc":
        bgp.wait_nexthops(PREFIX, laddr(lab, n), [addr(lab, n)], wait=30)
    assert view("a")["adopted"] == []


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True, capture_output=True,
                   timeout=10)


def _restart_b() -> None:
    assert cluster.fault(PREFIX, "b", "stop")["stopped"] == "terminated"
    cluster.fault(PREFIX, "b", "restore")


def test_a_tracked_link_down_withdraws_the_director_and_held_connections_survive(lab):
    """b's node is restarted tracking a link of its namespace (`[interfaces]` front eth0,
    back trk0: one end of a veth pair, both ends in b's namespace).  trk0 down: b withdraws
    everything (its BGP session stays up: the router hears a withdrawal, not a BFD loss), says `fault`, and a peer adopts b's laddr;
    b's flows that now land on a or c are forwarded with b's laddr.  Every held connection
    keeps every echo in order, new connections succeed.  trk0 up: b announces again and the
    adopter gives the laddr back.  b then runs its lab config again."""
    from lab import state as st
    from lab.nodeconf import write_config
    client, ns = f"{PREFIX}-client", f"{PREFIX}-b"
    state = st.load_state(PREFIX)
    doc = cluster.node_config(PREFIX, state["cluster"], "b", state.get("extra_services"))
    _ip(ns, "link", "add", "trk0", "type", "veth", "peer", "name", "trk0p")
    try:
        _ip(ns, "link", "set", "trk0p", "up")
        _ip(ns, "link", "set", "trk0", "up")
        write_config(Path(state["configs"]["b"]), {**doc, "interfaces": {"front": "eth0",
                                                                         "back": "trk0"}})
        _restart_b()
        bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
        bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, "b")], wait=30)
        with tempfile.TemporaryDirectory() as tmp:
            held, stop = start_hold(lab, tmp, HELD)
            try:
                time.sleep(0.5)
                _ip(ns, "link", "set", "trk0", "down")
                t0 = time.monotonic()
                bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, "a"), addr(lab, "c")], wait=20)
                withdrawn = time.monotonic() - t0
                adopter = the_adopter(lab, "b", "ac")
                bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, adopter)], wait=20)
                print(f"\n[cluster] b's trk0 down: VIP via a, c after {withdrawn:.2f} s; b's "
                      f"laddr via {adopter} after {time.monotonic() - t0:.2f} s")
                b = view("b")
                assert (b["state"], b["links_down"], b["announced"]) == ("down", ["trk0"], []), b
                assert view(adopter)["members"]["b"]["said"] == "fault"
                new = run_in(client, "tcp-whoami", "--host", lab["vip"], "--port", 80,
                             "--count", 30, "--concurrency", 6)
                assert new["ok"] == 30, new
                _ip(ns, "link", "set", "trk0", "up")
                bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=20)
                bgp.wait_nexthops(PREFIX, laddr(lab, "b"), [addr(lab, "b")], wait=20)
                time.sleep(1.0)
                assert view(adopter)["adopted"] == [] and view("b")["state"] == "active"
            finally:
                res = end_hold(held, stop)
        assert res["ok"] == HELD and res["echoes"] == res["sent"], res
    finally:
        cluster.write_configs(PREFIX, state)
        _restart_b()
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "del", "trk0"],
                       capture_output=True, timeout=10)
    bgp.wait_nexthops(PREFIX, lab["vip"], [addr(lab, n) for n in "abc"], wait=30)
