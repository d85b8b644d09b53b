"""The node's HTTP API (director/api.py) through aiohttp's test client against the real app,
and its OpenAPI document (director/openapi.py)."""
from __future__ import annotations

import contextlib
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer
from scapy.layers.inet import IP, TCP

from director import openapi
from director.api import NodeState, make_app
from director.engine import Engine
from tests.helpers import CLIENT, VIP, make_config, tcp, udp


def driven_engine() -> Engine:
    """One ESTABLISHED TCP connection, one SYN_RECV, one UDP flow."""
    eng = Engine(make_config())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=5000, ack=1001), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=5001), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40001, 80, "S"), 0.0)
    eng.handle(udp(CLIENT, VIP, 5353, 80), 0.0)
    return eng


@contextlib.asynccontextmanager
async def client_for(eng: Engine, node: NodeState | None = None):
    async with TestClient(TestServer(make_app(eng, node or NodeState("t", "master")))) as client:
        yield client


# -- the OpenAPI document ----------------------------------------------------------------

def test_openapi_paths_have_responses_and_refs_resolve():
    doc = openapi.spec()
    want = {("get", "/status"), ("get", "/services"), ("get", "/conns"), ("get", "/sync"),
            ("get", "/metrics"), ("get", "/openapi.json"), ("post", "/services/{service}/real_servers/{addr_port}/weight"),
            ("post", "/services/{service}/real_servers/{addr_port}/drain"),
            ("post", "/resign"), ("post", "/reload")}
    have = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert have == want
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if method == "post":
                assert op["security"] == [{"bearerAuth": []}] and "401" in op["responses"]
    conns_params = {p["name"] for p in doc["paths"]["/conns"]["get"]["parameters"]}
    assert conns_params == {"service", "real", "limit", "offset"}

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)
    for ref in refs(doc):
        _, section, name = ref.rsplit("/", 2)
        assert name in doc["components"][section], ref
    assert openapi.json().startswith("{")


def _shape(path: str) -> str:
    """A path with its parameters' names blanked: /a/{x}/b -> /a/{}/b (aiohttp's {x:.+} too)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_of_the_app_is_in_the_openapi_document_and_back():
    app = make_app(Engine(make_config()), NodeState("t", "master"))
    served = {(r.method.lower(), _shape(r.resource.canonical)) for r in app.router.routes()
              if r.method != "HEAD"}
    documented = {(m, _shape(p)) for p, ops in openapi.spec()["paths"].items() for m in ops}
    assert served == documented


def test_openapi_validates():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(openapi.spec())


async def test_api_answers_match_the_openapi_schemas():
    jsonschema = pytest.importorskip("jsonschema")
    async with client_for(driven_engine()) as client:
        for path, name in (("/status", "Status"), ("/services", "ServiceList"), ("/conns", "ConnPage")):
            resp = await client.get(path)
            assert resp.status == 200, path
            jsonschema.validate(await resp.json(), openapi.schema(name))


TOKEN = "unit-test-token"


def controlled_node(eng: Engine) -> NodeState:
    from director.control import Control
    node = NodeState("t", "master")
    node.control = Control(eng)
    node.token = TOKEN
    return node


async def test_changes_need_the_token_and_answer_as_documented():
    jsonschema = pytest.importorskip("jsonschema")
    eng = driven_engine()
    rs = "/services/tcp%2F198.18.0.100%3A80/real_servers/198.18.2.22:8080"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client_for(eng, controlled_node(eng)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = await client.post(rs + "/weight", json={"weight": 5}, headers=headers)
            assert resp.status == 401
            jsonschema.validate(await resp.json(), openapi.schema("Error"))
        weights = {d.addr_str: d.weight for s in eng.services.values() for d in s.dests}
        assert weights["198.18.2.22"] == 1                       # nothing changed
        resp = await client.post(rs + "/weight", json={"weight": 5}, headers=auth)
        assert resp.status == 200
        jsonschema.validate(await resp.json(), openapi.schema("WeightResult"))
        svc = next(s for s in eng.services.values() if s.name == "tcp/198.18.0.100:80")
        assert {d.addr_str: d.weight for d in svc.dests}["198.18.2.22"] == 5
        resp = await client.post(rs + "/drain", headers=auth)
        assert resp.status == 200 and (await resp.json())["weight"] == 0
        for body in ({"weight": "5"}, {"weight": True}, {"weight": 70000}, {}):
            assert (await client.post(rs + "/weight", json=body, headers=auth)).status in (400,), body
        resp = await client.post("/services/nope/real_servers/198.18.2.22:8080/drain", headers=auth)
        assert resp.status == 404
        assert (await client.post("/resign", headers=auth)).status == 409     # no election here
        assert (await client.post("/reload", headers=auth)).status == 409     # not from a file
