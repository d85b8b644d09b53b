"""Fixtures for lab tests (root + network namespaces).

- ``require_lab()`` skips a test when the lab cannot run here (not root, no ``ip netns``); with
  ``TANDEM_REQUIRE_LAB=1`` it fails instead.
- ``lab_env``: session-scoped lab without the node (prefix ``tlab``), always brought down.
- ``lab_node_env``: session-scoped lab with the node on director a (prefix ``tlabn``).
- ``run_in(ns, *args, timeout=...)``: ``python -m lab.client *args`` in ns, parsed JSON
  (also available as the fixture ``lab_run``).

Mark lab tests with ``@pytest.mark.lab`` (or ``pytestmark = pytest.mark.lab``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # the repository may not be installed in the venv
    sys.path.insert(0, str(_REPO))

from lab.testing import lab_session, lab_unavailable_reason, require_lab, run_in  # noqa: E402,F401

__all__ = ["require_lab", "run_in", "lab_session", "lab_unavailable_reason", "LAB_PREFIX"]

LAB_PREFIX = os.environ.get("TANDEM_LAB_PREFIX", "tlab")


@pytest.fixture(scope="session")
def lab_env():
    """The lab without the node (director a holds the VIP and laddrs, nothing serves them)."""
    require_lab()
    with lab_session(LAB_PREFIX, node=False) as info:
        yield info


@pytest.fixture(scope="session")
def lab_node_env():
    """The lab with the node running on director a."""
    require_lab()
    with lab_session(LAB_PREFIX + "n", node=True) as info:
        yield info


@pytest.fixture
def lab_run():
    return run_in
