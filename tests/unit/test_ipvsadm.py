"""`tandem ipvsadm`: the API's JSON printed character for character as ipvsadm 1.31 prints it.

Expected texts are written out by hand from ipvsadm's printf formats (see
docs in director/ipvsadm.py); a `|` marks the end of a line that ends in
spaces (ipvsadm's `%-10u\\n` leaves them).  The API itself and its OpenAPI
document are tested in test_api.py.
"""
from __future__ import annotations

import argparse
import asyncio
import socket

import pytest
from aiohttp import web
from scapy.layers.inet import IP, TCP

from director import ipvsadm as I
from director import openapi
from director.api import make_app
from director.engine import Engine
from director.status import NodeParts
from tests.helpers import CLIENT, VIP, make_config, tcp, udp


def text(s: str) -> str:
    """Hand-written expected output: strip the leading newline, `|` ends a line."""
    return "\n".join(line[:-1] if line.endswith("|") else line
                     for line in s.lstrip("\n").split("\n"))


def rs(addr, port, weight=1, active=0, inactive=0, conns=0, pin=0, pout=0, bin_=0, bout=0, **kw):
    return {"addr": addr, "port": port, "weight": weight, "active": active, "inactive": inactive,
            "overloaded": False, "conns_total": conns, "packets_in": pin, "packets_out": pout,
            "bytes_in": bin_, "bytes_out": bout, **kw}


def svc(proto, vip, port, scheduler, reals, flags=(), persistent=0.0, netmask=None, ops=False, **kw):
    return {"name": f"{proto}/{vip}:{port}", "proto": proto, "vip": vip, "port": port,
            "scheduler": scheduler, "flags": list(flags), "laddrs": ["198.18.2.100", "198.18.2.101"],
            "persistent": persistent,
            "persist_netmask": netmask if netmask is not None else (128 if ":" in vip else 32),
            "ops": ops, "real_servers": reals, **kw}


# Deliberately out of order: ipvsadm sorts by family, protocol, address, port.
SERVICES = {"services": [
    svc("tcp", "2001:db8::100", 80, "mh", [rs("2001:db8::21", 8080, 3, 1, 0, 5, 50, 40, 5000, 4000)],
        flags=["mh-port", "mh-fallback"], persistent=600.0, netmask=64),
    svc("udp", "198.18.0.100", 53, "rr", [rs("198.18.2.22", 53, 1, 0, 7, 7, 7, 7, 700, 900),
                                          rs("198.18.2.21", 53, 1, 0, 2, 2, 2, 2, 200, 300)], ops=True),
    svc("tcp", "198.18.0.100", 443, "sh",
        [rs("198.18.2.23", 443, 2, 4, 0, 99_999_999, 100_000_000, 999_999_999, 1_000_000_000,
            99_999_999_999)],
        flags=["sh-port", "sh-fallback"], persistent=300.0, netmask=24),
    svc("tcp", "198.18.0.100", 80, "wlc",
        [rs("198.18.2.22", 8080, 0, 0, 5, 1000, 20000, 18000, 2_110_000_000, 981_234_567),
         rs("198.18.2.21", 8080, 1, 12, 3, 2000, 40000, 36000, 100_000_000_000, 100_000_000_000_000)]),
    svc("tcp", "198.18.0.9", 80, "rr", [rs("198.18.2.21", 80, 65535)]),
]}


# -- -L -n ------------------------------------------------------------------------------

def test_list_matches_ipvsadm_layout():
    assert I.format_list(SERVICES) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.0.9:80 rr
  -> 198.18.2.21:80               FullNat 65535  0          0         |
TCP  198.18.0.100:80 wlc
  -> 198.18.2.21:8080             FullNat 1      12         3         |
  -> 198.18.2.22:8080             FullNat 0      0          5         |
TCP  198.18.0.100:443 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0
  -> 198.18.2.23:443              FullNat 2      4          0         |
UDP  198.18.0.100:53 rr ops
  -> 198.18.2.21:53               FullNat 1      0          2         |
  -> 198.18.2.22:53               FullNat 1      0          7         |
TCP  [2001:db8::100]:80 mh (mh-fallback,mh-port) persistent 600 mask 64
  -> [2001:db8::21]:8080          FullNat 3      1          0         |
