"""Changes to a running node: operator overrides, health results, the sorry server.

The effective weight of a real server is computed in one place, from
  the configured weight, or the operator's override (set weight, drain),
  then the health check's verdict (down: weight 0, or out of the list).
When no real server of a service is usable, its sorry server (if any) is the
only one scheduled.  Established connections are never touched here: weight 0
only stops new ones, as IPVS quiescing does.

An override beats the config file until it is cleared (DELETE .../override), on
every node of the pair: the overrides are a versioned map (director.overrides)
that the node wiring carries to the peer and keeps in a state file.  `on_change`
is called with each change made here, `from_peer` takes the peer's.  Each change
is logged once where it was made ("operator: ...") and once where it was applied
("peer NODE: ...").
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Iterable

from director.engine import Engine
from director.health import effective_weight
from director.overrides import Override, Overrides, canonical, real_name
from schema.keys import WEIGHT

log = logging.getLogger("tandem.control")


class Control:
    def __init__(self, engine: Engine, overrides: Overrides | None = None, *,
                 wall: Callable[[], float] = time.time,
                 on_change: Callable[[list[Override]], None] | None = None,
                 kept: Callable[[], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self.overrides = overrides if overrides is not None else Overrides("local")
        self.wall = wall
        self.on_change = on_change
        self._kept = kept
        self.down: set[tuple[str, str, int]] = set()

    def _service(self, name: str):
        for svc in self.engine.services.values():
            if svc.name == name:
                return svc
        raise KeyError(f"no service {name!r}")

    def apply(self, svc) -> None:
        """Recompute every dest's weight and the scheduler's list for one service."""
        action = svc.cfg.health.action if svc.cfg.health else "weight0"
        live = []
        for d in svc.dests:
            key = (svc.name, d.addr_str, d.port)
            o = self.overrides.get(key)
            w = svc.config_weight(d) if o is None or o.weight is None else o.weight
            eff = effective_weight(w, key not in self.down, action)
            d.weight = 0 if eff is None else eff
            if eff is not None:
                live.append(d)
        if svc.sorry is not None and not any(d.weight > 0 and not d.overloaded for d in live):
            live = [svc.sorry]
        if live != svc.scheduler.dests:
            svc.scheduler.update(live)

    def apply_all(self) -> None:
        for svc in self.engine.services.values():
            self.apply(svc)

    # -- operator changes ------------------------------------------------------------------

    def _target(self, service: str, addr: str, port: int):
        svc = self._service(service)
        try:
            addr = canonical(addr)
        except ValueError:
            raise KeyError(f"no real server {real_name(addr, port)} in {service}") from None
        d = next((d for d in svc.dests if d.addr_str == addr and d.port == port), None)
        if d is None:
            raise KeyError(f"no real server {real_name(addr, port)} in {service}")
        return svc, d, (svc.name, addr, port)

    def _result(self, svc, d, key) -> dict:
        """The weight asked for (the override's, or the file's once cleared), and the override."""
        o = self.overrides.get(key)
        return {"service": svc.name, "real": real_name(d.addr_str, d.port),
                "weight": svc.config_weight(d) if o is None else o.weight,
                "override": o.to_json() if o else None}

    def _changed(self, o: Override, svc) -> None:
        self.apply(svc)
        log.info("operator: %s on %s (override by %s, gen %d)", o.describe(), self.overrides.node,
                 o.by, o.gen)
        if self.on_change is not None:
            self.on_change([o])

    def set_weight(self, service: str, addr: str, port: int, weight: int) -> dict:
        problem = WEIGHT.check(weight)
        if problem:
            raise ValueError(f"weight {problem}")
        svc, d, key = self._target(service, addr, port)
        self._changed(self.overrides.set(key, weight, self.wall()), svc)
        return self._result(svc, d, key)

    def drain(self, service: str, addr: str, port: int) -> dict:
        svc, d, key = self._target(service, addr, port)
        self._changed(self.overrides.set(key, 0, self.wall(), drain=True), svc)
        return self._result(svc, d, key)

    def clear(self, service: str, addr: str, port: int) -> dict:
        """Back to the file's weight, on both nodes; `cleared` says whether one was in force."""
        svc, d, key = self._target(service, addr, port)
        o, was = self.overrides.clear(key, self.wall())
        self._changed(o, svc)
        return {**self._result(svc, d, key), "cleared": was}

    async def kept(self) -> None:
        """Wait until the changes made so far are in the state file (the API answers a
        change only then, so an answer means it survives a crash of this node)."""
        if self._kept is not None:
            await self._kept()

    def override_of(self, svc, d) -> dict | None:
        o = self.overrides.get((svc.name, d.addr_str, d.port))
        return o.to_json() if o else None

    def from_peer(self, peer: str, entries: Iterable[Override]) -> list[Override]:
        """The peer's overrides: apply those newer than ours; returns them."""
        changed = [new for _old, new in self.overrides.merge(entries)]
        names = {o.service for o in changed}
        for svc in self.engine.services.values():
            if svc.name in names:
                self.apply(svc)
        for o in changed:
            log.info("peer %s: %s applied here on %s (override by %s, gen %d)", peer,
                     o.describe(), self.overrides.node, o.by, o.gen)
        return changed

    def file_conflicts(self) -> list[str]:
        """What the overrides still decide against the file (after a reload), one line each."""
        lines = []
        dests = {(svc.name, d.addr_str, d.port): (svc, d)
                 for svc in self.engine.services.values() for d in svc.dests}
        for o in self.overrides.active():
            hit = dests.get(o.key)
            if hit is None:
                lines.append(f"override {o.describe()} (by {o.by}) matches no real server here")
                continue
            svc, d = hit
            lines.append(f"override {o.describe()} (by {o.by}) beats the file's weight "
                         f"{svc.config_weight(d)} until cleared")
        return lines

    # -- health ----------------------------------------------------------------------------

    def health_changed(self, service: str, addr: str, port: int, up: bool) -> None:
        try:
            svc = self._service(service)
        except KeyError:
            return
        key = (svc.name, addr, port)
        (self.down.discard if up else self.down.add)(key)
        # not logged here: the health runner logs each transition once, with its reason
        self.apply(svc)

    def health_of(self, svc, d) -> str:
        if svc.cfg.health is None:
            return "unchecked"
        return "down" if (svc.name, d.addr_str, d.port) in self.down else "up"
