"""The Prometheus collectors, fed by the real objects of a node (engine, VRRP runner, sync
link, NodeParts) and parsed back with prometheus_client's own parser."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP

from director.config import parse
from director.engine import Engine
from director.metrics import (BACKEND_LABELS, EngineCollector, IpvsCollector, NodeCollector,
                              QueueCollector, SyncCollector, VrrpCollector, collectors, render)
from director.nfqueue import kernel_queue_stats
from director.status import NodeParts, SyncStats, VrrpCounters, VrrpStatus
from ha.vrrp import State, VrrpConfig
from ha.vrrp_io import VrrpRunner
from proto import vrrp as V
from tandem.ha import SyncLink
from tests.helpers import CLIENT, RS, VIP, make_config, tcp, udp


def scrape(*collectors) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}, and the families' types."""
    body, ctype = render(*collectors)
    assert ctype.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(body.decode()):
        types[fam.name] = fam.type
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    out["__types__"] = types  # type: ignore[assignment]
    return out


def backend(addr, proto="TCP", port=8080):
    return tuple(sorted({"local_address": VIP, "local_port": "80", "remote_address": addr,
                         "remote_port": str(port), "proto": proto, "local_mark": ""}.items()))


def drive(eng: Engine) -> None:
    """One established TCP connection to RS[0], one SYN to RS[1], one UDP flow, two drops."""
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    assert fwd.dst == RS[0]
    assert eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=5000, ack=1001), 0.0)
    assert eng.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=5001), 0.0)
    assert eng.handle(tcp(CLIENT, VIP, 40001, 80, "S"), 0.0)
    assert eng.handle(udp(CLIENT, VIP, 5353, 80, b"hello"), 0.0)
    assert eng.handle(tcp(CLIENT, VIP, 40002, 81, "S"), 0.0) is None      # no_service
    assert eng.handle(tcp(CLIENT, VIP, 40003, 80, "A"), 0.0) is None      # no_conn


def all_of(eng: Engine, node: NodeParts | None = None, **kw):
    return collectors(eng, node or NodeParts("lb1", "master"), queue_stats=lambda: {}, **kw)


def test_ipvs_metrics_follow_node_exporter():
    eng = Engine(make_config())
    drive(eng)
    m = scrape(*all_of(eng))
    types = m["__types__"]
    syn, ack = 40, 40               # scapy's bare IPv4+TCP packets
    udp_len = 20 + 8 + 5
    # node-wide counters, as node_ipvs_*
    assert m["tandem_ipvs_connections_total"][()] == 3
    assert m["tandem_ipvs_incoming_packets_total"][()] == 4
    assert m["tandem_ipvs_outgoing_packets_total"][()] == 1
    assert m["tandem_ipvs_incoming_bytes_total"][()] == syn + ack + syn + udp_len
    assert m["tandem_ipvs_outgoing_bytes_total"][()] == 40
    for name in ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"):
        assert types[f"tandem_ipvs_{name}"] == "counter"
    # per-backend gauges with node_exporter's labels
    active = m["tandem_ipvs_backend_connections_active"]
    inactive = m["tandem_ipvs_backend_connections_inactive"]
    weight = m["tandem_ipvs_backend_weight"]
    assert len(active) == len(inactive) == len(weight) == 6      # 3 servers x tcp/udp
    for labels in active:
        assert {k for k, _ in labels} == set(BACKEND_LABELS)
    assert active[backend(RS[0])] == 1 and inactive[backend(RS[0])] == 0
    assert active[backend(RS[1])] == 0 and inactive[backend(RS[1])] == 1
    assert weight[backend(RS[2], "UDP")] == 1
    assert types["tandem_ipvs_backend_connections_active"] == "gauge"
    assert m["tandem_ipvs_backend_connections_total"][backend(RS[0])] == 1
    assert m["tandem_ipvs_backend_incoming_packets_total"][backend(RS[0])] == 2
    assert m["tandem_ipvs_backend_outgoing_bytes_total"][backend(RS[0])] == 40
    assert m["tandem_ipvs_backend_incoming_bytes_total"][backend(RS[0], "UDP")] == udp_len


