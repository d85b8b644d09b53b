"""The lab's real server: TCP and UDP echo with a WHOAMI twist.

    python -m lab.echo --name rs1 --port 8080 [--host 0.0.0.0] [--proxy-port 8081]

TCP is line based: a line ``WHOAMI`` is answered with ``<name> <peer_ip>:<peer_port>\\n``, any other
line is echoed.  A partial line longer than 64 KiB is echoed as it is (and the rest of that line
too), so bulk binary data streams back without unbounded buffering.  Writes wait for drain().
On EOF from the peer the remaining partial line is echoed and the write side is shut down.

On the PROXY port (TCP only) every connection must open with a PROXY protocol header, version 1 or
2 (proto.proxy); ``WHOAMI`` then answers with the client address and port the header gives (the
connection's peer for a LOCAL or UNKNOWN header), and a connection whose header is malformed is
closed with one line in the log.  When such a connection ends, one line in the log says what
its stream held, for the drills to judge (`parse_stream_line` reads it back):

    echo rs1: proxy stream <client_ip>:<client_port> headers <n> bytes <m> at <wall time>

`headers` counts the opening header and every PROXY signature (v2's 12 bytes, v1's
``PROXY TCP``) found later in the stream: 1 means exactly one header.  `bytes` counts the
bytes after the opening header; `at` is the wall time the header arrived.

UDP: a datagram ``WHOAMI`` (optionally followed by a newline) is answered with
``<name> <peer_ip>:<peer_port>``; anything else is echoed.  On the PROXY port over UDP every
datagram must open with a version 2 header (the spec's DGRAM form: one per datagram);
``WHOAMI`` after it is answered with the client address and port the header gives, anything
else after it is echoed (without the header); a datagram without a valid header is dropped
and counted, and the count logged every 100th time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import signal
import sys
import time

from proto import proxy

MAX_PARTIAL = 64 * 1024
READ_SIZE = 64 * 1024
#: what a second PROXY header would start with, in either version
_SIGNATURES = (proxy.SIGNATURE, b"PROXY TCP")
_KEEP = max(len(s) for s in _SIGNATURES) - 1
_STREAM_LINE = re.compile(r"echo (\S+): proxy stream (\S+):(\d+) headers (\d+) bytes (\d+) at ([\d.]+)$")


class StreamCount:
    """What one PROXY connection's stream held after its opening header: PROXY signatures
    (a second header) and bytes, counted across read boundaries."""

    __slots__ = ("headers", "bytes", "tail")

    def __init__(self) -> None:
        self.headers = 1
        self.bytes = 0
        self.tail = b""

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if not data:
            return
        tail = self.tail
        window = tail + data
        for sig in _SIGNATURES:     # only matches that end in the new data
            self.headers += window.count(sig, max(0, len(tail) - len(sig) + 1))
        self.tail = window[-_KEEP:]


def parse_stream_line(line: str) -> dict | None:
    """A `proxy stream` log line as a dict (server, client, cport, headers, bytes, at)."""
    m = _STREAM_LINE.search(line.strip())
    if m is None:
        return None
    return {"server": m[1], "client": m[2], "cport": int(m[3]), "headers": int(m[4]),
            "bytes": int(m[5]), "at": float(m[6])}


def _raise_nofile() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def process_buffer(buf: bytearray, cont: bool, whoami: bytes) -> tuple[bytes, bool]:
    """Consume complete lines (and an over-long partial line) from buf.

    cont is True while the line at the start of buf continues data already echoed, so it is
    echoed rather than interpreted.  Returns (bytes to send, new cont)."""
    out = bytearray()
    last_nl = buf.rfind(b"\n")
    if last_nl >= 0:
        end = last_nl + 1
        if buf.find(b"WHOAMI", 0, end) < 0:
            out += buf[:end]
        else:
            start = 0
            while start < end:
                nl = buf.index(b"\n", start)
                line = buf[start : nl + 1]
                if not cont and line.rstrip(b"\r\n") == b"WHOAMI":
                    out += whoami
                else:
                    out += line
                cont = False
                start = nl + 1
        cont = False
        del buf[:end]
    if len(buf) > MAX_PARTIAL:
        out += buf
        buf.clear()
        cont = True
    return bytes(out), cont


class EchoServer:
    def __init__(self, name: str):
        self.name = name
        self.active = 0

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_tcp(reader, writer, expect_proxy=False)

    async def handle_proxy_tcp(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        await self._serve_tcp(reader, writer, expect_proxy=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         expect_proxy: bool) -> None:
        self.active += 1
        peer = writer.get_extra_info("peername") or ("?", 0)
        whoami = f"{self.name} {peer[0]}:{peer[1]}\n".encode()
        buf = bytearray()
        cont = False
        count: StreamCount | None = None
        client = ""
        at = 0.0
        try:
            if expect_proxy:
                header, rest = await _read_proxy_header(reader)
                if header is None:
                    return
                at = time.time()
                client = f"{header.src}:{header.sport}"
                if header.src is not None:
                    whoami = f"{self.name} {client}\n".encode()
                count = StreamCount()
                count.feed(rest)
                buf += rest
                out, cont = process_buffer(buf, cont, whoami)
                if out:
                    writer.write(out)
                    await writer.drain()
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if count is not None:
                    count.feed(data)
                buf += data
                out, cont = process_buffer(buf, cont, whoami)
                if out:
                    writer.write(out)
                    await writer.drain()
            if buf:
                writer.write(bytes(buf))
                buf.clear()
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            if count is not None:
                print(f"echo {self.name}: proxy stream {client} headers {count.headers} "
                      f"bytes {count.bytes} at {at:.6f}", file=sys.stderr, flush=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_proxy_header(reader: asyncio.StreamReader):
    """(the connection's PROXY header, the bytes read after it), or (None, b"") when the
    peer closes first or sends no valid header (logged)."""
    buf = b""
    while True:
        try:
            header = proxy.parse(buf)
        except proxy.ProxyError as exc:
            print(f"echo: PROXY header refused: {exc}", file=sys.stderr, flush=True)
            return None, b""
        if header is not None:
            return header, buf[header.length:]
        data = await reader.read(READ_SIZE)
        if not data:
            return None, b""
        buf += data


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str):
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        if data.rstrip(b"\r\n") == b"WHOAMI":
            reply = f"{self.name} {addr[0]}:{addr[1]}".encode()
        else:
            reply = data
        assert self.transport is not None
        self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: ignore
        pass


class UdpProxyEcho(UdpEcho):
    """UDP on the PROXY port: a version 2 header in front of every datagram."""

    def __init__(self, name: str):
        super().__init__(name)
        self.refused = 0

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            header = proxy.parse(data)
            if header is None or header.version != 2:
                raise proxy.ProxyError("no complete version 2 header")
        except proxy.ProxyError as exc:
            self.refused += 1
            if self.refused % 100 == 1:
                print(f"echo {self.name}: UDP PROXY header refused ({self.refused} so far): {exc}",
                      file=sys.stderr, flush=True)
            return
        body = data[header.length:]
        if body.rstrip(b"\r\n") == b"WHOAMI":
            who = (header.src, header.sport) if header.src is not None else addr[:2]
            body = f"{self.name} {who[0]}:{who[1]}".encode()
        assert self.transport is not None
        self.transport.sendto(body, addr)


async def serve(name: str, host: str, port: int, proxy_port: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    udp, _ = await loop.create_datagram_endpoint(
        lambda: UdpEcho(name), local_addr=(host, port), reuse_port=False
    )
    echo = EchoServer(name)
    server = await asyncio.start_server(
        echo.handle_tcp, host, port, reuse_address=True, backlog=4096, limit=READ_SIZE * 2
    )
    servers = [server]
    udps = [udp]
    if proxy_port:
        servers.append(await asyncio.start_server(
            echo.handle_proxy_tcp, host, proxy_port, reuse_address=True, backlog=4096,
            limit=READ_SIZE * 2))
        udps.append((await loop.create_datagram_endpoint(
            lambda: UdpProxyEcho(name), local_addr=(host, proxy_port), reuse_port=False))[0])
        print(f"echo {name}: PROXY protocol on {host}:{proxy_port} tcp+udp", file=sys.stderr, flush=True)
    print(f"echo {name}: listening on {host}:{port} tcp+udp", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        for srv in servers:
            srv.close()
        for u in udps:
            u.close()
    print(f"echo {name}: stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.echo", description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--proxy-port", type=int, default=None,
                    help="also serve TCP and UDP here, each connection (each datagram) opening "
                         "with a PROXY header")
    args = ap.parse_args(argv)
    _raise_nofile()
    run = asyncio.run
    try:
        import uvloop  # type: ignore

        run = uvloop.run
    except (ImportError, AttributeError):
        pass
    run(serve(args.name, args.host, args.port, args.proxy_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
