"""Every error the node's API answers is the `Error` body /openapi.json declares, with a
status code declared for that path and method (issue 17, item 13).

The requests are built from the document itself: each operation it declares (and so each
route another change adds) gets the bad requests its declaration implies (no token, query
parameters outside their schema, bad path parameters, bad bodies, a body too large, a
method the path does not have), on a node that takes changes and on one that cannot
(409).  Each answer is then checked against the document: the status is declared for the
operation and the body validates against the declared schema."""
from __future__ import annotations

import copy
import json
import re
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from director import openapi
from director.api import MAX_BODY, make_app
from director.control import Control
from director.engine import Engine
from director.status import NodeParts
from tests.helpers import RS, VIP, make_config

jsonschema = pytest.importorskip("jsonschema")

TOKEN = "conformance-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: a value for each path parameter that names something that exists
GOOD_PATH = {"service": f"tcp/{VIP}:80", "addr_port": f"{RS[1]}:8080"}
#: what an operator gets wrong in a path parameter, by name (others: a bare word)
BAD_PATH = {"service": ["nope", "tcp/198.18.0.1:80"],
            "addr_port": ["nothing", f"{RS[1]}:x", f"{RS[1]}:0", "198.18.0.999:8080", f"{RS[1]}",
                          "198.18.9.9:8080"]}
#: what a Python object or a traceback looks like in a message
REPR = re.compile(r"\w+(Error|Exception)\(|Traceback|object at 0x|invalid literal|"
                  r"^'|\\'|codec can't")


def resolve(node, doc):
    """`node` with every $ref of the document inlined and `nullable` as JSON Schema has it."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(target, doc)
        out = {k: resolve(v, doc) for k, v in node.items() if k not in ("nullable", "example")}
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        elif node.get("nullable"):
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [resolve(v, doc) for v in node]
    return node


DOC = openapi.spec()
OPS = [(path, method, resolve(op, DOC)) for path, ops in DOC["paths"].items()
       for method, op in ops.items()]
ERROR = resolve(DOC["components"]["schemas"]["Error"], DOC)


def url(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(values.get(m.group(1), "x"), safe=":[]"), path)


def schema_violations(schema: dict) -> list[str]:
    """Query-string values its schema refuses."""
    out = []
    if schema.get("type") == "integer":
        out += ["abc", "1.5", ""]
        if "minimum" in schema:
            out.append(str(schema["minimum"] - 1))
        if "maximum" in schema:
            out.append(str(schema["maximum"] + 1))
    if schema.get("minLength"):
        out.append("")
    if "pattern" in schema:
        out += ["x", "a b:1"]
    return out


def body_violations(schema: dict) -> list[bytes]:
    """Request bodies its schema refuses (besides ones that are not JSON)."""
    out = [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]
    props = schema.get("properties", {})
    if schema.get("required"):
        out.append(b"{}")
    for name, p in props.items():
        wrong = {"integer": ["5", 1.5, True, None], "string": [5, None], "boolean": ["yes", 1]}
        for v in wrong.get(p.get("type"), []):
            out.append(json.dumps({name: v}).encode())
        if "minimum" in p:
            out.append(json.dumps({name: p["minimum"] - 1}).encode())
        if "maximum" in p:
            out.append(json.dumps({name: p["maximum"] + 1}).encode())
    if schema.get("additionalProperties") is False and props:
        first = next(iter(props.values()))
        example = first.get("minimum", 1) if first.get("type") == "integer" else "x"
        out.append(json.dumps({next(iter(props)): example, "surplus": 1}).encode())
    return out


class Checker:
    """Sends requests and judges each answer against the document."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.seen: dict[tuple[str, str], set[int]] = {}

    async def send(self, method: str, path: str, op: dict | None, template: str, **kw) -> int:
        resp = await self.client.request(method.upper(), path, **kw)
        status = resp.status
        text = await resp.text()
        where = f"{method.upper()} {path} -> {status}: {text[:200]}"
        if status >= 400:
            assert resp.content_type == "application/json", where
            body = json.loads(text)
            jsonschema.validate(body, ERROR)
            assert not REPR.search(body["error"]), where
            assert "\n" not in body["error"], where
        if op is None:                      # not an operation of the document
            return status
        declared = op["responses"]
        assert str(status) in declared, f"undeclared status: {where}"
        content = declared[str(status)].get("content", {})
        if "application/json" in content:
            assert resp.content_type == "application/json", where
            jsonschema.validate(json.loads(text), content["application/json"]["schema"])
        self.seen.setdefault((method, template), set()).add(status)
        return status


