"""The rules of `forwarding = "kernel"` services: the engine schedules, the kernel forwards.

The first packet of a new flow to a kernel-mode service goes to NFQUEUE.  The engine
schedules it and gives it back with a mark that names the chosen binding (real server,
port, laddr).  From then on the kernel's conntrack NAT forwards both directions:

    conntrack (-200)
    inet tandem queue_new (-160): ct state new, not yet confirmed, to a service
        -> meta mark set QUEUE_MARK                    only a flow's first packet
    ip/ip6 mangle PREROUTING (-150): chain TANDEM_QUEUE (director.rules), iptables-nft
        -m mark --mark QUEUE_MARK -j NFQUEUE --queue-num Q
    inet tandem new_flow (-120): ct state new, to a service, with one of our marks
        -> ct mark set meta mark                       the engine's choice, kept by the flow
        -> ct timeout set "tcp4" (...)                 IPVS's timeouts, not conntrack's
    inet tandem to_real (dstnat): dnat to ct mark map @dnat4/@dnat6 (real server, port)
    inet tandem to_laddr (srcnat): flows to a VIP: snat to ct mark map @snat4/@snat6 (laddr)
    inet tandem guard (input): drop what is still addressed to a service or a laddr
    (new_flow first drops what conntrack found invalid: bad checksum, header or TCP state)

Both drops count into named counters of the table (DROP_COUNTERS), which
`drop_counters()` reads back: a malformed packet is counted, dropped, in kernel mode too.

Only flows not yet confirmed are queued, so a retransmitted SYN of a flow already bound is
not scheduled again.  The guard matters: a packet the engine dropped or left unmarked would
otherwise reach the director's own stack, which answers with RST.

The table `inet tandem` holds both modes' rules (the engine-mode part: director.rules);
`ruleset()` renders the whole of it, and loading replaces it in one `nft -f` transaction.
The kernel-mode chains are in it only while some service is kernel-mode: their `ct`
expressions turn conntrack on in the namespace.  A reload refills the sets and maps
(`update`, `rules.engine_update`) instead.  Removal deletes exactly the table, the queue
chain and its jumps.  Entries already in conntrack keep their NAT binding across a reload,
as the NAT lives in conntrack.

`ruleset()` and `update()` are pure (their text is unit-tested); `install()`, `remove()`
and `queue_counters()` are the thin adapter.  docs/kernel-fast-path.md says which kernel
facts this relies on.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from director import rules
from director.kernel_timeouts import (TIMEOUT_POLICY, delete_timeouts, policies,  # noqa: F401
                                      timeout_generation, timeout_name, timeout_objects)
from director.rules import QUEUE_MARK, TABLE

#: tandem's marks: MARK_BASE | index (index < 2**16), so a mark set by someone else never
#: selects a binding (the new_flow rule checks the prefix)
MARK_BASE = 0x54440000
MARK_PREFIX_MASK = 0xFFFF0000
NEW_FLOW_PRIORITY = -120      # after mangle (-150, the queue), before dstnat (-100)
QUEUE_NEW_PRIORITY = -160     # after conntrack (-200), before the queue (mangle, -150)
#: the conntrack events a kernel-forwarded flow sends (nftables `ct event set`), per protocol.
#: TCP: its start, every TCP state change (protoinfo: the active/inactive counts and sync's
#: state changes are made from them) and its end; UDP has no states: its start, the
#: moment it is assured (replied and still flowing) and its end.  Without this a flow
#: sends every status, mark and counter change as well.
CT_EVENTS = {"tcp": "new,protoinfo,destroy", "udp": "new,assured,destroy"}
_PROTO_NAMES = {6: "tcp", 17: "udp", "tcp": "tcp", "udp": "udp"}
#: the table's named counters -> what they count: `invalid`, TCP/UDP packets to a service's
#: VIP or a laddr that conntrack found invalid (a bad checksum, a truncated or bad header, a
#: segment not valid in its connection's TCP state), dropped before NAT; `untranslated`,
#: what the guard drops (still addressed to a service or a laddr after NAT: a first packet
#: the engine dropped or left unmarked, a stray packet to a laddr)
DROP_COUNTERS = ("invalid", "untranslated")


class KernelRulesError(rules.RulesError):
    """nft or iptables refused the rules; the message carries the tool's own words."""


