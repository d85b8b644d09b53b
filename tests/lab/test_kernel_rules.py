"""director.kernel_rules against the kernel: a hand-built mark binding forwards a TCP echo
through the VIP with the kernel's conntrack NAT, and only each flow's first packet reaches
user space.  Three namespaces of our own (client, director, real server), 198.19.10.0/24
in front and 198.19.11.0/24 behind; deleted by name whatever happens."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.testing import REPO_ROOT, require_lab

pytestmark = pytest.mark.lab

C, D, R = "tk-kc", "tk-kd", "tk-kr"
VIP, LADDR, RS, QUEUE, MARK = "198.19.10.100", "198.19.11.100", "198.19.11.21", 7, 0x54440001
VIP6, LADDR6, RS6, MARK6 = "2001:2:10::100", "2001:2:11::100", "2001:2:11::21", 0x54440002
UNMARKED_SPORT = 40999
PROBE = str(Path(__file__).with_name("kernel_fwd_probe.py"))
SETUP = [
    ["ip", "link", "add", "kc0", "netns", C, "type", "veth", "peer", "kd0", "netns", D],
    ["ip", "link", "add", "kd1", "netns", D, "type", "veth", "peer", "kr0", "netns", R],
    [C, "ip", "addr", "add", "198.19.10.10/24", "dev", "kc0"],
    [C, "ip", "link", "set", "kc0", "up"], [C, "ip", "link", "set", "lo", "up"],
    [C, "ip", "route", "add", "default", "via", "198.19.10.1"],
    [D, "ip", "addr", "add", "198.19.10.1/24", "dev", "kd0"],
    [D, "ip", "addr", "add", f"{VIP}/24", "dev", "kd0"],
    [D, "ip", "addr", "add", "198.19.11.1/24", "dev", "kd1"],
    [D, "ip", "addr", "add", f"{LADDR}/24", "dev", "kd1"],
    [D, "ip", "link", "set", "kd0", "up"], [D, "ip", "link", "set", "kd1", "up"],
    [D, "ip", "link", "set", "lo", "up"], [D, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
    [R, "ip", "addr", "add", f"{RS}/24", "dev", "kr0"],
    [R, "ip", "link", "set", "kr0", "up"], [R, "ip", "link", "set", "lo", "up"],
    # IPv6 alike (nodad: usable at once)
    [C, "ip", "addr", "add", "2001:2:10::10/64", "dev", "kc0", "nodad"],
    [C, "ip", "-6", "route", "add", "default", "via", "2001:2:10::1"],
    [D, "ip", "addr", "add", "2001:2:10::1/64", "dev", "kd0", "nodad"],
    [D, "ip", "addr", "add", f"{VIP6}/64", "dev", "kd0", "nodad"],
    [D, "ip", "addr", "add", "2001:2:11::1/64", "dev", "kd1", "nodad"],
    [D, "ip", "addr", "add", f"{LADDR6}/64", "dev", "kd1", "nodad"],
    [D, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    [R, "ip", "addr", "add", f"{RS6}/64", "dev", "kr0", "nodad"],
]
RULES = f"""
from director import kernel_rules as k
svc = [k.KernelService("{VIP}", "tcp", 80, ("{LADDR}",)),
       k.KernelService("{VIP6}", "tcp", 80, ("{LADDR6}",))]
