"""Kernel-mode sync and takeover without the node: a master forwarding with the kernel's
conntrack NAT (director.kernel_rules) sends its flows from conntrack events
(syncd.kernel_source) to a standby, which injects them into its conntrack table
(director.ct_inject); the master's links go down, the addresses move with gratuitous ARP,
and the held connections go on through the standby.

Namespaces of our own (ksync-*): a client, the master, the standby and a real server, on a
front bridge (198.19.20.0/24) and a back bridge (198.19.21.0/24) in ksync-sw; deleted by
name whatever happens."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.testing import REPO_ROOT, require_lab

pytestmark = pytest.mark.lab

C, M, S, R, SW = "ksync-c", "ksync-m", "ksync-s", "ksync-r", "ksync-sw"
VIP, LADDR, RS, QUEUE, MARK = "198.19.20.100", "198.19.21.100", "198.19.21.21", 7, 0x54440001
S_BACK, SYNC_PORT = "198.19.21.12", 8848
CONNS, BULK = 10, 1 << 20
PROBE = str(Path(__file__).with_name("ksync_probe.py"))
FWD = str(Path(__file__).with_name("kernel_fwd_probe.py"))


def _links() -> list[list[str]]:
    out = [[SW, "ip", "link", "add", br, "type", "bridge"] for br in ("brf", "brb")]
    for ns, dev, peer, br in ((C, "c0", "swc", "brf"), (M, "mf", "swmf", "brf"),
                              (S, "sf", "swsf", "brf"), (M, "mb", "swmb", "brb"),
                              (S, "sb", "swsb", "brb"), (R, "r0", "swr", "brb")):
        out += [["ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", peer, "netns", SW],
                [SW, "ip", "link", "set", peer, "master", br], [SW, "ip", "link", "set", peer, "up"],
                [ns, "ip", "link", "set", dev, "up"]]
    out += [[SW, "ip", "link", "set", br, "up"] for br in ("brf", "brb")]
    return out


SETUP = [
    *_links(),
    *[[ns, "ip", "link", "set", "lo", "up"] for ns in (C, M, S, R)],
    [C, "ip", "addr", "add", "198.19.20.10/24", "dev", "c0"],
    [M, "ip", "addr", "add", "198.19.20.11/24", "dev", "mf"],
    [M, "ip", "addr", "add", f"{VIP}/24", "dev", "mf"],
    [M, "ip", "addr", "add", "198.19.21.11/24", "dev", "mb"],
    [M, "ip", "addr", "add", f"{LADDR}/24", "dev", "mb"],
    [S, "ip", "addr", "add", "198.19.20.12/24", "dev", "sf"],
    [S, "ip", "addr", "add", f"{S_BACK}/24", "dev", "sb"],
    [R, "ip", "addr", "add", f"{RS}/24", "dev", "r0"],
    [M, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
    [S, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
]
RULES = f"""
from director import kernel_rules as k
from schema import keys as K
m = k.Marks()
assert m.mark_for("{RS}", 8080, "{LADDR}") == {MARK}
k.install([k.KernelService("{VIP}", "tcp", 80, ("{LADDR}",))], m.bindings(), {QUEUE},
          K.TIMEOUTS.defaults())
"""


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if argv[0] in (C, M, S, R, SW):
        argv = ["ip", "netns", "exec", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def py(ns: str, code: str) -> str:
    r = sh([ns, sys.executable, "-c", code], cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stderr
    return r.stdout


def start(ns: str, probe: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, probe, *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=str(REPO_ROOT))
    first = p.stdout.readline()
    assert first, p.stderr.read()
    return p


def last_json(p: subprocess.Popen, stop: bool = True) -> dict:
    out, err = p.communicate("stop\n" if stop else None, timeout=60)
    lines = out.strip().splitlines()
    assert lines, err
    return json.loads(lines[-1])


def ours(ns: str) -> list:
    return json.loads(sh([ns, sys.executable, PROBE, "ours"], cwd=str(REPO_ROOT)).stdout)


@pytest.fixture
def namespaces():
    require_lab()
    for ns in (C, M, S, R, SW):
        sh(["ip", "netns", "del", ns])
        assert sh(["ip", "netns", "add", ns]).returncode == 0
    try:
        for argv in SETUP:
            r = sh(argv)
            assert r.returncode == 0, (argv, r.stderr)
        yield
    finally:
        for ns in (C, M, S, R, SW):
            sh(["ip", "netns", "del", ns])


def test_injected_entries_carry_held_connections_through_a_takeover(namespaces):
    """10 echo connections through the master (kernel NAT, one packet each in user space).
    The master's events become sync entries, the standby injects them: its conntrack then
    holds the same ORIGINAL and translated reply tuples, ESTABLISHED, BE_LIBERAL.  The
    master's links go down, the VIP and the laddr move to the standby with gratuitous ARP,
    and all 10 connections go on (20 more round trips and 1 MiB echoed intact each) with no
    reset: only addresses and GARP were needed."""
    for ns in (M, S):
        py(ns, RULES)
    echo = start(R, FWD, "echo", RS, "8080", "30")
    listener = start(M, FWD, "queue", str(QUEUE), hex(MARK), hex(MARK), "0", "30")
    standby = start(S, PROBE, "standby", S_BACK, str(SYNC_PORT), "60")
    master = start(M, PROBE, "master", S_BACK, str(SYNC_PORT), "60")
    client = subprocess.Popen(["ip", "netns", "exec", C, sys.executable, PROBE, "held", VIP, "80",
                               str(CONNS), str(BULK)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=str(REPO_ROOT))
    try:
        line = client.stdout.readline()
        assert line, client.stderr.read()
        first = json.loads(line)
        on_master = ours(M)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            injected = ours(S)
            if len(injected) == CONNS and all(row[2] == 3 for row in injected):
                break
            time.sleep(0.2)
        # the takeover: the master loses its links, the standby takes the addresses
        for dev in ("mf", "mb"):
            assert sh([M, "ip", "link", "set", dev, "down"]).returncode == 0
        assert sh([S, "ip", "addr", "add", f"{VIP}/24", "dev", "sf"]).returncode == 0
        assert sh([S, "ip", "addr", "add", f"{LADDR}/24", "dev", "sb"]).returncode == 0
        for dev, addr in (("sf", VIP), ("sb", LADDR)):
            r = sh([S, sys.executable, PROBE, "garp", dev, addr], cwd=str(REPO_ROOT))
            assert r.returncode == 0, r.stderr
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line, client.stderr.read()
        second = json.loads(line)
        client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
        sent = last_json(master)
        got = last_json(standby)
        seen = last_json(listener)["by_sport"]
        last_json(echo)
    assert first["before"] == [5] * CONNS
    assert sorted(map(int, seen)) == sorted(first["sports"])       # one packet each queued
    assert all(v == 1 for v in seen.values())
    # the standby held exactly the master's entries before the takeover
    assert len(on_master) == CONNS
    assert [row[:2] for row in injected] == [row[:2] for row in on_master]
    assert all(row[2] == 3 and row[4][0] & 0x08 for row in injected), injected
    assert got["stats"]["created"] == CONNS and got["stats"]["failed"] == 0, got
    assert sent["stats"]["urgent"] >= CONNS, sent
    assert second["errors"] == [], second
    assert second["after"] == [20] * CONNS
    assert second["bulk"] == [BULK] * CONNS
