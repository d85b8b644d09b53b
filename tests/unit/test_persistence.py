"""Persistence templates, one-packet scheduling, quiescing and reconfiguration."""
from __future__ import annotations

import copy

from scapy.layers.inet import IP, TCP, UDP

from director.config import parse
from director.engine import Engine
from tests.helpers import CLIENT, LADDRS, RS, VIP, tcp, udp

BASE = {"node": {"name": "t"},
        "services": [{"proto": "tcp", "vip": VIP, "port": 80, "scheduler": "rr", "laddrs": LADDRS,
                      "real_servers": [{"addr": a, "port": 8080} for a in RS]},
                     {"proto": "udp", "vip": VIP, "port": 53, "scheduler": "rr", "laddrs": LADDRS,
                      "real_servers": [{"addr": a, "port": 8053} for a in RS]}]}


def cfg(mutate=lambda d: None):
    d = copy.deepcopy(BASE)
    mutate(d)
    return parse(d, "t.toml")


def syn(eng, src, sport, now=0.0):
    out = eng.handle(tcp(src, VIP, sport, 80, "S"), now)
    return IP(out).dst if out else None


def test_persistent_service_pins_a_client_to_one_server():
    eng = Engine(cfg(lambda d: d["services"][0].update(persistent=300)))
    dsts = {syn(eng, CLIENT, 40000 + i) for i in range(20)}
    assert len(dsts) == 1
    other = syn(eng, "198.18.1.11", 40000)
    assert other != dsts.pop()                  # rr moved on for a new client
    assert len(eng.templates) == 2
    t = next(iter(eng.templates.by_key.values()))
    assert t.dest.persist == 1 and t.n_control in (1, 20)


def test_persistence_netmask_groups_clients():
    eng = Engine(cfg(lambda d: d["services"][0].update(persistent=300, persist_netmask=24)))
    dsts = {syn(eng, f"198.18.1.{h}", 40000) for h in range(10, 30)}
    assert len(dsts) == 1 and len(eng.templates) == 1


def test_template_outlives_its_timeout_while_it_controls_connections():
    eng = Engine(cfg(lambda d: (d["services"][0].update(persistent=5),
                                d.update(timeouts={"tcp_syn_recv": 100}))))
    first = syn(eng, CLIENT, 40000, 0.0)
    eng.expire(10.0)
    assert len(eng.templates) == 1               # still controls the SYN_RECV entry
    eng.expire(101.0)                            # the connection expires...
    assert len(eng.table) == 0
    eng.expire(131.0)                            # ...and the template's 60 s grace ends
    assert len(eng.templates) == 0
    assert syn(eng, CLIENT, 40001, 132.0) is not None
    assert first in RS


def test_quiesced_server_takes_no_new_connections_but_keeps_old_ones():
    eng = Engine(cfg())
    dst0 = syn(eng, CLIENT, 40000)
    eng.reconfigure(cfg(lambda d: d["services"][0]["real_servers"][RS.index(dst0)].update(weight=0)), 1.0)
    new = {syn(eng, CLIENT, 41000 + i, 1.0) for i in range(9)}
    assert dst0 not in new and len(new) == 2
    assert eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 2.0) is not None   # the old one still flows


def test_removing_a_server_expires_its_connections_by_default():
    eng = Engine(cfg())
    dsts = [syn(eng, CLIENT, 40000 + i) for i in range(3)]
    gone = RS[2]
    summary = eng.reconfigure(cfg(lambda d: d["services"][0]["real_servers"].pop(2)), 1.0)
    assert summary["servers_removed"] == 1 and summary["conns_expired"] == 1
    assert len(eng.table) == 2
    assert gone not in {c.dest.addr_str for c in eng.table}
    assert eng.handle(tcp(CLIENT, VIP, 40000 + dsts.index(gone), 80, "A"), 2.0) is None


def test_removing_a_server_can_keep_its_connections_until_they_end():
    keep = lambda d: d["node"].update(removed_server_conns="keep")
    eng = Engine(cfg(keep))
    dsts = [syn(eng, CLIENT, 40000 + i) for i in range(3)]
    eng.reconfigure(cfg(lambda d: (keep(d), d["services"][0]["real_servers"].pop(2))), 1.0)
    assert len(eng.table) == 3
    i = dsts.index(RS[2])
    assert IP(eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "A"), 2.0)).dst == RS[2]
    assert all(syn(eng, CLIENT, 42000 + k, 2.0) != RS[2] for k in range(6))


def test_reload_adds_a_server_and_changes_weights_keeping_every_connection():
    eng = Engine(cfg())
    for i in range(30):
        syn(eng, CLIENT, 40000 + i)
    before = {(c.cport, c.daddr, c.lport) for c in eng.table}
    def grow(d):
        d["services"][0]["real_servers"].append({"addr": "198.18.2.24", "port": 8080})
        d["services"][0]["real_servers"][0]["weight"] = 3
    summary = eng.reconfigure(cfg(grow), 1.0)
    assert summary["conns_expired"] == 0
    assert {(c.cport, c.daddr, c.lport) for c in eng.table} == before
    assert any(syn(eng, CLIENT, 43000 + k, 1.0) == "198.18.2.24" for k in range(8))


def test_one_packet_scheduling_schedules_each_datagram_and_translates_replies():
    eng = Engine(cfg(lambda d: d["services"][1].update(ops=True)))
    outs = [IP(eng.handle(udp(CLIENT, VIP, 5000, 53), 0.0)) for _ in range(6)]
    assert {o.dst for o in outs} == set(RS)            # same client socket, every server
    o = outs[0]
    back = IP(eng.handle(udp(o.dst, o.src, 8053, o[UDP].sport), 0.1))
    assert (back.src, back.dst, back[UDP].dport) == (VIP, CLIENT, 5000)
    eng.expire(2.5)
    assert len(eng.table) == 0


def test_ops_is_refused_for_tcp():
    import pytest
    from director.config import ConfigError
    with pytest.raises(ConfigError, match=r"services\[0\].ops: .*only for UDP"):
        cfg(lambda d: d["services"][0].update(ops=True))


def test_templates_travel_with_their_connections_to_the_peer():
    """As ip_vs_sync_conn: a synced connection brings its template, so after a
    failover a persistent client keeps its real server for new connections too."""
    from syncd.policy import SyncPolicy, make_hook
    persistent = lambda d: d["services"][0].update(persistent=300)
    master, backup = Engine(cfg(persistent)), Engine(cfg(persistent))
    sent = []
    master.sync_hook = make_hook(SyncPolicy(), master, lambda e, now, urgent=False: sent.append(e))
    dst = syn(master, CLIENT, 40000)
    out = IP(master.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))  # retransmitted SYN
    fwd = IP(master.handle(tcp(dst, out.src, 8080, out[TCP].sport, "SA"), 0.0))
    for _ in range(2):
        master.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.1)
    assert [e.template for e in sent] == [False, True] * 2   # at the SYN and at ESTABLISHED
    for e in sent:
        backup.apply_synced(**e.apply_kwargs(), now=0.2)
    assert len(backup.templates) == 1
    # on the backup, a new connection of the same client goes to the same server,
    # whatever its scheduler would have picked
    assert {syn(backup, CLIENT, 41000 + i, 1.0) for i in range(6)} == {dst}
    assert fwd is not None
