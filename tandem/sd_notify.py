"""The service manager's notification protocol (sd_notify(3)), spoken by the node to systemd
(Type=notify, WatchdogSec=) and to the role's tandemctl supervisor, which speaks it too.

    READY=1       once the node runs (rules, sockets, API up): `systemctl start` returns then
    WATCHDOG=1    every quarter of WATCHDOG_USEC, from the event loop that sends the VRRP
                  adverts and feeds the sync

A node whose loop hangs (a deadlock, a blocking call, SIGSTOP) stops its pings; the manager
kills it after the watchdog time, and what runs after every exit (the unit's ExecStopPost,
tandemctl's own step) withdraws a cluster director's routes, which its BIRD would otherwise
go on announcing for a node that forwards nothing.  A process is only as alive as its loop,
so the pings come from a task on that loop, never from a thread.

The environment says where and how often (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID);
without NOTIFY_SOCKET nothing is sent.  A few lines on a datagram socket: no library.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("tandem.sd_notify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        path = env.get("NOTIFY_SOCKET", "")
        #: the socket's address ("@name": the abstract namespace), or None: nothing to tell
        self.address: str | None = ("\0" + path[1:] if path.startswith("@") else path) or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        #: seconds between pings (None: no watchdog)
        self.interval: float | None = (int(usec) / 4e6 if usec.isdigit() and int(usec) > 0
                                       and mine else None)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._warned = False
        self.sent = 0

    def send(self, message: str) -> bool:
        """One notification; False if it could not be sent (logged once, never raised:
        the manager's socket going away must not stop the node)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
            self.sent += 1
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("notifying the service manager (%s) failed: %s", message, exc)
            return False

    def start(self) -> None:
        """READY=1, then the watchdog's pings on the running loop (if asked for)."""
        if self.address is None:
            return
        self.send("READY=1")
        if self.interval is not None:
            self._task = asyncio.get_running_loop().create_task(self._ping(), name="watchdog")

    async def _ping(self) -> None:
        assert self.interval is not None
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.interval)

    def stop(self) -> None:
        """STOPPING=1; no more pings."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.address is not None:
            self.send("STOPPING=1")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
