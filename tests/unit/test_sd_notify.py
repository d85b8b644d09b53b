"""tandem.sd_notify: READY=1, the watchdog's pings from the node's own loop, STOPPING=1, on
a real datagram socket as systemd or tandemctl listens on."""
from __future__ import annotations

import asyncio
import os
import socket
import time

from tandem.sd_notify import Notifier


def listener(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(256).decode())
        except BlockingIOError:
            return out


async def until(s: socket.socket, seen: list[str], pings: int, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while seen.count("WATCHDOG=1") < pings and time.monotonic() < end:
        await asyncio.sleep(0.01)
        seen += drain(s)


def test_ready_then_pings_from_the_loop_then_stopping(tmp_path):
    path = str(tmp_path / "notify")
    s = listener(path)

    async def go() -> tuple[list[str], list[str]]:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.interval == 0.01
        n.start()
        seen: list[str] = []
        await until(s, seen, 3)
        time.sleep(0.2)             # the loop blocked (a hang): no task runs, no ping goes
        assert drain(s) == []       # (20 intervals passed: a thread would have pinged)
        during: list[str] = []
        await until(s, during, 1)   # the loop runs again: so do the pings
        n.stop()
        return seen, during + drain(s)

    seen, after = asyncio.run(go())
    assert seen[0] == "READY=1" and seen.count("WATCHDOG=1") >= 3, seen
    assert set(seen[1:]) == {"WATCHDOG=1"}, seen
    assert after[-1] == "STOPPING=1" and "WATCHDOG=1" in after, after
    s.close()


def test_the_pings_of_another_process_and_no_socket_at_all(tmp_path):
    s = listener(str(tmp_path / "n"))
    other = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "40000",
                      "WATCHDOG_PID": "1"})
    assert other.interval is None               # the watchdog watches PID 1, not us

    async def go() -> None:
        other.start()
        await asyncio.sleep(0.05)
        other.stop()
        Notifier({}).start()                    # no NOTIFY_SOCKET: nothing, no error

    asyncio.run(go())
    assert drain(s) == ["READY=1", "STOPPING=1"]
    s.close()


def test_an_abstract_socket_and_a_manager_gone_away(tmp_path):
    name = f"tandem-test-{os.getpid()}"
    s = listener("\0" + name)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.send("READY=1") and drain(s) == ["READY=1"]
    s.close()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.send("READY=1") and not gone.send("WATCHDOG=1")   # logged once, no raise
