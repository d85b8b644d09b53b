"""tandem's rules, both data-plane modes: one nftables table, `inet tandem`, and the one
queue rule per family that this kernel's nftables cannot express.

An engine-mode service's packets all go to the engine: every packet to one of its VIPs or
laddrs.  A kernel-mode service's first packet of each flow goes to the engine, which
answers with a mark; the kernel's conntrack NAT forwards the rest (director.kernel_rules).
Both reach the queue the same way: a chain of the table marks the packet with QUEUE_MARK,
and the one iptables-nft rule of the chain QUEUE_CHAIN (mangle PREROUTING, priority -150)
queues what carries that mark.  That rule is an iptables-nft (xt) rule because nftables has
no `queue` statement here (CONFIG_NFT_QUEUE is not set).  It has no bypass: with no
listener the kernel drops, so nothing for a service reaches the director's own stack, which
would answer a flow it never saw with RST.

The engine-mode part of the table (this module):

    untracked (prerouting, -300, before conntrack at -200):
        ip daddr @engine4 notrack meta mark set QUEUE_MARK      (ip6: @engine6)
            the engine is the connection tracker; conntrack keeps out of its traffic
    [mangle -150: QUEUE_CHAIN: -m mark --mark QUEUE_MARK -j NFQUEUE]
    unmark (prerouting, -149, after the verdict):
        meta mark QUEUE_MARK meta mark set 0
            a packet the engine accepted leaves with the mark it came with (0: received
            packets carry none before the raw hook)
    defrag (a chain nothing jumps to): one `tproxy` rule per family

IP fragments: the engine must see whole datagrams (a non-first fragment has no ports to
look up, and a first fragment alone is half a datagram), so the kernel reassembles them
before the queue, as it does for IPVS.  Its defragmentation hooks (priority -400) run in a
network namespace only while something there asks for them: conntrack, IPVS, or the socket
and TPROXY matches.  `notrack` does not ask.  The `tproxy` expression asks when it is
loaded (nft_tproxy's init enables nf_defrag_ipv4/ipv6), so the chain `defrag` holds one per
family and nothing jumps to it: the rules are never evaluated, and while they exist the
kernel reassembles (nftables' `socket` expression does not ask; measured).  A reassembled
datagram carries the size of its largest fragment, so after the engine's rewrite the kernel
fragments it again on the way out.  A fragment that still reaches the engine is counted
(drops "fragment") and dropped.

`engine_part()`, `engine_update()` and `queue_rules()` are pure (unit-tested); loading the
table is director.kernel_rules' adapter (one `nft -f` transaction), the queue chain
`install_queue()`/`remove_queue()` here (one `iptables-nft-restore --noflush` per family).
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Iterable

TABLE = "tandem"
#: the xt chain (mangle, both families) that queues what the table marked
QUEUE_CHAIN = "TANDEM_QUEUE"
#: "queue this packet": set by the table, matched by QUEUE_CHAIN.  Not one of the kernel
#: mode's binding marks (director.kernel_rules.MARK_BASE prefix 0x5444)
QUEUE_MARK = 0x54450000
UNTRACKED_PRIORITY = -300     # the raw hook: before conntrack (-200)
UNMARK_PRIORITY = -149        # right after the queue (mangle, -150)
#: chains of older versions (iptables rules), removed by name wherever they are left
LEGACY_CHAINS = (("raw", "TANDEM"), ("raw", "TANDEM-DEFRAG"), ("mangle", "TANDEM_NEW"))


class RulesError(OSError):
    """nft or iptables refused the rules; the message carries the tool's own words."""


def _addrs(addrs: Iterable[str], family: int) -> list[str]:
    return sorted({str(ipaddress.ip_address(a)) for a in addrs
                   if ipaddress.ip_address(a).version == family})


def _elements(items: list[str]) -> str:
    return f"\n\t\telements = {{ {', '.join(items)} }}" if items else ""


