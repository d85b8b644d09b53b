"""Helpers for tests that use the lab (imported by tests/lab/conftest.py).

- ``require_lab()``: skip when not root or when network namespaces cannot be used; with
  ``TANDEM_REQUIRE_LAB=1`` in the environment, fail instead of skipping.
- ``lab_session(prefix, **up_kwargs)``: context manager, lab up on entry, always down on exit.
- ``run_in(ns, *args, timeout=...)``: run ``python -m lab.client *args`` in ns, return its JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent

_unavailable: list[str | None] = []


def lab_unavailable_reason() -> str | None:
    """None if the lab can run here, else why not (cached)."""
    if _unavailable:
        return _unavailable[0]
    reason = _probe()
    _unavailable.append(reason)
    return reason


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    try:
        cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns list' failed: {exc!r}"
    if cp.returncode != 0:
        return f"'ip netns list' failed: {cp.stderr.strip()}"
    try:
        from pyroute2 import netns
    except ImportError as exc:
        return f"pyroute2 missing: {exc}"
    name = f"tlabprobe{os.getpid()}"
    try:
        netns.create(name)
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        return f"cannot create a network namespace: {exc!r}"
    finally:
        with contextlib.suppress(Exception):
            if name in netns.listnetns():
                netns.remove(name)
    return None


def require_lab() -> None:
    import pytest

    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("TANDEM_REQUIRE_LAB") == "1":
        pytest.fail(f"TANDEM_REQUIRE_LAB=1 but the lab cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def lab_session(prefix: str, **up_kwargs: Any) -> Iterator[dict[str, Any]]:
    from . import topology

    try:
        yield topology.up(prefix, **up_kwargs)
    finally:
        result = topology.down(prefix)
        if result.get("errors"):
            print(f"lab down {prefix}: {result['errors']}", file=sys.stderr)


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


def run_in(ns: str, *args: Any, timeout: float = 60.0, check: bool = True) -> dict[str, Any]:
    """Run ``python -m lab.client *args`` inside namespace ns and return the JSON it prints.
    The subprocess is killed after ``timeout`` seconds."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "lab.client", *map(str, args)]
    cp = subprocess.run(
        argv, cwd=str(REPO_ROOT), env=client_env(), capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(
            f"{' '.join(argv)} printed no JSON (rc {cp.returncode})\n"
            f"stdout: {cp.stdout[-2000:]}\nstderr: {cp.stderr[-2000:]}"
        ) from None
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {cp.returncode}: {result}\n{cp.stderr[-2000:]}")
    return result
