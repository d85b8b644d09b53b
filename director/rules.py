"""The node's own iptables rules: steer VIP and laddr traffic into NFQUEUE.

In the raw table's PREROUTING, before conntrack: NOTRACK keeps kernel
conntrack out of VIP traffic (the engine is the connection tracker), and
NFQUEUE hands every packet for a VIP or laddr to the engine.  Nothing for
those addresses may reach the local stack, which would answer a flow it has
never seen with RST, so the queue has no bypass: with no listener the kernel
drops.  All rules live in one chain of our own, so removing them is exact.
"""
from __future__ import annotations

import ipaddress
import subprocess
from typing import Iterable

CHAIN = "TANDEM"


def _tool(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


class RulesError(OSError):
    """An iptables command failed; the message carries its own words (e.g. iptables-legacy's
    "can't open lock file /run/xtables.lock: Permission denied" for a node that runs as its
    own user on a host where the lock was never made readable to it: docs/operations.md)."""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        said = " ".join((r.stderr or r.stdout).split()) or "no output"
        raise RulesError(f"{' '.join(argv)} exited {r.returncode}: {said}")
    return r


def rule_specs(addrs: Iterable[str], queue: int) -> list[tuple[int, list[str]]]:
    specs: list[tuple[int, list[str]]] = []
    for a in sorted(set(addrs)):
        fam = ipaddress.ip_address(a).version
        specs.append((fam, ["-d", a, "-j", "NOTRACK"]))
        specs.append((fam, ["-d", a, "-j", "NFQUEUE", "--queue-num", str(queue)]))
    return specs


def install(addrs: Iterable[str], queue: int) -> None:
    """Create (or recreate) the chain and jump to it first in raw PREROUTING."""
    remove()
    specs = rule_specs(addrs, queue)
    for fam in sorted({f for f, _ in specs}):
        tool = _tool(fam)
        _run([tool, "-w", "-t", "raw", "-N", CHAIN])
        for f, spec in specs:
            if f == fam:
                _run([tool, "-w", "-t", "raw", "-A", CHAIN, *spec])
        _run([tool, "-w", "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN])


def remove() -> None:
    """Remove the jump and the chain; quiet when they are not there."""
    for fam in (4, 6):
        tool = _tool(fam)
        while _run([tool, "-w", "-t", "raw", "-D", "PREROUTING", "-j", CHAIN], check=False).returncode == 0:
            pass
        _run([tool, "-w", "-t", "raw", "-F", CHAIN], check=False)
        _run([tool, "-w", "-t", "raw", "-X", CHAIN], check=False)


def listed() -> str:
    return _run(["iptables", "-w", "-t", "raw", "-S"], check=False).stdout
