"""The rise/fall state machine of one real server's health (sans-IO), and what a verdict
means for the data plane and the log."""
from __future__ import annotations

from typing import Iterable

class HealthState:
    """rise/fall hysteresis for one real server (sans-IO)."""

    __slots__ = ("rise", "fall", "up", "ok_streak", "fail_streak", "checks", "changes")

    def __init__(self, rise: int = 2, fall: int = 3, initial: str | bool = "up") -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise, self.fall = rise, fall
        self.up = initial is True or initial == "up"
        self.ok_streak = 0          # consecutive successes (counted while down)
        self.fail_streak = 0        # consecutive failures (counted while up)
        self.checks = 0
        self.changes = 0

    def record(self, ok: bool) -> bool | None:
        """Account one probe result; the new state if it changed, else None."""
        self.checks += 1
        if ok:
            self.fail_streak = 0
            if self.up:
                return None
            self.ok_streak += 1
            if self.ok_streak >= self.rise:
                self.up, self.ok_streak = True, 0
                self.changes += 1
                return True
            return None
        self.ok_streak = 0
        if not self.up:
            return None
        self.fail_streak += 1
        if self.fail_streak >= self.fall:
            self.up, self.fail_streak = False, 0
            self.changes += 1
            return False
        return None


def effective_weight(dest_weight: int, up: bool, action: str = "weight0") -> int | None:
    """The weight a real server should have given its health.

    Up: its configured weight.  Down: 0 with action "weight0" (quiescent: no
    new connections, established ones go on); None with "remove" (take it out
    of the scheduler's list).
    """
    if up:
        return dest_weight
    if action == "weight0":
        return 0
    if action == "remove":
        return None
    raise ValueError(f"unknown action {action!r}")


def needs_sorry_server(up_flags: Iterable[bool]) -> bool:
    """True when no real server of the service is up (then the sorry server serves)."""
    return not any(up_flags)


def _ap(addr: str, port: int, proto: str) -> str:
    return f"[{addr}]:{proto}:{port}"


def transition_message(up: bool, proto: str, vip: str, vport: int, addr: str, port: int) -> str:
    """keepalived's one-line log of a real server leaving or joining a virtual server."""
    rs, vs = _ap(addr, port, proto), _ap(vip, vport, proto)
    return f"Adding service {rs} to VS {vs}" if up else f"Removing service {rs} from VS {vs}"
