"""The node API's OpenAPI 3 description (a dict; `json()` for serving it).

Reads are open (the API listens on a management address); every change needs
`Authorization: Bearer <token>` and answers 401 without it.  The routes are here;
the schemas, those director/api.py serves, are director.openapi_schemas's.
tests/unit/test_api.py checks every route of the app against this document and
validates the app's answers with the schemas.
"""
from __future__ import annotations

import copy
import json as _json
from typing import Any

from director.conn_pages import DEFAULT_LIMIT, MAX_LIMIT
from director.openapi_schemas import SCHEMAS, STR, TIMES, json_response, ref

VERSION = "0.1.0"


_UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
_NOT_FOUND = {"$ref": "#/components/responses/NotFound"}
_BAD_REQUEST = {"$ref": "#/components/responses/BadRequest"}
_CONFLICT = {"$ref": "#/components/responses/Conflict"}
_TOO_LARGE = {"$ref": "#/components/responses/TooLarge"}

_RS_PARAMS = [
    {"name": "service", "in": "path", "required": True, "schema": STR,
     "description": "the service name, URL-encoded (tcp%2F198.18.0.100%3A80): default names hold "
                    "a slash, so the route must take an encoded one (aiohttp: {service:.+})"},
    {"name": "addr_port", "in": "path", "required": True, "schema": STR,
     "description": "the real server as addr:port ([v6]:port for IPv6)"},
]


def _change(summary: str, description: str, result: str, *, body: dict | None = None, params=None,
            not_found: bool = True, method: str = "post") -> dict:
    op: dict[str, Any] = {
        "summary": summary, "description": description,
        "security": [{"bearerAuth": []}],
        "responses": {"200": json_response("done", ref(result)),
                      "401": _UNAUTHORIZED, "409": _CONFLICT},
    }
    if params:
        op["parameters"] = params
        op["responses"]["400"] = _BAD_REQUEST
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["400"] = _BAD_REQUEST
        op["responses"]["413"] = _TOO_LARGE
    if not_found:
        op["responses"]["404"] = _NOT_FOUND
    return {method: op}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "tandem node API",
        "version": VERSION,
        "description": "Status and control of one tandem director node (FULLNAT L4 load balancer). "
                       "GETs are open; POSTs and DELETEs need a bearer token. " + TIMES,
    },
    "servers": [{"url": "http://127.0.0.1:9100"}],
    "paths": {
        "/status": {"get": {
            "summary": "The node: role, priority, peer, connection counts, engine and queue counters",
            "responses": {"200": json_response("node status", ref("Status"))},
        }},
        "/services": {"get": {
            "summary": "Every virtual service with its real servers and their counters",
            "responses": {"200": json_response("services", ref("ServiceList"))},
        }},
        "/conns": {"get": {
            "summary": "A page of the connection table",
            "description": "Built in slices that yield to the node's event loop.  Client "
                           "addresses need the API token (`Authorization: Bearer <token>`); "
                           "without it every entry is there with `client` null.",
            "parameters": [
                {"name": "service", "in": "query", "required": False,
                 "schema": {"type": "string", "minLength": 1},
                 "description": "only connections of this service (its name)"},
                {"name": "real", "in": "query", "required": False,
                 "schema": {"type": "string", "pattern": r"^\[?[0-9A-Fa-f:.]+\]?:[0-9]{1,5}$"},
                 "description": "only connections to this real server, addr:port ([v6]:port)"},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": DEFAULT_LIMIT},
                 "description": f"at most {MAX_LIMIT} entries: a larger limit is served as "
                                f"{MAX_LIMIT}, and the answer's `limit` says so"},
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": 0}},
            ],
            "responses": {"200": json_response("connections", ref("ConnPage")),
                          "400": _BAD_REQUEST},
        }},
        "/sync": {"get": {
            "summary": "The connection-sync daemon's state and counters",
            "responses": {"200": json_response("sync status", ref("SyncStatus"))},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (text exposition format 0.0.4)",
            "responses": {"200": {"description": "metrics", "content": {
                "text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "the OpenAPI 3 document", "content": {
                "application/json": {"schema": {"type": "object"}}}}},
        }},
        "/services/{service}/real_servers/{addr_port}/weight": _change(
            "Set a real server's weight",
            "0 makes it quiescent: no new connections, established ones carry on.  The "
            "weight is an operator override: it applies on both nodes of the pair, survives "
            "a restart (the state file) and beats the config file until cleared "
            "(DELETE .../override).",
            "WeightResult", body=ref("WeightChange"), params=_RS_PARAMS),
        "/services/{service}/real_servers/{addr_port}/drain": _change(
            "Drain a real server",
            "Weight 0 until set again or cleared; established connections carry on (an LVS "
            "quiescent server, HAProxy's `drain`).  An override, as /weight.",
            "WeightResult", params=_RS_PARAMS),
        "/services/{service}/real_servers/{addr_port}/override": _change(
            "Clear the operator's override",
            "The file's weight applies again, on both nodes of the pair.  Answers `cleared`: "
            "whether an override was in force.",
            "WeightResult", params=_RS_PARAMS, method="delete"),
        "/resign": _change(
            "Give up the master role",
            "The node stops being VRRP master (a priority 0 advert) so the peer takes over after its skew time, and holds back from "
            "preempting until /resume.  If no peer takes over within the master down interval, "
            "the node becomes master again (the VIPs are never left without one).  Answers with "
            "the state after the change.",
            "ResignResult", not_found=False),
        "/resume": _change(
            "End a resignation",
            "The node preempts again: with the higher priority it takes mastership back after "
            "its master down timer (`expected` says when, at most).  Idempotent; answers with "
            "the state now and the one expected.",
            "ResignResult", not_found=False),
        "/cluster/drain": {**_change(
            "Drain this cluster member",
            "Withdraws the VIPs' routes at once (no new flows), keeps announcing this "
            "director's laddrs while it owns connections, for at most [cluster] "
            "drain_timeout, then withdraws everything; the node stays up, withdrawn, until "
            "stopped.  Its peers hear it drains and adopt none of its laddrs.  Answers with "
            "/status's `cluster` after the change (`state`: draining or drained).",
            "ClusterView", not_found=False), **_change(
            "Cancel a drain",
            "The director announces again what a healthy member does.",
            "ClusterView", not_found=False, method="delete")},
        "/reload": _change(
            "Re-read the config file and apply it",
            "Nothing is applied unless the whole file is valid (400 with the error otherwise); "
            "connections of real servers that stay are untouched.",
            "ReloadResult", not_found=False),
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Unauthorized": json_response("no or wrong bearer token", ref("Error")),
            "NotFound": json_response("no such service or real server", ref("Error")),
            "BadRequest": json_response("invalid request", ref("Error")),
            "Conflict": json_response("the node cannot take this change now (the error "
                                       "says why)", ref("Error")),
            "TooLarge": json_response("the request body is too large", ref("Error")),
            "InternalError": json_response("a fault of the node (logged there)", ref("Error")),
        },
        "schemas": SCHEMAS,
    },
}
SPEC["paths"]["/reload"]["post"]["responses"]["400"] = json_response(
    "the file is invalid: nothing changed", ref("Error"))
