"""The NFQUEUE adapter carries whole packets: reassembled datagrams up to 65,535 bytes.

The kernel reassembles fragments before the queue (director/rules.py), so a queued UDP
datagram can be as large as IP allows.  netfilterqueue asks the kernel for 4,016 bytes of
each packet and reads 4,096-byte messages; the adapter must raise the queue's copy range
(NFQNL_MSG_CONFIG, NFQA_CFG_PARAMS, as nfq_set_mode sends it) and read whole messages.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable

import pytest
from scapy.layers.inet import IP, UDP

from director.engine import Engine
from director.nfqueue import (COPY_RANGE, QueueAdapter, config_message, queue_copy_range,
                              set_copy_range)
from tests.fake_kernel import FakeKernel, FakeQueue
from tests.helpers import CLIENT, VIP, checksums_ok, make_config

#: what netfilterqueue 1.1.0's run_socket asks of the socket it is given (BufferSize)
NFQ_BUFFER = 4096


class _NfqLikeQueue(FakeQueue):
    """FakeQueue reading as netfilterqueue's run_socket does: recv(4096) per message."""

    def run_socket(self, sock) -> None:
        from tests.fake_kernel import _FakePacket
        while True:
            try:
                data = sock.recv(NFQ_BUFFER)
            except BlockingIOError:
                return
            self.callback(_FakePacket(self, data))


def _fake_binding() -> tuple[Callable, list[FakeQueue]]:
    """A `bind` for QueueAdapter onto a fake kernel, and the queues it binds (read as
    netfilterqueue reads)."""
    k = FakeKernel()
    queues: list[FakeQueue] = []

    def bind(queue, callback, max_len, sock_len):
        k.bind_queue(queue, callback, max_len, sock_len)
        queues.append(_NfqLikeQueue(queue, callback))
        return queues[-1]
    return bind, queues


def _run_adapter(handle, packets: list[bytes]) -> list[tuple[str, bytes]]:
    bind, queues = _fake_binding()

    async def go():
        a = QueueAdapter(handle, 0, clock=lambda: 1.0, bind=bind)
        a.start(asyncio.get_running_loop())
        q = queues[0]
        q.feed.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for p in packets:
            q.feed.send(p)
        for _ in range(300):
            if len(q.verdicts) == len(packets):
                break
            await asyncio.sleep(0.01)
        a.stop()
        return q.verdicts

    return asyncio.run(go())


@pytest.mark.parametrize("size", [3000, COPY_RANGE - 28])
def test_the_engine_gets_and_rewrites_a_whole_reassembled_datagram(size):
    """A reassembled 3,000-byte (and the largest NFQUEUE carries, 65,503-byte) UDP datagram to the VIP reaches
    the engine whole and leaves rewritten whole, with valid checksums, although the binding
    reads the way netfilterqueue does (4,096 bytes asked)."""
    eng = Engine(make_config())
    payload = bytes(i * 13 & 0xFF for i in range(size))
    pkt = bytes(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=80) / payload)
    verdicts = _run_adapter(eng.handle, [pkt])
    assert [v for v, _ in verdicts] == ["accept"], eng.drops
    out = verdicts[0][1]
    assert len(out) == len(pkt) and out[-size:] == payload
    assert IP(out).dst != VIP and checksums_ok(out)


def test_config_message_is_nfq_set_mode_copy_packet_with_the_whole_range():
    """The layout of linux/netfilter/nfnetlink_queue.h: nlmsghdr, nfgenmsg with the queue
    number as res_id (big-endian), one NFQA_CFG_PARAMS {__be32 copy_range; __u8 mode}."""
    msg = config_message(513)
    length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and length % 4 == 0
    assert mtype >> 8 == 3 and mtype & 0xFF == 2          # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags & 1                                        # NLM_F_REQUEST
    family, version, res_id = struct.unpack_from("!BBH", msg, 16)
    assert (family, version, res_id) == (socket.AF_UNSPEC, 0, 513)
    nla_len, nla_type = struct.unpack_from("=HH", msg, 20)
    assert (nla_len, nla_type) == (9, 2)
    copy_range, mode = struct.unpack_from("!IB", msg, 24)
    assert (copy_range, mode) == (COPY_RANGE, 2) and COPY_RANGE == 65535 - 4   # NFQNL_MAX_COPY_RANGE


