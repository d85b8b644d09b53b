"""The lab's real server: TCP and UDP echo with a WHOAMI twist.

    python -m lab.echo --name rs1 --port 8080 [--host 0.0.0.0]

TCP is line based: a line ``WHOAMI`` is answered with ``<name> <peer_ip>:<peer_port>\\n``, any other
line is echoed.  A partial line longer than 64 KiB is echoed as it is (and the rest of that line
too), so bulk binary data streams back without unbounded buffering.  Writes wait for drain().
On EOF from the peer the remaining partial line is echoed and the write side is shut down.

UDP: a datagram ``WHOAMI`` (optionally followed by a newline) is answered with
``<name> <peer_ip>:<peer_port>``; anything else is echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys

MAX_PARTIAL = 64 * 1024
READ_SIZE = 64 * 1024


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
        self.active += 1
        peer = writer.get_extra_info("peername") or ("?", 0)
        whoami = f"{self.name} {peer[0]}:{peer[1]}\n".encode()
        buf = bytearray()
        cont = False
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
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
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


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


async def serve(name: str, host: str, port: int) -> None:
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
    print(f"echo {name}: listening on {host}:{port} tcp+udp", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        udp.close()
    print(f"echo {name}: stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.echo", description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")
    args = ap.parse_args(argv)
    _raise_nofile()
    run = asyncio.run
    try:
        import uvloop  # type: ignore

        run = uvloop.run
    except (ImportError, AttributeError):
        pass
    run(serve(args.name, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
