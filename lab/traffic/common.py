"""What every traffic mode shares: limits, the lab-only target check, deadlines, error names."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import resource
import socket
import time


LAB_NET = ipaddress.ip_network("198.18.0.0/15")
LAB_NET6 = ipaddress.ip_network("2001:2::/48")
MAX_COUNT = 1_000_000
MAX_CONNS = 20_000
MAX_BYTES = 10 * 1024**3
MAX_SECONDS = 3600.0
MAX_GARBAGE_PER_KIND = 100_000


class UsageError(Exception):
    pass


def check_host(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{host!r}: an IP address literal is required") from None
    if not (ip in (LAB_NET if ip.version == 4 else LAB_NET6) or ip.is_loopback):
        raise UsageError(f"{host}: only 198.18.0.0/15 or 2001:2::/48 (the lab) or loopback "
                         "targets are allowed")
    return host


def family_of(host: str) -> int:
    """socket.AF_INET or AF_INET6 for an address literal."""
    import socket
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def raise_nofile() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def classify(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)):
        return "eof"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, f"errno{exc.errno}")
    return type(exc).__name__


def inc(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def op(self, timeout: float) -> float:
        """Timeout for one operation: never beyond the deadline."""
        return max(0.001, min(timeout, self.left()))


def parse_whoami(reply: str) -> tuple[str, str, int] | None:
    parts = reply.strip().split(" ")
    if len(parts) != 2 or ":" not in parts[1]:
        return None
    ip, _, port = parts[1].rpartition(":")
    try:
        return parts[0], ip, int(port)
    except ValueError:
        return None


def garbage_kinds(spec: str, known: list[str], label: str = "kinds") -> list[str]:
    """The kinds a garbage command was asked for ("all" or a comma list), each one known."""
    kinds = known if spec == "all" else [k.strip() for k in spec.split(",")]
    for k in kinds:
        if k not in known:
            raise UsageError(f"unknown kind {k!r}; {label}: {', '.join(known)}")
    return kinds


def source_towards(target: str, port: int, family: int) -> str:
    """The source address the kernel would use towards target:port, checked to be the lab's."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.connect((target, port))
        src_ip = probe.getsockname()[0]
    finally:
        probe.close()
    return check_host(src_ip)