@dataclass(frozen=True)
class KernelService:
    """A service forwarded by the kernel: VIP:port/proto and its laddrs."""
    vip: str
    proto: str          # "tcp" | "udp"
    port: int
    laddrs: tuple[str, ...]

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.vip).version


@dataclass(frozen=True)
class Binding:
    """What a mark stands for: DNAT to rs_addr:rs_port, SNAT to laddr."""
    mark: int
    rs_addr: str
    rs_port: int
    laddr: str

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.rs_addr).version


class Marks:
    """Marks for bindings, stable for the node's life: a mark once given never names
    another binding, as flows in conntrack may still carry it.  A restarted node first
    `adopt`s the marks its predecessor's flows carry, so they keep their meaning."""

    def __init__(self) -> None:
        self._by_binding: dict[tuple[str, int, str], Binding] = {}
        self._by_mark: dict[int, Binding] = {}
        self._next = 1                           # the next index to try
        #: mark_for's arguments as given (packed or text) -> mark: a binding's mark never
        #: changes, and parsing the addresses on every new flow cost ~4 us of its ~25 us
        #: in the node (bench.kpath profile)
        self._memo: dict[tuple, int] = {}

    @staticmethod
    def _binding_key(rs_addr: str | bytes, rs_port: int, laddr: str | bytes) -> tuple[str, int, str]:
        return (str(ipaddress.ip_address(rs_addr)), rs_port, str(ipaddress.ip_address(laddr)))

    def mark_for(self, rs_addr: str | bytes, rs_port: int, laddr: str | bytes) -> int:
        """The mark of this binding (addresses as text or packed), made on first use."""
        memo = self._memo.get((rs_addr, rs_port, laddr))
        if memo is not None:
            return memo
        key = self._binding_key(rs_addr, rs_port, laddr)
        b = self._by_binding.get(key)
        if b is None:
            while (MARK_BASE | self._next) in self._by_mark:
                self._next += 1
            if self._next > 0xFFFF:
                raise KernelRulesError("no mark left: 65535 bindings in use")
            b = Binding(MARK_BASE | self._next, *key)
            self._by_binding[key] = b
            self._by_mark[b.mark] = b
        self._memo[(rs_addr, rs_port, laddr)] = b.mark
        return b.mark

    def lookup(self, rs_addr: str | bytes, rs_port: int, laddr: str | bytes) -> int | None:
        """The mark of this binding if it has one (none is made)."""
        memo = self._memo.get((rs_addr, rs_port, laddr))
        if memo is not None:
            return memo
        b = self._by_binding.get(self._binding_key(rs_addr, rs_port, laddr))
        return None if b is None else self._memo.setdefault((rs_addr, rs_port, laddr), b.mark)

    def adopt(self, mark: int, rs_addr: str, rs_port: int, laddr: str) -> bool:
        """Give `mark` to this binding, as a flow already in conntrack carries it; False
        when the mark or the binding already stands for something else."""
        key = self._binding_key(rs_addr, rs_port, laddr)
        if mark & MARK_PREFIX_MASK != MARK_BASE or not mark & ~MARK_PREFIX_MASK:
            return False
        have, held = self._by_mark.get(mark), self._by_binding.get(key)
        if have is not None or held is not None:
            return have is not None and have is held
        b = Binding(mark, *key)
        self._by_binding[key] = b
        self._by_mark[mark] = b
        return True

    def bindings(self) -> list[Binding]:
        return sorted(self._by_binding.values(), key=lambda b: b.mark)

    def binding(self, mark: int) -> Binding | None:
        """What `mark` stands for (None: not one of ours)."""
        return self._by_mark.get(mark)

    def marks_of(self, rs_addr: str, rs_port: int) -> set[int]:
        """The marks of every binding to this real server (one per laddr)."""
        rs = str(ipaddress.ip_address(rs_addr))
        return {b.mark for k, b in self._by_binding.items() if k[0] == rs and k[1] == rs_port}


def _proto(s: KernelService) -> str:
    try:
        return _PROTO_NAMES[s.proto]
    except KeyError:
        raise KernelRulesError(f"service {s.vip}:{s.port}: protocol {s.proto!r} is not tcp or udp") from None