ME, PEER = "198.18.250.2", "198.18.250.1"
VRRP_VIP = "198.18.250.100"


def election(priority: int = 150) -> VrrpRunner:
    """A real VRRP runner on interface "front" (its socket is never opened here)."""
    cfg = VrrpConfig(vrid=51, priority=priority, advert_interval=0.1, addresses=(VRRP_VIP,),
                     primary_address=ME)
    return VrrpRunner(cfg, "front")


def hear(runner: VrrpRunner, priority: int, now: float, ttl: int = 255) -> None:
    advert = V.Advert(51, priority, 10, (VRRP_VIP,), 3)
    runner.instance.on_packet(V.encode(advert, PEER, V.VRRP_GROUP4), PEER, V.VRRP_GROUP4, ttl, now)


def test_vrrp_metrics_come_from_the_running_election_like_keepalived_exporter():
    """keepalived-exporter's names and labels, from what the election really counts.

    Before, the API handed the collector the core's `rx`/`tx`/`became_master` while it
    looked for keepalived's `advert_rcvd`/`become_master`: no counter was exported and
    `intf` was empty.  keepalived counts advert_rcvd/advert_sent/become_master per
    instance and the exporter labels them {iname, intf, vrid}."""
    runner = election()
    node = NodeParts("lb1", "init")
    m = scrape(VrrpCollector(node.vrrp_status))
    assert "tandem_vrrp_state" not in m                 # no election attached yet: nothing
    # a node without an election still says its state, as the collector always did
    for role, number in (("init", 0), ("backup", 1), ("master", 2), ("fault", 3)):
        node.set_role(role)
        m = scrape(*all_of(Engine(make_config()), node))
        assert m["tandem_vrrp_state"] == {(("iname", "lb1"), ("intf", ""), ("ip_address", ""),
                                           ("vrid", "")): float(number)}
        assert "tandem_vrrp_advertisements_received_total" not in m
    node.attach_election(runner, 150)
    inst = runner.instance
    inst.start(0.0)                                     # Backup
    hear(runner, 100, 0.05)                             # a lower priority: discarded (preempt)
    hear(runner, 200, 0.10)                             # a higher one: accepted
    hear(runner, 200, 0.15, ttl=64)                     # dropped: not from the link
    inst.on_timer(inst.next_deadline())                 # the master went quiet: Master
    inst.on_timer(inst.next_deadline())                 # one more advert
    assert inst.state is State.MASTER
    c = inst.counters
    assert c["rx"] == 3 and c["became_master"] == 1 and c["tx"] >= 2 and c["drop_ttl"] == 1
    m = scrape(VrrpCollector(node.vrrp_status))
    base = (("iname", "VI_51"), ("intf", "front"), ("vrid", "51"))
    assert m["tandem_vrrp_state"] == {base[:2] + (("ip_address", VRRP_VIP),) + base[2:]: 2.0}
    assert m["tandem_vrrp_priority"] == {base: 150.0}
    assert m["tandem_vrrp_advertisements_received_total"] == {base: c["rx"]}
    assert m["tandem_vrrp_advertisements_sent_total"] == {base: c["tx"]}
    assert m["tandem_vrrp_advertisements_accepted_total"] == {base: c["accepted"]}
    assert m["tandem_vrrp_become_master_total"] == {base: 1.0}
    assert m["tandem_vrrp_ip_ttl_errors_total"] == {base: 1.0}
    assert m["tandem_vrrp_drops_total"][tuple(sorted(base + (("reason", "ttl"),)))] == 1.0
    assert m["__types__"]["tandem_vrrp_advertisements_received"] == "counter"
    # every counter the core keeps reaches /metrics under one name or the drops family
    exported = {k for k in m if k.startswith("tandem_vrrp_") and k.endswith("_total")}
    assert len(exported) >= len([k for k in c if not k.startswith("drop_")]) + 1
    assert VrrpCounters.from_core(c).to_json() == c      # the contract loses nothing


