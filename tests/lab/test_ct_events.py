"""director.ct_events + director.kernel_flows against the kernel: a view built from real
conntrack events equals the kernel's table, and events the kernel drops (ENOBUFS on a
starved socket) are noticed, counted and repaired by a dump."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.testing import REPO_ROOT, require_lab

pytestmark = pytest.mark.lab

NS = "tk-ctev"
PROBE = str(Path(__file__).with_name("ct_events_probe.py"))
# new flows to 127.0.0.1:8080 get tandem's first mark, as a kernel-mode flow would
RULES = ("table inet tk_ctev {\n chain out {\n  type filter hook output priority 0;\n"
         "  ct state new ip daddr 127.0.0.1 tcp dport 8080 ct mark set 0x54440001\n }\n}\n")


@pytest.fixture(scope="module")
def result():
    require_lab()
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ex = ["ip", "netns", "exec", NS]
        subprocess.run([*ex, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*ex, "nft", "-f", "-"], input=RULES, text=True, check=True)
        r = subprocess.run([*ex, sys.executable, PROBE], capture_output=True, text=True,
                           timeout=120, cwd=str(REPO_ROOT))
        assert r.returncode == 0, r.stderr
        yield json.loads(r.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def test_events_build_the_kernels_table(result):
    """60 marked connections, 20 kept open: the view from events alone is the dump, with 20
    active (ESTABLISHED) and 40 inactive for the mark."""
    assert result["expected"] == 60 and result["active_expected"] == 20
    assert not result["good_overran"] and result["good_matches"]
    assert result["good_counts"] == {str(0x54440001): [20, 40]}
    assert result["good_stats"]["new"] == 60 and result["good_stats"]["overruns"] == 0


def test_lost_events_are_counted_and_repaired(result):
    """The starved socket overran; its view was wrong before the dump and right after."""
    assert result["bad_overran"] and result["bad_stats"]["overruns"] >= 1
    assert result["bad_stale_before"] > 0
    assert result["bad_repaired"] == result["bad_stale_before"]
    assert result["bad_matches"] and result["bad_stats"]["resyncs"] == 1


def test_the_socket_keeps_working_after_an_overrun(result):
    """ENOBUFS does not end the subscription: the next connection's NEW event arrives."""
    assert result["bad_new_after_overrun"] == 1
