"""The node's HTTP API (director/api.py) through aiohttp's test client against the real app,
and its OpenAPI document (director/openapi.py)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP

from director import conn_pages, openapi
from director.api import ROUTES, make_app
from director.control import Control
from director.engine import Engine
from director.status import NodeParts
from ha.vrrp import VrrpConfig
from ha.vrrp_io import VrrpRunner
from proto import vrrp as V
from tests.helpers import CLIENT, RS, VIP, make_config, tcp, udp


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
async def client_for(eng: Engine, node: NodeParts | None = None):
    app = make_app(eng, node or NodeParts("t", "master"), clock=lambda: 0.0)
    async with TestClient(TestServer(app)) as client:
        yield client


# -- the OpenAPI document ----------------------------------------------------------------

def test_openapi_paths_have_responses_and_refs_resolve():
    doc = openapi.spec()
    want = {("get", "/status"), ("get", "/services"), ("get", "/conns"), ("get", "/sync"),
            ("get", "/metrics"), ("get", "/openapi.json"), ("post", "/services/{service}/real_servers/{addr_port}/weight"),
            ("post", "/services/{service}/real_servers/{addr_port}/drain"),
            ("delete", "/services/{service}/real_servers/{addr_port}/override"),
            ("post", "/resign"), ("post", "/resume"), ("post", "/reload"),
            ("post", "/cluster/drain"), ("delete", "/cluster/drain")}
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
    app = make_app(Engine(make_config()), NodeParts("t", "master"))
    served = {(r.method.lower(), _shape(r.resource.canonical)) for r in app.router.routes()
              if r.method != "HEAD"}
    documented = {(m, _shape(p)) for p, ops in openapi.spec()["paths"].items() for m in ops}
    assert served == documented
    assert served == {(r.method.lower(), _shape(r.path)) for r in ROUTES}


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


def controlled_node(eng: Engine) -> NodeParts:
    return NodeParts("t", "master", control=Control(eng), api_token=TOKEN)


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


# -- /status and /metrics report the running election -------------------------------------

ME, PEER, VRRP_VIP = "198.18.250.2", "198.18.250.1", "198.18.250.100"


def scrape(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out.setdefault(smp.name, {})[tuple(sorted(smp.labels.items()))] = smp.value
    return out


async def test_status_and_metrics_report_the_elections_counters_and_interface():
    """Through the API as the node wires it: the VRRP counters reach /metrics under
    keepalived-exporter's names with `intf` filled (before, the API passed the core's
    `rx`/`tx` under keys the collector never read, so none was exported and intf was "")."""
    eng = driven_engine()
    runner = VrrpRunner(VrrpConfig(vrid=51, priority=150, addresses=(VRRP_VIP,), primary_address=ME),
                        "front")
    node = NodeParts("a", "init")
    node.attach_election(runner, 150)
    inst = runner.instance
    inst.start(0.0)
    advert = V.encode(V.Advert(51, 200, 10, (VRRP_VIP,), 3), PEER, V.VRRP_GROUP4)
    inst.on_packet(advert, PEER, V.VRRP_GROUP4, 255, 0.1)
    node.set_role("backup")
    async with client_for(eng, node) as client:
        status = await (await client.get("/status")).json()
        assert status["role"] == "backup" and status["peer"] == PEER and status["priority"] == 150
        assert status["vrrp"]["counters"] == inst.counters          # the core's keys, as before
        assert status["vrrp"]["interface"] == "front"
        m = scrape(await (await client.get("/metrics")).text())
    base = (("iname", "VI_51"), ("intf", "front"), ("vrid", "51"))
    assert m["tandem_vrrp_advertisements_received_total"] == {base: 1.0}
    assert m["tandem_vrrp_advertisements_sent_total"] == {base: 0.0}
    assert m["tandem_vrrp_state"] == {base[:2] + (("ip_address", VRRP_VIP),) + base[2:]: 1.0}
    assert m["tandem_node_info"] == {(("node", "a"),): 1.0}
    assert m["tandem_ipvs_connections_total"][()] == 3


# -- /conns: pages in slices, client addresses behind the token ---------------------------

def fill(eng: Engine, n: int) -> None:
    """n established UDP connections to RS[i % 3], installed as sync installs them."""
    vip, laddr = socket.inet_aton(VIP), socket.inet_aton("198.18.2.100")
    reals = [socket.inet_aton(a) for a in RS]
    for i in range(n):
        eng.apply_synced(proto=17, state=0, flags=0x08, caddr=socket.inet_aton(f"198.19.{i >> 8 & 255}.{i & 255}"),
                         cport=1024 + (i >> 16), vaddr=vip, vport=80, laddr=laddr, lport=5000 + i // 3,
                         daddr=reals[i % 3], dport=8080, timeout=300.0, now=0.0)
    assert eng.table.count == n


async def test_conns_without_the_token_hide_client_addresses_and_keep_every_key():
    """An unauthenticated caller sees every connection and every documented key, with
    `client` null; the token shows the addresses (before, anyone got them)."""
    jsonschema = pytest.importorskip("jsonschema")
    eng = driven_engine()
    async with client_for(eng, controlled_node(eng)) as client:
        for headers, shown in (({}, False), ({"Authorization": "Bearer wrong"}, False),
                               ({"Authorization": f"Bearer {TOKEN}"}, True)):
            body = await (await client.get("/conns", headers=headers)).json()
            jsonschema.validate(body, openapi.schema("ConnPage"))
            assert body["total"] == 3 and len(body["conns"]) == 3
            assert body["clients"] == ("shown" if shown else "hidden")
            clients = {c["client"] for c in body["conns"]}
            if shown:
                assert clients == {f"{CLIENT}:40000", f"{CLIENT}:40001", f"{CLIENT}:5353"}
            else:
                assert clients == {None}
            for c in body["conns"]:
                assert c["vip"] == f"{VIP}:80" and c["real"].startswith("198.18.2.2")
                # expires is epoch seconds, as `now` is (issue 17 item 8: it was monotonic)
                assert abs(c["expires"] - (body["now"] + c["expires_in"])) < 0.002
    # with no token configured, nobody sees them
    async with client_for(eng) as client:
        body = await (await client.get("/conns", headers={"Authorization": "Bearer "})).json()
        assert {c["client"] for c in body["conns"]} == {None}


async def test_conns_pages_filters_and_totals_over_a_table_larger_than_a_slice():
    eng = Engine(make_config(limits={"max_conns": 100_000}))
    n = 3 * conn_pages.WALK_SLICE + 17
    fill(eng, n)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client_for(eng, controlled_node(eng)) as client:
        seen, offset = [], 0
        while True:
            page = await (await client.get(f"/conns?limit=1000&offset={offset}", headers=auth)).json()
            assert page["total"] == n and page["limit"] == 1000 and page["offset"] == offset
            seen += [c["client"] for c in page["conns"]]
            offset += 1000
            if offset >= page["total"]:
                break
        assert len(seen) == len(set(seen)) == n                       # each once, none lost
        real = f"/conns?real={RS[1]}:8080&limit=10000&service=udp/{VIP}:80"
        page = await (await client.get(real, headers=auth)).json()
        want = sum(1 for i in range(n) if i % 3 == 1)
        assert page["total"] == len(page["conns"]) == want
        assert {c["real"] for c in page["conns"]} == {f"{RS[1]}:8080"}
        page = await (await client.get(f"/conns?service=tcp/{VIP}:80")).json()
        assert page["total"] == 0 and page["conns"] == []
        page = await (await client.get("/conns?limit=5&offset=" + str(n - 2))).json()
        assert page["total"] == n and len(page["conns"]) == 2
        big = await (await client.get("/conns?limit=99999")).json()
        assert big["limit"] == conn_pages.MAX_LIMIT and len(big["conns"]) == n
        for bad in ("limit=x", "offset=-1", "limit=-5", "real=nothing", "real=198.18.2.21:x"):
            assert (await client.get("/conns?" + bad)).status == 400, bad


async def test_a_page_yields_to_the_loop_between_slices_and_survives_the_table_changing():
    """Everything else on the loop (VRRP adverts, NFQUEUE reads) gets turns while a page is
    built, and entries that expire meanwhile are skipped, not an error (before, the walk
    was one step: no other task ran until it was done)."""
    eng = Engine(make_config(limits={"max_conns": 100_000}))
    n = 4 * conn_pages.WALK_SLICE
    fill(eng, n)
    victims = list(eng.table)[::2]
    turns = 0
    done = False

    async def the_rest_of_the_node():
        nonlocal turns
        while not done:
            turns += 1
            if victims:
                eng.table.remove(victims.pop())     # entries expire under the walk
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(the_rest_of_the_node())
    await asyncio.sleep(0)
    pages = conn_pages.ConnPages(eng, lambda: 0.0)
    before = turns
    body = await pages.page(conn_pages.ConnQuery(limit=conn_pages.MAX_LIMIT, service=f"udp/{VIP}:80"),
                            show_clients=True)
    during = turns - before
    done = True
    await other
    page = json.loads(b"".join(body))
    assert during >= 4                  # at least one turn per slice of the walk
    assert page["total"] == len(page["conns"]) <= n
    assert len(page["conns"]) < n       # some expired under the walk and were left out


async def test_status_and_sync_answers_with_a_running_election_and_sync_link_match_the_schemas():
    """The documented shapes are the served ones, with every optional part present (the
    election, the sync link): the schemas admit no key the contracts do not have."""
    jsonschema = pytest.importorskip("jsonschema")
    from tests.unit.test_metrics import sync_node
    eng, link = sync_node("a", "198.18.3.1", "198.18.3.2")
    runner = VrrpRunner(VrrpConfig(vrid=51, priority=150, addresses=(VRRP_VIP,), primary_address=ME),
                        "front")
    runner.instance.start(0.0)
    node = NodeParts("a", "backup", sync=link, role_changes=[
        {"at": 1.0, "decided": 1.0, "from": "init", "to": "backup", "reason": "start"}])
    async with client_for(eng, node) as client:
        body = await (await client.get("/status")).json()
        assert body["vrrp"] is None
        jsonschema.validate(body, openapi.schema("Status"))
        node.attach_election(runner, 150)
        for path, name in (("/status", "Status"), ("/sync", "SyncStatus")):
            body = await (await client.get(path)).json()
            jsonschema.validate(body, openapi.schema(name))
        assert set(body) == set(openapi.schema("SyncStatus")["properties"])
    async with client_for(driven_engine()) as client:          # a node that does not sync
        body = await (await client.get("/sync")).json()
        assert body == {"enabled": False, "engine": body["engine"]}
        jsonschema.validate(body, openapi.schema("SyncStatus"))


def test_the_documented_vrrp_status_is_the_contract():
    from dataclasses import fields

    from director.status import VrrpStatus
    doc = openapi.schema("VrrpStatus")
    assert set(doc["properties"]) == set(doc["required"]) == {f.name for f in fields(VrrpStatus)}


async def test_the_conns_benchmark_runs_and_reads_what_it_asks_for():
    """bench/api_conns.py (the before/after figures of GET /conns): no timing judged."""
    from bench import api_conns
    res = await api_conns.measure(3000, 1)
    rows = {(q["path"], q["token"]): q for q in res["queries"]}
    assert rows[("/conns", False)]["total"] == 3000 and rows[("/conns", False)]["returned"] == 100
    assert rows[("/conns?limit=10000", True)]["returned"] == 3000
    assert rows[(f"/conns?real={api_conns.REALS[3]}:8080", True)]["total"] == sum(1 for i in range(3000) if i % 16 == 3)


def test_the_documented_peer_status_is_the_contract():
    from dataclasses import fields

    from director.status import PeerStatus
    doc = openapi.schema("PeerStatus")
    assert set(doc["properties"]) == set(doc["required"]) == {f.name for f in fields(PeerStatus)}
