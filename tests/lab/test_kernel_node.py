"""A running node with a `forwarding = "kernel"` service (the lab's KERNEL_VIP:80, TCP and
UDP) beside the engine-mode services of VIP:80: the engine schedules each new flow, the
kernel's conntrack NAT forwards the rest, and the kernel's own NFQUEUE counter shows how
many packets reached user space."""
from __future__ import annotations

import json
import subprocess

import pytest

from director.kernel_rules import queue_counters
from lab.nsutil import http_get
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session("tkn", node=True, ha=False, scheduler="rr", kernel=True) as info:
        yield info


def api(lab, path: str) -> dict:
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), path, timeout=3.0)
    assert code == 200, (path, code, body)
    return json.loads(body)


def queued(lab) -> int:
    text = subprocess.run(["ip", "netns", "exec", lab["directors"][0]["ns"], "cat",
                           "/proc/net/netfilter/nfnetlink_queue"],
                          capture_output=True, text=True, check=True).stdout
    return queue_counters(text)[0]["queued"]


def client(lab, *args, timeout=120):
    return run_in(lab["client"]["ns"], *args, timeout=timeout)


def test_status_names_each_service_mode(lab):
    modes = api(lab, "/status")["forwarding"]
    kernel = sorted(k for k, v in modes.items() if v == "kernel")
    assert len(kernel) == 2 and all(lab["kernel_vip"] in k for k in kernel), modes
    assert all(v == "engine" for k, v in modes.items() if lab["kernel_vip"] not in k), modes


def test_300_tcp_and_300_udp_flows_reach_all_real_servers_one_packet_each_in_user_space(lab):
    """Each flow's first packet is the only one queued (the kernel's own counter), every
    real server answers, and each sees only the service's laddr as the source."""
    before = queued(lab)
    t = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 300,
               "--concurrency", 20)
    u = client(lab, "udp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 300)
    after = queued(lab)
    for r in (t, u):
        assert r["ok"] == 300, r
        assert sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r
        seen = {ip for peers in r["peers"].values() for ip in peers}
        assert seen == set(lab["kernel_laddrs"]), seen
    assert after - before == 600, (before, after)
    handoffs = api(lab, "/status")["engine"]["kernel_handoffs"]
    assert handoffs >= 600


def test_engine_mode_services_beside_are_unchanged(lab):
    r = client(lab, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 60)
    assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r
    seen = {ip for peers in r["peers"].values() for ip in peers}
    assert seen <= set(lab["laddrs"]), seen
