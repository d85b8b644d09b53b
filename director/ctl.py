"""Reconfiguration (ip_vs_ctl.c): services in and out, real servers changed in
place, and the settings the packet path reads, derived from a config.

Works on the engine's public parts (its services dict, `Connections`, the
persistence templates); the packet path only ever reads what this module
writes.
"""
from __future__ import annotations

from dataclasses import dataclass

from director.config import NodeConfig
from director.conn import Connections
from director.laddr import PortSpace
from director.persist import Templates
from director.service import Service


def build_services(cfg: NodeConfig, ports: PortSpace) -> dict[tuple[int, bytes, int], Service]:
    """Service objects for a config, keyed (proto, vip, port)."""
    services = {}
    for sc in cfg.services:
        svc = Service(sc, ports)
        services[svc.key] = svc
    return services


@dataclass(frozen=True)
class Settings:
    """What the packet path needs from the config and the current services."""
    vips: frozenset
    laddrs: frozenset
    owned: frozenset
    verify_new: bool
    verify_all: bool
    expire_removed: bool

    @classmethod
    def of(cls, cfg: NodeConfig, services: dict) -> "Settings":
        vips = frozenset(s.vip for s in services.values())
        laddrs = frozenset(a for s in services.values() for a in s.laddrs.laddrs)
        return cls(vips=vips, laddrs=laddrs, owned=vips | laddrs,
                   verify_new=cfg.verify_checksums in ("new", "all"),
                   verify_all=cfg.verify_checksums == "all",
                   expire_removed=cfg.removed_server_conns == "expire")


def reconfigure(services: dict, conns: Connections, templates: Templates, ports: PortSpace,
                cfg: NodeConfig, now: float) -> dict:
    """Apply a new, already validated config to `services` in place without
    touching established connections of real servers that stay.

    Weights and thresholds change in place; new real servers and services
    join; a removed real server's connections expire now, or are kept
    until they end (`removed_server_conns = "keep"`, the value in `cfg`,
    not the one running); a removed service's connections expire with it.
    """
    new = Settings.of(cfg, services)
    summary = {"services_added": 0, "services_removed": 0, "servers_removed": 0,
               "conns_expired": 0}
    wanted = {Service.key_of(sc): sc for sc in cfg.services}
    gone_dests: set[int] = set()
    for key, svc in list(services.items()):
        if key not in wanted:
            gone_dests.update(id(d) for d in svc.dests)
            for d in svc.dests:
                d.available = False
            del services[key]
            summary["services_removed"] += 1
    for key, sc in wanted.items():
        svc = services.get(key)
        if svc is None:         # only a new service is built (a scheduler's table with it)
            services[key] = Service(sc, ports)
            summary["services_added"] += 1
            continue
        removed = svc.reconfigure(sc)
        summary["servers_removed"] += len(removed)
        # the new file's own setting decides for the servers it removes
        if new.expire_removed:
            gone_dests.update(id(d) for d in removed)
    # the cursors stay; only the counts follow a new range
    ports.set_range(cfg.lport_min, cfg.lport_max, (c for c in conns.table if c.service is not None))
    if gone_dests:
        for conn in list(conns.table):
            if conn.dest is not None and id(conn.dest) in gone_dests:
                conns.drop(conn)
                summary["conns_expired"] += 1
        for t in list(templates.by_key.values()):
            if id(t.dest) in gone_dests:
                templates.remove(t)
    return summary
