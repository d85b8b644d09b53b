"""`forwarding = "kernel"` in the engine: a new flow is scheduled as in engine mode and
handed to the kernel with a mark naming (real server, port, laddr); nothing enters the
engine's table.  The config reader refuses "kernel" until the node installs its rules."""
from __future__ import annotations

import dataclasses
import pytest
from scapy.layers.inet import IP

from director import kernel_rules
from director.config import ConfigError, parse
from director.engine import Engine, Mark
from tests.helpers import CLIENT, LADDRS, RS, VIP, make_config, tcp, udp


def kernel_config(persistent=0.0):
    cfg = make_config()
    services = tuple(dataclasses.replace(s, forwarding="kernel", persistent=persistent)
                     if s.proto == "tcp" else s for s in cfg.services)
    return dataclasses.replace(cfg, services=services)


def binding(eng: Engine, mark: int) -> kernel_rules.Binding:
    return next(b for b in eng.marks.bindings() if b.mark == mark)


def test_first_packet_gets_a_mark_naming_the_scheduled_binding():
    eng = Engine(kernel_config())
    verdicts = [eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0) for i in range(6)]
    assert all(type(v) is Mark for v in verdicts)
    chosen = [binding(eng, v.mark) for v in verdicts]
    # rr over the three real servers, round-robin over the two laddrs, the port as configured
    assert [b.rs_addr for b in chosen] == RS + RS
    assert [b.laddr for b in chosen] == LADDRS * 3
    assert {b.rs_port for b in chosen} == {8080}
    assert all(v.mark & kernel_rules.MARK_PREFIX_MASK == kernel_rules.MARK_BASE for v in verdicts)
    assert len(eng.table) == 0 and eng.stats["kernel_handoffs"] == 6 and eng.stats["conns_new"] == 0
    svc = next(s for s in eng.services.values() if s.forwarding == "kernel")
    assert [d.conns_total for d in svc.dests] == [2, 2, 2]


def test_same_binding_same_mark_and_the_kernel_rules_carry_it():
    eng = Engine(kernel_config())
    marks = [eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0).mark for i in range(12)]
    assert len(set(marks)) == 6         # 3 real servers x 2 laddrs
    text = kernel_rules.ruleset([], eng.marks.bindings())
    for b in eng.marks.bindings():
        assert f"0x{b.mark:08x} : {b.rs_addr} . {b.rs_port}" in text


def test_engine_mode_service_beside_is_unchanged():
    eng = Engine(kernel_config())
    out = eng.handle(udp(CLIENT, VIP, 40000, 80), 0.0)
    assert isinstance(out, bytes) and IP(out).dst in RS and len(eng.table) == 1


def test_not_a_syn_is_not_scheduled():
    eng = Engine(kernel_config())
    assert eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.0) is None
    assert eng.drops["no_conn"] == 1 and eng.stats["kernel_handoffs"] == 0


def test_persistence_pins_a_client_in_kernel_mode_too():
    eng = Engine(kernel_config(persistent=300.0))
    first = [binding(eng, eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), float(i)).mark).rs_addr
             for i in range(4)]
    assert len(set(first)) == 1


def test_no_usable_server_still_answers_like_ip_vs_leave():
    cfg = kernel_config()
    eng = Engine(cfg)
    for svc in eng.services.values():
        for d in svc.dests:
            d.weight = 0
        svc.scheduler.update(svc.dests)
    out = eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0)
    assert type(out) is not Mark and eng.drops["no_dest"] == 1


def test_status_describes_the_mode():
    eng = Engine(kernel_config())
    modes = {s.describe()["proto"]: s.describe()["forwarding"] for s in eng.services.values()}
    assert modes == {"tcp": "kernel", "udp": "engine"}


def test_reader_default_and_refusals():
    """"kernel" is read; a kernel-mode service may not share its VIP or laddrs with an
    engine-mode one (the engine's NOTRACK would take its packets out of conntrack), and
    one-packet scheduling needs the engine."""
    assert {s.forwarding for s in make_config().services} == {"engine"}
    doc = {"node": {"name": "t"}, "services": [{
        "proto": "tcp", "vip": VIP, "port": 80, "laddrs": LADDRS, "forwarding": "kernel",
        "real_servers": [{"addr": RS[0], "port": 8080}]}]}
    assert parse(doc, "t.toml").services[0].forwarding == "kernel"
    doc["services"].append({"proto": "udp", "vip": VIP, "port": 80, "laddrs": ["198.18.2.99"],
                            "real_servers": [{"addr": RS[0], "port": 8080}]})
    with pytest.raises(ConfigError) as e:
        parse(doc, "t.toml")
    assert "services[1].vip" in str(e.value) and "services[0].vip" in str(e.value)
    doc["services"][1].update(vip="198.18.0.99", laddrs=[LADDRS[1]])
    with pytest.raises(ConfigError) as e:
        parse(doc, "t.toml")
    assert "services[1].laddrs[0]" in str(e.value)
    doc["services"][1].update(laddrs=["198.18.2.99"])
    assert [s.forwarding for s in parse(doc, "t.toml").services] == ["kernel", "engine"]
    doc["services"][0].update(proto="udp", ops=True)
    with pytest.raises(ConfigError) as e:
        parse(doc, "t.toml")
    assert "services[0].forwarding" in str(e.value) and "ops" in str(e.value)
    doc["services"][0]["forwarding"] = "fast"
    with pytest.raises(ConfigError):
        parse(doc, "t.toml")


class _Packet:
    """What the adapter uses of a netfilterqueue packet."""

    def __init__(self, data: bytes) -> None:
        self.data, self.mark, self.verdict = data, None, None

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, data: bytes) -> None:
        self.data = data

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"


def test_queue_adapter_accepts_a_mark_verdict_unchanged_with_the_mark():
    from director.nfqueue import QueueAdapter
    eng = Engine(kernel_config())
    adapter = QueueAdapter(eng.handle, 0, clock=lambda: 1.0)
    syn = tcp(CLIENT, VIP, 40000, 80, "S")
    pkt = _Packet(syn)
    adapter._on_packet(pkt)
    assert (pkt.verdict, pkt.data) == ("accept", syn)
    assert binding(eng, pkt.mark).rs_addr == RS[0]
    other = _Packet(udp(CLIENT, VIP, 40000, 80))
    adapter._on_packet(other)
    assert other.verdict == "accept" and other.mark is None and IP(other.data).dst in RS
