"""Schedulers and persistence with real connections through the lab."""
from __future__ import annotations

import pytest

from lab import topology as T
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab


def service(proto, port, scheduler, weights, **extra):
    return {"proto": proto, "vip": T.VIP, "port": port, "scheduler": scheduler, "laddrs": list(T.LADDRS),
            "real_servers": [{"addr": r["addr"], "port": T.RS_PORT, "weight": w}
                             for r, w in zip(T.REAL_SERVERS, weights)], **extra}


@pytest.fixture(scope="module")
def lab():
    require_lab()
    services = [service("tcp", 80, "wrr", (3, 1, 1)), service("udp", 80, "wrr", (3, 1, 1)),
                service("tcp", 81, "rr", (1, 1, 1), persistent=300)]
    with lab_session("tsch", node=True, config_extra={"services": services}) as info:
        yield info


def test_wrr_3_1_1_splits_5000_connections_60_20_20(lab):
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", 80,
               "--count", 5000, "--concurrency", 50, timeout=300)
    assert r["ok"] == 5000, r
    shares = {rs: n / 5000 for rs, n in r["by_server"].items()}
    for rs, want in (("rs1", 0.6), ("rs2", 0.2), ("rs3", 0.2)):
        assert abs(shares.get(rs, 0) - want) <= 0.03, shares


def test_persistent_service_sends_every_connection_of_a_client_to_one_server(lab):
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", 81,
               "--count", 200, "--concurrency", 10, timeout=120)
    assert r["ok"] == 200, r
    assert len(r["by_server"]) == 1, r["by_server"]
