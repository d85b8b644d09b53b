"""Cluster mode's part of the config: `node.mode = "cluster"` and `[cluster]`.

A cluster of active directors (docs/cluster.md) needs every director to send a new flow
to the same real server whatever director the router picked, so every service's
scheduler must build the same table from the same servers on every director, whatever
order and history each went through: only `maglev` does (mh keeps a quiesced server's
slots, sh/dh/wrr depend on list order, the rest on local counters).  The election is
replaced by BGP announcements, so `[vrrp]` does not belong.

The node does not run cluster mode yet: a cluster config is checked in full and then
refused naming `node.mode`, so an operator learns both what is wrong with the file and
that the mode is not there.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def parse_cluster(source: str, mode: str, top: Reader, services: list,
                  has_vrrp: bool) -> ClusterConfig | None:
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
    c.finish()
    return ClusterConfig(**got)


def refuse_unbuilt(source: str) -> None:
    raise ConfigError(source, "node.mode", '"cluster" is checked but not run yet: the node '
                                           "runs as a pair or alone (docs/cluster.md)")
