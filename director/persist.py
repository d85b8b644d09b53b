"""Persistence templates, as IPVS's ip_vs_sched_persist.

A persistent service pins every connection from one client (its address
under the service's netmask) to one real server for `timeout` seconds after
the last connection was opened.  The pin is a template entry keyed by
<proto, client & mask, vip, vport>.  A template never expires while it still
controls connections: its timer is pushed 60 s on (the kernel's expire_later).
"""
from __future__ import annotations

import ipaddress

from director.timer import TimerWheel

EXPIRE_LATER = 60.0


class Template:
    __slots__ = ("key", "dest", "service", "expires", "timer_tick", "alive", "n_control",
                 "caddr", "created")

    def __init__(self, key: bytes, caddr: bytes, dest, service) -> None:
        self.key, self.caddr, self.dest, self.service = key, caddr, dest, service
        self.expires = 0.0
        self.timer_tick = 0
        self.alive = True
        self.n_control = 0
        self.created = 0.0


def mask_bytes(prefix: int, family: int) -> bytes:
    bits = 32 if family == 4 else 128
    return ((1 << bits) - 1 ^ ((1 << (bits - prefix)) - 1)).to_bytes(bits // 8, "big")


def template_key(proto: int, caddr: bytes, mask: bytes, vaddr: bytes, vport: int) -> bytes:
    masked = bytes(a & m for a, m in zip(caddr, mask))
    return bytes((proto,)) + masked + vaddr + vport.to_bytes(2, "big")


class Templates:
    def __init__(self, tick: float, now: float, expire_quiescent: bool = False) -> None:
        self.by_key: dict[bytes, Template] = {}
        self.wheel = TimerWheel(tick, now)
        self.expire_quiescent = expire_quiescent

    def __len__(self) -> int:
        return len(self.by_key)

    def lookup(self, key: bytes) -> Template | None:
        """A usable template, or None (dropping one whose server is gone)."""
        t = self.by_key.get(key)
        if t is None:
            return None
        d = t.dest
        if not d.available or (self.expire_quiescent and d.weight == 0):
            self.remove(t)      # ip_vs_check_template: the pin is void
            return None
        return t

    def create(self, key: bytes, caddr: bytes, dest, service, now: float, timeout: float) -> Template:
        t = Template(key, caddr, dest, service)
        t.created = now
        t.expires = now + timeout
        self.by_key[key] = t
        self.wheel.schedule(t)
        dest.persist += 1
        return t

    def touch(self, t: Template, now: float, timeout: float) -> None:
        """A new connection under the template restarts its timer (ip_vs_conn_put)."""
        self.wheel.refresh(t, now + timeout)

    def remove(self, t: Template) -> None:
        if self.by_key.get(t.key) is t:
            del self.by_key[t.key]
            t.dest.persist -= 1
        t.alive = False

    def expire(self, now: float) -> int:
        def due(t: Template) -> None:
            if t.n_control > 0:
                t.alive = True
                t.expires = now + EXPIRE_LATER
                self.wheel.schedule(t)
            else:
                self.remove(t)
        before = len(self.by_key)
        self.wheel.advance(now, due)
        return before - len(self.by_key)

    def describe(self, t: Template) -> dict:
        return {"client": str(ipaddress.ip_address(t.caddr)), "real": t.dest.name,
                "service": t.service.name, "conns": t.n_control, "expires": t.expires}
