"""Reloads seen by the data plane: what a new config changes, and what it keeps."""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP

from director.engine import Engine
from tests.helpers import CLIENT, LADDRS, RS, VIP, make_config, tcp


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
