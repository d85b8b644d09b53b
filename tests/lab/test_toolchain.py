"""The standard toolchain pair `make bench` compares tandem with (lab.toolchain: nftables dnat +
snat, keepalived VRRPv3, conntrackd FTFW committed by keepalived's notify hook) really fails
over with conntrackd's state, so the comparison never measures a broken baseline.

Judged by content: the backup's conntrackd holds every held connection (client -> VIP:80,
NAT to a real server and the floating laddr) before the kill, and after it every held
connection goes on echoing in order through the new master, none reset or stalled.  Without
the state the new master's round-robin dnat would send each connection's next packet to
whichever real server comes next (about a third of them to the right one).  Timing is the
bench's (bench.toolchain), never asserted here."""
from __future__ import annotations

import time

import pytest

from lab import drill, toolchain
from lab.plan import CLIENT_ADDR, LADDRS, SERVICE_PORT, VIP
from lab.testing import require_lab

pytestmark = pytest.mark.lab

PREFIX = "ttc"
CONNS = 20


def _held(lines: list[str], nat: bool = True) -> set[str]:
    """The client's source ports of the VIP:80 connections in conntrack-style lines; with
    `nat`, only those whose reply tuple comes back to the floating laddr (NAT both ways).
    conntrackd lists its external cache without the reply tuple: `nat=False` there."""
    ports = set()
    for ln in lines:
        words = ln.split()

        def field(name: str) -> list[str]:
            return [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]

        src, dst, sport, dport = field("src"), field("dst"), field("sport"), field("dport")
        if not (src and dst and sport and dport) or \
                (src[0], dst[0], dport[0]) != (CLIENT_ADDR, VIP, str(SERVICE_PORT)):
            continue
        if nat and (len(dst) < 2 or dst[1] != LADDRS[0]):
            continue
        ports.add(sport[0])
    return ports


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with toolchain.session(PREFIX) as info:
        yield info


def test_backup_holds_the_state_and_a_kill_keeps_every_connection(pair):
    tp = toolchain.ToolchainPair(PREFIX)
    hold = drill._client(tp, "hold", "--host", VIP, "--port", SERVICE_PORT, "--conns", CONNS,
                         "--seconds", 15, "--interval", 0.1, "--timeout", 2.0)
    try:
        deadline = time.monotonic() + 10
        on_a = on_b = set()
        while time.monotonic() < deadline:
            on_a = _held(toolchain.conntrack_list(PREFIX, "a"))
            on_b = _held(toolchain.conntrackd_dump(PREFIX, "b", "external"), nat=False)
            if len(on_a) == CONNS and on_b >= on_a:
                break
            time.sleep(0.2)
        # a forwards them with NAT; b's conntrackd learned each one from a's
        assert len(on_a) == CONNS and on_b >= on_a, (len(on_a), len(on_b))
    finally:
        hold.kill()
        hold.communicate()

    r = drill.run(PREFIX, "kill", conns=CONNS, interval=0.05, duration=3.0, lead=1.0, pair=tp)
    assert (r["old_master"], r["new_master"]) == ("a", "b"), r
    assert (r["survived"], r["reset"], r["stalled"]) == (CONNS, 0, 0), r
    assert r["dual_master_ms"] == 0.0, r
    # b's kernel forwards them now, NAT both ways (to the real server a chose: they echo)
    assert len(_held(toolchain.conntrack_list(PREFIX, "b"))) >= CONNS
    # and the pair comes back as it started, for whatever runs next
    toolchain.restore(PREFIX)
    assert toolchain.status(PREFIX, "a")["role"] == "master"
