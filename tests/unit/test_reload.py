"""Reloads seen by the data plane: what a new config changes, and what it keeps."""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP

from director.engine import Engine
from tests.helpers import CLIENT, LADDRS, RS, VIP, make_config, tcp, udp


def syns(eng, n, first_port=40000, now=0.0):
    """n new connections; the (real server, laddr, lport) each was given."""
    out = []
    for i in range(n):
        p = IP(eng.handle(tcp(CLIENT, VIP, first_port + i, 80, "S"), now))
        out.append((p.dst, p.src, p[TCP].sport))
    return out


def test_a_reload_switching_to_keep_and_removing_a_server_keeps_its_connections():
    """The file's own `removed_server_conns` applies to the servers that same
    file removes (ipvsadm/keepalived apply a config as one: the removal is
    done under the new setting).  Switching expire -> keep while removing a
    server keeps that server's connections until they end."""
    eng = Engine(make_config(reals=RS, node={"removed_server_conns": "expire"}))
    syns(eng, 3)
    summary = eng.reconfigure(make_config(reals=RS[:2], node={"removed_server_conns": "keep"}), 1.0)
    assert summary["servers_removed"] >= 1 and summary["conns_expired"] == 0
    assert len(eng.table) == 3
    assert {str(ipaddress.ip_address(c.daddr)) for c in eng.table} >= {RS[2]}


def test_a_reload_switching_to_expire_and_removing_a_server_expires_its_connections():
    """The other direction, keep -> expire, in the same file: expired at once."""
    eng = Engine(make_config(reals=RS, node={"removed_server_conns": "keep"}))
    syns(eng, 3)
    summary = eng.reconfigure(make_config(reals=RS[:2], node={"removed_server_conns": "expire"}), 1.0)
    assert summary["conns_expired"] >= 1
    assert RS[2] not in {str(ipaddress.ip_address(c.daddr)) for c in eng.table}


# -- local port cursors and counts (issue 12 items 18, 19) ---------------------------

def one_laddr(**limits):
    return dict(reals=RS[:1], laddrs=LADDRS[:1], limits={"lport_min": 6000, "lport_max": 6099, **limits})


def lport_of_new(eng, cport, now=0.0, proto="tcp"):
    pkt = tcp(CLIENT, VIP, cport, 80, "S") if proto == "tcp" else udp(CLIENT, VIP, cport, 80)
    out = eng.handle(pkt, now)
    assert out is not None, eng.drops
    p = IP(out)
    return p[TCP].sport if proto == "tcp" else p[UDP].sport


def test_a_reload_that_changes_the_port_range_keeps_the_cursor():
    """Ports go round-robin (Alibaba's FULLNAT hands them out from a counter
    per laddr): a port just freed is not handed out again until the range has
    gone by, so the real server's TIME_WAIT on the old pair is over.  A reload
    touching the range must not send the cursor back to its start."""
    eng = Engine(make_config(**one_laddr()))
    first = lport_of_new(eng, 40000)
    conn = next(iter(eng.table))
    eng.conns.drop(conn)                       # the pair is free again
    eng.reconfigure(make_config(**one_laddr(lport_max=6199)), 1.0)
    assert lport_of_new(eng, 40001, 1.0) != first


def test_a_reload_that_changes_laddrs_keeps_each_laddrs_cursor():
    eng = Engine(make_config(**one_laddr()))
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    first = (fwd.src, fwd[TCP].sport)
    eng.conns.drop(next(iter(eng.table)))
    eng.reconfigure(make_config(**{**one_laddr(), "laddrs": LADDRS[:1] + ["198.18.2.102"]}), 1.0)
    pairs = set()
    for i in range(2):
        p = IP(eng.handle(tcp(CLIENT, VIP, 40001 + i, 80, "S"), 1.0))
        pairs.add((p.src, p[TCP].sport))
    assert first not in pairs and LADDRS[0] in {a for a, _ in pairs}


def test_services_sharing_a_laddr_share_its_cursor():
    """The cursor belongs to the laddr, not to a service: the TCP and the UDP
    service on the same laddr continue one sequence."""
    eng = Engine(make_config(**one_laddr()))
    a = lport_of_new(eng, 40000, proto="tcp")
    b = lport_of_new(eng, 40000, proto="udp")
    c = lport_of_new(eng, 40001, proto="tcp")
    assert (b - a, c - b) == (1, 1)