def _elements(items: Iterable[str]) -> str:
    items = sorted(set(items))
    return f"\n\t\telements = {{ {', '.join(items)} }}" if items else ""


@dataclass(frozen=True)
class TableContents:
    """What a loaded `inet tandem` holds, by name: its `ct timeout` objects, and the rest
    (chains, sets, maps, counters) as (kind, name)."""
    timeouts: tuple[str, ...] = ()
    others: tuple[tuple[str, str], ...] = ()


#: the kinds of `nft -j list table` items a fresh load deletes by name (the timeouts stay)
_REPLACED_KINDS = ("chain", "set", "map", "counter")


def parse_table(text: str) -> TableContents:
    """`nft -j list table inet tandem` -> TableContents."""
    timeouts, others = [], []
    for item in json.loads(text).get("nftables", []):
        for kind, obj in item.items():
            if not isinstance(obj, dict) or obj.get("table") != TABLE:
                continue
            if kind == "ct timeout":
                timeouts.append(obj["name"])
            elif kind in _REPLACED_KINDS:
                others.append((kind, obj["name"]))
    return TableContents(tuple(timeouts), tuple(others))


_SVC = {fam: f"{ip} daddr . meta l4proto . th dport @svc{fam}" for fam, ip in ((4, "ip"), (6, "ip6"))}
_OURS = f"meta mark & 0x{MARK_PREFIX_MASK:08x} == 0x{MARK_BASE:08x}"


def _new_flow_rules(timeouts: bool, generation: int = 1) -> list[str]:
    """The rules of chain new_flow: conntrack's invalid packets to a service or laddr
    dropped and counted, then the mark, the event mask and the timeout policy of a new
    flow.  The same text loads the table and, after a change of [timeouts], the chain."""
    return [
        *(f'ct state invalid {ip} daddr @{s}{f} meta l4proto {{ tcp, udp }} counter name "invalid" drop'
          for f, ip in ((4, "ip"), (6, "ip6")) for s in ("vip", "laddr")),
        *(f"ct state new {_SVC[f]} {_OURS} ct mark set meta mark" for f in (4, 6)),
        *(f"ct state new {_SVC[f]} {_OURS} meta l4proto {p} ct event set {events}"
          for f in (4, 6) for p, events in CT_EVENTS.items()),
        *(f'ct state new {_SVC[f]} meta l4proto {p} ct timeout set "{timeout_name(p, f, generation)}"'
          for f in (4, 6) for p in TIMEOUT_POLICY if timeouts),
    ]