for _method in ("post", "delete"):
    SPEC["paths"]["/cluster/drain"][_method]["responses"]["409"] = json_response(
        'not a cluster member (node.mode = "cluster")', ref("Error"))
for _path, _why in (("/resign", "no election is configured"), ("/resume", "no election is configured"),
                    ("/reload", "the node was not started from a file")):
    SPEC["paths"][_path]["post"]["responses"]["409"] = json_response(_why, ref("Error"))
for _ops in SPEC["paths"].values():         # a fault of the node answers an Error too
    for _op in _ops.values():
        _op["responses"].setdefault("500", {"$ref": "#/components/responses/InternalError"})


def spec() -> dict[str, Any]:
    """A copy of the document (callers may change it)."""
    return copy.deepcopy(SPEC)


def json(indent: int | None = 2) -> str:
    return _json.dumps(SPEC, indent=indent, sort_keys=False)


def schema(name: str) -> dict[str, Any]:
    """A component schema as stand-alone JSON Schema (refs inlined, `nullable` turned
    into a type union) for validating API answers in tests."""
    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(SPEC["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]])
            out = {k: resolve(v) for k, v in node.items() if k not in ("nullable", "example")}
            if node.get("nullable") and "type" in out:
                out["type"] = [out["type"], "null"]
            elif node.get("nullable"):              # {nullable, allOf: [$ref]}
                return {"anyOf": [out, {"type": "null"}]}
            return out
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node
    return resolve(SPEC["components"]["schemas"][name])
