"""Health checks: the rise/fall state machine exhaustively, each probe kind against
real servers on 127.0.0.1, and the asyncio runner.  Every wait is bounded."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from director.config import ConfigError, parse
from director.health import (
    CheckTarget, HealthCheckConfig, HealthChecker, HealthState, effective_weight,
    needs_sorry_server, parse_health, run_probe, targets_for_service, transition_message,
)

LO = "127.0.0.1"


# -- the state machine --------------------------------------------------------------------

def oracle(results, rise, fall, initial_up):
    """Independent statement of the rule: the state is set by the most recent window
    of `fall` failures (down) or `rise` successes (up) ending at some check, if any."""
    state = initial_up
    for i in range(len(results)):
        if i + 1 >= fall and not any(results[i + 1 - fall:i + 1]):
            state = False
        if i + 1 >= rise and all(results[i + 1 - rise:i + 1]):
            state = True
    return state


def test_state_machine_exhaustively():
    for rise, fall, initial in itertools.product(range(1, 5), range(1, 5), ("up", "down")):
        for n in range(0, 9):
            for results in itertools.product((False, True), repeat=n):
                st = HealthState(rise, fall, initial)
                state = initial == "up"
                for i, ok in enumerate(results):
                    changed = st.record(ok)
                    want = oracle(results[:i + 1], rise, fall, initial == "up")
                    # a transition is reported exactly when the state changes
                    assert changed == (want if want != state else None), (rise, fall, initial, results)
                    state = want
                    assert st.up == want
                assert st.checks == n


def test_state_machine_examples():
    st = HealthState(rise=2, fall=3)
    assert st.up
    assert [st.record(x) for x in (False, False, True, False, False)] == [None] * 5   # streak reset
    assert st.record(False) is False and not st.up
    assert [st.record(x) for x in (True, False, True)] == [None, None, None]
    assert st.record(True) is True and st.up and st.changes == 2
    down = HealthState(rise=1, fall=1, initial="down")
    assert not down.up and down.record(True) is True
    with pytest.raises(ValueError):
        HealthState(rise=0)


def test_helpers():
    assert effective_weight(5, True, "weight0") == 5
    assert effective_weight(5, False, "weight0") == 0
    assert effective_weight(5, False, "remove") is None
    assert effective_weight(5, True, "remove") == 5
    with pytest.raises(ValueError):
        effective_weight(5, False, "explode")
    assert needs_sorry_server([False, False]) and needs_sorry_server([])
    assert not needs_sorry_server([False, True])
    assert transition_message(False, "tcp", "198.18.0.100", 80, "198.18.2.22", 8080) == \
        "Removing service [198.18.2.22]:tcp:8080 from VS [198.18.0.100]:tcp:80"
    assert transition_message(True, "udp", "198.18.0.100", 53, "198.18.2.22", 53) == \
        "Adding service [198.18.2.22]:udp:53 to VS [198.18.0.100]:udp:53"


# -- configuration --------------------------------------------------------------------------

def test_parse_health_valid():
    c = parse_health({"kind": "http", "interval": 2, "timeout": 1.0, "rise": 1, "fall": 2,
                      "path": "/healthz", "expect_status": [200, 204], "host": "www.example.test",
                      "action": "remove", "initial": "down"}, "a.toml", "services[0].health")
    assert c == HealthCheckConfig(kind="http", interval=2.0, timeout=1.0, rise=1, fall=2,
                                  path="/healthz", expect_status=(200, 204), host="www.example.test",
                                  action="remove", initial="down")
    assert parse_health({"kind": "tcp"}) == HealthCheckConfig(kind="tcp")
    u = parse_health({"kind": "udp", "payload": "PING", "expect": "PONG", "port": 5353})
    assert (u.payload, u.expect, u.port) == (b"PING", b"PONG", 5353)
    assert parse_health({"kind": "udp"}).expect is None
    assert parse_health({"kind": "command", "command": ["/bin/check", "{addr}"]}).command == \
        ("/bin/check", "{addr}")
    assert parse_health({"kind": "tcp", "interval": 0.2}).timeout == 0.2   # default timeout <= interval


@pytest.mark.parametrize("table, field, problem", [
    ({}, "kind", "is required"),
    ({"kind": "icmp"}, "kind", "one of tcp, http, udp, command"),
    ({"kind": "tcp", "timeout": 0}, "timeout", "> 0"),
    ({"kind": "tcp", "interval": -1}, "interval", ">= 0.01"),
    ({"kind": "tcp", "rise": 0}, "rise", ">= 1"),
    ({"kind": "tcp", "fall": "3"}, "fall", "must be int"),
    ({"kind": "tcp", "port": 70000}, "port", "<= 65535"),
    ({"kind": "tcp", "path": "/"}, "path", "only applies to kind = \"http\""),
    ({"kind": "http", "payload": "x"}, "payload", "only applies to kind = \"udp\""),
    ({"kind": "http", "expect_status": 999}, "expect_status", "100..599"),
    ({"kind": "http", "expect_status": [200, True]}, "expect_status", "100..599"),
    ({"kind": "http", "expect_status": []}, "expect_status", "at least one"),
    ({"kind": "http", "path": "healthz"}, "path", "must start with /"),
    ({"kind": "http", "host": "a b"}, "host", "host name"),
    ({"kind": "command"}, "command", "is required"),
    ({"kind": "command", "command": []}, "command", "non-empty"),
    ({"kind": "command", "command": "true"}, "command", "must be list"),
    ({"kind": "command", "command": ["true", 1]}, "command", "item 1"),
    ({"kind": "tcp", "action": "drop"}, "action", "one of weight0, remove"),
    ({"kind": "tcp", "initial": "maybe"}, "initial", "one of up, down"),
    ({"kind": "tcp", "retries": 3}, "retries", "unknown key"),
])
def test_parse_health_errors_name_the_field(table, field, problem):
    with pytest.raises(ConfigError) as e:
        parse_health(table, "lb.toml", "services[0].health")
    assert e.value.source == "lb.toml"
    assert e.value.field == f"services[0].health.{field}"
    assert problem in e.value.problem
    with pytest.raises(ConfigError):
        parse_health("tcp", "lb.toml", "services[0].health")


def test_targets_for_service():
    cfg = parse({"node": {"name": "a"}, "services": [{
        "proto": "tcp", "vip": "198.18.0.100", "port": 80, "laddrs": ["198.18.2.100"],
        "real_servers": [{"addr": "198.18.2.21", "port": 8080}, {"addr": "198.18.2.22"}]}]})
    ts = targets_for_service(cfg.services[0], HealthCheckConfig(kind="tcp"))
    assert [(t.service_key, t.vip, t.vport, t.addr, t.port) for t in ts] == [
        ("tcp/198.18.0.100:80", "198.18.0.100", 80, "198.18.2.21", 8080),
        ("tcp/198.18.0.100:80", "198.18.0.100", 80, "198.18.2.22", 80)]


# -- servers for the probes -------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO, 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def tcp_server(port=0, answer: bytes | None = None):
    """Accepts; with `answer` writes it and closes, else holds the connection open
    (never answering) until the server is torn down."""
    release = asyncio.Event()
    handlers = set()

    async def handle(reader, writer):
        handlers.add(asyncio.current_task())
        try:
            if answer is not None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
            else:
                await release.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            handlers.discard(asyncio.current_task())

    server = await asyncio.start_server(handle, LO, port)
    try:
        yield server.sockets[0].getsockname()[1], server
    finally:
        release.set()
        server.close()
        await server.wait_closed()
        if handlers:
            await asyncio.wait(handlers, timeout=2)


@contextlib.asynccontextmanager
async def http_server():
    seen = []

    async def ok(request):
        seen.append(request.headers.get("Host"))
        return web.Response(text="ok")

    async def bad(request):
        return web.Response(status=503, text="unavailable")

    async def vhost(request):
        return web.Response(status=200 if request.host == "www.example.test" else 404)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/bad", bad)
    app.router.add_get("/vhost", vhost)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LO, port).start()
    try:
        yield port, seen
    finally:
        await runner.cleanup()


class Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: bool):
        self.reply = reply

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.reply:
            self.transport.sendto(b"PONG " + data, addr)


@contextlib.asynccontextmanager
async def udp_server(reply=True):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Udp(reply), local_addr=(LO, 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def check(kind, **kw):
    kw.setdefault("timeout", 0.5)
    return HealthCheckConfig(kind=kind, **kw)


# -- each probe kind ---------------------------------------------------------------------------

async def test_tcp_probe():
    async with tcp_server() as (port, _):
        ok, detail = await run_probe(check("tcp"), LO, port)
        assert ok, detail
    ok, detail = await run_probe(check("tcp"), LO, free_port())
    assert not ok
    # `port` probes another port than the real server's
    async with tcp_server() as (port, _):
        assert (await run_probe(check("tcp", port=port), LO, 1))[0]


async def test_http_probe_status_and_host():
    async with http_server() as (port, seen):
        assert await run_probe(check("http", path="/ok"), LO, port) == (True, "HTTP 200")
        assert seen[-1] == f"{LO}:{port}"
        ok, detail = await run_probe(check("http", path="/bad"), LO, port)
        assert not ok and detail == "HTTP status 503"
        assert (await run_probe(check("http", path="/bad", expect_status=(200, 503)), LO, port))[0]
        assert not (await run_probe(check("http", path="/missing"), LO, port))[0]
        assert not (await run_probe(check("http", path="/vhost"), LO, port))[0]
        assert (await run_probe(check("http", path="/vhost", host="www.example.test"), LO, port))[0]


async def test_http_probe_times_out_on_a_server_that_never_answers():
    async with tcp_server() as (port, _):
        assert (await run_probe(check("tcp"), LO, port))[0]       # it accepts...
        t0 = time.monotonic()
        ok, detail = await run_probe(check("http", timeout=0.3), LO, port)
        elapsed = time.monotonic() - t0
        assert not ok and "timed out" in detail
        assert 0.25 <= elapsed < 1.5


async def test_http_probe_rejects_garbage():
    async with tcp_server(answer=b"SSH-2.0-OpenSSH\r\n") as (port, _):
        ok, detail = await run_probe(check("http"), LO, port)
        assert not ok and "not an HTTP answer" in detail


async def test_udp_probe():
    async with udp_server() as port:
        assert (await run_probe(check("udp", payload=b"PING"), LO, port))[0]      # any reply
        assert (await run_probe(check("udp", payload=b"PING", expect=b"PONG PING"), LO, port))[0]
        ok, detail = await run_probe(check("udp", payload=b"PING", expect=b"NOPE"), LO, port)
        assert not ok and "does not start with" in detail
        # an empty datagram is a probe too (asyncio's sendto would drop it)
        assert await run_probe(check("udp", expect=b"PONG "), LO, port) == (True, "5-byte reply")
    async with udp_server(reply=False) as port:
        t0 = time.monotonic()
        ok, detail = await run_probe(check("udp", timeout=0.2), LO, port)
        assert not ok and "timed out" in detail and time.monotonic() - t0 < 1.5
    for payload in (b"", b"PING"):
        t0 = time.monotonic()
        ok, detail = await run_probe(check("udp", payload=payload, timeout=1.0), LO,
                                     free_port(socket.SOCK_DGRAM))
        # ICMP port unreachable on loopback: refused at once, not a timeout
        assert not ok and "timed out" not in detail and time.monotonic() - t0 < 0.5, detail


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


async def test_command_probe(tmp_path):
    assert await run_probe(check("command", command=("true",)), LO, 80) == (True, "exit 0")
    ok, detail = await run_probe(check("command", command=("false",)), LO, 80)
    assert not ok and detail == "exit status 1"
    ok, detail = await run_probe(check("command", command=("/nonexistent/check",)), LO, 80)
    assert not ok
    # {addr} and {port} are the real server's; argv, no shell
    out = tmp_path / "args"
    script = f"printf '%s %s' \"$1\" \"$2\" > {out}"
    assert (await run_probe(check("command", command=("sh", "-c", script, "sh", "{addr}", "{port}")),
                            "198.18.2.21", 8080))[0]
    assert out.read_text() == "198.18.2.21 8080"


async def test_command_probe_timeout_kills_the_command_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pids}; wait"
    t0 = time.monotonic()
    ok, detail = await run_probe(check("command", command=("sh", "-c", script), timeout=0.3), LO, 80)
    assert not ok and "timed out" in detail
    assert time.monotonic() - t0 < 2.0
    for pid in map(int, pids.read_text().split()):
        for _ in range(100):
            if _gone(pid):
                break
            await asyncio.sleep(0.02)
        assert _gone(pid), pid


# -- the runner --------------------------------------------------------------------------------

def target(port, kind="tcp", **kw):
    kw.setdefault("interval", 0.05)
    kw.setdefault("timeout", 0.3)
    kw.setdefault("rise", 1)
    kw.setdefault("fall", 2)
    return CheckTarget("tcp/198.18.0.100:80", "tcp", "198.18.0.100", 80, LO, port,
                       HealthCheckConfig(kind=kind, **kw))


async def wait_for(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_checker_follows_a_server_going_down_and_up(caplog):
    caplog.set_level("INFO", logger="tandem.health")
    events = []
    port = free_port()
    t = target(port)
    checker = HealthChecker([t], lambda *a: events.append(a))
    async with tcp_server(port):
        await checker.start()
        await wait_for(lambda: checker.status()[0]["checks"] >= 2)
        assert checker.is_up(*t.key) and events == []      # starts up, stays up
    try:
        await wait_for(lambda: events == [(t.service_key, LO, port, False)])
        assert not checker.is_up(*t.key)
        async with tcp_server(port):
            await wait_for(lambda: len(events) == 2)
        assert events[1] == (t.service_key, LO, port, True)
        st = checker.status()[0]
        assert st["up"] and st["changes"] == 2 and st["kind"] == "tcp"
    finally:
        await checker.stop()
    assert f"Removing service [{LO}]:tcp:{port} from VS [198.18.0.100]:tcp:80" in caplog.text
    assert f"Adding service [{LO}]:tcp:{port} to VS [198.18.0.100]:tcp:80" in caplog.text


async def test_checks_of_one_server_never_overlap_and_stop_is_clean():
    running, peak, calls = {}, {}, {}

    async def slow_probe(t):
        running[t.port] = running.get(t.port, 0) + 1
        peak[t.port] = max(peak.get(t.port, 0), running[t.port])
        calls[t.port] = calls.get(t.port, 0) + 1
        try:
            await asyncio.sleep(0.03)       # longer than the interval
            return True, "fine"
        finally:
            running[t.port] -= 1

    targets = [target(p, interval=0.01) for p in (1001, 1002, 1003)]
    before = asyncio.all_tasks()
    checker = HealthChecker(targets, probe=slow_probe)
    await checker.start()
    await asyncio.sleep(0.25)
    await checker.stop()
    assert all(calls[p] >= 3 for p in (1001, 1002, 1003)), calls
    assert peak == {1001: 1, 1002: 1, 1003: 1}
    assert asyncio.all_tasks() - before == set()
    frozen = dict(calls)
    await asyncio.sleep(0.05)
    assert calls == frozen                  # nothing runs after stop


async def test_async_and_failing_callbacks_and_probe_errors():
    got = []
    results = iter([True, False, False, True, True] + [True] * 1000)

    async def probe(t):
        if t.port == 2:
            raise RuntimeError("bug in a probe")
        return next(results), ""

    async def on_change(service, addr, port, up):
        await asyncio.sleep(0)
        got.append((port, up))
        if port == 2:
            raise RuntimeError("callback bug")

    checker = HealthChecker([target(1, interval=0.01), target(2, interval=0.01)], on_change,
                            probe=probe)
    async with checker:
        await wait_for(lambda: (1, True) in got and (2, False) in got)
    assert got.count((1, False)) == 1 and got.count((2, False)) == 1
    assert checker.is_up("nope", LO, 1) is None


async def test_set_targets_keeps_state_of_unchanged_targets():
    async def probe(t):
        return t.port != 3, ""

    a, b = target(1, interval=0.01), target(3, interval=0.01, fall=1)
    checker = HealthChecker([a, b], probe=probe)
    async with checker:
        await wait_for(lambda: checker.is_up(*b.key) is False)
        c = target(4, interval=0.01)
        await checker.set_targets([b, c])
        assert set(checker.states()) == {b.key, c.key}
        assert checker.is_up(*b.key) is False           # kept, not reset to initial
        await wait_for(lambda: checker.status()[1]["checks"] >= 1)
    assert all(tr.task is None for tr in checker._tracked.values())
