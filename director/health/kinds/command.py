"""`kind = "command"`: a program (argv, no shell) whose exit status 0 means up
(keepalived's MISC_CHECK); `{addr}` and `{port}` in its arguments are the real server's."""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Iterable

from director import scripts
from director.health.config import HealthCheckConfig, register_kind
from director.health.probe import ProbeFailed
from schema.core import Key

KEYS = (Key("command", list,
            doc="the program and its arguments (argv, no shell), e.g. `[\"/usr/local/bin/check-db\", "
                "\"{addr}\", \"{port}\"]`: in every argument `{addr}` becomes the real server's "
                "address (IPv6 without brackets) and `{port}` the probed port (the check's `port`, "
                "else the real server's). Exit status 0 means up; any other, or no exit within "
                "`timeout` (the program and its children are killed), means down. It runs as "
                "`[node] script_user`, without the node's capabilities"),)


async def probe_command(argv: Iterable[str], timeout: float) -> str:
    proc = await scripts.spawn(
        argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
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


def expand(argv: Iterable[str], addr: str, port: int) -> list[str]:
    """`{addr}` and `{port}` in the command's arguments become the real server's."""
    return [a.replace("{addr}", addr).replace("{port}", str(port)) for a in argv]


def _parse(r, v: dict) -> dict:
    argv = v["command"]
    if not argv:
        r.fail("command", "must be a non-empty list: the program and its arguments")
    for i, a in enumerate(argv):
        if not isinstance(a, str) or (i == 0 and not a):
            r.fail("command", f"must be a list of strings (argv, no shell), item {i} is {a!r}")
    return dict(command=tuple(argv))


async def _probe(check: HealthCheckConfig, addr: str, port: int) -> str:
    return await probe_command(expand(check.command, addr, port), check.timeout)


register_kind("command", "a program whose exit status 0 means up", KEYS, _parse, _probe)
