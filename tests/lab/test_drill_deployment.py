"""`tandem drill` against a deployment: the VIP and the nodes' APIs, fault = resign."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import topology as T
from lab.testing import client_env, lab_session, require_lab

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
TOKEN = "drill-operator-token"


def test_drill_through_the_api_resign_keeps_every_connection():
    require_lab()
    with lab_session("tdd", node=True, ha=True, config_extra={"node": {"api_token": TOKEN}}):
        # the router namespace plays the operator's host: it reaches the VIP and both APIs
        argv = ["ip", "netns", "exec", T.ns_name("tdd", "router"), sys.executable, "-m", "tandem.cli",
                "drill", "--vip", T.VIP, "--port", "80",
                "--api", "a=http://198.18.0.11:9100", "--api", "b=http://198.18.0.12:9100",
                "--token", TOKEN, "--fault", "resign", "--conns", "100", "--duration", "3",
                "--lead", "1", "--json"]
        r = subprocess.run(argv, cwd=str(REPO), env=client_env(), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        rep = json.loads(r.stdout.splitlines()[-1])
        assert (rep["fault"], rep["old_master"], rep["new_master"]) == ("resign", "a", "b"), rep
        assert (rep["survived"], rep["reset"], rep["stalled"]) == (100, 0, 0), rep
        assert rep["dual_master_ms"] == 0.0, rep
