"""lab.echo's PROXY port, on loopback: WHOAMI names the client the header gives."""
from __future__ import annotations

import asyncio

from lab.echo import EchoServer
from proto import proxy


async def _exchange(data: bytes) -> bytes:
    echo = EchoServer("rs9")
    server = await asyncio.start_server(echo.handle_proxy_tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # the header may arrive in pieces: send it a few bytes at a time
        try:
            for i in range(0, len(data), 7):
                w.write(data[i:i + 7])
                await w.drain()
                await asyncio.sleep(0)
            w.write_eof()
        except OSError:
            pass        # the server refused the header and closed
        try:
            out = await asyncio.wait_for(r.read(), 5.0)
        except ConnectionResetError:
            out = b""
        w.close()
        return out
    finally:
        server.close()
        await server.wait_closed()


def run(data: bytes) -> bytes:
    return asyncio.run(_exchange(data))


def test_v2_and_v1_headers_name_the_client():
    v2 = proxy.encode_v2("198.18.1.10", "198.18.0.100", 40000, 81)
    assert run(v2 + b"WHOAMI\nhello\n") == b"rs9 198.18.1.10:40000\nhello\n"
    v1 = proxy.encode_v1("2001:2::10", "2001:2::100", 40001, 82)
    assert run(v1 + b"WHOAMI\n") == b"rs9 2001:2::10:40001\n"


def test_local_header_names_the_peer_and_a_bad_header_gets_nothing():
    assert run(proxy.encode_v2_local() + b"WHOAMI\n").startswith(b"rs9 127.0.0.1:")
    assert run(b"GET / HTTP/1.0\r\n\r\nWHOAMI\n") == b""


def test_the_stream_count_finds_a_second_header_across_reads():
    from lab.echo import StreamCount, parse_stream_line
    second = proxy.encode(2, "198.18.1.10", "198.18.0.100", 40000, 81)
    data = b"hello\n" * 3 + second + b"more\n" + proxy.encode(1, "198.18.1.10", "198.18.0.100", 1, 2)
    for step in (1, 5, 64):
        c = StreamCount()
        for i in range(0, len(data), step):
            c.feed(data[i:i + step])
        assert (c.headers, c.bytes) == (3, len(data))
    clean = StreamCount()
    clean.feed(b"PROXY\r\n" * 100)
    assert clean.headers == 1
    line = "echo rs2: proxy stream 198.18.1.10:40001 headers 1 bytes 120 at 1700000000.250000"
    assert parse_stream_line(line) == {"server": "rs2", "client": "198.18.1.10", "cport": 40001,
                                       "headers": 1, "bytes": 120, "at": 1700000000.25}
    assert parse_stream_line("echo rs2: listening") is None
