"""lab.traffic.whoami's tcp-whoami on loopback: each exchange counted by the server that
answered, and `--source-ports` sends connection i from port FIRST+i."""
from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from lab.traffic.whoami import tcp_whoami


def _free_run(n: int) -> int:
    """A first port of n ports in a row that are free now (loopback)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        try:
            socks = [socket.socket() for _ in range(n)]
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", first + i))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free run of ports")


async def _whoami(source_ports: int | None, count: int, seen: list | None = None) -> dict:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        ip, port = w.get_extra_info("peername")[:2]
        if seen is not None:
            seen.append(port)
        w.write(f"rs1 {ip}:{port}\n".encode())
        await w.drain()
        w.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        args = SimpleNamespace(host="127.0.0.1", port=port, count=count, concurrency=2,
                               timeout=2.0, deadline=10.0, rate=None, stop_file=None,
                               source_ports=source_ports)
        return await tcp_whoami(args)


def test_tcp_whoami_counts_each_answer_and_uses_the_source_ports_asked_for():
    first, seen = _free_run(3), []
    res = asyncio.run(_whoami(first, 3, seen))
    assert sorted(seen) == [first, first + 1, first + 2]
    assert (res["ok"], res["failed"], res["by_server"]) == (3, 0, {"rs1": 3}), res
    assert res["own_address_seen"] == 3 and res["distinct_source_ports"] == 3, res
    plain = asyncio.run(_whoami(None, 2))
    assert plain["ok"] == 2, plain


def test_source_ports_beyond_the_last_port_are_refused():
    with pytest.raises(ValueError, match="leaves no port"):
        asyncio.run(_whoami(65534, 3))
