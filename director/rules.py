"""The node's own iptables rules: steer VIP and laddr traffic into NFQUEUE.

In the raw table's PREROUTING, before conntrack: NOTRACK keeps kernel
conntrack out of VIP traffic (the engine is the connection tracker), and
NFQUEUE hands every packet for a VIP or laddr to the engine.  Nothing for
those addresses may reach the local stack, which would answer a flow it has
never seen with RST, so the queue has no bypass: with no listener the kernel
drops.  All rules live in chains of our own, so removing them is exact.

IP fragments: the engine must see whole datagrams (a non-first fragment has no ports to
look up, and a first fragment alone is half a datagram), so the kernel reassembles them
before the queue, as it does for IPVS.  Its defragmentation hooks (nf_defrag_ipv4 and
nf_defrag_ipv6, in PREROUTING at priority -400, before the raw table at -300) run in a
network namespace only while something there asks for them: conntrack, IPVS (for IPv6
services), or the `socket` and TPROXY matches.  NOTRACK does not (it keeps conntrack out,
and so would leave fragments unreassembled).  The node asks with the smallest of these:
one `-m socket` rule per family in a chain of its own that nothing jumps to
(DEFRAG_CHAIN).  The rule is never evaluated; while it exists the kernel reassembles, and
removing the chain lets the kernel stop.  A reassembled datagram carries the size of its
largest fragment (frag_max_size), so after the engine's rewrite the kernel fragments it
again on the way out to the real server or the client, both IPv4 and IPv6.  A fragment
that still reaches the engine is counted (drops "fragment") and dropped.
"""
from __future__ import annotations

import ipaddress
import subprocess
from typing import Iterable

CHAIN = "TANDEM"
#: holds only the rule that keeps the kernel's defragmentation on (see the module docstring)
DEFRAG_CHAIN = "TANDEM-DEFRAG"
DEFRAG_RULE = ["-m", "socket", "--nowildcard", "-m", "comment", "--comment",
               "never evaluated: keeps nf_defrag on for NFQUEUE", "-j", "RETURN"]


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
        _run([tool, "-w", "-t", "raw", "-N", DEFRAG_CHAIN])
        _run([tool, "-w", "-t", "raw", "-A", DEFRAG_CHAIN, *DEFRAG_RULE])
        _run([tool, "-w", "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN])


def remove() -> None:
    """Remove the jump and the chain; quiet when they are not there."""
    for fam in (4, 6):
        tool = _tool(fam)
        while _run([tool, "-w", "-t", "raw", "-D", "PREROUTING", "-j", CHAIN], check=False).returncode == 0:
            pass
        for chain in (CHAIN, DEFRAG_CHAIN):
            _run([tool, "-w", "-t", "raw", "-F", chain], check=False)
            _run([tool, "-w", "-t", "raw", "-X", chain], check=False)


def listed() -> str:
    return _run(["iptables", "-w", "-t", "raw", "-S"], check=False).stdout
