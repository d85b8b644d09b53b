"""`kind = "http"`: a GET whose status is one of the expected (keepalived's HTTP_GET)."""
from __future__ import annotations

import asyncio
from typing import Iterable

from director.health.config import HealthCheckConfig, register_kind
from director.health.probe import ProbeFailed
from schema.core import Key

MAX_RESPONSE_HEAD = 8192        # bytes of an HTTP answer we read to find its status line

KEYS = (
    Key("path", str, "/", doc="the path to GET"),
    Key("expect_status", (int, list), 200, doc="the status code (or list of codes) meaning up"),
    Key("host", str, None, shown="the server's addr:port", doc="the Host header"),
)


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


def _parse(r, v: dict) -> dict:
    path = v["path"]
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        r.fail("path", f"must start with / and hold no spaces or line breaks, got {path!r}")
    codes = v["expect_status"] if isinstance(v["expect_status"], list) else [v["expect_status"]]
    if not codes:
        r.fail("expect_status", "must name at least one status code")
    for c in codes:
        if isinstance(c, bool) or not isinstance(c, int) or not 100 <= c <= 599:
            r.fail("expect_status", f"must be HTTP status codes 100..599, got {c!r}")
    host = v["host"]
    if host is not None and (not host or any(c in host for c in " \r\n/")):
        r.fail("host", f"must be a host name (optionally :port), got {host!r}")
    return dict(path=path, expect_status=tuple(codes), host=host)


async def _probe(check: HealthCheckConfig, addr: str, port: int) -> str:
    return await probe_http(addr, port, check.timeout, check.path, check.expect_status, check.host)


register_kind("http", "an HTTP GET, its status compared", KEYS, _parse, _probe)
