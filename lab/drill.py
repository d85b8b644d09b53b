"""`tandem drill`: prove that failover keeps connections, by doing it.

N long-lived TCP connections (and M UDP flows) through the VIP, each sending a
numbered message every 20 ms and checking its echo; then the fault; then the
count of what survived and how long the silence was.  Two times are reported,
because they differ (docs/failover-pitfalls.md, 1): `vrrp_takeover_ms`, when the new
master held the addresses, and `takeover_ms`, when the first connection got an
echo again (what a client sees; TCP's retransmission timer sets most of it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import topology
from lab.testing import client_env

REPO = Path(__file__).resolve().parents[1]


class LabPair:
    """The lab's pair: faults through `tandem lab fault`, traffic from the client namespace."""
    faults = topology.FAULTS

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.vip, self.port = topology.VIP, topology.SERVICE_PORT
        self.names = topology.DIRECTOR_NAMES

    def client_argv(self) -> list[str]:
        return ["ip", "netns", "exec", topology.ns_name(self.prefix, "client"),
                sys.executable, "-m", "lab.client"]

    def status(self, name: str) -> dict:
        return topology.node_status(self.prefix, name, timeout=0.5)

    def fault(self, name: str, kind: str) -> dict:
        return topology.fault(self.prefix, name, kind)


class DeployedPair:
    """A real deployment: the nodes' APIs, the VIP; the fault is `resign` through
    the master's API, or a command of the operator's (`{node}` is replaced by the
    faulted node's name)."""
    faults = ("resign", "command")

    def __init__(self, vip: str, port: int, apis: dict[str, str], token: str = "",
                 command: str = "") -> None:
        self.vip, self.port, self.apis, self.token, self.command = vip, port, apis, token, command
        self.names = tuple(apis)

    def client_argv(self) -> list[str]:
        return [sys.executable, "-m", "lab.client"]

    def status(self, name: str) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"{self.apis[name]}/status", timeout=1.0) as r:
            return json.loads(r.read())

    def fault(self, name: str, kind: str) -> dict:
        import shlex
        import urllib.request
        if kind == "resign":
            req = urllib.request.Request(f"{self.apis[name]}/resign", method="POST", data=b"",
                                         headers={"Authorization": f"Bearer {self.token}"})
            at = time.time()
            with urllib.request.urlopen(req, timeout=5.0) as r:
                r.read()
            return {"at": at}
        if not self.command:
            raise ValueError("--fault command needs --fault-command")
        argv = [a.replace("{node}", name) for a in shlex.split(self.command)]
        at = time.time()
        subprocess.run(argv, check=True, timeout=60)
        return {"at": at}


def _roles(pair) -> dict[str, dict]:
    out = {}
    for name in pair.names:
        try:
            out[name] = pair.status(name)
        except Exception:  # noqa: BLE001 - a killed or link-less node does not answer
            out[name] = {}
    return out


def _client(pair, *args: Any) -> subprocess.Popen:
    argv = [*pair.client_argv(), *map(str, args)]
    if isinstance(pair, DeployedPair):
        argv.append("--operator-target")
    return subprocess.Popen(argv, cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"traffic tool printed nothing (rc {proc.returncode}): {err[-1500:]}")
    return json.loads(lines[-1])


def _overlap_ms(changes: dict[str, list[dict]], since: float) -> float:
    """Longest time both nodes held the addresses at once, from their own logs."""
    spans = {}
    for name, ch in changes.items():
        held, start = [], None
        for c in sorted(ch, key=lambda c: c["at"]):
            if c["to"] == "master" and start is None:
                start = c["at"]
            elif c["to"] != "master" and start is not None:
                held.append((start, c["at"]))
                start = None
        if start is not None:
            held.append((start, float("inf")))
        spans[name] = [(s, e) for s, e in held if e >= since]
    worst = 0.0
    names = sorted(spans)
    for i, n1 in enumerate(names):
        for n2 in names[i + 1:]:
            for s1, e1 in spans[n1]:
                for s2, e2 in spans[n2]:
                    worst = max(worst, min(e1, e2) - max(s1, s2))
    return round(worst * 1000, 1)


