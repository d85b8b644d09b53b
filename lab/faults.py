"""Faults injected into a running pair lab, as a table of steps.

Each fault is a sequence of steps; a step does one thing to one director and may add to
the result (``at``, the wall-clock time of the fault, is set by the first step that
changes something the peer can notice).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from . import netns, nsutil, procs
from . import state as st
from .plan import DIRECTORS, SERVICE_PORT, SYNC_PORT, VIP, director, ns_name

Step = Callable[["_Ctx"], None]


class _Ctx:
    def __init__(self, prefix: str, name: str, state: dict[str, Any], wait: float,
                 out: dict[str, Any], on_at: Callable[[float], None] | None) -> None:
        self.prefix, self.name, self.state, self.wait, self.out = prefix, name, state, wait, out
        self.on_at = on_at

    def mark(self, at: float) -> None:
        """The fault happened at `at` (wall clock): said at once, before slower steps
        (a restarted node's start-up) run."""
        self.out["at"] = at
        if self.on_at is not None:
            self.on_at(at)

    @property
    def node(self) -> dict[str, Any] | None:
        return procs.find(self.state, f"node-{self.name}")

    def running(self) -> bool:
        rec = self.node
        return rec is not None and st.process_matches(rec)


def _links_down(c: _Ctx) -> None:
    c.mark(netns.set_links(c.prefix, c.name, False))


def _links_up(c: _Ctx) -> None:
    c.mark(netns.set_links(c.prefix, c.name, True))


def _sigkill(c: _Ctx) -> None:
    if c.running():
        os.kill(c.node["pid"], signal.SIGKILL)
        c.out["killed_pid"] = c.node["pid"]
        # SIGKILL is delivered asynchronously: until the process is gone, a `restore` right
        # after would find it "running" and start nothing (bounded wait)
        end = time.monotonic() + c.wait
        while c.running() and time.monotonic() < end:
            time.sleep(0.005)


def _graceful_stop(c: _Ctx) -> None:
    c.mark(time.time())
    if c.node is not None:
        c.out["stopped"] = st.stop_process(c.node, term_wait=c.wait)


def _strip_addresses(c: _Ctx) -> None:
    # only a node that is gone left them behind: a running one holds them as master
    if not c.running():
        netns.strip_service_addresses(c.prefix, c.name)


def _start_if_not_running(c: _Ctx) -> None:
    if not c.running():
        new = procs.start_node(c.prefix, c.state, Path(c.state["configs"][c.name]), c.wait, c.name)
        c.out["restarted_pid"] = new["pid"]


#: fault -> (what it models, its steps in order)
FAULT_TABLE: dict[str, tuple[str, tuple[Step, ...]]] = {
    # a crashed box never says goodbye, and loses its links before its process, so it
    # cannot answer anything after
    "kill": ("links down, then SIGKILL", (_links_down, _sigkill)),
    # the process lives on, sees its links go and enters FAULT
    "link": ("links down", (_links_down,)),
    # SIGTERM: priority 0, so the peer takes over after its skew time
    "stop": ("graceful stop (SIGTERM)", (_graceful_stop,)),
    # addresses a killed node left are stripped (not a running node's), links up, the node
    # restarted if it is gone
    "restore": ("links up, node restarted", (_strip_addresses, _links_up, _start_if_not_running)),
}
FAULTS = tuple(FAULT_TABLE)


def fault(prefix: str, name: str, kind: str, wait: float = 20.0,
          on_at: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Inject fault `kind` (see FAULT_TABLE) into director `name` of a running pair lab.
    Returns what was done, with the wall-clock time (time.time()) of the fault as `at`;
    `on_at(at)` is called the moment that time is known."""
    return nsutil.outside_event_loop(_fault, prefix, name, kind, wait, on_at)


def _fault(prefix: str, name: str, kind: str, wait: float,
           on_at: Callable[[float], None] | None) -> dict[str, Any]:
    if kind not in FAULT_TABLE:
        raise ValueError(f"fault kind must be one of {', '.join(FAULTS)}, not {kind!r}")
    director(name)
    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        if not state or not state.get("ha"):
            raise RuntimeError(f"no pair lab {prefix!r} is up (tandem lab up first)")
        out: dict[str, Any] = {"director": name, "fault": kind}
        ctx = _Ctx(prefix, name, state, wait, out, on_at)
        for step in FAULT_TABLE[kind][1]:
            step(ctx)
        st.save_state(prefix, state)
        return out


def _drop(ns: str, table: str, hook: str, match: str, percent: int, spread: bool) -> None:
    """In namespace `ns`, drop `percent`% of the packets `match` selects at `hook` (an
    nftables numgen rule in a table of its own); 0 removes the table.  `spread`: by a
    counter, exactly `percent` of every 100 in an even pattern (20: every fifth), the same
    on every run; else at random."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be 0..100")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table],
                   capture_output=True)
    if percent:
        step = math.gcd(percent, 100)
        pick = (f"numgen inc mod {100 // step} < {percent // step}" if spread
                else f"numgen random mod 100 < {percent}")
        script = "\n".join([
            f"table inet {table} {{",
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority 0;",
            f"    {match} {pick} counter drop",
            "  }",
            "}"])
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                       check=True, capture_output=True)


def sync_loss(prefix: str, percent: int, at: tuple[str, ...] | None = None) -> None:
    """Drop `percent`% of the sync datagrams arriving at each director (or those named in
    `at`), spread evenly (20: every fifth), so that a test of loss repair always has losses
    to repair: at random, a burst of few datagrams sometimes lost none (a lab test once saw
    no gap).  0 removes the rule."""
    for d in DIRECTORS:
        if at is not None and d["name"] not in at:
            continue
        _drop(ns_name(prefix, d["name"]), "tandem_lab_loss", "input",
              f"udp dport {SYNC_PORT}", percent, spread=True)


def service_udp_loss(prefix: str, percent: int) -> None:
    """Drop `percent`% of the client's UDP datagrams to the service at the router
    (loss that has nothing to do with a failover); 0 removes the rule."""
    _drop(ns_name(prefix, "router"), "tandem_lab_udp_loss", "forward",
          f"ip daddr {VIP} udp dport {SERVICE_PORT}", percent, spread=False)
