"""The lab's node configurations: what each director's ``tandem node`` reads.

The defaults and the TOML writer come from the config schema (schema/); this module only
says what the lab sets differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schema.core import dump_toml  # the one TOML writer, re-exported for the lab's callers
from schema.keys import INTERFACES, LIMITS, TIMEOUTS

from .plan import (API_PORT, API_TOKEN, KERNEL_LADDRS, KERNEL_VIP, LADDRS, PROXY_UDP_SERVICE,
                   REAL_SERVERS, RS_PORT, SERVICE_PORT, SERVICES, SYNC_KEY, VIP, VRID, director)
from .plan6 import DIRECTOR6, REAL_SERVER6, services6

__all__ = ["DEFAULT_LIMITS", "DEFAULT_TIMEOUTS", "LAB_GARP_INTERVAL", "dump_toml", "node_config",
           "write_config"]

#: the node's own defaults (schema.keys), written out in the lab's configs
DEFAULT_TIMEOUTS = TIMEOUTS.defaults()
DEFAULT_LIMITS = LIMITS.defaults()
#: the lab's segments are one bridge away: a shorter GARP spacing than the product's
LAB_GARP_INTERVAL = 0.02


def node_config(
    name: str = "a",
    *,
    scheduler: str = "wlc",
    timeouts: dict[str, float] | None = None,
    limits: dict[str, int] | None = None,
    weights: dict[str, int] | None = None,
    queue: int = 0,
    extra: dict[str, Any] | None = None,
    ha: bool = False,
    advert_interval: float = 0.1,
    api_token: str = API_TOKEN,
    kernel: bool = False,
    ipv6: bool = False,
    sync_ipv6: bool = False,
) -> dict[str, Any]:
    """The node configuration for director ``name`` as a dict (see dump_toml).  With
    `kernel`, two more services: KERNEL_VIP:80 TCP and UDP, forwarding = "kernel".  With `ipv6`
    the node also serves VIP6's services (lab.plan6) through the IPv6 laddrs, and VIP:81 over
    UDP with a PROXY v2 header; the election stays IPv4 and moves the IPv6 addresses with the
    IPv4 ones.  With `sync_ipv6`
    the pair syncs over IPv6 (the IPv6 group on the back link) instead of IPv4."""
    d = director(name)
    weights = weights or {}
    def reals(port: int) -> list[dict[str, Any]]:
        return [{"addr": r["addr"], "port": port, "weight": int(weights.get(r["name"], 1))}
                for r in REAL_SERVERS]
    cfg: dict[str, Any] = {
        "node": {"name": name, "api": f"{d['front_addr']}:{API_PORT}", "queue": queue,
                 "api_token": api_token},
        "timeouts": {**DEFAULT_TIMEOUTS, **(timeouts or {})},
        "limits": {**DEFAULT_LIMITS, **(limits or {})},
        "services": [
            {
                "proto": svc["proto"],
                "vip": VIP,
                "port": svc["port"],
                "scheduler": scheduler,
                "laddrs": list(LADDRS),
                # written only where it differs from the node's default (none)
                **({"client_address": svc["client_address"]}
                   if svc["client_address"] != "none" else {}),
                "real_servers": reals(svc["rs_port"]),
            }
            for svc in (*SERVICES, *((PROXY_UDP_SERVICE,) if ipv6 else ()))
        ],
    }
    if kernel:
        cfg["services"] += [
            {"proto": proto, "vip": KERNEL_VIP, "port": SERVICE_PORT, "scheduler": scheduler,
             "laddrs": list(KERNEL_LADDRS), "forwarding": "kernel",
             "real_servers": reals(RS_PORT)}
            for proto in ("tcp", "udp")]
    if ipv6:
        cfg["services"] += services6(scheduler, [
            {"addr": REAL_SERVER6[r["name"]], "port": rs["port"], "weight": rs["weight"]}
            for r, rs in zip(REAL_SERVERS, reals(SERVICES[0]["rs_port"]))])
    if ha:
        cfg["interfaces"] = {"front": "front", "back": "back",
                             "garp_count": INTERFACES.default("garp_count"),
                             "garp_interval": LAB_GARP_INTERVAL}
        cfg["vrrp"] = {"vrid": VRID, "priority": d["priority"], "advert_interval": advert_interval,
                       "primary_address": d["front_addr"]}
        cfg["sync"] = {"key": SYNC_KEY, "sync_id": VRID, "mode": "multicast",
                       "interface": DIRECTOR6[name][1] if sync_ipv6 else d["back_addr"]}
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    """Write a node config readable by its owner only (it holds the sync key and API token)."""
    path.write_text(dump_toml(cfg))
    path.chmod(0o600)
