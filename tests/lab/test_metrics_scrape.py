"""/metrics scraped from the lab's running pair: the election's counters are there, under
keepalived-exporter's names, with the interface label filled, and they move."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from lab import topology as T
from lab.nsutil import LAB_API_TOKEN, http_get, in_netns
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab
PREFIX = "tms"


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with lab_session(PREFIX, node=True, ha=True) as info:
        T.wait_role(PREFIX, "a", "master")
        T.wait_role(PREFIX, "b", "backup")
        yield info


def scrape(name: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from director `name`'s /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    d = next(x for x in T.DIRECTORS if x["name"] == name)
    code, body = http_get(T.ns_name(PREFIX, name), d["front_addr"], T.API_PORT, "/metrics", timeout=3.0)
    assert code == 200
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(body.decode()) for smp in fam.samples}


def vrrp(samples: dict[tuple, float], metric: str) -> tuple[dict[str, str], float]:
    """The one series of a VRRP metric: (its labels, its value)."""
    found = [(dict(labels), v) for (name, labels), v in samples.items() if name == metric]
    assert len(found) == 1, (metric, found)
    return found[0]


def rises(name: str, metric: str, limit: float = 10.0) -> tuple[float, float]:
    """Scrape until `metric` has grown (bounded); returns (first, last)."""
    first = vrrp(scrape(name), metric)[1]
    end = time.monotonic() + limit
    while True:
        time.sleep(0.3)
        last = vrrp(scrape(name), metric)[1]
        if last > first or time.monotonic() >= end:
            return first, last


def test_the_master_sends_the_backup_receives_and_both_name_the_interface(pair):
    """keepalived-exporter exports advert_sent/advert_rcvd per instance with labels
    {iname, intf, vrid}; the master's sent count and the backup's received count grow
    with every advert (one per advert_interval)."""
    a, b = scrape("a"), scrape("b")
    for samples, state in ((a, 2.0), (b, 1.0)):
        labels, value = vrrp(samples, "tandem_vrrp_state")
        assert value == state
        assert labels["intf"] == "front" and labels["vrid"] == str(T.VRID)
        assert labels["ip_address"] == T.VIP and labels["iname"]
        labels, _ = vrrp(samples, "tandem_vrrp_advertisements_received_total")
        assert labels == {"iname": labels["iname"], "intf": "front", "vrid": str(T.VRID)}
    sent = rises("a", "tandem_vrrp_advertisements_sent_total")
    assert sent[1] > sent[0] > 0, sent
    received = rises("b", "tandem_vrrp_advertisements_received_total")
    assert received[1] > received[0] > 0, received
    assert vrrp(scrape("a"), "tandem_vrrp_become_master_total")[1] >= 1


def test_conns_hide_client_addresses_without_the_token(pair):
    """What an unauthenticated caller of GET /conns sees (docs/operations.md)."""
    run_in(T.ns_name(PREFIX, "client"), "tcp-whoami", "--host", T.VIP, "--port", 80, "--count", 5)
    d = next(x for x in T.DIRECTORS if x["name"] == "a")

    def get(token: str | None) -> dict:
        req = urllib.request.Request(f"http://{d['front_addr']}:{T.API_PORT}/conns")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    hidden = in_netns(T.ns_name(PREFIX, "a"), get, None, timeout=15)
    shown = in_netns(T.ns_name(PREFIX, "a"), get, LAB_API_TOKEN, timeout=15)
    assert hidden["clients"] == "hidden" and shown["clients"] == "shown"
    assert hidden["total"] >= 5 and shown["total"] >= 5
    assert {c["client"] for c in hidden["conns"]} == {None}
    assert any(c["client"].startswith(T.CLIENT_ADDR + ":") for c in shown["conns"])
