"""A virtual service: VIP:port/proto, its real servers, scheduler and laddr pool."""
from __future__ import annotations

import ipaddress
from director import sched
from director.config import PROTOS, ServiceConfig
from director.dest import Dest
from director.laddr import LaddrPool, PortSpace
from director.persist import mask_bytes


class Service:
    def __init__(self, cfg: ServiceConfig, ports: PortSpace) -> None:
        self.cfg = cfg
        self.name = cfg.key
        self.proto = PROTOS[cfg.proto]
        self.vip = ipaddress.ip_address(cfg.vip).packed
        self.port = cfg.port
        self.family = 4 if len(self.vip) == 4 else 6
        self.dests = [Dest(r.addr, r.port, r.weight, u_threshold=r.u_threshold,
                           l_threshold=r.l_threshold) for r in cfg.real_servers]
        self.scheduler = sched.create(cfg.scheduler, frozenset(cfg.flags), **dict(cfg.scheduler_options))
        self.scheduler.update(self.dests)
        self.persistent = cfg.persistent
        self.persist_mask = mask_bytes(cfg.persist_netmask, self.family)
        self.ops = cfg.ops
        self.sorry = Dest(*cfg.sorry_server, 1, name="sorry") if cfg.sorry_server else None
        self.laddrs = LaddrPool([ipaddress.ip_address(a).packed for a in cfg.laddrs], ports)
        self.forwarding = cfg.forwarding
        self.client_address = cfg.client_address
        self.client_proxy_header = cfg.client_proxy_header

    @property
    def key(self) -> tuple[int, bytes, int]:
        return (self.proto, self.vip, self.port)

    @staticmethod
    def key_of(cfg: ServiceConfig) -> tuple[int, bytes, int]:
        """The key a Service of `cfg` would have, without building one."""
        return (PROTOS[cfg.proto], ipaddress.ip_address(cfg.vip).packed, cfg.port)

    def reconfigure(self, cfg: ServiceConfig) -> list[Dest]:
        """Apply a new config for the same VIP:port; return the dests removed.

        Dest objects of real servers that stay are kept (their counters and the
        schedulers' cursors refer to them); weights and thresholds change in place.
        """
        keep = {(d.addr, d.port): d for d in self.dests}
        new = []
        for r in cfg.real_servers:
            d = keep.pop((ipaddress.ip_address(r.addr).packed, r.port), None)
            if d is None:
                d = Dest(r.addr, r.port, r.weight, u_threshold=r.u_threshold, l_threshold=r.l_threshold)
            else:
                d.weight, d.u_threshold, d.l_threshold = r.weight, r.u_threshold, r.l_threshold
                d.update_overload()
            new.append(d)
        removed = list(keep.values())
        for d in removed:
            d.available = False
        if (cfg.scheduler, cfg.flags, cfg.scheduler_options) != \
                (self.cfg.scheduler, self.cfg.flags, self.cfg.scheduler_options):
            self.scheduler = sched.create(cfg.scheduler, frozenset(cfg.flags), **dict(cfg.scheduler_options))
        self.dests = new
        self.scheduler.update(new)
        if cfg.laddrs != self.cfg.laddrs:
            # the node's PortSpace keeps every laddr's cursor and counts
            self.laddrs = LaddrPool([ipaddress.ip_address(a).packed for a in cfg.laddrs],
                                    self.laddrs.ports)
        if cfg.sorry_server != self.cfg.sorry_server:
            self.sorry = Dest(*cfg.sorry_server, 1, name="sorry") if cfg.sorry_server else None
        self.cfg = cfg
        self.name = cfg.key
        self.persistent = cfg.persistent
        self.persist_mask = mask_bytes(cfg.persist_netmask, self.family)
        self.ops = cfg.ops
        self.forwarding = cfg.forwarding
        self.client_address = cfg.client_address
        self.client_proxy_header = cfg.client_proxy_header
        return removed

    def find_dest(self, addr: bytes, port: int) -> Dest | None:
        for d in self.dests:
            if d.addr == addr and d.port == port:
                return d
        if self.sorry is not None and self.sorry.addr == addr and self.sorry.port == port:
            return self.sorry
        return None

    def config_weight(self, d: Dest) -> int:
        for r in self.cfg.real_servers:
            if (r.port, ipaddress.ip_address(r.addr).packed) == (d.port, d.addr):
                return r.weight
        return d.weight

    def describe(self) -> dict:
        return {
            "name": self.name, "proto": self.cfg.proto, "vip": self.cfg.vip, "port": self.port,
            "scheduler": self.cfg.scheduler, "flags": list(self.cfg.flags),
            "laddrs": list(self.cfg.laddrs),
            "sorry_server": (f"{self.sorry.addr_str}:{self.sorry.port}" if self.sorry else None),
            "sorry_in_use": bool(self.sorry and self.sorry in self.scheduler.dests),
            "persistent": self.persistent, "persist_netmask": self.cfg.persist_netmask,
            "ops": self.ops, "forwarding": self.forwarding,
            "client_address": self.client_address,
            "client_proxy_header": self.client_proxy_header,
            "real_servers": [{
                "addr": d.addr_str, "port": d.port, "weight": d.weight,
                "active": d.active, "inactive": d.inactive, "overloaded": d.overloaded,
                "conns_total": d.conns_total,
                "packets_in": d.packets_in, "packets_out": d.packets_out,
                "bytes_in": d.bytes_in, "bytes_out": d.bytes_out,
            } for d in self.dests],
        }
