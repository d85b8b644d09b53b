"""The node's HTTP API (aiohttp): status reads, and changes behind a bearer token.

Reads (GET) are open, except client addresses in GET /conns, which only a caller
with the token sees; every changing request (POST: weight, drain, resign, resume, reload, cluster drain;
DELETE: an override)
needs `Authorization: Bearer <node.api_token>` and is refused with 401 without it,
or always when no token is configured.  The routes are the table ROUTES; the
OpenAPI document (director/openapi.py) is tested against it.  What the API reports
about the node comes as the typed contracts of director/status.py.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Callable, NamedTuple

from aiohttp import web

from director import openapi
from director.conn_pages import BadQuery, ConnPages, ConnQuery, parse_addr_port
from director.engine import Engine
from director.metrics import collectors, render
from director.status import (ControlSource, EpochClock, HealthCheckStatus, NodeSource, NoReload,
                             is_scheduled)
from schema.keys import WEIGHT

log = logging.getLogger("tandem.api")


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
    Route("DELETE", "/services/{service:.+}/real_servers/{real}/override", "clear_override"),
    Route("POST", "/resign", "resign"),
    Route("POST", "/resume", "resume"),
    Route("POST", "/reload", "reload"),
    Route("POST", "/cluster/drain", "cluster_drain"),
    Route("DELETE", "/cluster/drain", "cluster_undrain"),
)


def _loads_flat(text: str):
    """json.loads for a small request body: nesting too deep for the parser's recursion
    is a bad request (ValueError), not an internal error; both in words."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


#: JSON's names of the types a body's values can have
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer",
               float: "a number", bool: "a boolean", type(None): "null"}


async def json_object(request: web.Request, allowed: tuple[str, ...]) -> dict:
    """The request's body as a JSON object with no key outside `allowed` (the schema's
    additionalProperties: false); ValueError in words otherwise."""
    try:
        body = await request.json(loads=_loads_flat)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not isinstance(body, dict):
        raise ValueError(f"must be a JSON object, got {_JSON_TYPES.get(type(body), 'something else')}")
    surplus = sorted(set(body) - set(allowed))
    if surplus:
        raise ValueError(f"unknown key {json.dumps(surplus[0])}")
    return body


def json_integer(body: dict, key: str) -> int:
    value = body.get(key)
    if key not in body:
        raise ValueError(f"{key} is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, got {_JSON_TYPES.get(type(value), 'something else')}")
    return value


def _words(exc: BaseException) -> str:
    """An exception's message as written (str(KeyError) is the repr of its argument)."""
    return str(exc.args[0]) if len(exc.args) == 1 else str(exc)


def _authorised(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return bool(token) and given.startswith("Bearer ") and \
        hmac.compare_digest(given[7:].encode(), token.encode())


def error_response(status: int, error: str, headers: dict | None = None) -> web.Response:
    """The body of every error the API answers, as /openapi.json declares it (`Error`):
    one line in the operator's language, never a Python repr or a traceback."""
    return web.json_response({"error": error}, status=status, headers=headers)


#: the largest request body taken (aiohttp's default; a change request is a few bytes)
MAX_BODY = 1 << 20
#: the headers of an aiohttp error that still mean something on the JSON answer
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def _problem(request: web.Request, exc: web.HTTPException) -> str:
    """What a handler (or aiohttp itself) said about an error, in words."""
    text = (exc.text or "").strip()
    if text and text != f"{exc.status}: {exc.reason}":
        return text                 # a handler's own message
    if exc.status == 404:
        return f"no such path: {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed on {request.path}" + (
            f" (allowed: {allowed.replace(',', ', ')})" if allowed else "")
    if exc.status == 413:
        return f"the request body is too large (at most {MAX_BODY} bytes)"
    return exc.reason


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error as an `Error` body: a handler's HTTPException (its text becomes the
    message), aiohttp's own 404/405/413, and anything unexpected (500, logged here)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        return error_response(exc.status, _problem(request, exc), headers)
    except Exception:
        log.exception("API: %s %s failed", request.method, request.path)
        return error_response(500, "internal error: the node's log has the details")


