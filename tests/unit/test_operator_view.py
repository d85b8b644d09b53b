"""What an operator reads from a running node's HTTP API (issue 17, items 6 and 8): each real
server's health-check result in GET /services with `scheduled` false for a server that is down
or drained, each health transition logged once, and one clock (epoch seconds) for every time
in /status, /conns and /services.

The node is a real `tandem.node.Node` (engine, control, health checker with real TCP probes to
listeners on 127.0.0.1, role runner, the aiohttp API on a real port); only the kernel edges are
the fakes of test_node.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import time

import aiohttp
import pytest

from director.config import parse
from tandem.node import Node
from tests.helpers import CLIENT, tcp
from tests.unit.test_node import DOC, VIP, Fakes, free_port, until

TOKEN = "operator-view-test-token"
LO = "127.0.0.1"


def node_doc(api: str, ports: list[int]) -> dict:
    doc = copy.deepcopy(DOC)
    doc["node"] = {**doc["node"], "api": api, "api_token": TOKEN}
    doc["services"][0]["real_servers"] = [{"addr": LO, "port": p} for p in ports]
    doc["services"][0]["health"] = {"kind": "tcp", "interval": 0.05, "timeout": 2.0,
                                    "rise": 2, "fall": 2}
    return doc


@contextlib.asynccontextmanager
async def listening(port: int):
    """A real server's TCP port that accepts (and closes) connections."""
    server = await asyncio.start_server(lambda r, w: w.close(), LO, port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def running(doc: dict):
    f = Fakes()
    n = Node(parse(doc, "a.toml"), edges=f.edges())
    await n.start()
    try:
        yield n, f
    finally:
        await n.stop()


async def get(api: str, path: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{api}{path}",
                         headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, path
            return await resp.json()


async def post(api: str, path: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://{api}{path}",
                          headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status


def servers(body: dict) -> dict[int, dict]:
    return {rs["port"]: rs for rs in body["services"][0]["real_servers"]}


async def services_when(api: str, pred, timeout: float = 5.0) -> dict:
    """GET /services until pred(its real servers by port) holds (a bound on a hang, not a
    timing assertion); the last answer either way."""
    end = time.monotonic() + timeout
    while True:
        body = await get(api, "/services")
        try:
            if pred(servers(body)):
                return body
        except (KeyError, TypeError):
            pass
        if time.monotonic() > end:
            return body
        await asyncio.sleep(0.02)


async def test_services_give_each_servers_check_result_and_down_or_drained_is_not_scheduled(caplog):
    """keepalived's checker says why a real server left the pool (`Removing service ... (tcp
    check: Connection refused)`) once per transition; /services now says it too, per server:
    kind, verdict, last probe's detail, since when, rise/fall and the streaks.  A server its
    check took down (action weight0: weight 0, kept in the list as IPVS keeps a quiescent
    server) or an operator drained gets no new connections, so `scheduled` is false for it
    (it said true)."""
    caplog.set_level(logging.INFO)
    up, down, drained = free_port(), free_port(), free_port()
    api = f"{LO}:{free_port()}"
    started = time.time()
    async with listening(up), listening(drained):
        async with running(node_doc(api, [up, down, drained])) as (n, _f):
            assert await until(lambda: n.checker.is_up("tcp/198.18.0.100:80", LO, down) is False)
            assert await post(api, "/services/tcp%2F198.18.0.100%3A80/real_servers/"
                                   f"{LO}:{drained}/drain") == 200
            body = await services_when(api, lambda rs: all(
                rs[p]["health_check"]["checks"] >= 2 for p in (up, down, drained)))
    jsonschema = pytest.importorskip("jsonschema")
    from director import openapi
    jsonschema.validate(body, openapi.schema("ServiceList"))
    rs = servers(body)
    d = rs[down]
    assert d["health"] == "down" and d["weight"] == 0 and d["scheduled"] is False
    hc = d["health_check"]
    assert hc["kind"] == "tcp" and hc["state"] == "down" and hc["last_ok"] is False
    assert hc["detail"] == "Connection refused"
    assert (hc["rise"], hc["fall"]) == (2, 2) and hc["fail_streak"] == 0 and hc["changes"] == 1
    assert started <= hc["since"] <= hc["last_check"] <= time.time()
    (line,) = [r for r in caplog.records if "Removing service" in r.getMessage()]
    assert hc["since"] == pytest.approx(line.created, abs=0.5)      # the log line's moment

    u = rs[up]
    assert u["health"] == "up" and u["scheduled"] is True and u["weight"] == 1
    assert u["health_check"]["state"] == "up" and u["health_check"]["detail"] == "connected"
    assert u["health_check"]["changes"] == 0          # up from the start: since = checking began
    assert started <= u["health_check"]["since"] <= u["health_check"]["last_check"]

    g = rs[drained]
    assert g["health"] == "up" and g["weight"] == 0 and g["scheduled"] is False

    removing = [r.getMessage() for r in caplog.records if "Removing service" in r.getMessage()]
    assert removing == [f"Removing service [{LO}]:tcp:{down} from VS [{VIP}]:tcp:80 "
                        "(tcp check: Connection refused)"]


async def test_every_time_an_operator_reads_is_epoch_seconds_on_one_clock():
    """keepalived reports instants as epoch seconds (its JSON's last_transition), and so does
    every time in the API now: /status role_changes (`at`, `decided`) and the peer's last
    advert (`at`), /conns `now`, `expires`
    and `created`, /services health_check `since` and `last_check`, all within the test's own
    wall-clock window, with `expires = now + expires_in` (before, /conns was on the node's
    monotonic clock while role_changes were epoch)."""
    port = free_port()
    api = f"{LO}:{free_port()}"
    before = time.time()
    async with listening(port):
        async with running(node_doc(api, [port])) as (n, f):
            f.bulk_done = True
            assert await until(lambda: f.vrrp is not None and n.state.status().role == "backup")
            f.vrrp.advert(200)                  # a master heard: peer_status.last_advert
            f.vrrp.fire()
            assert await until(lambda: n.state.status().role == "master")
            assert n.engine.handle(tcp(CLIENT, VIP, 40000, 80, "S"), n.clock()) is not None
            services = await services_when(api, lambda rs: rs[port]["health_check"]["checks"])
            status, conns = await get(api, "/status"), await get(api, "/conns")
    after = time.time()
    instants = {}
    for i, c in enumerate(status["role_changes"]):
        instants[f"role_changes[{i}].at"] = c["at"]
        instants[f"role_changes[{i}].decided"] = c["decided"]
    instants["peer_status.last_advert.at"] = status["peer_status"]["last_advert"]["at"]
    instants["conns.now"] = conns["now"]
    (c,) = conns["conns"]
    instants["conns[0].created"] = c["created"]
    assert [c["to"] for c in status["role_changes"]] == ["backup", "master"]

    def within(instants):
        for name, t in instants.items():
            assert before - 0.001 <= t <= after + 0.001, (name, t, before, after)
            assert t == round(t, 3), name                       # to the ms
    within(instants)
    jsonschema = pytest.importorskip("jsonschema")
    from director import openapi
    for b, name in ((status, "Status"), (conns, "ConnPage"), (services, "ServiceList")):
        jsonschema.validate(b, openapi.schema(name))
    hc = servers(services)[port]["health_check"]
    within({"health_check.since": hc["since"], "health_check.last_check": hc["last_check"]})
    assert c["expires"] == pytest.approx(conns["now"] + c["expires_in"], abs=0.002)
    assert 0 < c["expires_in"] <= 60.0                          # SYN_RECV's timeout, seconds left
    assert status["role_changes"][0]["decided"] <= status["role_changes"][0]["at"]


def test_human_output_shows_epoch_seconds_as_iso_8601_utc():
    from director.status import iso_utc
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1796337029.0935) == "2026-12-03T22:30:29.093Z"


def test_log_lines_carry_iso_8601_utc_times(capsys):
    """The node's log (what `tandem` writes on stderr) stamps each line in ISO 8601 UTC to the
    ms, the human form of the API's epoch seconds (before: local time, `YYYY-MM-DD HH:MM:SS,mmm`)."""
    from tandem.cli import log_formatter
    record = logging.LogRecord("tandem.health", logging.INFO, __file__, 1, "Removing service x",
                               None, None)
    record.created = 1796337029.0935
    line = log_formatter().format(record)
    assert line == "2026-12-03T22:30:29.093Z tandem.health INFO Removing service x"
