"""A virtual service: VIP:port/proto, its real servers, scheduler and laddr pool."""
from __future__ import annotations

import ipaddress
from typing import Callable

from director import sched
from director.config import PROTOS, ServiceConfig
from director.dest import Dest
from director.laddr import LaddrPool


class Service:
    def __init__(self, cfg: ServiceConfig, lport_min: int, lport_max: int,
                 in_use: Callable[[bytes], bool]) -> None:
        self.cfg = cfg
        self.name = cfg.key
        self.proto = PROTOS[cfg.proto]
        self.vip = ipaddress.ip_address(cfg.vip).packed
        self.port = cfg.port
        self.family = 4 if len(self.vip) == 4 else 6
        self.dests = [Dest(r.addr, r.port, r.weight, u_threshold=r.u_threshold,
                           l_threshold=r.l_threshold) for r in cfg.real_servers]
        self.scheduler = sched.create(cfg.scheduler, frozenset(cfg.flags))
        self.scheduler.update(self.dests)
        self.laddrs = LaddrPool([ipaddress.ip_address(a).packed for a in cfg.laddrs],
                                lport_min, lport_max, in_use)

    @property
    def key(self) -> tuple[int, bytes, int]:
        return (self.proto, self.vip, self.port)

    def find_dest(self, addr: bytes, port: int) -> Dest | None:
        for d in self.dests:
            if d.addr == addr and d.port == port:
                return d
        return None

    def describe(self) -> dict:
        return {
            "name": self.name, "proto": self.cfg.proto, "vip": self.cfg.vip, "port": self.port,
            "scheduler": self.cfg.scheduler, "flags": list(self.cfg.flags),
            "laddrs": list(self.cfg.laddrs),
            "real_servers": [{
                "addr": d.addr_str, "port": d.port, "weight": d.weight,
                "active": d.active, "inactive": d.inactive, "overloaded": d.overloaded,
                "conns_total": d.conns_total,
                "packets_in": d.packets_in, "packets_out": d.packets_out,
                "bytes_in": d.bytes_in, "bytes_out": d.bytes_out,
            } for d in self.dests],
        }