def ruleset(services: Iterable[KernelService], bindings: Iterable[Binding],
            timeouts: Mapping[str, float] | None = None, generation: int = 1,
            engine: Iterable[str] = (), keep: TableContents | None = None) -> str:
    """The nft script that replaces `inet tandem` atomically (create, delete, define): the
    engine-mode part for the addresses `engine` (director.rules) and, when there are
    kernel-mode services or bindings, the kernel-mode part.  With `timeouts` (the
    [timeouts] section), a kernel-forwarded flow gets them as its conntrack timeout policy
    instead of conntrack's own (5 days when established).

    `keep` (the table as loaded now, when it holds `ct timeout` objects: a predecessor's):
    everything else in it is deleted by name in the same transaction and the objects
    stay, since deleting one takes its policy off every flow that uses it, and the flows
    a restarted node adopts would then fall back to conntrack's own timeouts at their
    next packet (docs/kernel-fast-path.md).  `generation` must then name new objects."""
    services, bindings = list(services), list(bindings)
    if keep is not None and keep.timeouts:
        clash = set(keep.timeouts) & {timeout_name(p, f, generation) for p in TIMEOUT_POLICY
                                      for f in (4, 6)} if timeouts is not None else set()
        if clash:
            raise KernelRulesError(f"timeout objects {sorted(clash)} already in the table")
        out = [f"table inet {TABLE} {{}}", f"flush table inet {TABLE}",
               *(f"delete {kind} inet {TABLE} {name}" for kind, name in keep.others)]
    else:
        out = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    out += [f"table inet {TABLE} {{", *rules.engine_part(engine)]
    if not (services or bindings or timeouts is not None):
        return "\n".join(out + ["}"]) + "\n"
    out += [f"\tcounter {name} {{\n\t}}" for name in DROP_COUNTERS]
    if timeouts is not None:
        out += timeout_objects(timeouts, generation)
    for fam, ip, addr_t in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
        svcs = [s for s in services if s.family == fam]
        binds = [b for b in bindings if b.family == fam]
        out += [
            f"\tset svc{fam} {{\n\t\ttype {addr_t} . inet_proto . inet_service"
            + _elements(f"{s.vip} . {_proto(s)} . {s.port}" for s in svcs) + "\n\t}",
            f"\tset vip{fam} {{\n\t\ttype {addr_t}" + _elements(s.vip for s in svcs) + "\n\t}",
            f"\tset laddr{fam} {{\n\t\ttype {addr_t}"
            + _elements(a for s in svcs for a in s.laddrs) + "\n\t}",
            f"\tmap dnat{fam} {{\n\t\ttype mark : {addr_t} . inet_service"
            + _elements(f"0x{b.mark:08x} : {b.rs_addr} . {b.rs_port}" for b in binds) + "\n\t}",
            f"\tmap snat{fam} {{\n\t\ttype mark : {addr_t}"
            + _elements(f"0x{b.mark:08x} : {b.laddr}" for b in binds) + "\n\t}",
        ]
    svc = _SVC
    out += [
        f"\tchain queue_new {{\n\t\ttype filter hook prerouting priority {QUEUE_NEW_PRIORITY}; policy accept;",
        *(f"\t\tct state new ct status ! confirmed {svc[f]} meta mark set 0x{QUEUE_MARK:08x}"
          for f in (4, 6)),
        "\t}",
        f"\tchain new_flow {{\n\t\ttype filter hook prerouting priority {NEW_FLOW_PRIORITY}; policy accept;",
        *(f"\t\t{rule}" for rule in _new_flow_rules(timeouts is not None, generation)),
        "\t}",
        "\tchain to_real {\n\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f"\t\tmeta l4proto {{ tcp, udp }} {svc[f]} dnat {ip} to ct mark map @dnat{f}"
          for f, ip in ((4, "ip"), (6, "ip6"))),
        "\t}",
        "\tchain to_laddr {\n\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f"\t\tct original {ip} daddr @vip{f} snat {ip} to ct mark map @snat{f}"
          for f, ip in ((4, "ip"), (6, "ip6"))),
        "\t}",
        "\tchain guard {\n\t\ttype filter hook input priority filter; policy accept;",
        *(f'\t\t{svc[f]} counter name "untranslated" drop' for f in (4, 6)),
        *(f'\t\t{ip} daddr @laddr{f} meta l4proto {{ tcp, udp }} counter name "untranslated" drop'
          for f, ip in ((4, "ip"), (6, "ip6"))),
        "\t}",
        "}",
    ]
    return "\n".join(out) + "\n"


def _elements_of(services: list[KernelService], bindings: list[Binding]) -> dict[str, list[str]]:
    """Each set's and map's elements, by name."""
    out: dict[str, list[str]] = {}
    for fam in (4, 6):
        svcs = [s for s in services if s.family == fam]
        binds = [b for b in bindings if b.family == fam]
        out[f"svc{fam}"] = sorted({f"{s.vip} . {_proto(s)} . {s.port}" for s in svcs})
        out[f"vip{fam}"] = sorted({s.vip for s in svcs})
        out[f"laddr{fam}"] = sorted({a for s in svcs for a in s.laddrs})
        out[f"dnat{fam}"] = [f"0x{b.mark:08x} : {b.rs_addr} . {b.rs_port}" for b in binds]
        out[f"snat{fam}"] = [f"0x{b.mark:08x} : {b.laddr}" for b in binds]
    return out


