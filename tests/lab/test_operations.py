"""Operations in the pair lab: health checks, metrics, the changing API, reload, ipvsadm."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lab import state as st
from lab import topology as T
from lab.nsutil import in_netns
from lab.testing import client_env, lab_session, require_lab, run_in

pytestmark = pytest.mark.lab
PREFIX = "top"
TOKEN = "lab-operator-token"
INTERVAL, FALL, RISE = 0.5, 3, 2
REPO = Path(__file__).resolve().parents[2]


def services(reals=("rs1", "rs2", "rs3"), weights=None):
    weights = weights or {}
    rs = [r for r in T.REAL_SERVERS if r["name"] in reals]
    health = {"kind": "tcp", "interval": INTERVAL, "timeout": 0.3, "fall": FALL, "rise": RISE}
    return [{"proto": proto, "vip": T.VIP, "port": 80, "scheduler": "wlc", "laddrs": list(T.LADDRS),
             "real_servers": [{"addr": r["addr"], "port": T.RS_PORT, "weight": weights.get(r["name"], 1)}
                              for r in rs],
             **({"health": health} if proto == "tcp" else {})}
            for proto in ("tcp", "udp")]


@pytest.fixture(scope="module")
def pair():
    require_lab()
    extra = {"node": {"api_token": TOKEN}, "services": services()}
    with lab_session(PREFIX, node=True, ha=True, config_extra=extra) as info:
        yield info


def api(path: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    """A request to director a's API from inside its namespace: (status, parsed body)."""
    def go():
        req = urllib.request.Request(f"http://198.18.0.11:{T.API_PORT}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return in_netns(T.ns_name(PREFIX, "a"), go, timeout=15)


def real(svc_proto: str, addr: str) -> dict:
    _, body = api("/services")
    svc = next(s for s in body["services"] if s["proto"] == svc_proto)
    return next(r for r in svc["real_servers"] if r["addr"] == addr)


def echo_record(name: str) -> dict:
    state = st.load_state(PREFIX)
    return [p for p in state["processes"] if p["name"] == f"echo-{name}"][-1]


def node_log_lines(name: str, text: str) -> list[str]:
    state = st.load_state(PREFIX)
    rec = [p for p in state["processes"] if p["name"] == f"node-{name}"][-1]
    return [ln for ln in Path(rec["log"]).read_text().splitlines() if text in ln]


ISO_UTC = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def logged_at(line: str) -> float:
    """The epoch seconds of a log line's ISO 8601 UTC stamp."""
    m = ISO_UTC.match(line)
    assert m, line
    return datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()


def test_a_stopped_real_server_leaves_scheduling_and_returns(pair):
    """Its health check marks it down (weight 0, metrics 0), no new connection goes to it,
    the held connections to the others are untouched, and it comes back when it runs again.
    How long detection took is printed and measured by `make bench` (`health`; fall x
    interval by design), not asserted: the machine is shared and a probe's timeout
    stretches under load.

    Also (issue 17 item 6): /services says why, as keepalived's log line does (`Removing
    service [rs]:tcp:8080 from VS ... (tcp check: Connection refused)`, once per transition):
    the check's kind, verdict, detail, since when (epoch seconds, the log line's moment) and
    rise/fall; and `scheduled` is false while the server is down."""
    rs2 = next(r for r in T.REAL_SERVERS if r["name"] == "rs2")["addr"]
    assert real("tcp", rs2)["health"] == "up"
    first = real("tcp", rs2)["health_check"]
    assert first["state"] == "up" and first["kind"] == "tcp" and first["detail"] == "connected"
    held = subprocess.Popen(["ip", "netns", "exec", T.ns_name(PREFIX, "client"), sys.executable, "-m",
                             "lab.client", "hold", "--host", T.VIP, "--port", "80", "--conns", "60",
                             "--seconds", "8", "--interval", "0.1"],
                            cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    stopped_at = time.time()
    st.stop_process(echo_record("rs2"))
    t0 = time.monotonic()
    while real("tcp", rs2)["health"] != "down":
        assert time.monotonic() - t0 < 10, "never marked down"
        time.sleep(0.05)
    took = time.monotonic() - t0
    print(f"\n[health] rs2 out of scheduling {took:.2f} s after it stopped "
          f"(fall {FALL} x interval {INTERVAL} s = {FALL * INTERVAL:.2f} s)")
    r = real("tcp", rs2)
    assert r["weight"] == 0 and r["health"] == "down"
    assert r["scheduled"] is False                      # weight 0: no new connections
    hc = r["health_check"]
    assert hc["kind"] == "tcp" and hc["state"] == "down" and hc["last_ok"] is False
    assert hc["detail"] == "Connection refused", hc
    assert (hc["rise"], hc["fall"]) == (RISE, FALL) and hc["changes"] == first["changes"] + 1
    assert stopped_at <= hc["since"] <= hc["last_check"] <= time.time()
    (removing,) = node_log_lines("a", f"Removing service [{rs2}]:tcp:{T.RS_PORT} ")
    assert removing.endswith("(tcp check: Connection refused)"), removing
    assert abs(logged_at(removing) - hc["since"]) < 0.5     # one clock: the log's and the API's
    from prometheus_client.parser import text_string_to_metric_families
    samples = {(smp.name, smp.labels.get("remote_address"), smp.labels.get("proto")): smp.value
               for fam in text_string_to_metric_families(api("/metrics")[1]) for smp in fam.samples}
    assert samples[("tandem_ipvs_backend_weight", rs2, "TCP")] == 0
    assert samples[("tandem_ipvs_backend_up", rs2, "TCP")] == 0
    w = run_in(T.ns_name(PREFIX, "client"), "tcp-whoami", "--host", T.VIP, "--port", 80, "--count", 60)
    assert w["ok"] == 60 and "rs2" not in w["by_server"], w
    # connections to the other servers were never touched (those to rs2 die with it)
    out = json.loads(held.communicate(timeout=60)[0].splitlines()[-1])
    assert out["ok"] + out["reset"] + out["stalled"] == 60 and out["ok"] >= 30, out
    # bring it back
    rec = echo_record("rs2")
    state = st.load_state(PREFIX)
    new = st.start_process(rec["ns"], rec["name"], rec["cmd"], Path(rec["log"]))
    state["processes"].append(new)
    st.save_state(PREFIX, state)
    t1 = time.monotonic()
    while real("tcp", rs2)["health"] != "up":
        assert time.monotonic() - t1 < 10, "never came back"
        time.sleep(0.05)
    back = real("tcp", rs2)
    assert back["weight"] == 1 and back["scheduled"] is True
    assert back["health_check"]["state"] == "up" and back["health_check"]["since"] > hc["since"]
    assert len(node_log_lines("a", f"Adding service [{rs2}]:tcp:{T.RS_PORT} ")) == 1
    assert len(node_log_lines("a", f"Removing service [{rs2}]:tcp:{T.RS_PORT} ")) == 1


def test_metrics_parse_with_prometheus_clients_parser(pair):
    from prometheus_client.parser import text_string_to_metric_families
    names = {f.name for f in text_string_to_metric_families(api("/metrics")[1])}
    for want in ("tandem_ipvs_connections", "tandem_ipvs_backend_connections_active",
                 "tandem_ipvs_backend_weight", "tandem_vrrp_state", "tandem_engine_drops"):
        assert want in names, sorted(names)


def test_changing_requests_need_the_token_and_change_nothing_without_it(pair):
    rs3 = next(r for r in T.REAL_SERVERS if r["name"] == "rs3")["addr"]
    path = f"/services/tcp/{T.VIP}:80/real_servers/{rs3}:8080/weight"
    code, _ = api(path, "POST", {"weight": 7})
    assert code == 401 and real("tcp", rs3)["weight"] == 1
    assert api("/reload", "POST")[0] == 401 and api("/resign", "POST")[0] == 401
    code, body = api(path, "POST", {"weight": 7}, token=TOKEN)
    assert code == 200 and real("tcp", rs3)["weight"] == 7
    assert api(path, "POST", {"weight": 1}, token=TOKEN)[0] == 200


def test_reload_adding_a_server_and_changing_weights_keeps_every_connection(pair):
    state = st.load_state(PREFIX)
    held = subprocess.Popen(["ip", "netns", "exec", T.ns_name(PREFIX, "client"), sys.executable, "-m",
                             "lab.client", "hold", "--host", T.VIP, "--port", "80", "--conns", "100",
                             "--seconds", "5", "--interval", "0.1"],
                            cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    path = Path(state["configs"]["a"])
    cfg = T.node_config("a", ha=True, extra={"node": {"api_token": TOKEN},
                                             "services": services(weights={"rs1": 3, "rs3": 2})})
    cfg["services"].append({**cfg["services"][0], "port": 81})       # a service added too
    path.write_text(T.dump_toml(cfg))
    code, body = api("/reload", "POST", token=TOKEN)
    assert code == 200 and body["conns_expired"] == 0, body
    out = json.loads(held.communicate(timeout=60)[0].splitlines()[-1])
    assert (out["ok"], out["reset"], out["stalled"]) == (100, 0, 0), out
    assert real("tcp", T.REAL_SERVERS[0]["addr"])["weight"] == 3
    # a bad file is refused and changes nothing
    path.write_text(path.read_text().replace('scheduler = "wlc"', 'scheduler = "fastest"', 1))
    code, body = api("/reload", "POST", token=TOKEN)
    assert code == 400 and "scheduler" in body and real("tcp", T.REAL_SERVERS[0]["addr"])["weight"] == 3


def test_ipvsadm_lists_the_running_node_in_ipvsadm_layout(pair):
    r = subprocess.run(["ip", "netns", "exec", T.ns_name(PREFIX, "a"), sys.executable, "-m", "tandem.cli",
                        "ipvsadm", "-L", "-n", "--api", f"http://198.18.0.11:{T.API_PORT}"],
                       cwd=str(REPO), env=client_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("IP Virtual Server version")
    assert lines[1] == "Prot LocalAddress:Port Scheduler Flags"
    assert any(l.startswith(f"TCP  {T.VIP}:80 wlc") for l in lines)
    assert sum("FullNat" in l for l in lines) >= 6