class NodeApi:
    """The handlers of one node's API, by the names ROUTES gives them."""

    def __init__(self, engine: Engine, node: NodeSource, clock: Callable[[], float],
                 wall: Callable[[], float] = time.time) -> None:
        self.engine, self.node = engine, node
        self.epoch = EpochClock(clock, wall)     # every time served: epoch seconds
        self.sources = collectors(engine, node, health=self.health)
        self.pages = ConnPages(engine, clock, self.epoch, getattr(node, "kernel_path", None))

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
            "peer_status": st.peer_status.to_json() if st.peer_status is not None else None,
            "uptime_s": st.uptime_s,
            "conns": engine.conn_counts(),
            "engine": {**engine.stats, "drops": {k: v for k, v in engine.drops.items() if v}},
            "queue": dict(self.node.queue_stats()),
            "vrrp": st.vrrp.to_json() if st.vrrp is not None else None,
            "role_changes": [dict(c) for c in st.role_changes],
            "sync": {"enabled": st.sync_enabled, "applied": dict(engine.sync_stats)},
            "forwarding": {svc.name: svc.forwarding for svc in engine.services.values()},
            "kernel": _kernel_stats(self.node),
            "cluster": _cluster_status(self.node),
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
        control, checks = self.node.control, self.node.health
        offset = self.epoch.offset()
        out = []
        for svc in self.engine.services.values():
            d = svc.describe()
            for rs, dest in zip(d["real_servers"], svc.dests):
                rs["health"] = control.health_of(svc, dest) if control else "unchecked"
                rs["scheduled"] = is_scheduled(svc, dest)
                rs["forward"] = "FullNat"
                rs["config_weight"] = svc.config_weight(dest)
                rs["override"] = control.override_of(svc, dest) if control else None
                result = checks.result(svc.name, dest.addr_str, dest.port) if checks else None
                rs["health_check"] = (None if result is None else
                                      HealthCheckStatus.of(result, self.epoch, offset).to_json())
            out.append(d)
        return web.json_response({"services": out})

    def _target(self, request: web.Request) -> tuple[ControlSource, str, str, int]:
        if self.node.control is None:
            raise web.HTTPConflict(text="this node takes no operator changes")
        service = request.match_info["service"]
        proto, _, vip = service.partition("/")
        if vip.startswith("["):
            # an IPv6 VIP written as everywhere else, [addr]:port: the service's own name
            # (ServiceConfig.key) has it unbracketed
            try:
                service = "{}/{}:{}".format(proto, *parse_addr_port(vip))
            except ValueError as exc:
                raise web.HTTPBadRequest(text=f"service: {exc}") from None
        try:
            addr, port = parse_addr_port(request.match_info["real"])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"real server: {exc}") from None
        return self.node.control, service, addr, port

    async def set_weight(self, request: web.Request) -> web.Response:
        control, service, addr, port = self._target(request)
        try:
            weight = json_integer(await json_object(request, ("weight",)), "weight")
            result = control.set_weight(service, addr, port, weight)
        except KeyError as exc:
            raise web.HTTPNotFound(text=_words(exc)) from None
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(
                text=f"body must be {{\"weight\": {WEIGHT.range_text()}}}: {_words(exc)}") from None
        await control.kept()
        return web.json_response(result)

    async def drain(self, request: web.Request) -> web.Response:
        control, service, addr, port = self._target(request)
        try:
            result = control.drain(service, addr, port)
        except KeyError as exc:
            raise web.HTTPNotFound(text=_words(exc)) from None
        await control.kept()
        return web.json_response(result)

    async def clear_override(self, request: web.Request) -> web.Response:
        control, service, addr, port = self._target(request)
        try:
            result = control.clear(service, addr, port)
        except KeyError as exc:
            raise web.HTTPNotFound(text=_words(exc)) from None
        await control.kept()
        return web.json_response(result)

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

    async def _cluster_drain(self, on: bool) -> web.Response:
        wired = getattr(self.node, "cluster_drain", None)
        answer = await wired(on) if wired is not None else None
        if answer is None:
            raise web.HTTPConflict(text='not a cluster member (node.mode = "cluster"): '
                                        "nothing to drain")
        return web.json_response(answer)

    async def cluster_drain(self, _request: web.Request) -> web.Response:
        return await self._cluster_drain(True)

    async def cluster_undrain(self, _request: web.Request) -> web.Response:
        return await self._cluster_drain(False)

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
            raise web.HTTPBadRequest(text=f"bad query: {_words(exc)}") from None
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


def _kernel_stats(node) -> dict | None:
    got = getattr(node, "kernel_stats", None)      # a NodeSource without kernel mode
    stats = got() if got is not None else None
    return dict(stats) if stats is not None else None


def _cluster_status(node) -> dict | None:
    got = getattr(node, "cluster_status", None)    # a NodeSource without cluster mode
    view = got() if got is not None else None
    return dict(view) if view is not None else None


def make_app(engine: Engine, node: NodeSource, clock: Callable[[], float] = time.monotonic,
             wall: Callable[[], float] = time.time) -> web.Application:
    """The API of one node; `clock` is the one the engine's expiry times are on, `wall` the
    epoch clock every time it serves is given in."""
    @web.middleware
    async def changes_need_token(request: web.Request, handler):
        routed = request.match_info.http_exception is None     # else: 404/405 first
        if routed and request.method not in ("GET", "HEAD") and not _authorised(request, node.api_token):
            return web.json_response(
                {"error": "a changing request needs 'Authorization: Bearer <api_token>'"
                          + ("" if node.api_token else " (no api_token is configured: changes are off)")},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="tandem"'})
        return await handler(request)

    app = web.Application(middlewares=[json_errors, changes_need_token], client_max_size=MAX_BODY)
    api = NodeApi(engine, node, clock, wall)
    for route in ROUTES:
        handler = getattr(api, route.handler)
        if route.method == "GET":
            app.router.add_get(route.path, handler)        # and HEAD
        else:
            app.router.add_route(route.method, route.path, handler)
    return app