def run(prefix: str = "tandem", fault: str = "kill", conns: int = 200, udp_flows: int = 0,
        duration: float = 6.0, lead: float = 1.5, target: str | None = None,
        progress: bool = False, interval: float = 0.02, pair=None) -> dict[str, Any]:
    """One drill against a running pair (the lab's, unless `pair` is given); returns the report."""
    pair = pair or LabPair(prefix)
    if fault not in pair.faults:
        raise ValueError(f"fault must be one of {', '.join(pair.faults)} here, not {fault!r}")
    before = _roles(pair)
    old_master = next((n for n, s in before.items() if s.get("role") == "master"), None)
    if target is None:
        target = old_master if fault != "restore" else next(
            (n for n, s in before.items() if s.get("role") != "master"), pair.names[0])
    if target is None:
        raise RuntimeError("no master in the lab to fault (is the pair up?)")
    tmp = Path(tempfile.mkdtemp(prefix="tandem-drill-"))
    ready, fault_file = tmp / "ready.json", tmp / "fault.json"
    hold = _client(pair, "hold", "--host", pair.vip, "--port", pair.port,
                   "--conns", conns, "--seconds", duration, "--interval", interval,
                   "--ready-file", ready, "--fault-file", fault_file, "--timeout", 2.0)
    udp = None
    if udp_flows:
        udp = _client(pair, "udp-hold", "--host", pair.vip, "--port", pair.port,
                      "--flows", udp_flows, "--seconds", duration, "--interval", interval)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if hold.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("connections never opened: " + json.dumps(_result(hold, 5)))
            time.sleep(0.01)
        time.sleep(lead)
        # `at` is taken by the lab the moment before the links drop (or the signal
        # goes); the traffic tool learns it after, and looks back at its echoes
        done = pair.fault(target, fault)
        fault_file.write_text(json.dumps({"at": done["at"]}))
        end = time.monotonic() + duration + 10
        while hold.poll() is None and time.monotonic() < end:
            if progress:
                r = _roles(pair)
                print(f"\rdrill {fault} {target}: t+{time.time() - done['at']:4.1f} s  "
                      + "  ".join(f"{n}={r[n].get('role', '-'):<7}" for n in pair.names),
                      end="", file=sys.stderr, flush=True)
            time.sleep(0.25)
        if progress:
            print(file=sys.stderr)
        res = _result(hold, 15)
        ures = _result(udp, 15) if udp else None
    finally:
        for p in (hold, udp):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    after = _roles(pair)
    new_master = next((n for n, s in after.items() if s.get("role") == "master"), None)
    # each node's own log, from after the drill if it still answers, else from before
    changes = {n: list((after.get(n) or before.get(n) or {}).get("role_changes", []))
               for n in pair.names}
    if fault in ("kill", "link", "stop", "command") and not after.get(target):
        # the faulted node cannot tell us when it let go: without links (kill, link)
        # it cannot forward from the fault on, and a stopped node lets go at once
        changes.setdefault(target, []).append({"at": done["at"], "to": "gone"})
    vrrp_ms = None
    if new_master:
        took = [c["at"] for c in changes.get(new_master, []) if c["to"] == "master" and c["at"] >= done["at"] - 0.001]
        vrrp_ms = round((min(took) - done["at"]) * 1000, 1) if took else None
    f = res.get("fault") or {}
    return {
        "fault": fault,
        "target": target,
        "conns": conns,
        "survived": res.get("ok", 0),
        "reset": res.get("reset", 0),
        "stalled": res.get("stalled", 0),
        "takeover_ms": f.get("takeover_ms"),
        "gap_ms": f.get("gap_ms") or {"p50": None, "p99": None, "max": None},
        "udp_flows": udp_flows,
        "udp_lost": ures["lost"] if ures else 0,
        "old_master": old_master,
        "new_master": new_master,
        "vrrp_takeover_ms": vrrp_ms,
        "dual_master_ms": _overlap_ms(changes, done["at"] - 1.0),
        "max_gap_ms": res.get("max_gap_ms"),
        "fault_at": done["at"],
        "echo_bins_10ms": res.get("echo_bins_10ms", []),
        "hold_started_at": res.get("hold_started_at"),
    }


