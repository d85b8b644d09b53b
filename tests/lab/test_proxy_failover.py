"""PROXY connections across a failover (issue 14): the header's sequence shift is synced
with the connection (option "seq", sent urgently when the header goes out), so the new
master never writes a second header and shifts every number as the old one did.

Each test holds 200 connections through the proxy-v2 service (VIP:81), each echoing a
numbered line every 20 ms, and kills director a (`tandem lab fault a kill`: links down,
then SIGKILL).  It judges what the client and the real servers can tell apart whatever
the machine's load: every connection kept going with every echo in order and intact (the
hold client's `ok`), and each real server's stream of each connection held exactly one
PROXY header naming the client (lab.echo's `proxy stream` log lines: the opening header
plus every PROXY signature found later in the stream).
"""
from __future__ import annotations

import time

import pytest

from lab import drill, topology
from lab import state as st
from lab.drill_pairs import LabPair
from lab.echo import parse_stream_line
from lab.plan import CLIENT_ADDR, REAL_SERVERS
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab

PREFIX = "tpf"
CONNS = 200


@pytest.fixture(scope="module")
def pair():
    require_lab()
    # dual-stack: the lab then also serves 81/udp with a PROXY v2 header on every datagram
    with lab_session(PREFIX, node=True, ha=True, advert_interval=0.1, ipv6=True) as info:
        yield info


def log_sizes() -> dict[str, int]:
    d = st.state_dir(PREFIX)
    return {r["name"]: (d / f"{r['name']}.log").stat().st_size for r in REAL_SERVERS}


def streams_since(sizes: dict[str, int], want: int, wait: float = 20.0) -> list[dict]:
    """The `proxy stream` lines the real servers logged since `sizes`, once there are
    `want` of them from the client (a connection logs when it ends), or after `wait` s."""
    d = st.state_dir(PREFIX)
    end = time.monotonic() + wait
    while True:
        out = []
        for name, size in sizes.items():
            with open(d / f"{name}.log", "rb") as fh:
                fh.seek(size)
                for line in fh.read().decode(errors="replace").splitlines():
                    rec = parse_stream_line(line)
                    if rec is not None and rec["client"] == CLIENT_ADDR:
                        out.append(rec)
        if len(out) >= want or time.monotonic() > end:
            return out
        time.sleep(0.2)


def proxy_pair() -> LabPair:
    p = LabPair(PREFIX)
    p.port = 81             # the proxy-v2 service
    return p


def kill_and_judge(lead: float) -> tuple[dict, list[dict]]:
    sizes = log_sizes()
    r = drill.run(PREFIX, "kill", conns=CONNS, interval=0.02, duration=3.0, lead=lead,
                  pair=proxy_pair())
    try:
        assert (r["survived"], r["reset"], r["stalled"]) == (CONNS, 0, 0), r
        assert r["dual_master_ms"] == 0.0, r
        assert (r["old_master"], r["new_master"]) == ("a", "b"), r
        streams = streams_since(sizes, CONNS)
        assert len(streams) == CONNS, streams[:5]
        assert len({s["cport"] for s in streams}) == CONNS        # one stream per connection
        bad = [s for s in streams if s["headers"] != 1 or s["bytes"] == 0]
        assert not bad, bad[:5]
        return r, streams
    finally:
        drill.run(PREFIX, "restore", conns=10, duration=3.0, lead=0.5, target="a")


def test_200_proxy_connections_survive_a_kill_with_one_header_each(pair):
    r, streams = kill_and_judge(lead=1.0)
    # the connections were a second old: every header went out before the kill
    assert all(s["at"] < r["fault_at"] for s in streams)


def test_young_proxy_connections_survive_a_kill_with_one_header_each(pair):
    """The kill follows the connections' first lines at once (lead 0: the first sends are
    spread over 20 ms from the moment all 200 are open, and the drill faults as soon as it
    sees them open), so headers go out in the last milliseconds before the kill (synced
    urgently, the old master's shift continued by b) or meet the dead master and are
    retransmitted to b (synced unsent, b writes the one header itself)."""
    r, streams = kill_and_judge(lead=0.0)
    young = [s for s in streams if r["fault_at"] - 0.05 <= s["at"] <= r["fault_at"]]
    after = [s for s in streams if s["at"] > r["fault_at"]]
    print(f"headers < 50 ms before the kill: {len(young)}, after it: {len(after)}")
    assert young, sorted(s["at"] - r["fault_at"] for s in streams)[:10]


UDP_FLOWS = 50


def test_udp_proxy_flows_keep_a_header_on_every_datagram_across_a_kill(pair):
    """PROXY v2 over UDP (81/udp): 50 flows, each echoing a numbered datagram every 20 ms,
    through a kill of a.  The echo answers only a datagram that opens with a valid v2
    header, so every flow still answered after the takeover proves b puts the header on
    its datagrams (for a flow b learned by sync nothing in the entry says so: b writes it
    from the entry's addresses and the service's mode); no datagram is lost outside the
    outage.  Then 100 new datagrams through b each come back naming their own client
    address and port."""
    before = topology.node_status(PREFIX, "b", timeout=5.0)["engine"]["proxy_dgram_headers"]
    r = drill.run(PREFIX, "kill", conns=10, udp_flows=UDP_FLOWS, interval=0.02, duration=3.0,
                  lead=1.0, pair=proxy_pair())
    try:
        assert (r["old_master"], r["new_master"]) == ("a", "b"), r
        assert r["udp_continued"] == UDP_FLOWS and r["udp_lost_outside"] == 0, r
        after = topology.node_status(PREFIX, "b", timeout=5.0)["engine"]["proxy_dgram_headers"]
        assert after - before >= UDP_FLOWS, (before, after)
        w = run_in(pair["client"]["ns"], "udp-whoami", "--host", pair["vip"], "--port", 81,
                   "--count", 100, "--concurrency", 10, timeout=120)
        assert w["ok"] == 100 and w["own_address_seen"] == 100, w
    finally:
        drill.run(PREFIX, "restore", conns=10, duration=3.0, lead=0.5, target="a")
