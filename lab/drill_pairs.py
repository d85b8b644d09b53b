"""The pairs a drill runs against: the lab's (faults through lab.faults, traffic from the
client namespace) and a real deployment's (its nodes' APIs, the VIP from this host)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from lab import state as st
from lab import topology


#: the data-plane modes a lab pair can be drilled through (a service's `forwarding`)
FORWARDING = ("engine", "kernel")


def _lab_forwarding(state: dict) -> set[str]:
    """The forwarding modes of the services the lab's nodes were configured with."""
    import tomllib
    modes = set()
    for path in (state.get("configs") or {}).values():
        try:
            with open(path, "rb") as f:
                cfg = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            continue
        modes |= {s.get("forwarding", "engine") for s in cfg.get("services", [])}
    return modes


class LabPair:
    """The lab's pair: faults through `tandem lab fault`, traffic from the client namespace;
    `forwarding = "kernel"` drills the kernel-mode service (KERNEL_VIP, a lab up with
    `--kernel-service`) instead of the engine-mode VIP."""
    faults = topology.FAULTS

    def __init__(self, prefix: str, ipv6: bool = False, forwarding: str = "engine") -> None:
        from lab.plan import KERNEL_VIP
        from lab.plan6 import VIP6
        if forwarding not in FORWARDING:
            raise ValueError(f"forwarding must be one of {', '.join(FORWARDING)}, not {forwarding!r}")
        if ipv6 and forwarding == "kernel":
            raise ValueError("the lab's kernel-mode service is IPv4 only (KERNEL_VIP)")
        self.prefix, self.ipv6, self.forwarding = prefix, ipv6, forwarding
        self.vip = VIP6 if ipv6 else KERNEL_VIP if forwarding == "kernel" else topology.VIP
        self.port = topology.SERVICE_PORT
        self.names = topology.DIRECTOR_NAMES

    def client_argv(self) -> list[str]:
        return ["ip", "netns", "exec", topology.ns_name(self.prefix, "client"),
                sys.executable, "-m", "lab.client"]

    def check(self) -> None:
        """A clear error when there is no pair lab to drill."""
        state = st.load_state(self.prefix)
        if not state or not state.get("ha"):
            raise RuntimeError(f"no pair lab {self.prefix!r} is up (tandem lab up first)")
        if self.ipv6 and not state.get("ipv6"):
            raise RuntimeError(f"lab {self.prefix!r} has no IPv6 (tandem lab up --ipv6 first)")
        if self.forwarding == "kernel" and "kernel" not in _lab_forwarding(state):
            raise RuntimeError(f"lab {self.prefix!r} has no kernel-mode service "
                               "(tandem lab up --kernel-service first)")

    def status(self, name: str) -> dict:
        return topology.node_status(self.prefix, name, timeout=0.5)

    def fault(self, name: str, kind: str, on_at=None) -> dict:
        return topology.fault(self.prefix, name, kind, on_at=on_at)

    def expected_master(self, fault: str, target: str) -> str | None:
        """Who must be master before the drill ends: the preferred director, once restored,
        preempts (the lab runs with preempt on)."""
        return target if fault == "restore" and target == topology.PREFERRED else None


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

    def check(self) -> None:
        pass

    def expected_master(self, fault: str, target: str) -> str | None:
        return None

    def status(self, name: str) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"{self.apis[name]}/status", timeout=1.0) as r:
            return json.loads(r.read())

    def fault(self, name: str, kind: str, on_at=None) -> dict:
        import shlex
        import urllib.request
        if kind == "resign":
            req = urllib.request.Request(f"{self.apis[name]}/resign", method="POST", data=b"",
                                         headers={"Authorization": f"Bearer {self.token}"})
            at = time.time()
            if on_at:
                on_at(at)
            with urllib.request.urlopen(req, timeout=5.0) as r:
                r.read()
            return {"at": at}
        if not self.command:
            raise ValueError("--fault command needs --fault-command")
        argv = [a.replace("{node}", name) for a in shlex.split(self.command)]
        at = time.time()
        if on_at:
            on_at(at)
        subprocess.run(argv, check=True, timeout=60)
        return {"at": at}


class LabCluster:
    """The lab's cluster (`tandem lab up --cluster N`): any director faulted through
    lab.cluster (kill, crash, link, stop, drain, partition, restore), traffic from its client
    namespace.  A cluster has no master: the drill has settled once every director that
    answers has left its start-up and all of them agree who serves every laddr."""

    def __init__(self, prefix: str, forwarding: str = "engine") -> None:
        from lab import cluster
        if forwarding not in FORWARDING:
            raise ValueError(f"forwarding must be one of {', '.join(FORWARDING)}, not {forwarding!r}")
        self.prefix, self.forwarding = prefix, forwarding
        self.faults = cluster.FAULTS
        state = st.load_state(prefix) or {}
        desc = state.get("cluster") or {}
        self.has_kernel = bool(desc.get("kernel_vip"))
        self.vip = desc.get("kernel_vip" if forwarding == "kernel" else "vip") or ""
        self.port = cluster.SERVICE_PORT
        self.names = tuple(d["name"] for d in desc.get("directors", []))

    def client_argv(self) -> list[str]:
        from lab import cluster_plan
        return ["ip", "netns", "exec", cluster_plan.plan(self.prefix, 1)["client"]["ns"],
                sys.executable, "-m", "lab.client"]

    def check(self) -> None:
        if not self.names:
            raise RuntimeError(f"no cluster lab {self.prefix!r} is up (tandem lab up --cluster N)")
        if self.forwarding == "kernel" and not self.has_kernel:
            raise RuntimeError(f"cluster lab {self.prefix!r} has no kernel-mode service (it was "
                               "brought up with --engine-only)")

    def status(self, name: str) -> dict:
        from lab import cluster
        return cluster.status(self.prefix, name, timeout=0.5)

    def fault(self, name: str, kind: str, on_at=None) -> dict:
        from lab import cluster
        done = cluster.fault(self.prefix, name, kind)
        if on_at:
            on_at(done["at"])
        return done

    def expected_master(self, fault: str, target: str) -> str | None:
        return None

    def default_target(self, fault: str) -> str:
        return self.names[1] if len(self.names) > 1 else self.names[0]

    def settled(self, roles: dict[str, dict]) -> bool:
        views = [s["cluster"] for s in roles.values() if s.get("cluster")]
        if not views or any(v["state"] in ("starting", "joining") for v in views):
            return False
        served = [{m: x.get("served_by") for m, x in v["members"].items()} for v in views]
        return all(s == served[0] for s in served)
