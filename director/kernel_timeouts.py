"""The `ct timeout` objects of kernel mode: their policies, names and generations.

A kernel-forwarded flow gets IPVS's timeouts (the node's [timeouts]) from one `ct timeout`
object per protocol and family, attached by chain new_flow (director.kernel_rules).  An
object cannot be changed in place, so a change of [timeouts] (a reload, or a restart over
a predecessor's table) adds the next generation of objects; the older ones stay while
flows may use them (docs/kernel-fast-path.md, "Timeouts on reload").
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

from director.rules import TABLE

#: conntrack's timeout-policy state -> the [timeouts] key that gives its value.  conntrack
#: names TCP states as the tracker sees them: its SYN_SENT is the client's SYN unanswered
#: (IPVS's SYN_RECV at the director), its SYN_RECV the server's SYN-ACK (IPVS's SYNACK).
TIMEOUT_POLICY = {
    "tcp": {"syn_sent": "tcp_syn_recv", "syn_recv": "tcp_synack",
            "established": "tcp_established", "fin_wait": "tcp_fin_wait",
            "close_wait": "tcp_close_wait", "last_ack": "tcp_last_ack",
            "time_wait": "tcp_time_wait", "close": "tcp_close", "syn_sent2": "tcp_syn_sent"},
    "udp": {"unreplied": "udp", "replied": "udp"},
}


def timeout_name(proto: str, family: int, generation: int = 1) -> str:
    """The `ct timeout` object of a protocol and family: `tcp4`, and `tcp4_2`, ... for the
    policies a reload of [timeouts] adds (an object cannot be changed in place: nft accepts
    the same name with another policy and keeps the old one, measured)."""
    return f"{proto}{family}" + (f"_{generation}" if generation > 1 else "")


_TIMEOUT_NAME = re.compile(r"(?:tcp|udp)[46](?:_([0-9]+))?")


def timeout_generation(name: str) -> int | None:
    """The generation a `ct timeout` object's name gives (`tcp4` 1, `udp6_3` 3); None for
    a name tandem does not make."""
    m = _TIMEOUT_NAME.fullmatch(name)
    return None if m is None else int(m.group(1) or 1)


def policies(timeouts: Mapping[str, float]) -> dict[str, str]:
    """Each protocol's policy text; values in whole seconds (>= 1)."""
    return {proto: ", ".join(f"{state} : {max(1, math.ceil(timeouts[key]))}"
                             for state, key in states.items())
            for proto, states in TIMEOUT_POLICY.items()}


def timeout_objects(timeouts: Mapping[str, float], generation: int = 1) -> list[str]:
    """One `ct timeout` object per protocol and family."""
    out = []
    for proto, policy in policies(timeouts).items():
        for fam, l3 in ((4, "ip"), (6, "ip6")):
            out.append(f"\tct timeout {timeout_name(proto, fam, generation)} {{\n"
                       f"\t\tprotocol {proto}\n\t\tl3proto {l3}\n"
                       f"\t\tpolicy = {{ {policy} }}\n\t}}")
    return out


def delete_timeouts(names: Iterable[str]) -> str:
    """The nft script that deletes these `ct timeout` objects (each must be in the table)."""
    return "".join(f"delete ct timeout inet {TABLE} {name}\n" for name in sorted(names))
