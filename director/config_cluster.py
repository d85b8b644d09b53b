"""Cluster mode's part of the config: `node.mode = "cluster"` and `[cluster]`.

A cluster of active directors (docs/cluster.md) needs every director to send a new flow
to the same real server whatever director the router picked, so every service's
scheduler must build the same table from the same servers on every director, whatever
order and history each went through: only `maglev` does (mh keeps a quiesced server's
slots, sh/dh/wrr depend on list order, the rest on local counters).  The election is
replaced by BGP announcements, so `[vrrp]` does not belong.

`[cluster] members` names every director with its own laddr pool (the same table on
every director): whose laddr a synced connection uses says who owns it, and a dead
director's laddrs are adopted by one survivor (ha/announce.py).  Checked here: this
director is a member, its pool is its services' laddrs, no laddr is two directors'.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from schema import keys as K
from schema.core import ConfigError, Reader

#: the schedulers whose choice is a function of the flow and the server set alone
CONSISTENT_SCHEDULERS = ("maglev",)


@dataclass(frozen=True)
class ClusterConfig:
    bird_socket: str = K.CLUSTER.default("bird_socket")
    announce_include: str = K.CLUSTER.default("announce_include")
    drain_timeout: float = K.CLUSTER.default("drain_timeout")
    #: director name -> its own laddr pool (canonical address strings); empty: alone
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse_cluster(source: str, mode: str, top: Reader, services: list,
                  has_vrrp: bool, name: str = "") -> ClusterConfig | None:
    """The `[cluster]` section, checked against the mode and the services; None in
    pair mode (where `[cluster]` is refused)."""
    raw = top.get("cluster", dict, None)
    if mode != "cluster":
        if raw is not None:
            top.fail("cluster", 'is only read with node.mode = "cluster"')
        return None
    if has_vrrp:
        top.fail("vrrp", 'has no place in node.mode = "cluster": BGP announcements replace '
                         "the election")
    for i, sv in enumerate(services):
        if sv.scheduler not in CONSISTENT_SCHEDULERS:
            raise ConfigError(source, f"services[{i}].scheduler",
                              f"must be {' or '.join(CONSISTENT_SCHEDULERS)} in cluster mode, "
                              f"not {sv.scheduler!r}: every director must pick the same real "
                              "server for a flow")
    c = Reader(source, "cluster", raw or {}, K.CLUSTER)
    got: dict[str, Any] = {k.name: c.take(k) for k in c.section}
    got["members"] = _members(c, got["members"], name, services)
    c.finish()
    return ClusterConfig(**got)


def _members(c: Reader, raw: dict, name: str, services: list) -> dict[str, tuple[str, ...]]:
    """`[cluster] members`, checked: names to canonical laddr pools."""
    own = sorted({str(ipaddress.ip_address(a)) for sv in services
                  if sv.forwarding == "engine" for a in sv.laddrs})
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for member, pool in raw.items():
        where = f"members.{member}"
        if not isinstance(pool, list) or not pool:
            c.fail(where, "must be a non-empty list of the director's laddrs")
        addrs = []
        for j, a in enumerate(pool):
            addr = c.address(f"{where}[{j}]", a)
            if addr in owner and owner[addr] != member:
                c.fail(f"{where}[{j}]", f"{addr} is also director {owner[addr]!r}'s: a laddr "
                                        "belongs to one director")
            owner[addr] = member
            addrs.append(addr)
        out[str(member)] = tuple(sorted(set(addrs)))
    if out:
        if name not in out:
            c.fail("members", f"does not name this director ({name!r}, node.name)")
        if sorted(out[name]) != own:
            c.fail(f"members.{name}", f"must be this director's laddrs, its services' "
                                      f"({', '.join(own) or 'none'}), got {', '.join(out[name])}")
    return out
