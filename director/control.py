"""Changes to a running node: operator weights, health results, the sorry server.

The effective weight of a real server is computed in one place, from
  the configured weight, or the operator's override (set weight, drain),
  then the health check's verdict (down: weight 0, or out of the list).
When no real server of a service is usable, its sorry server (if any) is the
only one scheduled.  Established connections are never touched here: weight 0
only stops new ones, as IPVS quiescing does.
"""
from __future__ import annotations

import logging

from director.engine import Engine
from director.health import effective_weight
from schema.keys import WEIGHT

log = logging.getLogger("tandem.control")


class Control:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.overrides: dict[tuple[str, str, int], int] = {}
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
            w = self.overrides.get(key, svc.config_weight(d))
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

    def set_weight(self, service: str, addr: str, port: int, weight: int) -> dict:
        svc = self._service(service)
        problem = WEIGHT.check(weight)
        if problem:
            raise ValueError(f"weight {problem}")
        if not any(d.addr_str == addr and d.port == port for d in svc.dests):
            raise KeyError(f"no real server {addr}:{port} in {service}")
        self.overrides[(svc.name, addr, port)] = weight
        self.apply(svc)
        log.info("operator: weight of [%s]:%d in %s set to %d", addr, port, service, weight)
        return {"service": service, "real": f"{addr}:{port}", "weight": weight}

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