def test_synced_pairs_outside_the_local_range_do_not_count_against_it():
    """The peer may run another port range: its pairs cannot collide with
    ours, so they must not make the local range look exhausted."""
    pk = lambda a: ipaddress.ip_address(a).packed
    eng = Engine(make_config(**one_laddr(lport_max=6001)))
    for i in range(2):
        eng.apply_synced(proto=6, state=1, flags=0, caddr=pk("198.18.1.50"), cport=30000 + i,
                         vaddr=pk(VIP), vport=80, laddr=pk(LADDRS[0]), lport=7000 + i,
                         daddr=pk(RS[0]), dport=8080, timeout=900.0, now=0.0)
    assert lport_of_new(eng, 40000) in (6000, 6001)
    assert lport_of_new(eng, 40001) in (6000, 6001)
    assert eng.handle(tcp(CLIENT, VIP, 40002, 80, "S"), 0.0) is None
    assert eng.drops["no_lport"] == 1


class Probes(dict):
    """The table's index, counting membership tests: each one is the allocator
    probing whether a (laddr, lport) pair towards a real server is in use."""
    n = 0

    def __contains__(self, key):
        Probes.n += 1
        return dict.__contains__(self, key)


def count_probes(eng) -> type:
    eng.table.index = eng.index = Probes(eng.table.index)
    Probes.n = 0
    return Probes


def two_services_one_laddr(lport_max):
    svc = lambda vip: {"proto": "tcp", "vip": vip, "port": 80, "scheduler": "rr",
                       "laddrs": LADDRS[:1], "real_servers": [{"addr": RS[0], "port": 8080}]}
    return make_config(services=[svc(VIP), svc("198.18.0.101")],
                       limits={"lport_min": 6000, "lport_max": lport_max})


def test_an_exhausted_laddr_refuses_at_once_whichever_service_filled_it():
    """A laddr's pairs towards one real server are one pool, whichever service
    holds them: when another service has used them all, a SYN is refused
    without scanning the range (it used to probe every port, 76-183 ms at
    the default range, on the loop that sends VRRP adverts)."""
    eng = Engine(two_services_one_laddr(6255))
    probes = count_probes(eng)
    for i in range(256):
        assert eng.handle(tcp(CLIENT, "198.18.0.101", 30000 + i, 80, "S"), 0.0) is not None
    before = probes.n
    for i in range(20):
        assert eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0) is None
    assert eng.drops["no_lport"] == 20
    assert probes.n == before


def test_a_nearly_full_pool_hands_out_its_last_ports_without_rescanning():
    """Allocation stays O(1) amortised near exhaustion: past half full, one
    long scan turns the pool into a list of its free ports, and later
    allocations and refusals probe nothing."""
    eng = Engine(make_config(**one_laddr(lport_max=6000 + 1023)))
    probes = count_probes(eng)
    for i in range(1024):
        lport_of_new(eng, 20000 + i)
    conns = sorted(eng.table, key=lambda c: c.lport)
    for c in conns[100:900:8]:                  # 100 scattered pairs freed
        eng.conns.drop(c)
    got = {lport_of_new(eng, 40000)}
    before = probes.n
    got |= {lport_of_new(eng, 40001 + i) for i in range(99)}
    assert got == {c.lport for c in conns[100:900:8]}
    # a port handed out is checked against the table once, and inserting the
    # connection checks its two tuples: three probes, not a scan
    assert probes.n - before <= 3 * 99
    before = probes.n
    assert eng.handle(tcp(CLIENT, VIP, 41000, 80, "S"), 0.0) is None
    assert probes.n == before


def test_a_reload_that_leaves_a_maglev_service_as_it_was_keeps_its_table():
    """A reload that changes nothing of a service (a cluster's membership reload, issue 16)
    must not rebuild its maglev table: a build of 65537 slots held the node's event loop
    for 50-350 ms, and every connection through the director stalled that long.  The same
    servers and weights keep the very table; a weight change builds a new one, and every
    new flow's server still follows it."""
    eng = Engine(make_config(scheduler="maglev"))
    tables = {k: s.scheduler.table for k, s in eng.services.items()}
    eng.reconfigure(make_config(scheduler="maglev"), 1.0)
    assert all(s.scheduler.table is tables[k] for k, s in eng.services.items())
    eng.reconfigure(make_config(scheduler="maglev", weights=[1, 2, 1][:len(RS)]), 2.0)
    assert all(s.scheduler.table is not tables[k] for k, s in eng.services.items())
    fresh = Engine(make_config(scheduler="maglev", weights=[1, 2, 1][:len(RS)]))
    assert [d[0] for d in syns(eng, 50, 41000, 3.0)] == [d[0] for d in syns(fresh, 50, 41000, 3.0)]
