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
    #: the laddrs of every member's kernel-mode services (a member's pool given by mode):
    #: their replies must stay tracked by conntrack, never go to the queue untracked
    kernel_laddrs: frozenset[str] = frozenset()


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
    got["members"], got["kernel_laddrs"] = _members(c, got["members"], name, services)
    c.finish()
    return ClusterConfig(**got)


#: the forwarding modes a member's pool may be given by (`{ engine = [...], kernel = [...] }`)
POOL_MODES = ("engine", "kernel")


def _laddrs(services: list, modes: tuple[str, ...]) -> list[str]:
    return sorted({str(ipaddress.ip_address(a)) for sv in services
                   if sv.forwarding in modes for a in sv.laddrs})


def _pool(c: Reader, where: str, pool: Any, by_mode: bool) -> dict[str, list]:
    """One member's pool as {mode: [laddrs as given]}: a list is its engine-mode laddrs; a
    table names each mode's, and is required once the cluster has kernel-mode services
    (every director must know which of its peers' laddrs conntrack must track)."""
    if isinstance(pool, list):
        if by_mode:
            c.fail(where, "this cluster has kernel-mode services: give the director's laddrs "
                          "by forwarding mode, { engine = [...], kernel = [...] }")
        pool = {"engine": pool}
    if not isinstance(pool, dict) or not pool or set(pool) - set(POOL_MODES):
        c.fail(where, "must be a non-empty list of the director's laddrs, or a table of them "
                      "by forwarding mode: { engine = [...], kernel = [...] }")
    for mode, addrs in pool.items():
        if not isinstance(addrs, list) or not addrs:
            c.fail(f"{where}.{mode}", "must be a non-empty list of the director's laddrs")
    return pool


def _members(c: Reader, raw: dict, name: str,
             services: list) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """`[cluster] members`, checked: names to canonical laddr pools, and every member's
    kernel-mode laddrs."""
    by_mode = any(sv.forwarding == "kernel" for sv in services)
    out: dict[str, tuple[str, ...]] = {}
    kernel: dict[str, list[str]] = {}
    owner: dict[str, tuple[str, str]] = {}
    for member, raw_pool in raw.items():
        where = f"members.{member}"
        addrs = []
        for mode, pool in _pool(c, where, raw_pool, by_mode).items():
            at = where if isinstance(raw_pool, list) else f"{where}.{mode}"
            for j, a in enumerate(pool):
                addr = c.address(f"{at}[{j}]", a)
                if owner.setdefault(addr, (member, mode)) != (member, mode):
                    other, other_mode = owner[addr]
                    c.fail(f"{at}[{j}]", f"{addr} is already a laddr of director {other!r} "
                                         f"({other_mode}): "
                                         "a laddr belongs to one director, in one mode")
                addrs.append(addr)
                if mode == "kernel":
                    kernel.setdefault(str(member), []).append(addr)
        out[str(member)] = tuple(sorted(set(addrs)))
    if out:
        own = _laddrs(services, POOL_MODES)
        if name not in out:
            c.fail("members", f"does not name this director ({name!r}, node.name)")
        if sorted(out[name]) != own:
            c.fail(f"members.{name}", f"must be this director's laddrs, its services' "
                                      f"({', '.join(own) or 'none'}), got {', '.join(out[name])}")
        own_kernel = _laddrs(services, ("kernel",))
        if sorted(kernel.get(name, [])) != own_kernel:
            c.fail(f"members.{name}.kernel", "must be the laddrs of this director's kernel-mode "
                                             f"services ({', '.join(own_kernel) or 'none'})")
    return out, frozenset(a for pool in kernel.values() for a in pool)
