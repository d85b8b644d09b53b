"""Real-server health checks, with keepalived's semantics.

Two layers:

* `HealthState` is the sans-IO core, one per real server: feed it each probe's
  result, it says when the server changes state.  A server starts up (or down
  with `initial = "down"`); `fall` consecutive failures take an up server
  down, `rise` consecutive successes bring a down server back.  A result that
  agrees with the current state resets the opposite streak.
* `HealthChecker` runs the probes on asyncio: one task per real server, so the
  checks of one server never overlap; each probe is bounded by its timeout;
  the next starts `interval` seconds after the previous one started (at once
  if the probe took longer).  Kinds: `tcp` (a connect), `http` (a GET, status
  compared), `udp` (a datagram out, a reply in, optionally starting with
  `expect`), `command` (argv, no shell, exit 0 = up).  Every transition calls
  `on_change(service_key, addr, port, up)` and is logged in one line as
  keepalived logs it:

      Removing service [198.18.2.22]:tcp:8080 from VS [198.18.0.100]:tcp:80
      Adding service [198.18.2.22]:tcp:8080 to VS [198.18.0.100]:tcp:80

What a transition does to the data plane is the caller's business; two
policies are named by the `action` key and spelt out by `effective_weight`:
`weight0` (keepalived's inhibit_on_failure: the server stays with weight 0, so
it takes no new connections and its established ones carry on, as an LVS
quiescent server) and `remove` (keepalived's default: out of the scheduler's
list).

Sorry server: when every real server of a service is down
(`needs_sorry_server`), a service that configures a sorry server sends new
connections to it instead, as keepalived's `sorry_server`, and stops as soon
as one real server is back.  Wiring that into the service (a Dest for the
sorry server, given weight only while needed) is done by the node.

A check is configured per service (applies to all its real servers) as a TOML
sub-table, parsed by `parse_health`:

    health = {kind = "http", interval = 2.0, timeout = 1.0, rise = 2, fall = 3,
              path = "/healthz", expect_status = 200, host = "www.example.com",
              action = "weight0", initial = "up"}
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from schema.core import ConfigError, Reader

if TYPE_CHECKING:
    from director.config import ServiceConfig

log = logging.getLogger("tandem.health")

KINDS = ("tcp", "http", "udp", "command")
ACTIONS = ("weight0", "remove")
INITIAL = ("up", "down")

# keys that only make sense for one kind
_KIND_KEYS = {
    "path": "http", "expect_status": "http", "host": "http",
    "payload": "udp", "expect": "udp",
    "command": "command",
}

MAX_RESPONSE_HEAD = 8192        # bytes of an HTTP answer we read to find its status line


# -- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HealthCheckConfig:
    kind: str
    interval: float = 1.0
    timeout: float = 0.5
    rise: int = 2
    fall: int = 3
    port: int | None = None             # probe this port instead of the real server's
    path: str = "/"
    expect_status: tuple[int, ...] = (200,)
    host: str | None = None             # Host header; default the server's addr:port
    payload: bytes = b""
    expect: bytes | None = None         # None: any reply will do
    command: tuple[str, ...] = ()
    action: str = "weight0"
    initial: str = "up"


def parse_health(table: Any, source: str = "<config>", prefix: str = "health") -> HealthCheckConfig:
    """Validate a health-check sub-table; errors are ConfigError(source, field, problem)."""
    r = Reader(source, prefix, table)
    kind = r.choice("kind", KINDS)
    for key, only in _KIND_KEYS.items():
        if key in r.table and only != kind:
            r.fail(key, f"only applies to kind = \"{only}\", this check is \"{kind}\"")
    interval = r.get("interval", float, 1.0, lo=0.01, hi=3600.0)
    timeout = r.get("timeout", float, min(0.5, interval), hi=600.0)
    if timeout <= 0:
        r.fail("timeout", f"must be > 0, got {timeout}")
    kw: dict[str, Any] = dict(
        kind=kind, interval=interval, timeout=timeout,
        rise=r.get("rise", int, 2, lo=1, hi=1000),
        fall=r.get("fall", int, 3, lo=1, hi=1000),
        port=r.get("port", int, None, lo=1, hi=65535),
        action=r.choice("action", ACTIONS, "weight0"),
        initial=r.choice("initial", INITIAL, "up"),
    )
    if kind == "http":
        path = r.get("path", str, "/")
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            r.fail("path", f"must start with / and hold no spaces or line breaks, got {path!r}")
        raw = r.get("expect_status", (int, list), 200)
        codes = raw if isinstance(raw, list) else [raw]
        if not codes:
            r.fail("expect_status", "must name at least one status code")
        for c in codes:
            if isinstance(c, bool) or not isinstance(c, int) or not 100 <= c <= 599:
                r.fail("expect_status", f"must be HTTP status codes 100..599, got {c!r}")
        host = r.get("host", str, None)
        if host is not None and (not host or any(c in host for c in " \r\n/")):
            r.fail("host", f"must be a host name (optionally :port), got {host!r}")
        kw.update(path=path, expect_status=tuple(codes), host=host)
    elif kind == "udp":
        kw["payload"] = r.get("payload", str, "").encode()
        expect = r.get("expect", str, None)
        kw["expect"] = expect.encode() if expect is not None else None
    elif kind == "command":
        argv = r.get("command", list)
        if not argv:
            r.fail("command", "must be a non-empty list: the program and its arguments")
        for i, a in enumerate(argv):
            if not isinstance(a, str) or (i == 0 and not a):
                r.fail("command", f"must be a list of strings (argv, no shell), item {i} is {a!r}")
        kw["command"] = tuple(argv)
    r.finish()
    return HealthCheckConfig(**kw)


# -- the state machine ---------------------------------------------------------------------

class HealthState:
    """rise/fall hysteresis for one real server (sans-IO)."""

    __slots__ = ("rise", "fall", "up", "ok_streak", "fail_streak", "checks", "changes")

    def __init__(self, rise: int = 2, fall: int = 3, initial: str | bool = "up") -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise, self.fall = rise, fall
        self.up = initial is True or initial == "up"
        self.ok_streak = 0          # consecutive successes (counted while down)
        self.fail_streak = 0        # consecutive failures (counted while up)
        self.checks = 0
        self.changes = 0

    def record(self, ok: bool) -> bool | None:
        """Account one probe result; the new state if it changed, else None."""
        self.checks += 1
        if ok:
            self.fail_streak = 0
            if self.up:
                return None
            self.ok_streak += 1
            if self.ok_streak >= self.rise:
                self.up, self.ok_streak = True, 0
                self.changes += 1
                return True
            return None
        self.ok_streak = 0
        if not self.up:
            return None
        self.fail_streak += 1
        if self.fail_streak >= self.fall:
            self.up, self.fail_streak = False, 0
            self.changes += 1
            return False
        return None


def effective_weight(dest_weight: int, up: bool, action: str = "weight0") -> int | None:
    """The weight a real server should have given its health.

    Up: its configured weight.  Down: 0 with action "weight0" (quiescent: no
    new connections, established ones go on); None with "remove" (take it out
    of the scheduler's list).
    """
    if up:
        return dest_weight
    if action == "weight0":
        return 0
    if action == "remove":
        return None
    raise ValueError(f"unknown action {action!r}")


def needs_sorry_server(up_flags: Iterable[bool]) -> bool:
    """True when no real server of the service is up (then the sorry server serves)."""
    return not any(up_flags)


def _ap(addr: str, port: int, proto: str) -> str:
    return f"[{addr}]:{proto}:{port}"


def transition_message(up: bool, proto: str, vip: str, vport: int, addr: str, port: int) -> str:
    """keepalived's one-line log of a real server leaving or joining a virtual server."""
    rs, vs = _ap(addr, port, proto), _ap(vip, vport, proto)
    return f"Adding service {rs} to VS {vs}" if up else f"Removing service {rs} from VS {vs}"


# -- probes -----------------------------------------------------------------------------------

class ProbeFailed(Exception):
    pass


async def probe_tcp(addr: str, port: int, timeout: float) -> str:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (OSError, asyncio.TimeoutError):
        pass
    return "connected"


async def probe_http(addr: str, port: int, timeout: float, path: str = "/",
                     expect_status: Iterable[int] = (200,), host: str | None = None) -> str:
    async def exchange() -> int:
        reader, writer = await asyncio.open_connection(addr, port)
        try:
            h = host or (f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
            writer.write((f"GET {path} HTTP/1.1\r\nHost: {h}\r\nUser-Agent: tandem-healthcheck\r\n"
                          "Accept: */*\r\nConnection: close\r\n\r\n").encode("latin-1"))
            await writer.drain()
            line = await reader.readline()
            if len(line) > MAX_RESPONSE_HEAD:
                raise ProbeFailed("status line too long")
            parts = line.decode("latin-1").split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ProbeFailed(f"not an HTTP answer: {line[:60]!r}")
            return int(parts[1])
        finally:
            writer.close()
    status = await asyncio.wait_for(exchange(), timeout)
    if status not in tuple(expect_status):
        raise ProbeFailed(f"HTTP status {status}")
    return f"HTTP {status}"


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:      # ICMP port unreachable etc.
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ProbeFailed("socket closed"))


async def probe_udp(addr: str, port: int, timeout: float, payload: bytes = b"",
                    expect: bytes | None = None) -> str:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((addr, port))
        # sent here, not with transport.sendto: asyncio silently drops an empty
        # datagram, and an empty payload is a valid probe; a reply or an ICMP
        # error arriving before the transport reads waits in the socket for it
        sock.send(payload)
        transport, proto = await loop.create_datagram_endpoint(_UdpProbe, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        data = await asyncio.wait_for(proto.answer, timeout)
    finally:
        transport.close()
    if expect is not None and not data.startswith(expect):
        raise ProbeFailed(f"reply {data[:40]!r} does not start with {expect!r}")
    return f"{len(data)}-byte reply"


async def probe_command(argv: Iterable[str], timeout: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except BaseException:           # timeout or cancellation: the child must not outlive us
        if proc.returncode is None:
            try:    # its own session: the group holds whatever it started too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        raise
    if code != 0:
        raise ProbeFailed(f"exit status {code}")
    return "exit 0"


def _expand(argv: Iterable[str], addr: str, port: int) -> list[str]:
    """`{addr}` and `{port}` in the command's arguments become the real server's."""
    return [a.replace("{addr}", addr).replace("{port}", str(port)) for a in argv]


async def run_probe(check: HealthCheckConfig, addr: str, port: int) -> tuple[bool, str]:
    """One probe of one real server, bounded by check.timeout: (ok, detail)."""
    p = check.port or port
    try:
        if check.kind == "tcp":
            detail = await probe_tcp(addr, p, check.timeout)
        elif check.kind == "http":
            detail = await probe_http(addr, p, check.timeout, check.path, check.expect_status,
                                      check.host)
        elif check.kind == "udp":
            detail = await probe_udp(addr, p, check.timeout, check.payload, check.expect)
        elif check.kind == "command":
            detail = await probe_command(_expand(check.command, addr, p), check.timeout)
        else:
            return False, f"unknown check kind {check.kind!r}"
        return True, detail
    except asyncio.TimeoutError:
        return False, f"timed out after {check.timeout:g}s"
    except ProbeFailed as exc:
        return False, str(exc)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    except (ValueError, UnicodeError) as exc:
        return False, f"bad answer: {exc}"


# -- the runner -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckTarget:
    """One real server of one service, and how to check it."""
    service_key: str
    proto: str          # the service's: tcp | udp (for the log line)
    vip: str
    vport: int
    addr: str
    port: int
    check: HealthCheckConfig

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.service_key, self.addr, self.port)


def targets_for_service(svc: "ServiceConfig", check: HealthCheckConfig) -> list[CheckTarget]:
    return [CheckTarget(svc.key, svc.proto, svc.vip, svc.port, r.addr, r.port, check)
            for r in svc.real_servers]


@dataclass
class _Tracked:
    target: CheckTarget
    state: HealthState
    task: asyncio.Task | None = None
    last_check: float | None = None         # wall clock
    last_detail: str = ""
    last_ok: bool | None = None
    last_change: float | None = None
    running: int = 0                        # probes in flight (never > 1)


OnChange = Callable[[str, str, int, bool], Any]
Probe = Callable[[CheckTarget], Awaitable[tuple[bool, str]]]


class HealthChecker:
    """Runs every target's checks until stopped.

    on_change(service_key, addr, port, up) is called on each transition (it
    may be a coroutine function; its exceptions are logged, never fatal).
    `probe` replaces the real probes (tests).
    """

    def __init__(self, targets: Iterable[CheckTarget], on_change: OnChange | None = None, *,
                 probe: Probe | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.on_change = on_change
        self._probe = probe or (lambda t: run_probe(t.check, t.addr, t.port))
        self._clock, self._wall = clock, wall
        self._tracked: dict[tuple[str, str, int], _Tracked] = {}
        self._running = False
        self._pending_callbacks: set[asyncio.Task] = set()
        for t in targets:
            self._add(t)

    def _add(self, t: CheckTarget) -> None:
        self._tracked[t.key] = _Tracked(t, HealthState(t.check.rise, t.check.fall, t.check.initial))

    # -- life cycle --

    async def start(self) -> None:
        self._running = True
        for tr in self._tracked.values():
            self._spawn(tr)

    def _spawn(self, tr: _Tracked) -> None:
        if tr.task is None or tr.task.done():
            tr.task = asyncio.get_running_loop().create_task(
                self._loop(tr), name=f"health {tr.target.addr}:{tr.target.port}")

    async def stop(self) -> None:
        """Cancel every check and wait for them (and pending callbacks) to end."""
        self._running = False
        tasks = [tr.task for tr in self._tracked.values() if tr.task is not None]
        tasks += list(self._pending_callbacks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for tr in self._tracked.values():
            tr.task = None

    async def __aenter__(self) -> "HealthChecker":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def set_targets(self, targets: Iterable[CheckTarget]) -> None:
        """Reload: keep the state of targets that stay with the same check,
        start new ones, stop removed ones."""
        new = {t.key: t for t in targets}
        gone = []
        for key, tr in list(self._tracked.items()):
            if key not in new or new[key] != tr.target:
                gone.append(tr)
                del self._tracked[key]
        for tr in gone:
            if tr.task is not None:
                tr.task.cancel()
        if gone:
            await asyncio.gather(*(tr.task for tr in gone if tr.task is not None),
                                 return_exceptions=True)
        for key, t in new.items():
            if key not in self._tracked:
                self._add(t)
                if self._running:
                    self._spawn(self._tracked[key])

    # -- what the API and the metrics read --

    def states(self) -> dict[tuple[str, str, int], bool]:
        return {k: tr.state.up for k, tr in self._tracked.items()}

    def is_up(self, service_key: str, addr: str, port: int) -> bool | None:
        tr = self._tracked.get((service_key, addr, port))
        return None if tr is None else tr.state.up

    def status(self) -> list[dict]:
        now = self._wall()
        return [{
            "service": tr.target.service_key, "addr": tr.target.addr, "port": tr.target.port,
            "kind": tr.target.check.kind, "up": tr.state.up, "last_ok": tr.last_ok,
            "last_check": tr.last_check, "last_detail": tr.last_detail,
            "lastchg_seconds": None if tr.last_change is None else round(now - tr.last_change, 3),
            "checks": tr.state.checks, "changes": tr.state.changes,
        } for tr in self._tracked.values()]

    # -- the per-server loop --

    async def _loop(self, tr: _Tracked) -> None:
        t = tr.target
        while True:
            started = self._clock()
            tr.running += 1
            try:
                ok, detail = await self._probe(t)
            except Exception as exc:        # a probe bug counts as a failed check
                ok, detail = False, f"probe error: {exc!r}"
            finally:
                tr.running -= 1
            tr.last_check, tr.last_ok, tr.last_detail = self._wall(), ok, detail
            changed = tr.state.record(ok)
            if changed is not None:
                tr.last_change = tr.last_check
                log.info("%s (%s check: %s)", transition_message(changed, t.proto, t.vip, t.vport,
                                                                 t.addr, t.port),
                         t.check.kind, detail)
                self._notify(t, changed)
            delay = t.check.interval - (self._clock() - started)
            await asyncio.sleep(max(delay, 0.0))

    def _notify(self, t: CheckTarget, up: bool) -> None:
        if self.on_change is None:
            return
        try:
            res = self.on_change(t.service_key, t.addr, t.port, up)
        except Exception:
            log.exception("health: on_change failed for %s:%d", t.addr, t.port)
            return
        if inspect.isawaitable(res):
            task = asyncio.ensure_future(res)
            self._pending_callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task) -> None:
        self._pending_callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("health: on_change failed: %r", task.exception())
