"""The privileged interface (tandem.kernel) and the code that uses it, against the fake.

Nothing here needs root: the takeover and the NFQUEUE adapter are driven
through tests/fake_kernel.py, which keeps the state a kernel would and records every call.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import inspect
import logging
import socket

import pytest

from director.nfqueue import BATCH, QueueAdapter
from ha.takeover import Takeover, TakeoverConfig
from tandem.kernel import Kernel, LinuxKernel
from tests.fake_kernel import FakeKernel

VIPS = ("198.18.0.100",)
LADDRS = ("198.18.2.100", "198.18.2.101")


def _methods(cls) -> dict[str, list[str]]:
    return {name: list(inspect.signature(fn).parameters)
            for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_the_fake_and_the_real_kernel_implement_every_operation_of_the_interface():
    wanted = _methods(Kernel)
    assert set(wanted) == {"install_rules", "remove_rules", "install_kernel_rules",
                           "remove_kernel_rules", "kernel_timeout_objects", "remove_timeouts", "kernel_drop_counters", "open_ct_events", "dump_conntrack", "open_ct_dump",
                           "delete_conntrack", "get_conntrack", "open_ct_inject", "set_ct_timeouts", "add_addresses", "del_addresses",
                           "links_down", "announce", "bind_queue", "open_vrrp_socket"}
    for impl in (LinuxKernel, FakeKernel):
        have = _methods(impl)
        for name, params in wanted.items():
            assert have.get(name) == params, (impl.__name__, name)


def takeover(kernel, garp_count=3) -> Takeover:
    return Takeover(TakeoverConfig("front", "back", VIPS, LADDRS, garp_count, 0.0), kernel)


def test_acquire_adds_vips_on_front_then_laddrs_on_back_and_release_removes_them():
    k = FakeKernel()
    t = takeover(k)
    asyncio.run(t.acquire())
    assert t.held
    assert k.addresses == {"front": set(VIPS), "back": set(LADDRS)}
    assert [c for c in k.calls] == [("add_addresses", ("front", VIPS)),
                                    ("add_addresses", ("back", LADDRS))]
    asyncio.run(t.release())
    assert not t.held
    assert k.addresses == {"front": set(), "back": set()}
    assert k.calls[2:] == [("del_addresses", ("front", VIPS)), ("del_addresses", ("back", LADDRS))]


def test_acquire_on_a_missing_interface_raises_and_holds_nothing():
    k = FakeKernel(links=("back",))
    t = takeover(k)
    with pytest.raises(OSError) as exc:
        asyncio.run(t.acquire())
    assert exc.value.errno == errno.ENODEV
    assert not t.held and k.addresses["back"] == set()


def test_announce_sends_garp_count_rounds_on_both_segments():
    k = FakeKernel()
    asyncio.run(takeover(k, garp_count=3).announce())
    assert collections.Counter(k.announced) == {("front", VIPS): 3, ("back", LADDRS): 3}


def test_a_refused_announce_is_logged_and_the_other_segment_still_announced(caplog):
    k = FakeKernel()
    k.fail("announce", PermissionError(errno.EPERM, "Operation not permitted"))
    with caplog.at_level(logging.WARNING, "tandem.takeover"):
        asyncio.run(takeover(k, garp_count=2).announce())
    refused = k.calls[0][1][0]          # the first segment asked is the one refused
    other = "back" if refused == "front" else "front"
    assert [i for i, _ in k.announced] == [other, other]
    assert f"gratuitous ARP on {refused} not sent" in caplog.text


def test_ipv6_only_addresses_are_announced_every_round():
    """Issue 15: an IPv6 takeover address is announced by unsolicited neighbour advertisement
    (before, IPv6-only segments sent nothing and stopped after one call)."""
    k = FakeKernel()
    t = Takeover(TakeoverConfig("front", "back", ("2001:2::100",), (), 5, 0.0), k)
    asyncio.run(asyncio.wait_for(t.announce(), 5.0))
    assert k.announced == [("front", ("2001:2::100",))] * 5
    assert [c[0] for c in k.calls] == ["announce"] * 5


def test_queue_adapter_binds_through_the_interface_and_returns_each_verdict():
    k = FakeKernel()

    def handle(data: bytes, now: float):
        return {b"drop": None, b"keep": data}.get(data, data.upper())

    async def go():
        a = QueueAdapter(handle, 5, clock=lambda: 1.0, bind=k.bind_queue)
        a.start(asyncio.get_running_loop())
        q = k.queues[0]
        for d in (b"drop", b"keep", b"nat"):
            q.feed.send(d)
        for _ in range(200):
            if len(q.verdicts) == 3:
                break
            await asyncio.sleep(0.01)
        a.stop()
        return q

    q = asyncio.run(go())
    assert k.calls[0][0] == "bind_queue" and k.calls[0][1][0] == 5
    assert q.verdicts == [("drop", b"drop"), ("accept", b"keep"), ("accept", b"NAT")]
    assert not q.bound


def test_queue_adapter_handles_at_most_a_batch_per_wakeup():
    """The loop that reads the queue also sends VRRP adverts: one wake-up never drains more
    than BATCH packets, however many wait (docs/architecture.md, the packet path).  The
    clock stands still, so the count alone ends a wake-up: on a busy machine TURN_BUDGET
    (2 ms of the real clock) ended one after 218 packets, failing this test by load."""
    k = FakeKernel()
    per_wakeup: collections.Counter = collections.Counter()
    total = BATCH + BATCH // 2

    async def go():
        adapter = None

        def handle(data: bytes, now: float) -> bytes:
            per_wakeup[adapter.wakeups] += 1
            return data

        adapter = QueueAdapter(handle, 0, bind=k.bind_queue, clock=lambda: 0.0)
        adapter.start(asyncio.get_running_loop())
        q = k.queues[0]
        q.feed.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        for i in range(total):
            q.feed.send(i.to_bytes(4, "big"))
        for _ in range(500):
            if len(q.verdicts) == total:
                break
            await asyncio.sleep(0.01)
        adapter.stop()
        return q

    q = asyncio.run(go())
    assert len(q.verdicts) == total
    assert max(per_wakeup.values()) == BATCH
    assert len(per_wakeup) >= 2


def test_a_failing_iptables_command_reports_what_it_said():
    """A node that cannot run its rules (e.g. iptables-legacy refused its lock file) must say
    why in its log, not only which command failed."""
    from director import rules
    with pytest.raises(rules.RulesError) as exc:
        rules._run(["/bin/sh", "-c", "echo \"Fatal: can't open lock file /run/xtables.lock: "
                    "Permission denied\" >&2; exit 4"])
    assert "exited 4" in str(exc.value)
    assert "can't open lock file /run/xtables.lock: Permission denied" in str(exc.value)
    assert rules._run(["/bin/sh", "-c", "exit 1"], check=False).returncode == 1


# -- IPv6 takeover addresses: unsolicited neighbour advertisements --------------------------------------

def test_announce_frames_are_garp_for_ipv4_and_na_for_ipv6():
    """What LinuxKernel.announce sends, address by address, for a dual-stack list."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr
    from scapy.layers.l2 import ARP, Ether
    from tandem.kernel import announce_frames
    mac = bytes.fromhex("020000000a0b")
    frames = announce_frames(mac, ["198.18.0.100", "2001:2:0:51::100", "2001:2:0:52::7"])
    assert [t for _, t in frames] == [0x0806, 0x86DD, 0x86DD]
    assert Ether(frames[0][0])[ARP].psrc == "198.18.0.100"
    for (raw, _), addr in zip(frames[1:], ["2001:2:0:51::100", "2001:2:0:52::7"]):
        na = Ether(raw)[ICMPv6ND_NA]
        assert (na.tgt, na.O, na.S) == (addr, 1, 0)
        assert Ether(raw)[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:00:0a:0b"
    assert announce_frames(mac, []) == []


def test_takeover_announces_ipv6_vips_and_laddrs_too():
    k = FakeKernel()
    vips6, laddrs6 = ("198.18.0.100", "2001:2:0:51::100"), ("2001:2:0:2::100",)
    t = Takeover(TakeoverConfig("front", "back", vips6, laddrs6, 2, 0.0), k)
    asyncio.run(t.announce())
    assert collections.Counter(k.announced) == {("front", vips6): 2, ("back", laddrs6): 2}


def test_ipv6_addresses_are_added_with_nodad():
    """IFA_F_NODAD is the kernel's value (linux/if_addr.h): 0x02, as pyroute2 names it."""
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD
    from tandem import kernel
    assert kernel.IFA_F_NODAD == IFA_F_NODAD == 0x02