def _proc(tmp_path, queue: int, copy_range: int):
    p = tmp_path / "nfnetlink_queue"
    # queue portid queue_total copy_mode copy_range queue_dropped user_dropped id_seq 1
    p.write_text(f"    7  12345     0 2 {copy_range}     0     0        0  1\n"
                 f"    {queue}  23456     0 2 {copy_range}     0     0        0  1\n")
    return str(p)


def test_set_copy_range_sends_the_config_on_the_queue_socket_and_checks_the_kernel_took_it(tmp_path):
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        assert set_copy_range(ours.fileno(), 4, path=_proc(tmp_path, 4, COPY_RANGE)) is True
        assert kernel.recv(1 << 16) == config_message(4)
        assert queue_copy_range(4, _proc(tmp_path, 4, 4016)) == 4016
        with pytest.raises(OSError, match="copy range is 4016, not 65531"):
            set_copy_range(ours.fileno(), 4, path=_proc(tmp_path, 4, 4016))
        with pytest.raises(OSError, match="copy range is None"):
            set_copy_range(ours.fileno(), 9, path=_proc(tmp_path, 4, COPY_RANGE))


@pytest.mark.parametrize("family", [4, 6])
def test_a_fragment_that_reaches_the_queue_is_dropped_counted_and_exported(family):
    """With the kernel's reassembly on, no fragment reaches the queue; one that does (reassembly
    off) is dropped and counted as `fragment`, first fragment included: forwarding the first
    alone, as before, opened a connection for half a datagram whose rest was dropped."""
    from prometheus_client.parser import text_string_to_metric_families
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6, fragment6, IPv6ExtHdrFragment

    from director.metrics import EngineCollector, render
    from tests.helpers import make_config as mk

    if family == 4:
        eng = Engine(mk())
        whole = IP(src=CLIENT, dst=VIP, id=77) / UDP(sport=40000, dport=80) / (b"q" * 3000)
        frags = [bytes(f) for f in fragment(whole, fragsize=1480)]
    else:
        vip6, client6 = "2001:2:0:10::100", "2001:2:0:1::10"
        eng = Engine(mk(services=[{
            "proto": "udp", "vip": vip6, "port": 80, "scheduler": "rr", "laddrs": ["2001:2:0:20::100"],
            "real_servers": [{"addr": "2001:2:0:20::21", "port": 8080, "weight": 1}]}]))
        whole = (IPv6(src=client6, dst=vip6) / IPv6ExtHdrFragment(id=77)
                 / UDP(sport=40000, dport=80) / (b"q" * 3000))
        frags = [bytes(f) for f in fragment6(whole, 1280)]
    assert len(frags) >= 3
    assert [eng.handle(f, 0.0) for f in frags] == [None] * len(frags)
    assert eng.drops["fragment"] == len(frags)
    assert len(eng.table) == 0 and eng.stats["conns_new"] == 0
    # the same datagram reassembled, as the kernel hands it over, opens a connection
    reassembled = whole.copy()
    if family == 6:
        reassembled = IPv6(src=whole.src, dst=whole.dst) / whole[UDP]
    assert eng.handle(bytes(reassembled), 0.0) is not None and eng.stats["conns_new"] == 1
    body, _ = render(EngineCollector(eng))
    drops = {s.labels["reason"]: s.value for fam in text_string_to_metric_families(body.decode())
             for s in fam.samples if s.name == "tandem_engine_drops_total"}
    assert drops["fragment"] == len(frags)


