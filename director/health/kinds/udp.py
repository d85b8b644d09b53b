"""`kind = "udp"`: a datagram out, a reply in (optionally starting with `expect`)."""
from __future__ import annotations

import asyncio
import socket

from director.health.config import HealthCheckConfig, register_kind
from director.health.probe import ProbeFailed
from schema.core import Key

KEYS = (
    Key("payload", str, "", doc="the datagram sent (may be empty)"),
    Key("expect", str, None, shown="any reply", doc="the reply must start with this"),
)


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


def _parse(r, v: dict) -> dict:
    return dict(payload=v["payload"].encode(),
                expect=None if v["expect"] is None else v["expect"].encode())


async def _probe(check: HealthCheckConfig, addr: str, port: int) -> str:
    return await probe_udp(addr, port, check.timeout, check.payload, check.expect)


register_kind("udp", "a datagram out, a reply in", KEYS, _parse, _probe)
