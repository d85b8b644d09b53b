"""The node's HTTP API (aiohttp): status reads, and changes behind a bearer token.

Reads (GET) are open, except client addresses in GET /conns, which only a caller
with the token sees; every changing request (POST: weight, drain, resign, resume, reload)
needs `Authorization: Bearer <node.api_token>` and is refused with 401 without it,
or always when no token is configured.  The routes are the table ROUTES; the
OpenAPI document (director/openapi.py) is tested against it.  What the API reports
about the node comes as the typed contracts of director/status.py.
"""
from __future__ import annotations

import hmac
import json
import time
from typing import Callable, NamedTuple

from aiohttp import web

from director import openapi
from director.conn_pages import BadQuery, ConnPages, ConnQuery
from director.engine import Engine
from director.metrics import collectors, render
from director.status import ControlSource, NodeSource, NoReload
from schema.keys import WEIGHT


class Route(NamedTuple):
    method: str
    path: str           # aiohttp's pattern; openapi.py names the same path's parameters
    handler: str        # the name of the handler in make_app


ROUTES = (
    Route("GET", "/status", "status"),
    Route("GET", "/services", "services"),
    Route("GET", "/conns", "conns"),
    Route("GET", "/sync", "sync"),
    Route("GET", "/metrics", "metrics"),
    Route("GET", "/openapi.json", "spec"),
    Route("POST", "/services/{service:.+}/real_servers/{real}/weight", "set_weight"),
    Route("POST", "/services/{service:.+}/real_servers/{real}/drain", "drain"),
    Route("POST", "/resign", "resign"),
    Route("POST", "/resume", "resume"),
    Route("POST", "/reload", "reload"),
)


def _loads_flat(text: str):
    """json.loads for a small request body: nesting too deep for the parser's recursion
    is a bad request (ValueError), not an internal error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _authorised(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return bool(token) and given.startswith("Bearer ") and \
        hmac.compare_digest(given[7:].encode(), token.encode())


class NodeApi:
    """The handlers of one node's API, by the names ROUTES gives them."""

    def __init__(self, engine: Engine, node: NodeSource, clock: Callable[[], float]) -> None:
        self.engine, self.node = engine, node
        self.sources = collectors(engine, node, health=self.health)
        self.pages = ConnPages(engine, clock)

    def health(self) -> dict:
        control = self.node.control
        if control is None:
            return {}
        return {(svc.name, d.addr_str, d.port): control.health_of(svc, d) != "down"
                for svc in self.engine.services.values() if svc.cfg.health for d in svc.dests}

    async def status(self, _request: web.Request) -> web.Response:
        engine, st = self.engine, self.node.status()
        return web.json_response({
            "node": st.node,
            "role": st.role,
            "priority": st.priority,
            "peer": st.peer,
            "uptime_s": st.uptime_s,
            "conns": engine.conn_counts(),
            "engine": {**engine.stats, "drops": {k: v for k, v in engine.drops.items() if v}},
            "queue": dict(self.node.queue_stats()),
            "vrrp": st.vrrp.to_json() if st.vrrp is not None else None,
            "role_changes": [dict(c) for c in st.role_changes],
            "sync": {"enabled": st.sync_enabled, "applied": dict(engine.sync_stats)},
        })

    async def sync(self, _request: web.Request) -> web.Response:
        stats = self.node.sync_stats()
        body = {"enabled": stats is not None, "engine": dict(self.engine.sync_stats)}
        if stats is not None:
            body.update(stats.to_json())
        return web.json_response(body)

    async def metrics(self, _request: web.Request) -> web.Response:
        data, ctype = render(*self.sources)
        return web.Response(body=data, headers={"Content-Type": ctype})

    async def services(self, _request: web.Request) -> web.Response:
        control = self.node.control
        out = []
        for svc in self.engine.services.values():
            d = svc.describe()
            for rs, dest in zip(d["real_servers"], svc.dests):
                rs["health"] = control.health_of(svc, dest) if control else "unchecked"
                rs["scheduled"] = dest in svc.scheduler.dests
                rs["forward"] = "FullNat"
            out.append(d)
        return web.json_response({"services": out})

    def _target(self, request: web.Request) -> tuple[ControlSource, str, str, int]:
        if self.node.control is None:
            raise web.HTTPConflict(text="this node takes no operator changes")
        service = request.match_info["service"]
        addr, _, port = request.match_info["real"].rpartition(":")
        if not addr or not port.isdigit():
            raise web.HTTPBadRequest(text="real server must be addr:port")
        return self.node.control, service, addr.strip("[]"), int(port)

    async def set_weight(self, request: web.Request) -> web.Response:
        control, service, addr, port = self._target(request)
        try:
            body = await request.json(loads=_loads_flat)
            weight = body.get("weight") if isinstance(body, dict) else None
            if not isinstance(weight, int) or isinstance(weight, bool):
                raise ValueError("weight must be an integer")
            return web.json_response(control.set_weight(service, addr, port, weight))
        except KeyError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(
                text=f"body must be {{\"weight\": {WEIGHT.range_text()}}}: {exc}") from None

    async def drain(self, request: web.Request) -> web.Response:
        control, service, addr, port = self._target(request)
        try:
            return web.json_response(control.set_weight(service, addr, port, 0))
        except KeyError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None

    async def resign(self, _request: web.Request) -> web.Response:
        answer = await self.node.resign()
        if answer is None:
            raise web.HTTPConflict(text="no election runs: nothing to resign")
        return web.json_response(answer)

    async def resume(self, _request: web.Request) -> web.Response:
        answer = await self.node.resume()
        if answer is None:
            raise web.HTTPConflict(text="no election runs: nothing to resume")
        return web.json_response(answer)

    async def reload(self, _request: web.Request) -> web.Response:
        from director.config import ConfigError
        try:
            return web.json_response(await self.node.reload())
        except NoReload as exc:
            raise web.HTTPConflict(text=f"reload is not available: {exc}") from None
        except ConfigError as exc:
            return web.json_response({"error": str(exc), "changed": False}, status=400)

    async def conns(self, request: web.Request) -> web.StreamResponse:
        try:
            query = ConnQuery.parse(request.query)
        except BadQuery as exc:
            raise web.HTTPBadRequest(text=f"bad query: {exc}") from None
        parts = await self.pages.page(query, show_clients=_authorised(request, self.node.api_token))
        resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        resp.content_length = sum(len(p) for p in parts)
        await resp.prepare(request)
        for part in parts:          # piece by piece: a large page is never copied whole
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def spec(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi.spec())


def make_app(engine: Engine, node: NodeSource, clock: Callable[[], float] = time.monotonic
             ) -> web.Application:
    """The API of one node; `clock` is the one the engine's expiry times are on."""
    @web.middleware
    async def changes_need_token(request: web.Request, handler):
        if request.method not in ("GET", "HEAD") and not _authorised(request, node.api_token):
            return web.json_response(
                {"error": "a changing request needs 'Authorization: Bearer <api_token>'"
                          + ("" if node.api_token else " (no api_token is configured: changes are off)")},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="tandem"'})
        return await handler(request)

    app = web.Application(middlewares=[changes_need_token])
    api = NodeApi(engine, node, clock)
    for route in ROUTES:
        handler = getattr(api, route.handler)
        if route.method == "GET":
            app.router.add_get(route.path, handler)        # and HEAD
        else:
            app.router.add_route(route.method, route.path, handler)
    return app