""")


def test_list_columns_line_up_with_the_title():
    lines = I.format_list(SERVICES).splitlines()
    title = lines[2]
    for line in lines:
        if line.startswith("  -> 198.18.2.21:8080"):
            for word, value in (("Forward", "FullNat"), ("Weight", "1"), ("ActiveConn", "12"),
                                ("InActConn", "3")):
                assert line.index(value, 30) == title.index(word), word


def test_list_reference_example():
    """ecosystem-conventions §1.2's rebuilt `ipvsadm -L -n` (Masq and Route servers)."""
    services = [
        svc("tcp", "192.0.2.10", 80, "wlc", [rs("10.0.0.1", 8080, 1, 12, 3, forward="Masq"),
                                             rs("10.0.0.2", 8080, 0, 0, 5, forward="Masq")]),
        svc("tcp", "192.0.2.10", 443, "sh", [rs("10.0.0.3", 443, 1, 4, 0, forward="Route")],
            persistent=300),
    ]
    out = "\n".join(line.rstrip() for line in I.format_list(services).splitlines())
    assert out == """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.0.2.10:80 wlc
  -> 10.0.0.1:8080                Masq    1      12         3
  -> 10.0.0.2:8080                Masq    0      0          5
TCP  192.0.2.10:443 sh persistent 300
  -> 10.0.0.3:443                 Route   1      4          0"""


def test_single_service_listing_has_no_version_line():
    one = [s for s in SERVICES["services"] if s["port"] == 443]
    assert I.format_list(one, single=True) == text("""
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.0.100:443 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0
  -> 198.18.2.23:443              FullNat 2      4          0         |
""")


def test_empty_table_and_nosort():
    assert I.format_list({"services": []}) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
""")
    two = [svc("udp", "198.18.0.100", 53, "rr", []), svc("tcp", "198.18.0.100", 80, "rr", [])]
    assert [l[:4] for l in I.format_list(two, nosort=True).splitlines()[3:]] == ["UDP ", "TCP "]
    assert [l[:4] for l in I.format_list(two).splitlines()[3:]] == ["TCP ", "UDP "]


# -- --stats -----------------------------------------------------------------------------

def test_stats_with_largenum_rounding():
    assert I.format_stats(SERVICES) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  198.18.0.9:80                       0        0        0        0        0
  -> 198.18.2.21:80                      0        0        0        0        0
TCP  198.18.0.100:80                  3000    60000    54000     102G     100T
  -> 198.18.2.21:8080                 2000    40000    36000     100G     100T
  -> 198.18.2.22:8080                 1000    20000    18000    2110M  981234K
TCP  198.18.0.100:443             99999999  100000K  999999K    1000M   99999M
  -> 198.18.2.23:443              99999999  100000K  999999K    1000M   99999M
UDP  198.18.0.100:53                     9        9        9      900     1200
  -> 198.18.2.21:53                      2        2        2      200      300
  -> 198.18.2.22:53                      7        7        7      700      900
TCP  [2001:db8::100]:80                  5       50       40     5000     4000
  -> [2001:db8::21]:8080                 5       50       40     5000     4000
""")


def test_stats_exact():
    out = I.format_stats(SERVICES, exact=True).splitlines()
    assert out[5] == "TCP  198.18.0.100:80                  3000    60000    54000 102110000000 100000981234567"
    assert out[7] == "  -> 198.18.2.22:8080                 1000    20000    18000 2110000000 981234567"


def test_stats_reference_example_with_service_counters_from_the_api():
    """§1.3: a service's own `stats` (ipvsadm's names) win over the sum of its servers."""
    services = [svc("tcp", "192.0.2.10", 80, "wlc",
                    [rs("10.0.0.1", 8080, conns=56893, pin=9747740, pout=8500000,
                        bin_=1_055_123_456, bout=490_617_123)],
                    stats={"conns": 113786, "inpkts": 19495479, "outpkts": 17000001,
                           "inbytes": 2_110_246_912, "outbytes": 981_234_246})]
    assert I.format_stats(services) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.0.2.10:80                  113786 19495479 17000001    2110M  981234K
  -> 10.0.0.1:8080                   56893  9747740  8500000    1055M  490617K
