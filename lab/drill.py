"""`tandem drill`: prove that failover keeps connections, by doing it.

N long-lived TCP connections (and M UDP flows) through the VIP, each sending a
numbered message every 20 ms and checking its echo; then the fault; then the
count of what survived and how long the silence was.  Two times are reported,
because they differ (docs/failover-pitfalls.md, 1): `vrrp_takeover_ms`, when the new
master held the addresses, and `takeover_ms`, when the first connection got an
echo again (what a client sees; TCP's retransmission timer sets most of it).
Traffic goes on until the roles have settled (a restored preferred director has
preempted), so a failback's interruption is measured too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import cluster, topology
from lab.drill_client import REPO, result as _result, roles as _roles, spawn
from lab.drill_pairs import FORWARDING, DeployedPair, LabCluster, LabPair
from lab.drill_report import overlap_ms, plot, table, udp_outage
from lab.traffic.common import MAX_CONNS, MAX_SECONDS

__all__ = ["run", "table", "plot", "main", "add_parser", "LabPair", "LabCluster", "DeployedPair"]

#: the longest a drill waits after its traffic time for the roles to settle
SETTLE_WAIT = 30.0
#: held connections of a one-fault drill unless --conns says
DRILL_CONNS = 200
#: seconds between one held connection's messages in a one-fault drill unless --interval says
DRILL_INTERVAL = 0.02


def _client(pair, *args: Any) -> subprocess.Popen:
    return spawn(pair, *args, extra=("--operator-target",) if isinstance(pair, DeployedPair) else ())


class _Progress:
    """Progress on stderr: one line rewritten in place on a terminal; elsewhere (a log, a
    pipe) a plain line per step and per change of roles, never a carriage return."""

    def __init__(self, on: bool, what: str) -> None:
        self.on, self.what, self.tty, self.last = on, what, sys.stderr.isatty(), ""

    def step(self, text: str) -> None:
        if self.on and not self.tty:
            print(f"drill {self.what}: {text}", file=sys.stderr, flush=True)

    def roles(self, since: float, roles: dict[str, dict], names) -> None:
        if not self.on:
            return
        now = "  ".join(f"{n}={roles[n].get('role', '-')}" for n in names)
        if self.tty:
            print(f"\rdrill {self.what}: t+{time.time() - since:4.1f} s  {now:<30}", end="",
                  file=sys.stderr, flush=True)
        elif now != self.last:
            self.step(f"t+{time.time() - since:.1f} s  {now}")
        self.last = now

    def end(self) -> None:
        if self.on and self.tty:
            print(file=sys.stderr)


def _check_numbers(conns: int, udp_flows: int, duration: float, lead: float,
                   interval: float) -> None:
    for ok, what in ((1 <= conns <= MAX_CONNS, f"--conns must be 1..{MAX_CONNS}, not {conns}"),
                     (0 <= udp_flows <= MAX_CONNS, f"--udp-flows must be 0..{MAX_CONNS}, not {udp_flows}"),
                     (0 < duration <= MAX_SECONDS / 2, f"--duration must be a positive number of seconds, not {duration}"),
                     (0 <= lead < duration, f"--lead must be at least 0 and less than --duration, not {lead}"),
                     (0 < interval <= 60, f"--interval must be in (0, 60] seconds, not {interval}")):
        if not ok:
            raise ValueError(what)


def run(prefix: str = "tandem", fault: str = "kill", conns: int = 200, udp_flows: int = 0,
        duration: float = 6.0, lead: float = 1.5, target: str | None = None,
        progress: bool = False, interval: float = 0.02, pair=None) -> dict[str, Any]:
    """One drill against a running pair (the lab's, unless `pair` is given); returns the report.
    Traffic runs `lead` seconds before the fault and at least `duration - lead` after the
    fault is done, and on until the roles have settled (bounded by SETTLE_WAIT)."""
    pair = pair or LabPair(prefix)
    if fault not in pair.faults:
        raise ValueError(f"fault must be one of {', '.join(pair.faults)} here, not {fault!r}")
    if target is not None and target not in pair.names:
        raise ValueError(f"target must be one of {', '.join(pair.names)}, not {target!r}")
    _check_numbers(conns, udp_flows, duration, lead, interval)
    pair.check()
    before = _roles(pair)
    old_master = next((n for n, s in before.items() if s.get("role") == "master"), None)
    if target is None and hasattr(pair, "default_target"):      # a cluster has no master
        target = pair.default_target(fault)
    if target is None:
        target = old_master if fault != "restore" else next(
            (n for n, s in before.items() if s.get("role") != "master"), pair.names[0])
    if target is None:
        raise RuntimeError("no master to fault (is the pair up?)")
    show = _Progress(progress, f"{fault} {target}")
    scratch = tempfile.TemporaryDirectory(prefix="tandem-drill-")   # removed in `finally`
    tmp = Path(scratch.name)
    ready, fault_file, stop = tmp / "ready.json", tmp / "fault.json", tmp / "stop"
    cap = min(MAX_SECONDS, duration + SETTLE_WAIT + 60)
    hold = udp = None
    try:
        hold = _client(pair, "hold", "--host", pair.vip, "--port", pair.port,
                       "--conns", conns, "--seconds", cap, "--interval", interval,
                       "--ready-file", ready, "--fault-file", fault_file, "--stop-file", stop,
                       "--timeout", 2.0)
        if udp_flows:
            udp = _client(pair, "udp-hold", "--host", pair.vip, "--port", pair.port,
                          "--flows", udp_flows, "--seconds", cap, "--interval", interval,
                          "--stop-file", stop)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if hold.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("connections never opened: " + json.dumps(_result(hold, 5)))
            time.sleep(0.01)
        t_ready = time.monotonic()
        show.step(f"{conns} connections open" + (f", {udp_flows} UDP flows" if udp_flows else ""))
        time.sleep(lead)

        def announce(at: float) -> None:
            # the lab takes `at` the moment before the links drop (or the signal goes);
            # the traffic tool learns it now and looks back at its echoes
            fault_file.write_text(json.dumps({"at": at}))

        done = pair.fault(target, fault, on_at=announce)
        if not fault_file.exists():
            announce(done["at"])
        t_done = time.monotonic()
        show.step("fault done")
        expect = pair.expected_master(fault, target)
        give_up = t_done + max(duration - lead, 0.5) + SETTLE_WAIT
        while hold.poll() is None:
            r = _roles(pair)
            show.roles(done["at"], r, pair.names)
            now = time.monotonic()
            masters = [n for n in pair.names if r[n].get("role") == "master"]
            settled = (pair.settled(r) if hasattr(pair, "settled")
                       else len(masters) == 1 and expect in (None, masters[0]))
            if (now >= t_ready + duration and now >= t_done + max(duration - lead, 0.5)
                    and settled) or now >= give_up:
                break
            time.sleep(0.25)
        stop.touch()
        show.end()
        show.step("traffic stopped, waiting for the last echoes")
        res = _result(hold, 15)
        ures = _result(udp, 15) if udp else None
    finally:
        for p in (hold, udp):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        scratch.cleanup()
    after = _roles(pair)
    new_master = next((n for n, s in after.items() if s.get("role") == "master"), None)
    # each node's own log, from after the drill if it still answers, else from before
    changes = {n: list((after.get(n) or before.get(n) or {}).get("role_changes", []))
               for n in pair.names}
    if fault in ("kill", "link", "stop", "command") and not after.get(target):
        # the faulted node cannot tell us when it let go: without links (kill, link)
        # it cannot forward from the fault on, and a stopped node lets go at once
        changes.setdefault(target, []).append({"at": done["at"], "to": "gone"})
    took_at = None
    if new_master:
        took = [c["at"] for c in changes.get(new_master, [])
                if c["to"] == "master" and c["at"] >= done["at"] - 0.001]
        took_at = min(took) if took else None
    f = res.get("fault") or {}
    report = {
        "fault": fault,
        "target": target,
        "vip": pair.vip,
        "forwarding": getattr(pair, "forwarding", None),   # None: a deployment's, not known here
        "conns": conns,
        "survived": res.get("ok", 0),
        "reset": res.get("reset", 0),
        "stalled": res.get("stalled", 0),
        "takeover_ms": f.get("takeover_ms"),
        "interrupted": f.get("interrupted", 0),
        "gap_ms": f.get("gap_ms") or {"p50": None, "p99": None, "max": None},
        "udp_flows": udp_flows,
        "udp_lost": ures["lost"] if ures else 0,
        "old_master": old_master,
        "new_master": new_master,
        "vrrp_takeover_ms": round((took_at - done["at"]) * 1000, 1) if took_at else None,
        # a cluster has no master (every member active): nothing to overlap
        "dual_master_ms": None if hasattr(pair, "settled") else overlap_ms(changes, done["at"] - 1.0),
        "max_gap_ms": res.get("max_gap_ms"),
        "worst": res.get("worst", []),
        "fault_at": done["at"],
        "echo_bins_10ms": res.get("echo_bins_10ms", []),
        "hold_started_at": res.get("hold_started_at"),
        # how long opening the connections took (before hold_started_at): with the fault's
        # offset from hold_started_at it bounds the connections' age at the fault
        "connect_seconds": res.get("connect_seconds"),
        "lost_ports": res.get("lost_ports", {}),
    }
    if ures:
        report.update(udp_outage(ures, done["at"], took_at, interval))
    return report


def passed(r: dict[str, Any]) -> bool:
    """Every connection survived, and no UDP datagram was lost outside the outage window."""
    return (r["survived"] == r["conns"] and not r["reset"] and not r["stalled"]
            and not r.get("udp_lost_outside"))


#: what a drill reports as its exit code: a bad argument (2) or a lab that failed it (1)
_REFUSED = (ValueError, RuntimeError, OSError, subprocess.SubprocessError)


def _refused(exc: Exception) -> int:
    print(f"tandem drill: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ValueError) else 1


def _sequence(args) -> int:
    """`--sequence`: the steps in one run against the cluster lab (lab/drill_sequence.py)."""
    from lab import drill_sequence as seq
    for given, flag in ((args.vip, "--vip"), (args.fault, "--fault"), (args.target, "--target"),
                        (args.udp_flows, "--udp-flows"), (args.plot, "--plot"),
                        (args.ipv6, "--ipv6")):
        if given:
            print(f"tandem drill: --sequence names its own faults and targets; {flag} does not "
                  "apply", file=sys.stderr)
            return 2
    try:
        steps = seq.parse_steps(args.sequence)
        if not cluster.is_cluster(args.prefix):
            raise RuntimeError(f"--sequence needs a cluster lab: none {args.prefix!r} is up "
                               "(tandem lab up --cluster 3)")
        conns = args.conns or seq.SEQUENCE_CONNS
        interval = args.interval or seq.SEQUENCE_INTERVAL
        _check_numbers(conns, 0, args.duration, args.lead, interval)
        say = (lambda text: None) if args.json else (
            lambda text: print(f"drill: {text}", file=sys.stderr, flush=True))
        r = seq.run(args.prefix, steps, conns, interval, args.duration, args.lead, say=say,
                    forwarding=args.forwarding)
    except _REFUSED as exc:
        return _refused(exc)
    print(json.dumps(r) if args.json else seq.table(r))
    return 0 if seq.passed(r) else 1


def main(args) -> int:
    if args.sequence:
        return _sequence(args)
    args.conns = args.conns or DRILL_CONNS
    args.interval = args.interval or DRILL_INTERVAL
    pair = None
    if args.vip and args.forwarding != "engine":
        print("tandem drill: --forwarding picks the lab's service; a deployment is drilled "
              "through --vip, whatever its service's mode", file=sys.stderr)
        return 2
    if args.vip:
        apis = {}
        for i, a in enumerate(args.api or []):
            name, sep, url = a.partition("=")
            apis[name if sep else f"node{i + 1}"] = url if sep else a
        if len(apis) != 2:
            print("tandem drill: a deployment needs --api for both nodes", file=sys.stderr)
            return 2
        if args.fault in topology.FAULTS:
            # the lab's faults reach into its namespaces (links, signals); a deployment's
            # nodes are on other hosts
            print(f"tandem drill: --fault {args.fault} needs the lab; against a deployment use "
                  "--fault resign (through the API, with --token) or --fault command "
                  "(--fault-command)", file=sys.stderr)
            return 2
        args.fault = args.fault or ("command" if args.fault_command else "resign")
        for missing, what in ((args.fault == "resign" and not args.token,
                               "--fault resign needs --token (the nodes' api_token)"),
                              (args.fault == "command" and not args.fault_command,
                               "--fault command needs --fault-command")):
            if missing:
                print(f"tandem drill: {what}", file=sys.stderr)
                return 2
        pair = DeployedPair(args.vip, args.port, apis, args.token, args.fault_command)
    args.fault = args.fault or "kill"
    try:
        if pair is None and cluster.is_cluster(args.prefix):
            pair = LabCluster(args.prefix, forwarding=args.forwarding)
        if pair is None and (args.ipv6 or args.forwarding != "engine"):
            pair = LabPair(args.prefix, ipv6=args.ipv6, forwarding=args.forwarding)
        r = run(args.prefix, args.fault, args.conns, args.udp_flows, args.duration, args.lead,
                args.target, progress=not args.json, interval=args.interval, pair=pair)
    except _REFUSED as exc:
        return _refused(exc)
    if args.plot:
        plot(r, args.plot)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "echo_bins_10ms"}))
    else:
        print(table(r))
    return 0 if passed(r) else 1


def _number(kind, low: float, what: str):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return v
    return conv


def add_parser(sub) -> None:
    from lab.drill_sequence import ISSUE_SEQUENCE, SEQUENCE_CONNS, SEQUENCE_INTERVAL
    d = sub.add_parser("drill", help="failover drill against the lab: traffic, a fault, what survived")

    def one_line_error(message: str):
        # argparse's usage block would hide the one line that says what is wrong
        print(f"tandem drill: {message}", file=sys.stderr)
        raise SystemExit(2)

    d.error = one_line_error  # type: ignore[method-assign]
    d.add_argument("--fault", choices=(*topology.FAULTS, "crash", "drain", "partition", "resign",
                                       "command"),
                   help="lab: kill|link|stop|restore (default kill), in a cluster lab also "
                        "crash|drain|partition (any --target, default b); a deployment (--vip): "
                        "resign through the API (the default) or command (the default with "
                        "--fault-command)")
    d.add_argument("--target", help="director to fault (default: the master; "
                                    "for restore, the one that is not)")
    d.add_argument("--vip", help="drill a deployment: its VIP (traffic goes from this host)")
    d.add_argument("--port", type=int, default=80, help="a deployment's service port")
    d.add_argument("--api", action="append", metavar="NAME=URL",
                   help="a deployment's node API, e.g. a=http://10.0.0.11:9100 (twice)")
    d.add_argument("--token", default="", help="the nodes' api_token (for --fault resign)")
    d.add_argument("--fault-command", default="",
                   help="the operator's fault, run once; {node} is the faulted node's name")
    d.add_argument("--conns", type=_number(int, 1, "a whole number of 1 or more"),
                   help=f"held connections (default {DRILL_CONNS}; {SEQUENCE_CONNS} with --sequence)")
    d.add_argument("--interval", type=_number(float, 0.001, "a number of seconds above 0"),
                   help=f"seconds between one connection's messages (default {DRILL_INTERVAL}; "
                        f"{SEQUENCE_INTERVAL} with --sequence)")
    d.add_argument("--sequence", nargs="?", const=ISSUE_SEQUENCE, metavar="KIND:DIR,...",
                   help="cluster lab: several steps in one run, every held connection held "
                        "through all of them, figures per step; KIND is kill, crash, link, "
                        "stop, drain, partition, restore or join (adds the director: lab join); "
                        f"without a value, issue 16's: {ISSUE_SEQUENCE}; --duration is each "
                        "step's least time")
    d.add_argument("--udp-flows", type=_number(int, 0, "a whole number of 0 or more"), default=0)
    d.add_argument("--duration", type=_number(float, 0.1, "a number of seconds above 0"),
                   default=6.0, help="seconds of traffic (at least; on until the roles settle)")
    d.add_argument("--lead", type=_number(float, 0.0, "a number of seconds, 0 or more"),
                   default=1.5, help="seconds of traffic before the fault")
    d.add_argument("--ipv6", action="store_true",
                   help="lab: drill over the IPv6 VIP (a lab up with --ipv6)")
    d.add_argument("--forwarding", choices=FORWARDING, default="engine",
                   help='lab: drill the service of this mode: "kernel" is KERNEL_VIP '
                        "(a lab up with --kernel-service); default %(default)s, the VIP")
    d.add_argument("--prefix", default="tandem")
    d.add_argument("--json", action="store_true")
    d.add_argument("--plot", metavar="FILE.png")
    d.set_defaults(func=main)
