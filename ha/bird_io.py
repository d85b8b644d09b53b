"""The BIRD adapter: makes BIRD announce what the announcer decided (ha/announce.py).

Writes the include (ha/bird.py) atomically (a temporary file, fsync, rename) and runs
`birdc configure`, which makes BIRD re-read its config and withdraw or announce the
difference.  Reads back the router's view (`routed_owners`: which announced prefixes the
router holds from their owners, ha/bird.py).  Blocking (a file write and short
subprocesses): the node runs it in a worker thread, never on the event loop that sends
VRRP adverts or reads the queue.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable

from ha import bird


#: the include's permissions: readable by BIRD's user, written by the node alone
INCLUDE_MODE = 0o644


class BirdError(RuntimeError):
    """BIRD did not take the new announcements (not running, or it refused the file)."""


class BirdAnnouncer:
    def __init__(self, include_path: str | Path, socket_path: str | Path,
                 timeout: float = 5.0) -> None:
        self.include_path = Path(include_path)
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def write(self, prefixes: Iterable[str], adopted: Iterable[str] = ()) -> bool:
        """Write the include for `prefixes` (`adopted`: those announced for a dead peer);
        False (nothing written) if it already says so."""
        text = bird.announce_include(prefixes, adopted)
        try:
            if self.include_path.read_text() == text:
                return False
        except FileNotFoundError:
            pass
        tmp = self.include_path.with_name(self.include_path.name + ".tmp")
        with open(tmp, "w") as fh:
            # BIRD reads it as its own user, and the node's umask (0077 under the role's
            # unit) would make it the node's alone; it holds only prefixes
            os.fchmod(fh.fileno(), INCLUDE_MODE)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.include_path)
        return True

    def apply(self, prefixes: Iterable[str], adopted: Iterable[str] = ()) -> str:
        """Announce exactly `prefixes`, those of `adopted` as a dead peer's (no
        OWN_COMMUNITY): the include, then `birdc configure`; birdc's output.  BirdError if
        BIRD did not take it (the file stays written: BIRD reads it when it next starts)."""
        self.write(prefixes, adopted)
        cp = subprocess.run(bird.reconfigure_argv(self.socket_path), capture_output=True,
                            text=True, timeout=self.timeout)
        out = cp.stdout + cp.stderr
        if cp.returncode != 0 or not bird.reconfigured(out):
            raise BirdError(f"birdc configure ({self.socket_path}): {out.strip()}")
        return out

    def _birdc(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def routed_owners(self) -> frozenset[str] | None:
        """The host prefixes the router routes via their owners, as its BGP sessions that
        are Established tell (their import tables, routes carrying OWN_COMMUNITY), over
        every such session; None when there is no such view: no session Established, no
        import table (a config without it), or BIRD not answering."""
        cp = self._birdc(bird.protocols_argv(self.socket_path))
        if cp is None or cp.returncode != 0:
            return None
        views = []
        for protocol in bird.established_sessions(cp.stdout):
            got = self._birdc(bird.owned_routes_argv(self.socket_path, protocol))
            listed = bird.routes_listed(got.stdout) if got and got.returncode == 0 else None
            if listed is not None:
                views.append(listed)
        return frozenset().union(*views) if views else None

    def established(self) -> bool:
        """Whether a BGP session of BIRD's is Established (`birdc show protocols`): what it
        announces reaches a router.  False if BIRD does not answer."""
        cp = self._birdc(bird.protocols_argv(self.socket_path))
        return cp is not None and cp.returncode == 0 and bird.bgp_established(cp.stdout)
