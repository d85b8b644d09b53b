"""The node's HTTP status API (aiohttp), read-only for now."""
from __future__ import annotations

import ipaddress
import time

from aiohttp import web

from director.engine import Engine
from director.metrics import TandemCollector, render


class NodeState:
    """What the API reports about the node beyond the engine."""

    def __init__(self, name: str, role: str, started: float | None = None) -> None:
        self.name = name
        self.role = role
        self.priority: int | None = None
        self.peer: str | None = None
        self.started = started if started is not None else time.monotonic()
        self.queue_stats = lambda: {}
        self.sync = None            # director.ha.SyncLink
        self.vrrp = None            # syncd.vrrp_io.VrrpRunner
        self.role_changes: list[dict] = []

    def vrrp_status(self) -> dict | None:
        return self.vrrp.instance.status() if self.vrrp is not None else None


def make_app(engine: Engine, node: NodeState) -> web.Application:
    app = web.Application()

    async def status(_request: web.Request) -> web.Response:
        vrrp = node.vrrp_status()
        peer = node.peer
        if vrrp and vrrp.get("master") and node.role != "master":
            peer = vrrp["master"]
        return web.json_response({
            "node": node.name,
            "role": node.role,
            "priority": node.priority,
            "peer": peer,
            "uptime_s": round(time.monotonic() - node.started, 3),
            "conns": engine.conn_counts(),
            "engine": {**engine.stats, "drops": {k: v for k, v in engine.drops.items() if v}},
            "queue": node.queue_stats(),
            "vrrp": vrrp,
            "role_changes": node.role_changes[-10:],
            "sync": {"enabled": node.sync is not None, "applied": dict(engine.sync_stats)},
        })

    async def sync(_request: web.Request) -> web.Response:
        body = {"enabled": node.sync is not None, "engine": dict(engine.sync_stats)}
        if node.sync is not None:
            body.update(node.sync.describe())
        return web.json_response(body)

    async def metrics(_request: web.Request) -> web.Response:
        data, ctype = render(collector)
        return web.Response(body=data, headers={"Content-Type": ctype})

    def node_info() -> dict:
        v = node.vrrp_status() or {}
        return {"node": node.name, "role": node.role, "priority": node.priority,
                "vrid": v.get("vrid"), "iname": v.get("name"), "vrrp_stats": v.get("counters")}

    collector = TandemCollector(engine, node_info, queue_stats=node.queue_stats,
                                sync_stats=lambda: node.sync.describe() if node.sync else {})

    async def services(_request: web.Request) -> web.Response:
        return web.json_response({"services": [s.describe() for s in engine.services.values()]})

    async def conns(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(int(q.get("limit", 100)), 10_000)
            offset = int(q.get("offset", 0))
            real = q.get("real")
            rs_addr, _, rs_port = real.rpartition(":") if real else ("", "", "")
            real_key = (ipaddress.ip_address(rs_addr).packed, int(rs_port)) if real else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad query: {exc}") from None
        service = q.get("service")
        out, matched = [], 0
        for c in engine.table:
            if service and (c.service is None or c.service.name != service):
                continue
            if real_key and (c.daddr, c.dport) != real_key:
                continue
            if offset <= matched < offset + limit:
                out.append(c.describe())
            matched += 1
        return web.json_response({"total": matched, "offset": offset, "limit": limit, "conns": out})

    app.router.add_get("/status", status)
    app.router.add_get("/services", services)
    app.router.add_get("/conns", conns)
    app.router.add_get("/sync", sync)
    app.router.add_get("/metrics", metrics)
    return app