def test_a_node_that_may_not_read_the_queue_list_still_sets_the_range_and_starts(tmp_path, monkeypatch):
    """/proc/net/netfilter/nfnetlink_queue is root's (0440): a node running as its own user
    with CAP_NET_ADMIN sends the configuration all the same and trusts the kernel."""
    import director.nfqueue as nfqueue

    def refused(path, *_a, **_k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(nfqueue, "open", refused, raising=False)   # root reads anything
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        assert set_copy_range(ours.fileno(), 4, path=_proc(tmp_path, 4, 4016)) is False
        assert kernel.recv(1 << 16) == config_message(4)


def test_a_wake_up_stops_taking_packets_when_its_time_budget_is_spent():
    """A verdict may cost the kernel's whole onward path (kernel mode's first packets): the
    adapter hands the loop back once TURN_BUDGET has passed, not after BATCH packets, and
    loses none of the packets it left for the next wake-up."""
    from director import nfqueue
    t = [100.0]
    per_packet = nfqueue.TURN_BUDGET * 0.6   # the second packet of a wake-up spends it
    seen: list[int] = []                # the wake-up each packet was handled in
    adapter: list[QueueAdapter] = []

    def handle(data: bytes, now: float) -> bytes:
        seen.append(adapter[0].wakeups)
        t[0] += per_packet              # what the verdict of this packet costs
        return data

    bind, queues = _fake_binding()

    packets = [bytes([i]) * 40 for i in range(10)]

    async def go():
        a = QueueAdapter(handle, 0, clock=lambda: t[0], bind=bind)
        adapter.append(a)
        a.start(asyncio.get_running_loop())
        for p in packets:
            queues[0].feed.send(p)
        for _ in range(300):
            if len(queues[0].verdicts) == len(packets):
                break
            await asyncio.sleep(0.01)
        a.stop()
        return queues[0].verdicts

    verdicts = asyncio.run(go())
    assert [v for _, v in verdicts] == packets and {k for k, _ in verdicts} == {"accept"}
    per_wakeup = [seen.count(w) for w in sorted(set(seen))]
    assert max(per_wakeup) == 2 and len(per_wakeup) == 5


def test_a_verdict_that_fails_inside_another_readers_turn_stays_the_queues_fault():
    """serve_pending runs inside the conntrack event reader's turn (kernel mode): an
    exception out of a verdict is counted and logged there, not raised into that reader,
    which would take it for a failed read and rebuild its whole view from a dump."""
    bind, queues = _fake_binding()

    def handle(data: bytes, now: float) -> bytes:
        raise RuntimeError("a bug in the engine")

    async def go():
        a = QueueAdapter(handle, 0, clock=lambda: 1.0, bind=bind)
        a.start(asyncio.get_running_loop())
        a._loop.remove_reader(queues[0].get_fd())       # only serve_pending reads here
        queues[0].feed.send(b"\x45" + bytes(39))
        a.serve_pending()
        errors = a.serve_errors
        a.stop()
        return errors

    assert asyncio.run(go()) == 1


def test_serve_pending_takes_only_a_short_budget_of_another_readers_turn():
    """The event reader calls serve_pending before each slice of events: it serves what
    waits for at most PENDING_BUDGET, so a burst of first packets cannot starve the events
    (and the sync entries they make) of the event reader's own turn."""
    from director import nfqueue
    t = [100.0]
    served: list[bytes] = []
    bind, queues = _fake_binding()

    def handle(data: bytes, now: float) -> bytes:
        served.append(data)
        t[0] += nfqueue.PENDING_BUDGET * 0.6        # two verdicts spend one call's budget
        return data

    async def go():
        a = QueueAdapter(handle, 0, clock=lambda: t[0], bind=bind)
        a.start(asyncio.get_running_loop())
        a._loop.remove_reader(queues[0].get_fd())   # only serve_pending reads here
        for i in range(10):
            queues[0].feed.send(bytes([i]) * 40)
        per_call = []
        for _ in range(5):
            before = len(served)
            a.serve_pending()
            per_call.append(len(served) - before)
        a.stop()
        return per_call

    assert asyncio.run(go()) == [2, 2, 2, 2, 2]
