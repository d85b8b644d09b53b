"""The Prometheus collector: parsed back with prometheus_client's own parser."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP

from director.engine import Engine
from director.metrics import BACKEND_LABELS, TandemCollector, render
from director.nfqueue import kernel_queue_stats
from tests.helpers import CLIENT, RS, VIP, make_config, tcp, udp


def scrape(collector) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}, and the families' types."""
    body, ctype = render(collector)
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


NODE = {"node": "lb1", "role": "master", "priority": 150, "vrid": 51, "intf": "eth0",
        "vips": ["198.18.0.100/24 dev eth0 scope global set"],
        "vrrp_stats": {"advert_sent": 12, "advert_rcvd": 3, "become_master": 1, "unknown": 9}}


def test_ipvs_metrics_follow_node_exporter():
    eng = Engine(make_config())
    drive(eng)
    m = scrape(TandemCollector(eng, lambda: NODE, queue_stats=lambda: {}))
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


def test_vrrp_state_like_keepalived_exporter():
    eng = Engine(make_config())
    m = scrape(TandemCollector(eng, lambda: NODE, queue_stats=lambda: {}))
    labels = (("iname", "VI_51"), ("intf", "eth0"), ("ip_address", "198.18.0.100/24"), ("vrid", "51"))
    assert m["tandem_vrrp_state"] == {labels: 2.0}
    base = (("iname", "VI_51"), ("intf", "eth0"), ("vrid", "51"))
    assert m["tandem_vrrp_priority"] == {base: 150.0}
    assert m["tandem_vrrp_advertisements_sent_total"] == {base: 12.0}
    assert m["tandem_vrrp_advertisements_received_total"] == {base: 3.0}
    assert m["tandem_vrrp_become_master_total"] == {base: 1.0}
    assert m["tandem_node_info"] == {(("node", "lb1"),): 1.0}
    for role, num in (("backup", 1), ("fault", 3), ("init", 0), ("BACKUP", 1)):
        m = scrape(TandemCollector(eng, lambda: {"role": role, "vrid": 7, "iname": "VI_1"},
                                   queue_stats=lambda: {}))
        assert m["tandem_vrrp_state"] == {(("iname", "VI_1"), ("intf", ""), ("ip_address", ""),
                                           ("vrid", "7")): float(num)}
    # keepalived's own number wins over the role; no role and no state: no series
    m = scrape(TandemCollector(eng, lambda: {"role": "master", "state": 98}, queue_stats=lambda: {}))
    assert list(m["tandem_vrrp_state"].values()) == [98.0]
    m = scrape(TandemCollector(eng, lambda: {"node": "x"}, queue_stats=lambda: {}))
    assert "tandem_vrrp_state" not in m


def test_engine_queue_and_sync_counters(tmp_path):
    eng = Engine(make_config())
    drive(eng)
    eng.sync_stats["applied"] = 5
    eng.sync_stats["created"] = 4
    proc = tmp_path / "nfnetlink_queue"
    #      queue portid queue_total copy_mode copy_range queue_dropped user_dropped id_seq 1
    proc.write_text("    0  12345     2  2 65531    17     4     1000  1\n"
                    "    1  12346     0  2 65531     9     9        0  1\n")
    sync = {"sender": {"sent": 10, "queue_drops": 1}, "receiver": {"received": 8, "gaps": 2},
            "lag_seconds": 0.25, "peers": 1}
    m = scrape(TandemCollector(eng, lambda: {}, sync_stats=lambda: sync,
                               queue_stats=lambda: kernel_queue_stats(0, str(proc))))
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
    assert m["tandem_sync_apply_total"][()] == 5
    assert m["tandem_sync_apply_created_total"][()] == 4
    assert m["tandem_sync_sender_sent_total"][()] == 10
    assert m["tandem_sync_sender_queue_drops_total"][()] == 1
    assert m["tandem_sync_receiver_gaps_total"][()] == 2
    assert m["tandem_sync_lag_seconds"][()] == 0.25 and types["tandem_sync_lag_seconds"] == "gauge"
    assert types["tandem_sync_peers"] == "gauge"


def test_no_queue_stats_off_node_and_default_reader():
    eng = Engine(make_config())
    m = scrape(TandemCollector(eng))            # default: the kernel's file, absent or not ours
    for name, samples in m.items():
        if name.startswith("tandem_nfqueue"):
            assert set(samples) == {(("queue", "0"),)}
    m = scrape(TandemCollector(eng, queue_stats=lambda: {}))
    assert not any(n.startswith("tandem_nfqueue") for n in m)


def test_totals_never_go_backwards_when_a_server_is_removed():
    eng = Engine(make_config())
    drive(eng)
    c = TandemCollector(eng, queue_stats=lambda: {})
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
    m = scrape(TandemCollector(eng, lambda: NODE, queue_stats=lambda: {}, sync_stats=broken,
                               health=lambda: health))
    up = m["tandem_ipvs_backend_up"]
    assert up == {backend(RS[0]): 1.0, backend(RS[1]): 0.0}
    assert "tandem_ipvs_connections_total" in m and "tandem_vrrp_state" in m
    assert "tandem_sync_apply_total" not in m       # the sync part failed as a whole


def test_render_several_collectors_and_valid_names():
    eng = Engine(make_config())
    body, _ = render(TandemCollector(eng, queue_stats=lambda: {}))
    for fam in text_string_to_metric_families(body.decode()):
        assert fam.name.startswith("tandem_")
        assert fam.documentation
