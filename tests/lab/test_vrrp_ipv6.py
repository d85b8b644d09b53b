"""VRRPv3 over IPv6 between two VrrpRunners, on the lab's front link (issue 15).

Each director runs an IPv6 instance (VRID 61, 0.1 s adverts, VIP6) from its front interface's
link-local address to ff02::12 with hop limit 255, the checksum over the IPv6 pseudo-header.
The higher priority (a) becomes master and b, hearing it, stays backup: every advert b
receives passes the checks (none dropped for hop limit, source, destination or checksum);
when a stops it sends priority 0 and b takes over.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from ha.vrrp import State, VrrpConfig
from ha.vrrp_io import VrrpRunner
from lab import ipv6
from lab.nsutil import in_netns
from lab.plan import FRONT_IF, ns_name
from lab.testing import lab_session, require_lab

pytestmark = pytest.mark.lab
PREFIX = "tvr6"


def link_local(ns: str, ifname: str, wait: float = 10.0) -> str:
    """The interface's link-local address, once duplicate address detection is done with it
    (lab.ipv6 turns IPv6 on after the links are up, so the kernel's fe80:: address starts
    tentative and cannot be a source yet).  Bounded."""
    end = time.monotonic() + wait
    while True:
        cp = subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", ifname, "scope", "link"],
                            capture_output=True, text=True, timeout=10, check=True)
        infos = [x for x in json.loads(cp.stdout)[0]["addr_info"] if x.get("local")]
        ready = [x["local"] for x in infos if not x.get("tentative")]
        if ready:
            return ready[0]
        assert time.monotonic() < end, f"no usable link-local address on {ns} {ifname}: {infos}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session(PREFIX, node=False, ha=False) as info:
        ipv6.enable(PREFIX)
        yield info


async def until(cond, limit: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond() and loop.time() < end:
        await asyncio.sleep(0.02)
    return cond()


def test_two_ipv6_instances_elect_one_master_and_the_backup_takes_over_on_stop(lab):
    runners = {}
    for name, prio in (("a", 150), ("b", 100)):
        ns = ns_name(PREFIX, name)
        cfg = VrrpConfig(61, priority=prio, advert_interval=0.1, addresses=(ipv6.VIP6,),
                         primary_address=link_local(ns, FRONT_IF), name=f"VI6_{name}")
        r = runners[name] = VrrpRunner(cfg, FRONT_IF)
        in_netns(ns, r.open_socket, timeout=10)
    a, b = runners["a"], runners["b"]

    async def go():
        await b.start()
        await a.start()
        try:
            assert await until(lambda: a.state is State.MASTER and b.counters["accepted"] >= 10, 10.0), \
                (a.state, b.state, a.counters, b.counters)
            assert b.state is State.BACKUP
            assert b.instance.master_address == a.cfg.primary_address
            drops = {k: v for k, v in b.counters.items() if k.startswith("drop_") and v}
            assert drops == {}, drops
            assert a.stats["tx_errors"] == 0 and b.stats["rx_not_ipv4"] == 0
            await a.stop(graceful=True)
            assert await until(lambda: b.state is State.MASTER, 5.0), b.counters
            assert b.counters["rx_priority0"] >= 1
        finally:
            await a.stop(graceful=False)
            await b.stop(graceful=False)

    asyncio.run(asyncio.wait_for(go(), 60))
