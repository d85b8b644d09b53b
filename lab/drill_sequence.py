"""`tandem drill --sequence`: several faults in one run against the cluster lab, every held
connection held across all of them (issue 16's "Done when": kill a director, restore it,
drain one, add a fourth, with connections spread over every director and echoing).

One hold client runs through the whole sequence; the drill tells it each step's time (the
fault file lists them in order) and it reports each step's silences apart: the first echo
after the step that ended a cut (`takeover_ms`), how many connections were cut, and the
longest silence that ended within the step.  Besides, per step: how long the router took
to show the step in the VIP's route (`route_ms`, from the step's time: the director gone
from the next hops after kill, crash, link, stop or drain, still there after partition
(routed, it keeps serving: docs/cluster.md section 6), back after restore or join;
polled, so an upper bound), and new connections opened all through the step (a few
a second), each of which must succeed.  A held connection must never be reset nor stall
(an echo `STALL` seconds late ends it as stalled).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import bgp, cluster, cluster_join
from lab import state as st
from lab.drill_client import result, roles, spawn
from lab.drill_pairs import LabCluster

#: issue 16's sequence: kill a director, restore it, drain one, add a fourth
ISSUE_SEQUENCE = "kill:b,restore:b,drain:a,join:d"
#: held connections in a sequence unless --conns says (the issue's figure)
SEQUENCE_CONNS = 600
#: seconds between one held connection's messages in a sequence unless --interval says:
#: 600 connections at the one-fault drill's 20 ms would be 30,000 echoes a second through
#: engine-mode directors that queue every packet to Python
SEQUENCE_INTERVAL = 0.1
#: seconds: an echo this late ends a held connection as stalled (the issue's bound)
STALL = 2.0
#: new connections opened a second all through the sequence
NEW_RATE = 10.0
#: the longest a step waits, past its own seconds, for the cluster to settle
SETTLE_WAIT = 30.0
#: the longest the router may take to show a step in the VIP's route before it is
#: reported as not seen
ROUTE_WAIT = 20.0
#: what each step's kind does to the target's next hop for the VIP: gone (False) or there
GONE = {"kill": False, "crash": False, "link": False, "stop": False, "drain": False,
        "partition": True, "restore": True, "join": True}


def parse_steps(text: str) -> list[tuple[str, str]]:
    """`kill:b,restore:b,...` -> [("kill", "b"), ("restore", "b"), ...]; ValueError naming
    the bad step."""
    steps = []
    for raw in text.split(","):
        kind, sep, target = raw.strip().partition(":")
        if not sep or kind not in GONE or len(target) != 1 or not "a" <= target <= "h":
            raise ValueError(f"a step is KIND:DIRECTOR with KIND one of {', '.join(GONE)} and "
                             f"DIRECTOR a letter a..h, not {raw.strip()!r}")
        steps.append((kind, target))
    if not steps:
        raise ValueError("a sequence needs at least one step")
    return steps


def _check_targets(steps: list[tuple[str, str]], names: tuple[str, ...]) -> None:
    members = set(names)
    for kind, target in steps:
        if kind == "join":
            if target in members:
                raise ValueError(f"join:{target}: {target} is a member already")
            members.add(target)
        elif target not in members:
            raise ValueError(f"{kind}:{target}: no director {target} (members "
                             f"{', '.join(sorted(members))})")


def _route_ms(prefix: str, vip: str, addr: str, there: bool, at: float) -> float | None:
    """Milliseconds from `at` (wall clock) until the router's VIP route has (or lacks)
    `addr`, polled; None if not within ROUTE_WAIT."""
    end = time.monotonic() + ROUTE_WAIT
    while time.monotonic() < end:
        if (addr in bgp.nexthops(prefix, vip)) == there:
            return round(max(0.0, time.time() - at) * 1000, 1)
        time.sleep(0.01)
    return None


def _owned(pair: LabCluster) -> dict[str, int]:
    return {n: (s.get("cluster") or {}).get("flows_owned", 0) for n, s in roles(pair).items()}


def run(prefix: str, steps: list[tuple[str, str]], conns: int = SEQUENCE_CONNS,
        interval: float = SEQUENCE_INTERVAL, step_seconds: float = 6.0, lead: float = 1.5,
        say=lambda text: None, forwarding: str = "engine") -> dict[str, Any]:
    """The sequence against the cluster lab `prefix`, through its engine-mode VIP or (with
    `forwarding = "kernel"`) its kernel-mode one; the report (JSON-ready)."""
    pair = LabCluster(prefix, forwarding)
    pair.check()
    _check_targets(steps, pair.names)
    scratch = tempfile.TemporaryDirectory(prefix="tandem-drill-seq-")   # removed in `finally`
    tmp = Path(scratch.name)
    ready, fault_file, stop = tmp / "ready.json", tmp / "fault.json", tmp / "stop"
    cap = lead + len(steps) * (step_seconds + SETTLE_WAIT + ROUTE_WAIT + 40) + 60
    out_steps: list[dict[str, Any]] = []
    hold = new = None
    try:
        hold = spawn(pair, "hold", "--host", pair.vip, "--port", pair.port, "--conns", conns,
                     "--seconds", cap, "--deadline", cap + 30, "--interval", interval,
                     "--ready-file", ready, "--fault-file", fault_file, "--stop-file", stop,
                     "--timeout", STALL)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if hold.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("connections never opened: " + json.dumps(result(hold, 5)))
            time.sleep(0.05)
        connected = json.loads(ready.read_text())["connected"]
        say(f"{connected}/{conns} connections open")
        time.sleep(lead)
        owned = _owned(pair)
        say("owned by director: " + ", ".join(f"{n} {k}" for n, k in owned.items()))
        ats: list[float] = []
        for i, (kind, target) in enumerate(steps):
            new_stop = tmp / f"new-stop-{i}"
            new = spawn(pair, "tcp-whoami", "--host", pair.vip, "--port", pair.port,
                          "--count", int(NEW_RATE * (step_seconds + SETTLE_WAIT + ROUTE_WAIT + 60)),
                          "--rate", NEW_RATE, "--stop-file", new_stop, "--timeout", STALL,
                          "--deadline", step_seconds + SETTLE_WAIT + ROUTE_WAIT + 90)
            t0 = time.monotonic()
            if kind == "join":
                done = cluster_join.join(prefix, target)
            else:
                done = cluster.fault(prefix, target, kind)
            ats.append(done["at"])
            tmp_fault = fault_file.with_suffix(".tmp")
            tmp_fault.write_text(json.dumps({"at": ats}))
            tmp_fault.replace(fault_file)
            addr = cluster.director(st.load_state(prefix), target)["front_addr"]
            route = _route_ms(prefix, pair.vip, addr, GONE[kind], done["at"])
            pair = LabCluster(prefix, forwarding)   # a join adds a member
            give_up = t0 + step_seconds + SETTLE_WAIT
            while hold.poll() is None:
                now = time.monotonic()
                if (now >= t0 + step_seconds and pair.settled(roles(pair))) or now >= give_up:
                    break
                time.sleep(0.25)
            settled_s = round(time.monotonic() - t0, 2)
            new_stop.touch()
            fresh = result(new, 30)
            new = None
            out_steps.append({"step": f"{kind} {target}", "at": done["at"], "route_ms": route,
                              "settled_s": settled_s, "new_conns": fresh.get("count", 0),
                              "new_ok": fresh.get("ok", 0),
                              "new_errors": fresh.get("errors", {})})
            say(f"{kind} {target}: route {route} ms, settled after {settled_s} s, new "
                f"connections {fresh.get('ok', 0)}/{fresh.get('count', 0)}")
        time.sleep(1.0)                         # echoes after the last step too
        stop.touch()
        res = result(hold, 30)
    finally:
        for p in (hold, new):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        scratch.cleanup()
    per = res.get("faults") or ([res["fault"]] if res.get("fault") else [])
    for s, f in zip(out_steps, per):
        s.update({"takeover_ms": f.get("takeover_ms"), "interrupted": f.get("interrupted", 0),
                  "gap_ms": f.get("gap_ms")})
    return {"sequence": ",".join(f"{k}:{t}" for k, t in steps), "conns": conns,
            "forwarding": forwarding, "vip": pair.vip,
            "connected": res.get("connected", 0), "interval": interval,
            "survived": res.get("ok", 0), "reset": res.get("reset", 0),
            "stalled": res.get("stalled", 0), "mismatch": res.get("mismatch", 0),
            "sent": res.get("sent"), "echoes": res.get("echoes"),
            "max_gap_ms": res.get("max_gap_ms"), "owned_before": owned, "steps": out_steps,
            "lost_ports": res.get("lost_ports", {})}


def passed(r: dict[str, Any]) -> bool:
    """Every held connection survived every step with every echo, and every new
    connection succeeded."""
    return (r["survived"] == r["conns"] and not r["reset"] and not r["stalled"]
            and not r["mismatch"] and r["echoes"] == r["sent"]
            and all(s["new_ok"] == s["new_conns"] for s in r["steps"]))


def table(r: dict[str, Any]) -> str:
    lines = [f"  sequence      {r['sequence']} (VIP {r.get('vip')}, forwarding "
             f"{r.get('forwarding', 'engine')})",
             f"  connections   {r['survived']}/{r['conns']} survived every step, {r['reset']} "
             f"reset, {r['stalled']} stalled (an echo {STALL:g} s late), every {r['interval']:g} s "
             f"each; owned before: " + ", ".join(f"{n} {k}" for n, k in r["owned_before"].items()),
             f"  longest gap   {r['max_gap_ms']} ms (any connection, whole run)",
             "  step          route      first echo after   cut   longest gap   new conns",]
    for s in r["steps"]:
        route = f"{s['route_ms']} ms" if s["route_ms"] is not None else "not seen"
        first = f"{s['takeover_ms']} ms" if s.get("takeover_ms") is not None else "no cut"
        gap = (s.get("gap_ms") or {}).get("max")
        lines.append(f"  {s['step']:<13} {route:<10} {first:<18} {s.get('interrupted', 0):<5} "
                     f"{str(gap) + ' ms':<13} {s['new_ok']}/{s['new_conns']}")
    return "\n".join(lines)
