"""VRRPv3 over IPv6 interop between tandem's VrrpRunner and a real keepalived 2.2.7 (issue 15).

Topology (created and removed per test): namespace tvr6-ka-<pid> (veth vka, keepalived) <->
namespace tvr6-td-<pid> (veth vtd, tandem's runner), IPv6 only on the link: each side's
kernel link-local address (duplicate address detection off, so it is usable at once) is its
advert source, VIP 2001:2:0:250::100.  keepalived's setup, notify FIFO and stopping by PID are
those of tests/lab/test_vrrp_keepalived.py; only its configuration differs (an IPv6 VIP).

Each side is master in turn while the other stays backup, hearing its adverts (tandem's backup
accepts keepalived's and drops none: hop limit 255, link-local source, ff02::12, the
pseudo-header checksum and the address list all agree), and each hands over on the other's
priority 0 when stopped.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

from ha.vrrp import Cause, State, VrrpConfig
from ha.vrrp_io import VrrpRunner
from tests.lab.test_vrrp_keepalived import (KA_IF, TD_IF, Keepalived, Lab, _ip, _require_keepalived,
                                            in_netns, until)

pytestmark = pytest.mark.lab

VIP6 = "2001:2:0:250::100"
VRID = 61


def link_local(ns: str, ifname: str, wait: float = 10.0) -> str:
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


@pytest.fixture
def lab6(tmp_path):
    path = _require_keepalived()
    sfx = str(os.getpid())
    ns_ka, ns_td = f"tvr6-ka-{sfx}", f"tvr6-td-{sfx}"
    made: list[str] = []
    lab = Lab(ns_ka, ns_td, tmp_path, path)
    try:
        for ns in (ns_ka, ns_td):
            _ip("netns", "add", ns)
            made.append(ns)
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                                f"net.ipv6.conf.{key}.accept_dad=0"], check=True, timeout=10)
        _ip("-n", ns_ka, "link", "add", KA_IF, "type", "veth", "peer", "name", TD_IF, "netns", ns_td)
        for ns, ifname in ((ns_ka, KA_IF), (ns_td, TD_IF)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ifname, "up")
        lab.ka_ll, lab.td_ll = link_local(ns_ka, KA_IF), link_local(ns_td, TD_IF)
        yield lab
    finally:
        for ka in lab.procs:
            ka.kill()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def keepalived6(lab: Lab, priority: int) -> Keepalived:
    ka = Keepalived(lab, priority)
    text = ka.conf.read_text()
    head = text[:text.index("vrrp_instance")]
    ka.conf.write_text(head + f"""vrrp_instance VI_{VRID} {{
    state BACKUP
    interface {KA_IF}
    virtual_router_id {VRID}
    priority {priority}
    advert_int 0.1
    version 3
    virtual_ipaddress {{
        {VIP6}/64 dev {KA_IF}
    }}
}}
""")
    return ka


async def tandem6(lab: Lab, priority: int) -> VrrpRunner:
    cfg = VrrpConfig(VRID, priority=priority, advert_interval=0.1, addresses=(VIP6,),
                     primary_address=lab.td_ll, name=f"VI_{VRID}")
    r = VrrpRunner(cfg, TD_IF)
    await asyncio.to_thread(in_netns, lab.ns_td, r.open_socket, timeout=10)
    await r.start()
    return r


def diag(ka: Keepalived, td: VrrpRunner) -> str:
    return (f"\nkeepalived fifo: {ka.watch.events}\nkeepalived log:\n{ka.log()}\n"
            f"tandem: {td.state} { {k: v for k, v in td.counters.items() if v} } io: {td.stats}")


async def test_tandem_master_keepalived_backup_over_ipv6_then_graceful_handover(lab6):
    td = await tandem6(lab6, 150)
    ka = keepalived6(lab6, 100)
    try:
        assert await until(lambda: td.state is State.MASTER, 5.0), diag(ka, td)
        ka.start()
        assert await until(lambda: ka.watch.first("BACKUP") is not None, 10.0), diag(ka, td)
        # keepalived hears tandem's adverts: it stays backup for many of its Master_Down intervals
        await asyncio.sleep(1.5)
        assert ka.watch.first("MASTER") is None and not ka.has_vip(), diag(ka, td)
        assert td.state is State.MASTER and td.stats["tx_errors"] == 0
        stopped = time.monotonic()
        await td.stop(graceful=True)
        assert await until(lambda: ka.watch.first("MASTER", stopped) is not None, 5.0), diag(ka, td)
        print(f"\n[vrrp6-interop] keepalived MASTER {1000 * (ka.watch.first('MASTER', stopped) - stopped):.1f} ms"
              " after tandem's priority 0")
    finally:
        await td.stop(graceful=False)


async def test_keepalived_master_tandem_backup_over_ipv6_then_handover_on_its_priority_0(lab6):
    ka = keepalived6(lab6, 150)
    ka.start()
    assert await until(lambda: ka.watch.first("MASTER") is not None, 10.0), ka.log()
    td = await tandem6(lab6, 100)
    changes = []
    td.on_change = changes.append
    try:
        assert await until(lambda: td.counters["accepted"] >= 10, 5.0), diag(ka, td)
        assert td.state is State.BACKUP, diag(ka, td)
        assert td.instance.master_address == lab6.ka_ll and td.instance.master_priority == 150
        drops = {k: v for k, v in td.counters.items() if k.startswith("drop_") and v}
        assert drops == {}, diag(ka, td)
        ka.terminate()
        assert await until(lambda: td.state is State.MASTER, 5.0), diag(ka, td)
        assert td.counters["rx_priority0"] >= 1
        assert [c.cause for c in changes if c.new is State.MASTER] == [Cause.PEER_STOPPED], changes
    finally:
        await td.stop(graceful=False)