m = k.Marks()
assert m.mark_for("{RS}", 8080, "{LADDR}") == {MARK}
assert m.mark_for("{RS6}", 8080, "{LADDR6}") == {MARK6}
from schema import keys as K
k.install(svc, m.bindings(), {QUEUE}, K.TIMEOUTS.defaults())
"""


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if argv[0] in (C, D, R):
        argv = ["ip", "netns", "exec", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def py(ns: str, code: str) -> str:
    r = sh([ns, sys.executable, "-c", code], cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stderr
    return r.stdout


def start(ns: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE, *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert json.loads(p.stdout.readline()) == {"ready": True}, p.stderr.read()
    return p


def stopped(p: subprocess.Popen, timeout: float) -> dict:
    """What a server started by `start` printed last, once told to stop."""
    return json.loads(p.communicate("stop\n", timeout=timeout)[0].splitlines()[-1])


@pytest.fixture
def namespaces():
    require_lab()
    for ns in (C, D, R):
        sh(["ip", "netns", "del", ns])
        assert sh(["ip", "netns", "add", ns]).returncode == 0
    try:
        for argv in SETUP:
            r = sh(argv)
            assert r.returncode == 0, (argv, r.stderr)
        yield
    finally:
        for ns in (C, D, R):
            sh(["ip", "netns", "del", ns])


def test_mark_binding_forwards_with_one_packet_in_user_space(namespaces):
    """5 TCP echo connections of 20 round trips through the VIP: every byte comes back, the
    real server sees only the laddr, and the queue saw exactly one packet per connection (the
    SYN; the kernel's own queue counter agrees).  A flow the engine leaves unmarked is
    dropped by the guard: the client times out and gets no RST from the director's stack."""
    py(D, RULES)
    echo = start(R, "echo", f"{RS},{RS6}", "8080", "10")
    listener = start(D, "queue", str(QUEUE), hex(MARK), hex(MARK6), str(UNMARKED_SPORT), "8")
    try:
        out = sh([C, sys.executable, PROBE, "client", VIP, "80", "5", "20", str(UNMARKED_SPORT)])
        assert out.returncode == 0, out.stderr
        client = json.loads(out.stdout)
        counters = json.loads(py(D, "import json; from director import kernel_rules as k;"
                                    " print(json.dumps(k.queue_counters()))"))
    finally:
        seen = stopped(listener, 30)["by_sport"]
        peers = stopped(echo, 30)["peers"]
    assert [c["ok"] for c in client["conns"]] == [20] * 5
    assert client["unmarked"] == "timeout"
    assert {str(c["sport"]): 1 for c in client["conns"]} == {k: v for k, v in seen.items()
                                                             if k != str(UNMARKED_SPORT)}
    assert seen[str(UNMARKED_SPORT)] >= 1          # its SYN (and retransmissions) were queued
    assert counters[str(QUEUE)]["queued"] == sum(seen.values())
    assert peers == [LADDR] * 5


def test_reload_and_exact_removal(namespaces):
    """Both modes' rules in the one table: loading twice replaces them (one jump, one
    table; the second load names the next timeout generation, as a restarted node does:
    the first's objects stay, flows may still use them); remove() leaves the ruleset
    exactly as it was, someone else's table and mangle rule included."""
    sh([D, "nft", "add", "table", "inet", "other"])
    sh([D, "iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-m", "comment", "--comment",
        "theirs", "-j", "ACCEPT"])
    before = sh([D, "nft", "list", "ruleset"]).stdout
    both = RULES.replace("K.TIMEOUTS.defaults())", "K.TIMEOUTS.defaults(), engine=['198.19.10.50'])")
    py(D, both)
    py(D, both.replace("engine=['198.19.10.50'])", "engine=['198.19.10.50'], generation=2)"))
    assert sh([D, "iptables-nft", "-t", "mangle", "-S", "PREROUTING"]).stdout.count("TANDEM_QUEUE") == 1
    table = sh([D, "nft", "list", "table", "inet", "tandem"]).stdout
    assert "198.19.10.50" in table and "chain untracked" in table and "chain guard" in table
    assert all(f"ct timeout {name} " in table for name in ("tcp4", "tcp4_2")), table
    assert sh([D, "nft", "list", "tables"]).stdout.count("table inet tandem") == 1
    py(D, "from director import kernel_rules as k; k.remove(); k.remove()")
    assert sh([D, "nft", "list", "ruleset"]).stdout == before
    assert "TANDEM" not in sh([D, "ip6tables-nft", "-t", "mangle", "-S"]).stdout


def test_reinjected_entry_carries_an_established_flow(namespaces):
    """As a backup will inject synced connections: mid-connection, the flow's conntrack entry
    is deleted and created again through ctnetlink from the ORIGINAL tuple with DNAT to the
    real server, SNAT to laddr:lport, its TCP state, BE_LIBERAL and its mark.  The connection
    goes on (20 more round trips and 4 MiB echoed) without one more packet queued: the new
    entry is the flow's, NAT included, and window tracking does not stall it."""
    py(D, RULES)
    echo = start(R, "echo", f"{RS},{RS6}", "8080", "14")
    listener = start(D, "queue", str(QUEUE), hex(MARK), hex(MARK6), str(UNMARKED_SPORT), "12")
    client = subprocess.Popen(["ip", "netns", "exec", C, sys.executable, PROBE, "paused", VIP, "80",
                               str(4 << 20)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(client.stdout.readline())
        injected = json.loads(py(D, f"import runpy, sys; sys.argv = ['p', 'reinject']; "
                                    f"runpy.run_path({PROBE!r}, run_name='__main__')"))
        client.stdin.write("go\n")
        client.stdin.flush()
        second = json.loads(client.stdout.readline())
        # the injected entry after traffic: which timeout does the kernel refresh it with?
        refreshed = json.loads(py(D, f"import runpy, sys; sys.argv = ['p', 'timeouts']; "
                                     f"runpy.run_path({PROBE!r}, run_name='__main__')"))
        client.communicate("close\n", timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
        seen = stopped(listener, 40)["by_sport"]
        peers = stopped(echo, 40)["peers"]
    assert first["before"] == 20
    assert injected["entries"] == 1 and injected["errnos"] == [0, 0]
    assert injected["same_tuples"]
    # IPVS's 900 s for ESTABLISHED (the ct timeout policy), not conntrack's 5 days; the
    # injected entry has the 200 s it was given
    assert 200 < injected["timeouts_before"][0] <= 900 and injected["timeouts_after"][0] <= 200
    assert second["after"] == 20 and second["bulk_ok"]
    assert second["bulk_received"] == second["bulk_sent"] == 4 << 20
    assert seen == {str(first["sport"]): 1}
    assert peers == [LADDR]
    # after traffic the kernel refreshed the injected entry (given 200 s) to 300 s: conntrack's
    # timeout for unacknowledged data (the entry has no window data), neither ESTABLISHED's
    # 5 days nor the 900 s policy, which ctnetlink cannot attach
    assert len(refreshed) == 1 and 200 < refreshed[0] <= 300


def test_ipv6_service_forwards_alike(namespaces):
    """The same rules for an IPv6 service (the inet table's ip6 sets and maps, ip6tables-nft's
    queue chain): 3 connections of 10 round trips through the IPv6 VIP, one packet of each
    queued, the real server sees only the IPv6 laddr, an unmarked flow times out."""
    py(D, RULES)
    echo = start(R, "echo", f"{RS},{RS6}", "8080", "10")
    listener = start(D, "queue", str(QUEUE), hex(MARK), hex(MARK6), str(UNMARKED_SPORT), "8")
    try:
        out = sh([C, sys.executable, PROBE, "client", VIP6, "80", "3", "10", str(UNMARKED_SPORT)])
        assert out.returncode == 0, out.stderr
        client = json.loads(out.stdout)
    finally:
        seen = stopped(listener, 30)["by_sport"]
        peers = stopped(echo, 30)["peers"]
    assert [c["ok"] for c in client["conns"]] == [10] * 3
    assert client["unmarked"] == "timeout"
    assert {str(c["sport"]): 1 for c in client["conns"]} == {k: v for k, v in seen.items()
                                                             if k != str(UNMARKED_SPORT)}
    assert peers == [LADDR6] * 3
