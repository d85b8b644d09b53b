"""The drills' traffic processes and their read-outs, shared by the one-fault drill
(lab/drill.py) and the sequence (lab/drill_sequence.py): the traffic tool started in the
drilled pair's or cluster's client namespace, its JSON result, every node's status."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from lab.testing import client_env

REPO = Path(__file__).resolve().parents[1]


def spawn(pair, *args: Any, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m lab.client ARGS` where the pair's client runs (its namespace in the lab)."""
    argv = [*pair.client_argv(), *map(str, args), *extra]
    return subprocess.Popen(argv, cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, timeout: float) -> dict:
    """The traffic tool's JSON result (its last line); killed after `timeout` seconds."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the traffic tool failed (exit {proc.returncode}): {last}")
    return json.loads(lines[-1])


def roles(pair) -> dict[str, dict]:
    """Every node's /status, {} for one that does not answer (killed, link down)."""
    out = {}
    for name in pair.names:
        try:
            out[name] = pair.status(name)
        except Exception:  # noqa: BLE001 - a killed or link-less node does not answer
            out[name] = {}
    return out