""")


@pytest.mark.parametrize("n, out", [
    (0, "        0"), (99_999_999, " 99999999"), (100_000_000, "  100000K"),
    (999_999_999, "  999999K"), (1_000_000_000, "    1000M"), (99_999_999_999, "   99999M"),
    (100_000_000_000, "     100G"), (99_999_999_999_999, "   99999G"),
    (100_000_000_000_000, "     100T"),
])
def test_largenum(n, out):
    assert I.largenum(n) == out


def test_largenum_exact_widths():
    assert I.largenum(12345678, exact=True) == " 12345678"
    assert I.largenum(123456789, exact=True) == " 123456789"


# -- --rate ------------------------------------------------------------------------------

BEFORE = [svc("tcp", "198.18.0.100", 80, "wlc",
              [rs("198.18.2.21", 8080, conns=100, pin=1000, pout=900, bin_=100_000, bout=2_000_000)])]
AFTER = [svc("tcp", "198.18.0.100", 80, "wlc",
             [rs("198.18.2.21", 8080, conns=110, pin=3000, pout=2900, bin_=400_100_000, bout=2_000_003),
              rs("198.18.2.22", 8080, conns=1)])]


def test_rate_from_two_snapshots():
    # over 2 s: +10 conns = 5/s, +2000 pkts = 1000/s, +400 MB = 200 MB/s, +3 B = 1.5 -> 2;
    # the new server: 1 conn = 0.5 -> 1 (rounded as the estimator does); service: 11/2 -> 6
    assert I.format_rate(AFTER, BEFORE, 2.0) == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  198.18.0.100:80                     6     1000     1000  200000K        2
  -> 198.18.2.21:8080                    5     1000     1000  200000K        2
  -> 198.18.2.22:8080                    1        0        0        0        0
""")


def test_rate_from_rate_dicts_and_counter_resets():
    services = [svc("udp", "198.18.0.100", 53, "rr",
                    [rs("198.18.2.21", 53, rates={"cps": 123456789, "inpps": 7, "outpps": 8,
                                                 "inbps": 123456789, "outbps": 9})],
                    rates={"cps": 1, "inpps": 2, "outpps": 3, "inbps": 4, "outbps": 5})]
    assert I.format_rate(services).splitlines()[3:] == [
        "UDP  198.18.0.100:53                     1        2        3        4        5",
        # a real server's CPS/PPS use %8llu, not print_largenum: no K
        "  -> 198.18.2.21:53" + " " * 14 + " 123456789        7        8  123456K        9",
    ]
    # a node restarted between the snapshots: counters went down -> no negative rate
    assert "        0        0        0        0        0" in I.format_rate(BEFORE, AFTER, 1.0)
    with pytest.raises(ValueError):
        I.compute_rates(AFTER, BEFORE, 0)


def test_rate_from_two_snapshots_needs_the_interval():
    """Two snapshots and no seconds between them: a ValueError that says so (it was a
    TypeError from dividing by None)."""
    with pytest.raises(ValueError, match="seconds"):
        I.format_rate(AFTER, BEFORE)


# -- -c ----------------------------------------------------------------------------------

def conn(proto, client, vip, real, state, expires, local="198.18.2.100:5000"):
    return {"proto": proto, "client": client, "vip": vip, "local": local, "real": real,
            "state": state, "flags": [], "expires": expires}


def test_conns_reference_example():
    """§1.4's rebuilt `ipvsadm -L -n -c`, from the API's absolute expiry and the node's clock."""
    body = {"total": 4, "offset": 0, "limit": 100, "now": 1000.0, "conns": [
        conn("tcp", "198.51.100.7:40000", "192.0.2.10:80", "10.0.0.1:8080", "ESTABLISHED", 1899.7),
        conn("tcp", "198.51.100.8:51522", "192.0.2.10:80", "10.0.0.2:8080", "TIME_WAIT", 1105.0),
        conn("tcp", "198.51.100.9:33000", "192.0.2.10:80", "10.0.0.1:8080", "SYN_RECV", 1057.99),
        conn("udp", "198.51.100.7:5353", "192.0.2.10:53", "10.0.0.5:53", "UDP", 1298.0),
    ]}
    assert I.format_conns(body) == text("""
IPVS connection entries
pro expire state       source             virtual            destination
TCP 14:59  ESTABLISHED 198.51.100.7:40000 192.0.2.10:80      10.0.0.1:8080
TCP 01:45  TIME_WAIT   198.51.100.8:51522 192.0.2.10:80      10.0.0.2:8080
TCP 00:57  SYN_RECV    198.51.100.9:33000 192.0.2.10:80      10.0.0.1:8080
UDP 04:58  UDP         198.51.100.7:5353  192.0.2.10:53      10.0.0.5:53
""")


