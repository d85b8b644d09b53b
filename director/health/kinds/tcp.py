"""`kind = "tcp"`: the real server accepts a TCP connection (keepalived's TCP_CHECK)."""
from __future__ import annotations

import asyncio

from director.health.config import HealthCheckConfig, register_kind


async def probe_tcp(addr: str, port: int, timeout: float) -> str:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (OSError, asyncio.TimeoutError):
        pass
    return "connected"


async def _probe(check: HealthCheckConfig, addr: str, port: int) -> str:
    return await probe_tcp(addr, port, check.timeout)


register_kind("tcp", "a TCP connect", (), lambda r, values: {}, _probe)
