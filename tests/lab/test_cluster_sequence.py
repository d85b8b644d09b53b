"""Issue 16's "Done when", in one run (`tandem drill --sequence`, lab/drill_sequence.py):
three directors behind the ECMP router, held connections spread over all three and
echoing, then one at a time: kill b, restore b, drain a, join d (`tandem lab join`: a
fourth director, learnt by the others through a reload of their membership).  Its own
bring-up (prefix ``tcs``: the join changes the lab, so it does not share test_cluster's),
deleted by name whatever happens.

What is judged is content: every held connection survives every step with every echo in
order (none reset, none an echo 2 s late: the hold's stall bound), every new connection
opened during each step succeeds, each director owned connections before the first step,
the router showed each step in the VIP's route, and the fourth director ends a member on
every director.  Run once per forwarding mode: through the engine-mode VIP and through the
kernel-mode one.  The per-step figures (route, first echo, longest gap) are printed, never
asserted.  300 held connections rather than the CLI's 600, and 4 s per step rather than
6: the suite runs on a busy 2-core machine within its time budget; 300 still gives each
director about a hundred."""
from __future__ import annotations


import pytest

from lab import cluster, drill_sequence
from tests.lab.cluster_lab import cluster_lab

pytestmark = pytest.mark.lab

PREFIX = "tcs"
HELD = 300


@pytest.fixture(scope="module", params=["engine", "kernel"])
def lab(request):
    """A lab per forwarding mode (a join changes it): the sequence through the engine-mode
    VIP, then through the kernel-mode one (the kernel's conntrack NAT forwards every
    packet after the first, and each director holds its peers' flows as injected
    conntrack entries)."""
    for info in cluster_lab(PREFIX):
        yield {**info, "forwarding": request.param}


def test_kill_restore_drain_join_in_one_run_every_held_connection_survives(lab):
    steps = drill_sequence.parse_steps(drill_sequence.ISSUE_SEQUENCE)
    r = drill_sequence.run(PREFIX, steps, conns=HELD, step_seconds=4.0, lead=1.0,
                           say=lambda text: print(f"[sequence] {text}"),
                           forwarding=lab["forwarding"])
    assert r["forwarding"] == lab["forwarding"]
    assert r["vip"] == (lab["kernel_vip"] if lab["forwarding"] == "kernel" else lab["vip"])
    print("\n" + drill_sequence.table(r))
    assert all(r["owned_before"][n] > 0 for n in "abc"), r["owned_before"]
    assert r["connected"] == HELD and r["survived"] == HELD, r
    assert not r["reset"] and not r["stalled"] and not r["mismatch"], r
    assert r["echoes"] == r["sent"], r
    for s in r["steps"]:
        assert s["new_conns"] > 0 and s["new_ok"] == s["new_conns"], s
        assert s["route_ms"] is not None, s         # the router showed the step
    assert drill_sequence.passed(r)
    for n in "abcd":
        members = cluster.status(PREFIX, n)["cluster"]["members"]
        assert set(members) == set("abcd") and members["d"]["alive"], (n, members)
    if lab["forwarding"] == "kernel":
        # the kernel path carried it: every director injected its peers' flows into its
        # conntrack (a, b and c since the start, d from its peers' bulk)
        for n in "abcd":
            kernel = cluster.status(PREFIX, n)["kernel"]
            assert kernel["inject_created"] + kernel["inject_updated"] > 0, (n, kernel)