def test_conns_ipv6_expired_long_and_local_column():
    conns = [
        dict(conn("tcp", "2001:db8::7:40000", "2001:db8::100:80", "2001:db8::21:8080", "FIN_WAIT", 0),
             expires_in=7.9),
        dict(conn("tcp", "198.18.1.10:1", "198.18.0.100:80", "198.18.2.21:8080", "CLOSE", 0),
             expires_in=-3),
        dict(conn("tcp", "198.18.1.10:2", "198.18.0.100:80", "198.18.2.21:8080", "ESTABLISHED", 0),
             expires_in=6000),
    ]
    assert I.format_conns(conns) == text("""
IPVS connection entries
pro expire state       source             virtual            destination
TCP 00:07  FIN_WAIT    [2001:db8::7]:40000 [2001:db8::100]:80 [2001:db8::21]:8080
TCP 00:00  CLOSE       198.18.1.10:1      198.18.0.100:80    198.18.2.21:8080
TCP 100:00 ESTABLISHED 198.18.1.10:2      198.18.0.100:80    198.18.2.21:8080
""")
    assert I.format_conns(conns[1:2], local=True) == text("""
IPVS connection entries
pro expire state       source             virtual            local              destination
TCP 00:00  CLOSE       198.18.1.10:1      198.18.0.100:80    198.18.2.100:5000  198.18.2.21:8080
""")


# -- -S ----------------------------------------------------------------------------------

def test_save_format():
    assert I.format_save(SERVICES) == text("""
-A -t 198.18.0.9:80 -s rr
-a -t 198.18.0.9:80 -r 198.18.2.21:80 -b -w 65535
-A -t 198.18.0.100:80 -s wlc
-a -t 198.18.0.100:80 -r 198.18.2.21:8080 -b -w 1
-a -t 198.18.0.100:80 -r 198.18.2.22:8080 -b -w 0
-A -t 198.18.0.100:443 -s sh -p 300 -M 255.255.255.0 -b sh-fallback,sh-port
-a -t 198.18.0.100:443 -r 198.18.2.23:443 -b -w 2
-A -u 198.18.0.100:53 -s rr -o
-a -u 198.18.0.100:53 -r 198.18.2.21:53 -b -w 1
-a -u 198.18.0.100:53 -r 198.18.2.22:53 -b -w 1
-A -t [2001:db8::100]:80 -s mh -p 600 -M 64 -b mh-fallback,mh-port
-a -t [2001:db8::100]:80 -r [2001:db8::21]:8080 -b -w 3
""")


def test_save_mainline_masq_and_laddrs_and_reference_example():
    one = [svc("tcp", "198.18.0.9", 80, "rr", [rs("198.18.2.21", 80, 2)])]
    assert I.format_save(one, fullnat_switch="-m", laddrs=True) == text("""
-A -t 198.18.0.9:80 -s rr
-a -t 198.18.0.9:80 -r 198.18.2.21:80 -m -w 2
-P -t 198.18.0.9:80 -z 198.18.2.100
-P -t 198.18.0.9:80 -z 198.18.2.101
""")
    ref = [svc("tcp", "192.0.2.10", 80, "wlc", [rs("10.0.0.1", 8080, forward="Masq")]),
           svc("tcp", "192.0.2.10", 443, "sh", [rs("10.0.0.3", 443, forward="Route")], persistent=300)]
    assert I.format_save(ref) == text("""
-A -t 192.0.2.10:80 -s wlc
-a -t 192.0.2.10:80 -r 10.0.0.1:8080 -m -w 1
-A -t 192.0.2.10:443 -s sh -p 300
-a -t 192.0.2.10:443 -r 10.0.0.3:443 -g -w 1
""")


# -- the command, against a live API -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driven_engine() -> Engine:
    eng = Engine(make_config())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=5000, ack=1001), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=5001), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40001, 80, "S"), 0.0)
    return eng


TOKEN = "ipvsadm-test-token"