def engine() -> Engine:
    return Engine(make_config())


async def check_operation(c: Checker, path: str, method: str, op: dict, *, changes: bool) -> None:
    """Every bad request the operation's declaration implies, then a good one."""
    good = url(path, GOOD_PATH)
    secured = bool(op.get("security"))
    send = c.send
    if secured:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": "Basic " + TOKEN}):
            assert await send(method, good, op, path, headers=headers) == 401
    auth = AUTH if secured else {}
    for p in op.get("parameters", []):
        if p["in"] == "query":
            for bad in schema_violations(p["schema"]):
                status = await send(method, good, op, path, params={p["name"]: bad}, headers=auth)
                assert status == 400, (path, p["name"], bad)
        elif p["in"] == "path" and changes:
            for bad in BAD_PATH.get(p["name"], ["x"]):
                status = await send(method, url(path, {**GOOD_PATH, p["name"]: bad}), op, path,
                                    headers=auth)
                assert status in (400, 404), (path, p["name"], bad, status)
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body is not None and changes:
        for raw in body_violations(body):
            status = await send(method, good, op, path, data=raw,
                                headers={**auth, "Content-Type": "application/json"})
            assert status == 400, (path, raw[:40])
        status = await send(method, good, op, path, data=b" " * (MAX_BODY + 1),
                            headers={**auth, "Content-Type": "application/json"})
        assert status == 413
    for other in ("get", "post", "put", "delete", "patch"):
        if other not in DOC["paths"][path] and not (other == "head" and method == "get"):
            status = await send(other, good, None, path, headers=auth)
            assert status == 405, (other, path)
    # one request the declaration allows: declared too, and on a node that takes no
    # changes, refused with 409 when it is a change
    kw: dict = {"headers": auth}
    if body is not None:
        props = body.get("properties", {})
        kw["json"] = {k: v.get("minimum", 0) if v.get("type") == "integer" else "x"
                      for k, v in props.items() if k in body.get("required", [])}
    status = await send(method, good, op, path, **kw)
    if method != "get" and not changes and path != "/reload":
        assert status == 409, (path, status)


async def test_every_operation_answers_errors_as_the_document_declares():
    """Item 13: errors were text/plain (or aiohttp's HTML-ish defaults) where the document
    promises an `Error` body, 409 was declared without one or not at all, and `limit=abc`
    answered with int()'s message."""
    eng = engine()
    for changes in (True, False):
        node = NodeParts("t", "master", api_token=TOKEN,
                         control=Control(eng) if changes else None)
        async with TestClient(TestServer(make_app(eng, node))) as client:
            c = Checker(client)
            for path, method, op in OPS:
                await check_operation(c, path, method, op, changes=changes)
            # a path the API does not have
            assert await c.send("get", "/no/such/path", None, "") == 404
    assert len(OPS) >= 10