def test_vrrp_contract_matches_the_core_both_ways():
    """A counter added to (or renamed in) the VRRP core must be declared in the contract."""
    runner = election()
    st = VrrpStatus.of(runner)
    assert st.state == "Initialize" and st.state_number == 0 and st.interface == "front"
    assert st.to_json()["counters"] == runner.instance.counters
    core = dict(runner.instance.counters, brand_new=1)
    try:
        VrrpCounters.from_core(core)
    except TypeError:
        pass
    else:
        raise AssertionError("an undeclared counter must not pass silently")
    for state, number in ((State.BACKUP, 1), (State.MASTER, 2), (State.FAULT, 3)):
        assert VrrpStatus(**{**st.__dict__, "state": state.value}).state_number == number


def test_engine_and_queue_counters(tmp_path):
    eng = Engine(make_config())
    drive(eng)
    proc = tmp_path / "nfnetlink_queue"
    #      queue portid queue_total copy_mode copy_range queue_dropped user_dropped id_seq 1
    proc.write_text("    0  12345     2  2 65531    17     4     1000  1\n"
                    "    1  12346     0  2 65531     9     9        0  1\n")
    m = scrape(EngineCollector(eng), QueueCollector(0, lambda: kernel_queue_stats(0, str(proc))))
    types = m["__types__"]
    assert m["tandem_engine_packets_total"][()] == 7
    drops = m["tandem_engine_drops_total"]
    assert drops[(("reason", "no_service"),)] == 1 and drops[(("reason", "no_conn"),)] == 1
    assert drops[(("reason", "table_full"),)] == 0          # every reason, zeros included
    assert m["tandem_engine_conns"][()] == 3 and types["tandem_engine_conns"] == "gauge"
    counts = eng.conn_counts()
    assert m["tandem_engine_conns_by_activity"] == {(("activity", "active"),): counts["active"],
                                                    (("activity", "inactive"),): counts["inactive"]}
    assert counts["active"] + counts["inactive"] == 3
    assert m["tandem_engine_forwarded_packets_total"][(("direction", "in"),)] == 4
    assert m["tandem_engine_conns_created_total"][()] == 3
    assert sum(m["tandem_fullnat_laddr_ports_used"].values()) == 3
    q = (("queue", "0"),)
    assert m["tandem_nfqueue_dropped_total"] == {q: 17.0}
    assert m["tandem_nfqueue_user_dropped_total"] == {q: 4.0}
    assert m["tandem_nfqueue_queued"] == {q: 2.0}
    assert types["tandem_nfqueue_dropped"] == "counter"


SYNC_KEY = "Kq8vZ3nR7tYp2LxW9mC4hJ6sD1fG5bN0"


def sync_node(name: str, me: str, peer: str) -> tuple[Engine, SyncLink]:
    cfg = parse({"node": {"name": name},
                 "sync": {"key": SYNC_KEY, "sync_id": 51, "mode": "unicast",
                          "peers": [f"{peer}:8848"], "interface": me},
                 "services": [{"proto": "tcp", "vip": VIP, "port": 80, "scheduler": "rr",
                               "laddrs": ["198.18.2.100"],
                               "real_servers": [{"addr": RS[0], "port": 8080}]}]}, "t.toml")
    eng = Engine(cfg, now=0.0)
    return eng, SyncLink(cfg, eng)


