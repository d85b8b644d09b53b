"""proto.ctnetlink against the kernel: real events and a real dump in a namespace of our own,
compared with what `conntrack -L` (conntrack-tools, libnetfilter_conntrack) reads from the
same table; NAT entries injected the way a backup will inject synced connections."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.testing import require_lab

pytestmark = pytest.mark.lab

NS = "tk-ctnl"
PROBE = Path(__file__).with_name("ctnl_probe.py")
# conntrack is only active in a namespace once a rule needs it
RULES = "table inet tk_ctnl {\n chain out {\n  type filter hook output priority 0; ct state new counter\n }\n}\n"


def _ip(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, *args], capture_output=True, text=True,
                          check=check, input=input, timeout=30)


@pytest.fixture(scope="module")
def probe():
    require_lab()
    if shutil.which("conntrack") is None:
        pytest.fail("conntrack (conntrack-tools) is missing: make setup installs it", pytrace=False)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        _ip("ip", "link", "set", "lo", "up")
        _ip("nft", "-f", "-", input=RULES)
        out = _ip(sys.executable, str(PROBE)).stdout
        listing = _ip("conntrack", "-L", "-o", "id").stdout + _ip("conntrack", "-L", "-f", "ipv6", "-o", "id").stdout
        yield json.loads(out), listing
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def _parse_conntrack_l(listing: str) -> dict[int, dict]:
    """conntrack -L lines by id: tuples, TCP state, mark, ASSURED."""
    entries = {}
    for line in listing.splitlines():
        words = line.split()
        if not words or "=" not in line:
            continue
        kv = [w.split("=", 1) for w in words if "=" in w]
        addrs = [v for k, v in kv if k in ("src", "dst")]
        ports = [int(v) for k, v in kv if k in ("sport", "dport")]
        proto = int(words[1])
        norm = [str(ipaddress.ip_address(a)) for a in addrs]
        entry = {"orig": [proto, norm[0], norm[1], *ports[:2]], "reply": [proto, norm[2], norm[3], *ports[2:4]],
                 "mark": int(dict(kv)["mark"]), "assured": "[ASSURED]" in words,
                 "state": words[3] if proto == 6 else None}
        entries[int(dict(kv)["id"])] = entry
    return entries


TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")


def test_dump_matches_conntrack_tool(probe):
    """Every entry of our dump is an entry of `conntrack -L` (same id), field for field."""
    result, listing = probe
    tool = _parse_conntrack_l(listing)
    ours = {e["id"]: e for e in result["dump"]}
    # the delete after the dump removed one injected entry from the table conntrack -L reads
    assert len(ours) == len(tool) + 1 >= 5
    for ctid, e in tool.items():
        mine = ours[ctid]
        assert (mine["orig"], mine["reply"], mine["mark"]) == (e["orig"], e["reply"], e["mark"])
        assert bool(mine["status"] & 0x4) == e["assured"]
        if e["state"]:
            assert TCP_STATE_NAMES[mine["tcp_state"]] == e["state"]


def test_injected_nat_entries(probe):
    """ORIGINAL tuple + NAT_DST + NAT_SRC: the kernel derives the translated reply tuple and sets
    SRC_NAT|DST_NAT (both _DONE); IPv4 TCP and IPv6 UDP alike."""
    result, _ = probe
    assert result["acks"] == [0, 0, 0]
    dump = {tuple(e["orig"]): e for e in result["dump"]}
    tcp = dump[(6, "198.18.1.10", "198.18.0.100", 40000, 80)]
    assert tcp["reply"] == [6, "198.18.2.21", "198.18.2.100", 8080, 5000]
    assert tcp["status"] & 0x1B8 == 0x1B8 and tcp["mark"] == 1 and 290 <= tcp["timeout"] <= 300
    assert tcp["tcp_state"] == 3 and tcp["tcp_flags"] == [[8, 0], [8, 0]]   # BE_LIBERAL kept
    udp = dump[(17, "2001:2::10", "2001:2::100", 40001, 53)]
    assert udp["reply"] == [17, "2001:2::21", "2001:2::200", 5353, 5001]
    assert udp["status"] & 0x1B8 == 0x1B8 and udp["mark"] == 2


def test_events_of_real_flows(probe):
    """A TCP connection's NEW (SYN_SENT) and updates up to ESTABLISHED arrive with its ports, for
    IPv4 and IPv6; the UDP flow's NEW; an injected entry's NEW; a deleted entry's DESTROY."""
    result, _ = probe
    events = result["events"]
    for proto, src, dst, sport, dport in result["flows"]:
        orig = [proto, src, dst, sport, dport]
        mine = [e for e in events if e["orig"] == orig]
        assert mine and mine[0]["event"] == "new", orig
        assert mine[0]["reply"] == [proto, dst, src, dport, sport]
        if proto == 6:
            assert TCP_STATE_NAMES[mine[0]["tcp_state"]] == "SYN_SENT"
            assert "ESTABLISHED" in [TCP_STATE_NAMES[e["tcp_state"]] for e in mine]
    injected = [e for e in events if e["orig"] == [6, "198.18.1.10", "198.18.0.100", 40000, 80]]
    assert [e["event"] for e in injected] == ["new", "destroy"]
    assert injected[0]["reply"] == [6, "198.18.2.21", "198.18.2.100", 8080, 5000]
