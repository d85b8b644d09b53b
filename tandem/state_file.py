"""The node's state file: the operator overrides (director.overrides), kept across a restart.

Written atomically (a temporary file in the same directory, fsync, rename over the old one,
fsync of the directory), so a crash leaves either the old file or the new one, never half of
one.  Writes run in a worker thread (an fsync can take long on a busy disk, and the event
loop also sends VRRP adverts) and one at a time: changes made meanwhile are written together
by the next one, always the latest state.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from director.overrides import BadOverride, Override, loads

log = logging.getLogger("tandem.state")

FILE_NAME = "overrides.json"


def path_in(state_dir: str) -> Path | None:
    """The state file in `state_dir` ("" = none: overrides live in memory only)."""
    return Path(state_dir) / FILE_NAME if state_dir else None


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: Path | None) -> list[Override]:
    """The overrides in the file; none if there is no file.  A file that cannot be read is
    reported (file and problem) and set aside as `<name>.bad`, and the node starts with
    none: the peer's copy (sync) brings them back."""
    if path is None:
        return []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("%s: cannot read the overrides (%s): starting without them", path, exc.strerror)
        return []
    try:
        entries = loads(data)
    except BadOverride as exc:
        bad = path.with_name(path.name + ".bad")
        log.error("%s: %s: set aside as %s, starting without overrides", path, exc, bad.name)
        try:
            os.replace(path, bad)
        except OSError:
            pass
        return []
    active = sum(1 for o in entries if not o.cleared)
    log.info("%s: %d operator override(s) in force (%d entries)", path, active, len(entries))
    return entries


class StateFile:
    """Saves the latest bytes it was given, in the background, one write at a time."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._latest: bytes | None = None
        self._task: asyncio.Task | None = None
        self.writes = 0
        self.errors = 0

    def save_soon(self, data: bytes) -> None:
        if self.path is None:
            return
        self._latest = data
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="state-file")

    async def _run(self) -> None:
        while self._latest is not None:
            data, self._latest = self._latest, None
            path = self.path
            if path is None:
                return
            try:
                await asyncio.to_thread(write_atomically, path, data)
                self.writes += 1
            except OSError as exc:
                self.errors += 1
                log.error("%s: cannot save the overrides (%s): they hold in memory and on the "
                          "peer, but not across a restart of this node", path, exc)

    async def drain(self) -> None:
        """Wait for the pending write (a stop)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