def test_sync_metrics_come_from_a_real_sync_link_with_declared_kinds():
    """What A's sync link really sends, B's really receives and applies; each sync figure
    is exported with the kind SyncStats declares: the lag and the missing count are
    gauges (before they were guessed from key names and exported as counters
    `tandem_sync_lag_ms_p50_total`, `tandem_sync_missing_total`)."""
    ea, a = sync_node("a", "198.18.3.1", "198.18.3.2")
    eb, b = sync_node("b", "198.18.3.2", "198.18.3.1")
    fwd = IP(ea.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    ea.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=5000, ack=1001), 0.0)
    ea.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=5001), 0.0)
    wire = [(b, d) for d in a.sender.poll(1.0)]
    assert wire
    for _ in range(50):         # both ways, as on the network: b first challenges a's epoch
        if not wire:
            break
        dst, d = wire.pop(0)
        wire += [(a if dst is b else b, r) for r in dst.receiver.on_datagram(d, 1.0)]
    assert eb.table.count == 1
    node_b = NodeParts("b", "backup", sync=b)
    stats = node_b.sync_stats()
    assert isinstance(stats, SyncStats) and stats.to_json() == {**b.describe()}
    m = scrape(SyncCollector(eb, node_b.sync_stats))
    types = m["__types__"]
    assert m["tandem_sync_apply_total"][()] == eb.sync_stats["applied"] == 2   # at the SYN and at ESTABLISHED
    assert m["tandem_sync_apply_created_total"][()] == 1
    assert m["tandem_sync_receiver_received_total"][()] == b.receiver.stats["received"] >= 1
    assert m["tandem_sync_receiver_entries_applied_total"][()] == 2
    assert m["tandem_sync_applied_created_total"][()] == 1
    assert types["tandem_sync_receiver_received"] == "counter"
    assert types["tandem_sync_missing"] == "gauge" and m["tandem_sync_missing"][()] == 0
    lag = m["tandem_sync_lag_seconds"]
    assert types["tandem_sync_lag_seconds"] == "gauge"
    assert set(lag) == {(("quantile", "0.5"),), (("quantile", "0.99"),), (("quantile", "1"),)}
    assert lag[(("quantile", "1"),)] == b.receiver.lag()["max"] / 1000
    assert "tandem_sync_missing_total" not in m
    assert not any(n.startswith("tandem_sync_lag_ms") for n in m)
    m = scrape(SyncCollector(ea, NodeParts("a", "master", sync=a).sync_stats))
    assert m["tandem_sync_sender_entries_sent_total"][()] == a.sender.stats["entries_sent"] >= 1
    assert m["tandem_sync_sender_sent_total"][()] == a.sender.stats["sent"]


def test_no_queue_stats_off_node_and_default_reader():
    eng = Engine(make_config())
    m = scrape(QueueCollector(0))               # default: the kernel's file, absent or not ours
    for name, samples in m.items():
        if name.startswith("tandem_nfqueue"):
            assert set(samples) == {(("queue", "0"),)}
    m = scrape(QueueCollector(0, lambda: {}))
    assert not any(n.startswith("tandem_nfqueue") for n in m)


def test_totals_never_go_backwards_when_a_server_is_removed():
    eng = Engine(make_config())
    drive(eng)
    c = IpvsCollector(eng)
    before = scrape(c)
    # reload without RS[0], keeping its connections until they end
    eng.reconfigure(make_config(reals=RS[1:], node={"removed_server_conns": "keep"}), 1.0)
    after = scrape(c)
    for name in ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"):
        key = f"tandem_ipvs_{name}_total"
        assert after[key][()] == before[key][()], name
    assert backend(RS[0]) not in after["tandem_ipvs_backend_weight"]
    # the removed server's connections expire; its counts stay in the totals
    eng.expire(2000.0)
    assert eng.table.count == 0
    final = scrape(c)
    assert final["tandem_ipvs_incoming_packets_total"][()] == before["tandem_ipvs_incoming_packets_total"][()]


def test_health_gauge_and_a_broken_source_does_not_break_the_scrape():
    eng = Engine(make_config())
    svc_name = next(iter(eng.services.values())).name
    health = {(svc_name, RS[0], 8080): True, (svc_name, RS[1], 8080): False}

    def broken():
        raise RuntimeError("sync daemon gone")
    runner = election()
    runner.instance.start(0.0)
    node = NodeParts("lb1", "backup")
    node.attach_election(runner, 150)
    m = scrape(*all_of(eng, node, health=lambda: health)[:-1], SyncCollector(eng, broken))
    up = m["tandem_ipvs_backend_up"]
    assert up == {backend(RS[0]): 1.0, backend(RS[1]): 0.0}
    assert "tandem_ipvs_connections_total" in m and "tandem_vrrp_state" in m
    assert "tandem_sync_apply_total" not in m       # the sync part failed as a whole


def test_render_several_collectors_and_valid_names():
    eng = Engine(make_config())
    body, _ = render(*all_of(eng))
    for fam in text_string_to_metric_families(body.decode()):
        assert fam.name.startswith("tandem_")
        assert fam.documentation