def update(services: Iterable[KernelService], bindings: Iterable[Binding],
           timeouts: Mapping[str, float] | None = None, generation: int = 1) -> str:
    """The nft script that refills the sets and maps of a loaded table in one transaction
    (a reload): the chains and the `ct timeout` objects stay.  Replacing the table instead
    would destroy the timeout objects, and the kernel then takes the policy off every flow
    that uses it (those flows fall back to conntrack's own timeouts, 5 days established).

    With `timeouts` (a changed [timeouts] section), the same transaction adds that
    `generation`'s timeout objects and rewrites chain new_flow to attach them: new flows
    get the new policy, flows already in conntrack keep the object they were given (it
    stays in the table; an object cannot be changed in place)."""
    out = []
    if timeouts is not None:
        for proto, policy in policies(timeouts).items():
            for fam, l3 in ((4, "ip"), (6, "ip6")):
                out.append(f"add ct timeout inet {TABLE} {timeout_name(proto, fam, generation)} "
                           f"{{ protocol {proto}; l3proto {l3}; policy = {{ {policy} }}; }}")
        out.append(f"flush chain inet {TABLE} new_flow")
        out += [f"add rule inet {TABLE} new_flow {rule}" for rule in _new_flow_rules(True, generation)]
    for name, items in _elements_of(list(services), list(bindings)).items():
        kind = "map" if name.startswith(("dnat", "snat")) else "set"
        out.append(f"flush {kind} inet {TABLE} {name}")
        if items:
            out.append(f"add element inet {TABLE} {name} {{ {', '.join(items)} }}")
    return "\n".join(out) + "\n"


# -- the adapter ------------------------------------------------------------------------------

def _run(argv: list[str], stdin: str | None = None, check: bool = True):
    return rules._run(argv, stdin=stdin, check=check)


def install(services: Iterable[KernelService], bindings: Iterable[Binding], queue: int,
            timeouts: Mapping[str, float] | None = None, fresh: bool = True,
            generation: int = 1, engine: Iterable[str] = ()) -> None:
    """Load the table (both modes; `engine`: the engine-mode addresses) and the queue chain;
    each step is atomic on its own.  `fresh` False (a reload) refills the kernel-mode sets
    and maps of the loaded table (`update`) instead of replacing it, and with `timeouts`
    switches new flows to that generation's policies."""
    services = list(services)
    script = (ruleset(services, bindings, timeouts, generation, engine, keep=table_contents())
              if fresh else update(services, bindings, timeouts, generation))
    load(script)
    rules.install_queue(queue)


def table_contents() -> TableContents | None:
    """What `inet tandem` holds now (None: no such table)."""
    out = _run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    return parse_table(out.stdout) if out.returncode == 0 else None


def remove_timeouts(names: Iterable[str]) -> list[str]:
    """Delete those of these `ct timeout` objects still in the table; the names deleted."""
    have = table_contents()
    gone = sorted(set(names) & set(have.timeouts)) if have is not None else []
    if gone:
        load(delete_timeouts(gone))
    return gone


def load(script: str) -> None:
    """One nft transaction."""
    _run(["nft", "-f", "-"], stdin=script)


def remove() -> None:
    """Delete the table, the queue chain and its jumps; quiet when they are not there."""
    _run(["nft", "-f", "-"], stdin=f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n", check=False)
    rules.remove_queue()


def parse_counters(text: str) -> dict[str, int]:
    """Packets of each of DROP_COUNTERS from `nft -j list counters table inet tandem`."""
    out = dict.fromkeys(DROP_COUNTERS, 0)
    for item in json.loads(text).get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == TABLE and c.get("name") in out:
            out[c["name"]] = int(c.get("packets", 0))
    return out


def drop_counters() -> dict[str, int]:
    """The table's drop counters (a blocking `nft` run: call it from a worker thread)."""
    return parse_counters(_run(["nft", "-j", "list", "counters", "table", "inet", TABLE]).stdout)


def queue_counters(text: str | None = None) -> dict[int, dict[str, int]]:
    """The kernel's NFQUEUE counters by queue number, from /proc/net/netfilter/nfnetlink_queue:
    `queued` (packets handed to user space so far), `waiting`, `dropped` (queue full),
    `user_dropped` (socket buffer full)."""
    if text is None:
        try:
            with open("/proc/net/netfilter/nfnetlink_queue") as proc:
                text = proc.read()
        except FileNotFoundError:
            return {}
    out = {}
    for line in text.splitlines():
        col = line.split()
        if len(col) >= 8:
            out[int(col[0])] = {"waiting": int(col[2]), "dropped": int(col[5]),
                                "user_dropped": int(col[6]), "queued": int(col[7])}
    return out