async def test_conns_query_parameters_are_checked_with_the_documents_limits():
    """Item 13, as an operator types them: each answer names the parameter and the problem
    in words (before: `limit=abc` gave "invalid literal for int() with base 10", `real=`
    was taken as no filter at all)."""
    async with TestClient(TestServer(make_app(engine(), NodeParts("t", "master")))) as client:
        for query, want in (
                ("limit=-1", 'bad query: limit: must be an integer >= 0, got "-1"'),
                ("limit=abc", 'bad query: limit: must be an integer >= 0, got "abc"'),
                ("offset=1e3", 'bad query: offset: must be an integer >= 0, got "1e3"'),
                ("real=", "bad query: real: must be addr:port, got an empty value"),
                ("real=198.18.2.21", 'bad query: real: must be addr:port with a port 1..65535, '
                                     'got "198.18.2.21"'),
                ("real=rs1:8080", 'bad query: real: "rs1" is not an IP address'),
                ("service=", "bad query: service: must be a service name, got an empty value")):
            resp = await client.get("/conns?" + query)
            assert resp.status == 400, query
            assert await resp.json() == {"error": want}
        resp = await client.get("/conns?limit=0&real=[2001:2::1]:80")
        assert resp.status == 200 and (await resp.json())["total"] == 0


async def test_change_errors_say_what_was_wrong_in_words():
    eng = engine()
    node = NodeParts("t", "master", api_token=TOKEN, control=Control(eng))
    rs = f"/services/{quote(f'tcp/{VIP}:80', safe='')}/real_servers"
    async with TestClient(TestServer(make_app(eng, node))) as client:
        for path, body, status, want in (
                (f"{rs}/198.18.2.99:8080/drain", None, 404,
                 f"no real server 198.18.2.99:8080 in tcp/{VIP}:80"),
                ("/services/nope/real_servers/198.18.2.21:8080/drain", None, 404,
                 "no service 'nope'"),
                (f"{rs}/rs1:8080/drain", None, 400, 'real server: "rs1" is not an IP address'),
                (f"{rs}/{RS[0]}:8080/weight", {"weight": -1}, 400,
                 'body must be {"weight": 0..65535}: weight must be >= 0, got -1'),
                (f"{rs}/{RS[0]}:8080/weight", {"weight": 1, "wieght": 2}, 400,
                 'body must be {"weight": 0..65535}: unknown key "wieght"'),
                (f"{rs}/{RS[0]}:8080/weight", {}, 400,
                 'body must be {"weight": 0..65535}: weight is missing'),
                (f"{rs}/{RS[0]}:8080/weight", {"weight": "5"}, 400,
                 'body must be {"weight": 0..65535}: weight must be an integer, got a string'),
                (f"{rs}/{RS[0]}:8080/weight", [5], 400,
                 'body must be {"weight": 0..65535}: must be a JSON object, got an array')):
            resp = await client.post(path, json=body, headers=AUTH)
            assert resp.status == status, path
            assert await resp.json() == {"error": want}
        resp = await client.put("/resign", headers=AUTH)
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "PUT is not allowed on /resign (allowed: POST)"}


def test_every_error_status_is_declared_with_an_error_body():
    """No status >= 400 in the document without the `Error` body (a 409 was declared as a
    bare description)."""
    for path, method, op in OPS:
        for status, resp in op["responses"].items():
            if int(status) >= 400:
                schema = resp["content"]["application/json"]["schema"]
                assert schema == ERROR, (path, method, status)
        assert "500" in op["responses"], (path, method)
    assert copy.deepcopy(DOC) == openapi.spec()


async def test_a_fault_in_the_node_answers_a_declared_500_and_is_logged(caplog):
    """A handler that fails (here: the sync link's counters raise) answers the `Error`
    body with 500, which every operation declares; the traceback goes to the node's log,
    never to the caller."""
    class BrokenSync(NodeParts):
        def sync_stats(self):
            raise RuntimeError("sync counters exploded: secret-internal-detail")

    async with TestClient(TestServer(make_app(engine(), BrokenSync("t", "master")))) as client:
        c = Checker(client)
        op = next(op for path, method, op in OPS if path == "/sync")
        with caplog.at_level("ERROR", logger="tandem.api"):
            assert await c.send("get", "/sync", op, "/sync") == 500
            body = await (await client.get("/sync")).json()
    assert body == {"error": "internal error: the node's log has the details"}
    assert any(r.exc_info and "GET /sync" in r.getMessage() for r in caplog.records)