async def serve(eng: Engine):
    # the engine was driven at t=0: the app's monotonic clock stands there too
    runner = web.AppRunner(make_app(eng, NodeParts("t", "master", api_token=TOKEN), clock=lambda: 0.0),
                           access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_main_lists_a_live_node(capsys):
    eng = driven_engine()
    runner, url = await serve(eng)
    try:
        rc = await asyncio.wait_for(asyncio.to_thread(I.main, ["-L", "-n", "--api", url]), 10)
        assert rc == 0
        assert capsys.readouterr().out == text("""
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.0.100:80 rr
  -> 198.18.2.21:8080             FullNat 1      1          0         |
  -> 198.18.2.22:8080             FullNat 1      0          1         |
  -> 198.18.2.23:8080             FullNat 1      0          0         |
UDP  198.18.0.100:80 rr
  -> 198.18.2.21:8080             FullNat 1      0          0         |
  -> 198.18.2.22:8080             FullNat 1      0          0         |
  -> 198.18.2.23:8080             FullNat 1      0          0         |
""")
        rc = await asyncio.wait_for(asyncio.to_thread(I.main, ["-S", "-n", "-t", "198.18.0.100:80",
                                                               "--api", url]), 10)
        assert rc == 0
        assert capsys.readouterr().out == text("""
-A -t 198.18.0.100:80 -s rr
-a -t 198.18.0.100:80 -r 198.18.2.21:8080 -b -w 1
-a -t 198.18.0.100:80 -r 198.18.2.22:8080 -b -w 1
-a -t 198.18.0.100:80 -r 198.18.2.23:8080 -b -w 1
""")
        # expires and now are epoch seconds (issue 17 item 8); without expires_in the time
        # left is expires - now, both from the same answer
        body = await asyncio.to_thread(I.fetch, url, "/conns", token=TOKEN)
        for c in body["conns"]:
            c.pop("expires_in", None)
        assert I.format_conns(body) == text("""
IPVS connection entries
pro expire state       source             virtual            destination
TCP 15:00  ESTABLISHED 198.18.1.10:40000  198.18.0.100:80    198.18.2.21:8080
TCP 01:00  SYN_RECV    198.18.1.10:40001  198.18.0.100:80    198.18.2.22:8080
""")
        rc = await asyncio.wait_for(asyncio.to_thread(
            I.main, ["-L", "--rate", "--interval", "0.05", "--api", url]), 10)
        assert rc == 0
        assert capsys.readouterr().out.splitlines()[3] == \
            "TCP  198.18.0.100:80                     0        0        0        0        0"
        rc = await asyncio.wait_for(asyncio.to_thread(I.main, ["-c", "--api", url, "--token", TOKEN]), 10)
        assert rc == 0 and capsys.readouterr().out.count("198.18.1.10:4000") == 2
        # without the token the API hides client addresses, and the listing says so
        rc = await asyncio.wait_for(asyncio.to_thread(I.main, ["-c", "--api", url]), 10)
        out = capsys.readouterr().out
        assert rc == 0 and "198.18.1.10" not in out and out.count("hidden") == 2
        rc = await asyncio.wait_for(asyncio.to_thread(I.main, ["-L", "-t", "198.18.0.1:80",
                                                               "--api", url]), 10)
        assert rc == 1 and "No such service" in capsys.readouterr().err
    finally:
        await runner.cleanup()


def test_main_errors(capsys):
    assert I.main(["-L", "--api", f"http://127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert I.main(["--stats", "--rate"]) == 2
    assert I.main(["-S", "--stats", "--api", "http://127.0.0.1:1"]) == 2
    assert I.main(["--rate", "--interval", "0", "--api", "http://127.0.0.1:1"]) == 2


def test_add_parser_registers_the_subcommand():
    p = argparse.ArgumentParser(prog="tandem")
    sub = p.add_subparsers(dest="command", required=True)
    I.add_parser(sub)
    args = p.parse_args(["ipvsadm", "-L", "-n", "--stats", "--api", "http://127.0.0.1:1"])
    assert args.func is I.run and args.stats and args.api == "http://127.0.0.1:1"


# -- the sample JSON above is what the API documents ---------------------------------------

def test_sample_services_json_matches_the_openapi_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(SERVICES, openapi.schema("ServiceList"))


def test_an_overridden_weight_is_marked_after_ipvsadms_five_columns():
    from director.ipvsadm import format_list
    rs = [{"addr": "198.18.2.21", "port": 8080, "weight": 1, "active": 0, "inactive": 0,
           "config_weight": 1, "override": None},
          {"addr": "198.18.2.22", "port": 8080, "weight": 0, "active": 3, "inactive": 1,
           "config_weight": 1, "override": {"weight": 0, "drain": True, "by": "a", "set_at": 1.0}},
          {"addr": "198.18.2.23", "port": 8080, "weight": 3, "active": 0, "inactive": 0,
           "config_weight": 2, "override": {"weight": 3, "drain": False, "by": "b", "set_at": 1.0}}]
    out = format_list([{"proto": "tcp", "vip": "198.18.0.100", "port": 80, "scheduler": "wlc",
                        "flags": [], "persistent": 0, "real_servers": rs}]).splitlines()
    assert out[4] == "  -> 198.18.2.21:8080             FullNat 1      0          0         "
    assert out[5] == ("  -> 198.18.2.22:8080             FullNat 0      3          1          "
                      "override: drain by a (file 1)")
    assert out[6].endswith(" override: weight 3 by b (file 2)")
    assert out[6].split()[:6] == ["->", "198.18.2.23:8080", "FullNat", "3", "0", "0"]
