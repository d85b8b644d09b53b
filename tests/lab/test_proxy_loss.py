"""PROXY streams under loss on the back segment (issue 14): the header goes in exactly once
per byte stream, and shifted sequence, acknowledgement and SACK numbers carry a long
transfer through random loss.

Loss is made with nftables in the real servers' namespaces (tables of this module's own,
removed afterwards), so it hits only the back segment, between the director and the real
servers, in both directions.  The lab is dual-stack (`up --ipv6`): the long transfer runs
over IPv4 and over IPv6 (VIP6:81, a 52-byte AF_INET6 header; the `inet` tables drop both).
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest

from lab import state as st
from lab.echo import parse_stream_line
from lab.nsutil import http_get
from lab.plan import CLIENT_ADDR, PROXY_RS_PORT, REAL_SERVERS
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab

PREFIX = "tpl"


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session(PREFIX, node=True, scheduler="rr", ipv6=True) as info:
        yield info


def nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True)


def nft_delete(ns: str, table: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table],
                   capture_output=True)


def counter(ns: str, table: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table],
                         check=True, capture_output=True, text=True).stdout
    return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"]
               for e in item.get("rule", {}).get("expr", []) if "counter" in e)


def rs_namespaces(lab) -> list[str]:
    return [lab["real_servers"][i]["ns"] for i in range(len(REAL_SERVERS))]


def engine_stats(lab) -> dict:
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
    assert code == 200
    return json.loads(body)["engine"]


def streams_since(sizes: dict[str, int], want: int, wait: float = 20.0) -> list[dict]:
    d = st.state_dir(PREFIX)
    end = time.monotonic() + wait
    while True:
        out = []
        for name, size in sizes.items():
            with open(d / f"{name}.log", "rb") as fh:
                fh.seek(size)
                for line in fh.read().decode(errors="replace").splitlines():
                    rec = parse_stream_line(line)
                    if rec is not None and rec["client"] == CLIENT_ADDR:
                        out.append(rec)
        if len(out) >= want or time.monotonic() > end:
            return out
        time.sleep(0.2)


def log_sizes() -> dict[str, int]:
    d = st.state_dir(PREFIX)
    return {r["name"]: (d / f"{r['name']}.log").stat().st_size for r in REAL_SERVERS}


FIRST = "tandem_test_first_drop"


def test_a_dropped_first_data_segment_is_sent_again_with_the_one_header(lab):
    """The first data segment of each connection (the one that carries the header: the
    first packet towards the echo's PROXY port without SYN and longer than any pure ACK,
    SACK blocks included) is dropped once on its way into the real server.  The client's TCP retransmits it; the director puts the
    header in front of it again at the same sequence numbers, so the server's stream
    holds it once and everything after it intact."""
    script = f"""table inet {FIRST} {{
  set seen {{ type ipv4_addr . inet_service; size 4096; flags dynamic; }}
  chain pre {{
    type filter hook prerouting priority -400;
    tcp dport {PROXY_RS_PORT} tcp flags & syn == 0 ip length > 120 ip saddr . tcp sport != @seen add @seen {{ ip saddr . tcp sport }} counter drop
  }}
}}"""
    nss = rs_namespaces(lab)
    sizes, before = log_sizes(), engine_stats(lab)
    try:
        for ns in nss:
            nft(ns, script)
        results = [run_in(lab["client"]["ns"], "bulk", "--host", lab["vip"], "--port", 81,
                          "--bytes", 200_000, "--seed", i, timeout=60) for i in range(3)]
        dropped = sum(counter(ns, FIRST) for ns in nss)
    finally:
        for ns in nss:
            nft_delete(ns, FIRST)
    for r in results:
        assert r["sent"] == r["received"] == 200_000 and r["sha256_ok"], r
    assert dropped == 3                     # once per connection: the rule really dropped
    after = engine_stats(lab)
    assert after["proxy_headers"] - before["proxy_headers"] == 3
    assert after["proxy_headers_resent"] - before["proxy_headers_resent"] >= 3
    streams = streams_since(sizes, 3)
    assert [(s["headers"], s["bytes"]) for s in streams] == [(1, 200_000)] * 3, streams


LOSS = "tandem_test_back_loss"


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["kernel"]


@pytest.mark.parametrize("vip_key", ["vip", "vip6"])
def test_100mb_each_way_with_sack_through_1_percent_back_segment_loss(lab, vip_key):
    """100 MB up and the same 100 MB echoed down, through the proxy-v2 service, with 1 % of
    the back segment's packets to and from the echo's PROXY port dropped at random
    (nftables numgen): both sha256 sums match.

    SACK is in use and the shifted SACK blocks are valid: as the sender of the upload, the
    client recovers lost segments by SACK (TcpExtTCPSackRecovery rises, fed by the real
    server's SACK blocks that the director shifted back into the client's space; never by
    Reno's dupack counting, TcpExtTCPRenoRecovery stays) and discards none as invalid
    (TcpExtTCPSACKDiscard stays), while the loss is real (the nft counters).  The client's
    `ss -ti`, sampled during the transfer, shows the connection with segments `sacked:`.
    (This machine's ss prints no `ts sack` option words at all, even on loopback where
    TCP_INFO's tcpi_options has both bits, so the negotiated option is judged by the
    kernel's SACK counters above.)

    Over IPv6 (vip6) the same through VIP6:81: the header names the client's IPv6
    address, and the shifted numbers carry the transfer as over IPv4.

    Size: 100 MB each way as the issue asks.  Measured on this 2-core lab machine through
    the engine: 4.7 s for the whole exchange with 915 packets dropped, well inside the lab
    suite's 20-minute budget, so nothing is scaled down."""
    client = lab["client"]["ns"]
    vip = lab[vip_key]
    dst = f"[{vip}]:81" if ":" in vip else f"{vip}:81"
    nss = rs_namespaces(lab)
    script = f"""table inet {LOSS} {{
  chain pre {{
    type filter hook prerouting priority -400;
    tcp dport {PROXY_RS_PORT} numgen random mod 100 < 1 counter drop
  }}
  chain out {{
    type filter hook output priority -400;
    tcp sport {PROXY_RS_PORT} numgen random mod 100 < 1 counter drop
  }}
}}"""
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:        # ss -ti of the client's connection to the service, sampled
        while not done.wait(0.5):
            out = subprocess.run(["ip", "netns", "exec", client, "ss", "-tin", "dst", dst],
                                 capture_output=True, text=True).stdout
            if "ESTAB" in out:
                seen.append(out)

    before = nstat(client)
    t = threading.Thread(target=watch, daemon=True)
    try:
        for ns in nss:
            nft(ns, script)
        t.start()
        t0 = time.monotonic()
        r = run_in(client, "bulk", "--host", vip, "--port", 81, "--bytes", 100_000_000,
                   "--timeout", 30, "--deadline", 600, timeout=660)
        took = time.monotonic() - t0
        dropped = sum(counter(ns, LOSS) for ns in nss)
    finally:
        done.set()
        for ns in nss:
            nft_delete(ns, LOSS)
    t.join(5)
    after = nstat(client)
    print(f"{vip_key}: 100 MB each way with 1% back-segment loss: {took:.1f} s, {dropped} packets dropped")
    assert r["sent"] == r["received"] == 100_000_000 and r["sha256_ok"], r
    assert dropped > 0
    sacked = [int(n) for out in seen for n in re.findall(r"\bsacked:(\d+)", out)]
    assert seen and max(sacked, default=0) > 0, seen[:2]
    delta = {k: after.get(k, 0) - before.get(k, 0)
             for k in ("TcpExtTCPSackRecovery", "TcpExtTCPRenoRecovery", "TcpExtTCPSACKDiscard",
                       "TcpRetransSegs")}
    print(delta)
    assert delta["TcpExtTCPSackRecovery"] > 0 and delta["TcpRetransSegs"] > 0, delta
    assert delta["TcpExtTCPRenoRecovery"] == 0 and delta["TcpExtTCPSACKDiscard"] == 0, delta