def engine_part(addrs: Iterable[str]) -> list[str]:
    """The engine-mode sets and chains, as lines of the table's definition."""
    addrs = list(addrs)
    mark = f"0x{QUEUE_MARK:08x}"
    return [
        *(f"\tset engine{fam} {{\n\t\ttype {t}" + _elements(_addrs(addrs, fam)) + "\n\t}"
          for fam, t in ((4, "ipv4_addr"), (6, "ipv6_addr"))),
        f"\tchain untracked {{\n\t\ttype filter hook prerouting priority {UNTRACKED_PRIORITY}; policy accept;",
        f"\t\tip daddr @engine4 notrack meta mark set {mark}",
        f"\t\tip6 daddr @engine6 notrack meta mark set {mark}",
        "\t}",
        f"\tchain unmark {{\n\t\ttype filter hook prerouting priority {UNMARK_PRIORITY}; policy accept;",
        f"\t\tmeta mark {mark} meta mark set 0x00000000",
        "\t}",
        "\tchain defrag {",
        "\t\tmeta l4proto tcp tproxy ip to 127.0.0.1:1",
        "\t\tmeta l4proto tcp tproxy ip6 to [::1]:1",
        "\t}",
    ]


def engine_update(addrs: Iterable[str]) -> str:
    """The nft script that refills the engine-mode sets of the loaded table (a reload)."""
    addrs = list(addrs)
    out = []
    for fam in (4, 6):
        out.append(f"flush set inet {TABLE} engine{fam}")
        items = _addrs(addrs, fam)
        if items:
            out.append(f"add element inet {TABLE} engine{fam} {{ {', '.join(items)} }}")
    return "\n".join(out) + "\n"


def queue_rules(queue: int) -> str:
    """iptables-nft-restore --noflush input (either family): the queue chain's one rule."""
    return "\n".join(["*mangle", f":{QUEUE_CHAIN} - [0:0]", f"-F {QUEUE_CHAIN}",
                      f"-A {QUEUE_CHAIN} -m mark --mark 0x{QUEUE_MARK:08x} -j NFQUEUE --queue-num {queue}",
                      "COMMIT"]) + "\n"


# -- the adapter ------------------------------------------------------------------------------

def _tool(family: int, restore: bool = False) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    name = f"{base}-nft{'-restore' if restore else ''}"
    return name if shutil.which(name) else f"{base}{'-restore' if restore else ''}"


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        said = " ".join((r.stderr or r.stdout).split()) or "no output"
        raise RulesError(f"{' '.join(argv)} exited {r.returncode}: {said}")
    return r


def install_queue(queue: int) -> None:
    """The queue chain in both families' mangle tables, and one jump to it first in
    PREROUTING (added only when missing)."""
    for fam in (4, 6):
        _run([_tool(fam, restore=True), "--noflush", "-w"], stdin=queue_rules(queue))
        tool = [_tool(fam), "-w", "-t", "mangle"]
        if _run([*tool, "-C", "PREROUTING", "-j", QUEUE_CHAIN], check=False).returncode != 0:
            _run([*tool, "-I", "PREROUTING", "1", "-j", QUEUE_CHAIN])


def _remove_chain(fam: int, table: str, chain: str) -> None:
    tool = [_tool(fam), "-w", "-t", table]
    while _run([*tool, "-D", "PREROUTING", "-j", chain], check=False).returncode == 0:
        pass
    _run([*tool, "-F", chain], check=False)
    _run([*tool, "-X", chain], check=False)


def remove_queue() -> None:
    """The jumps and the queue chain (and chains of older versions); quiet when absent.
    An iptables-nft table left with no rule at all (only empty built-in chains that
    accept, as iptables-nft creates them for our one jump) is deleted as well: it does
    nothing, and removal leaves the ruleset as it was."""
    for fam in (4, 6):
        for table, chain in (("mangle", QUEUE_CHAIN), *LEGACY_CHAINS):
            _remove_chain(fam, table, chain)
        for table in ("mangle", "raw"):
            _delete_if_empty("ip" if fam == 4 else "ip6", table)


def _delete_if_empty(family: str, table: str) -> None:
    import json
    r = _run(["nft", "-j", "list", "table", family, table], check=False)
    if r.returncode != 0:
        return
    try:
        items = json.loads(r.stdout)["nftables"]
    except (ValueError, KeyError):
        return
    kinds = {next(iter(i)) for i in items} - {"metainfo", "table"}
    chains = [i["chain"] for i in items if "chain" in i]
    if kinds <= {"chain"} and all(c.get("policy", "accept") == "accept" for c in chains):
        _run(["nft", "delete", "table", family, table], check=False)