def table(r: dict[str, Any]) -> str:
    g = r["gap_ms"]
    rows = [
        ("fault", f"{r['fault']} {r['target']}"),
        ("master", f"{r['old_master']} -> {r['new_master']}"),
        ("connections", f"{r['survived']}/{r['conns']} survived, {r['reset']} reset, {r['stalled']} stalled"),
        ("new master holds addresses", f"{r['vrrp_takeover_ms']} ms after the fault"),
        ("first echo after the fault", f"{r['takeover_ms']} ms"),
        ("gap per connection", f"p50 {g['p50']} ms, p99 {g['p99']} ms, max {g['max']} ms"),
        ("two masters at once", f"{r['dual_master_ms']} ms"),
    ]
    if r["udp_flows"]:
        rows.append(("udp", f"{r['udp_flows']} flows, {r['udp_lost']} datagrams lost"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def plot(r: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bins = r["echo_bins_10ms"]
    t = [k / 100 for k in range(len(bins))]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(t, bins, lw=0.8)
    if r.get("hold_started_at"):
        ax.axvline(r["fault_at"] - r["hold_started_at"], color="red", ls="--",
                   label=f"{r['fault']} {r['target']}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("echoes per 10 ms")
    ax.set_title(f"tandem drill: {r['survived']}/{r['conns']} survived, "
                 f"first echo {r['takeover_ms']} ms after the fault")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    pair = None
    if args.vip:
        apis = {}
        for i, a in enumerate(args.api or []):
            name, sep, url = a.partition("=")
            apis[name if sep else f"node{i + 1}"] = url if sep else a
        if len(apis) != 2:
            print("tandem drill: a deployment needs --api for both nodes", file=sys.stderr)
            return 2
        pair = DeployedPair(args.vip, args.port, apis, args.token, args.fault_command)
        if args.fault == "kill" and not args.fault_command:
            args.fault = "resign"
    try:
        r = run(args.prefix, args.fault, args.conns, args.udp_flows, args.duration, args.lead,
                args.target, progress=not args.json, interval=args.interval, pair=pair)
    except ValueError as exc:
        print(f"tandem drill: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot(r, args.plot)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "echo_bins_10ms"}))
    else:
        print(table(r))
    ok = r["survived"] == r["conns"] and not r["reset"] and not r["stalled"]
    return 0 if ok else 1


def add_parser(sub) -> None:
    d = sub.add_parser("drill", help="failover drill against the lab: traffic, a fault, what survived")
    d.add_argument("--fault", default="kill",
                   choices=("kill", "link", "stop", "restore", "resign", "command"),
                   help="lab: kill|link|stop|restore; a deployment: resign (through the API) "
                        "or command (--fault-command)")
    d.add_argument("--target", help="director to fault (default: the master; "
                                    "for restore, the one that is not)")
    d.add_argument("--vip", help="drill a deployment: its VIP (traffic goes from this host)")
    d.add_argument("--port", type=int, default=80, help="a deployment's service port")
    d.add_argument("--api", action="append", metavar="NAME=URL",
                   help="a deployment's node API, e.g. a=http://10.0.0.11:9100 (twice)")
    d.add_argument("--token", default="", help="the nodes' api_token (for --fault resign)")
    d.add_argument("--fault-command", default="",
                   help="the operator's fault, run once; {node} is the faulted node's name")
    d.add_argument("--conns", type=int, default=200)
    d.add_argument("--interval", type=float, default=0.02,
                   help="seconds between one connection's messages (default %(default)s)")
    d.add_argument("--udp-flows", type=int, default=0)
    d.add_argument("--duration", type=float, default=6.0, help="seconds of traffic")
    d.add_argument("--lead", type=float, default=1.5, help="seconds of traffic before the fault")
    d.add_argument("--prefix", default="tandem")
    d.add_argument("--json", action="store_true")
    d.add_argument("--plot", metavar="FILE.png")
    d.set_defaults(func=main)
