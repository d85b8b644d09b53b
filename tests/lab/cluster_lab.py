"""The cluster lab as a test module's fixture (lab.cluster.up, then down whatever happened)."""
from __future__ import annotations

import shutil
from typing import Any, Iterator

import pytest

from lab import cluster, topology
from lab.testing import require_lab


def cluster_lab(prefix: str, directors: int = 3, kernel: bool = True,
                ipv6: bool = False) -> Iterator[dict[str, Any]]:
    """A test module's cluster lab (lab.cluster.up), taken down after it; a lab down that
    reports errors fails the module (it left something behind).  BIRD 2 is required.
    `kernel`: with the kernel-mode service (KERNEL_VIP) beside the engine-mode VIP; `ipv6`:
    dual-stack, with the IPv6 VIP."""
    require_lab()
    if shutil.which("bird") is None:
        pytest.fail("bird2 is not installed: run make setup")
    try:
        yield cluster.up(prefix, directors, kernel=kernel, ipv6=ipv6)
    finally:
        result = topology.down(prefix)
        assert not result["errors"], result
