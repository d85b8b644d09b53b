"""The node's HTTP API (aiohttp): status reads, and changes behind a bearer token.

Reads (GET) are open; every changing request (POST: weight, drain, resign,
reload) needs `Authorization: Bearer <node.api_token>` and is refused with 401
without it, or always when no token is configured.
"""
from __future__ import annotations

import hmac
import ipaddress
import time

from aiohttp import web

from director import openapi
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
        self.control = None         # director.control.Control
        self.health = None          # director.health.HealthChecker
        self.token = ""             # bearer token for changing requests ("" = none allowed)
        self.reload = None          # async () -> dict, raises ConfigError

    def vrrp_status(self) -> dict | None:
        return self.vrrp.instance.status() if self.vrrp is not None else None


def _authorised(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return bool(token) and given.startswith("Bearer ") and \
        hmac.compare_digest(given[7:].encode(), token.encode())


def make_app(engine: Engine, node: NodeState) -> web.Application:
    @web.middleware
    async def changes_need_token(request: web.Request, handler):
        if request.method not in ("GET", "HEAD") and not _authorised(request, node.token):
            return web.json_response(
                {"error": "a changing request needs 'Authorization: Bearer <api_token>'"
                          + ("" if node.token else " (no api_token is configured: changes are off)")},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="tandem"'})
        return await handler(request)

    app = web.Application(middlewares=[changes_need_token])

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

    def health() -> dict:
        if node.control is None:
            return {}
        return {(svc.name, d.addr_str, d.port): node.control.health_of(svc, d) != "down"
                for svc in engine.services.values() if svc.cfg.health for d in svc.dests}

    collector = TandemCollector(engine, node_info, queue_stats=node.queue_stats,
                                sync_stats=lambda: node.sync.describe() if node.sync else {},
                                health=health)

    async def services(_request: web.Request) -> web.Response:
        out = []
        for svc in engine.services.values():
            d = svc.describe()
            for rs, dest in zip(d["real_servers"], svc.dests):
                rs["health"] = node.control.health_of(svc, dest) if node.control else "unchecked"
                rs["scheduled"] = dest in svc.scheduler.dests
                rs["forward"] = "FullNat"
            out.append(d)
        return web.json_response({"services": out})

    def _target(request: web.Request):
        service = request.match_info["service"]
        addr, _, port = request.match_info["real"].rpartition(":")
        if not addr or not port.isdigit():
            raise web.HTTPBadRequest(text="real server must be addr:port")
        return service, addr.strip("[]"), int(port)

    async def set_weight(request: web.Request) -> web.Response:
        service, addr, port = _target(request)
        try:
            body = await request.json()
            weight = body.get("weight") if isinstance(body, dict) else None
            if not isinstance(weight, int) or isinstance(weight, bool):
                raise ValueError("weight must be an integer")
            return web.json_response(node.control.set_weight(service, addr, port, weight))
        except KeyError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"body must be {{\"weight\": 0..65535}}: {exc}") from None

    async def drain(request: web.Request) -> web.Response:
        service, addr, port = _target(request)
        try:
            return web.json_response(node.control.set_weight(service, addr, port, 0))
        except KeyError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None

    async def resign(_request: web.Request) -> web.Response:
        if node.vrrp is None:
            raise web.HTTPConflict(text="no election configured: nothing to resign")
        node.vrrp.resign()
        return web.json_response({"resigned": True, "role": node.role})

    async def reload(_request: web.Request) -> web.Response:
        from director.config import ConfigError
        if node.reload is None:
            raise web.HTTPConflict(text="reload is not available")
        try:
            return web.json_response(await node.reload())
        except ConfigError as exc:
            return web.json_response({"error": str(exc), "changed": False}, status=400)

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
        now = time.monotonic()
        for c in out:
            c["expires_in"] = round(c["expires"] - now, 3)
        return web.json_response({"total": matched, "offset": offset, "limit": limit, "now": now,
                                  "conns": out})

    app.router.add_get("/status", status)
    app.router.add_get("/services", services)
    app.router.add_get("/conns", conns)
    app.router.add_get("/sync", sync)
    app.router.add_get("/metrics", metrics)
    async def spec(_request: web.Request) -> web.Response:
        return web.json_response(openapi.spec())

    app.router.add_get("/openapi.json", spec)
    app.router.add_post("/services/{service:.+}/real_servers/{real}/weight", set_weight)
    app.router.add_post("/services/{service:.+}/real_servers/{real}/drain", drain)
    app.router.add_post("/resign", resign)
    app.router.add_post("/reload", reload)
    return app
