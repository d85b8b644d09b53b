"""UDP datagrams larger than the MTU, through the VIP, both ways.

The lab's links have an MTU of 1500, so a 3,000-byte UDP request leaves the client in three
IPv4 fragments, and the real server's 3,000-byte reply leaves it in three more.  IPVS hands
its scheduler whole datagrams (the kernel reassembles before it: for IPv4 the local input
path before LOCAL_IN, for IPv6 services nf_defrag_ipv6), and forwards them fragmented again
to fit the next link.  tandem must do the same: the kernel reassembles in PREROUTING before
the raw table's queue (nf_defrag, enabled by the node's rules), the engine rewrites the whole
datagram, and the kernel fragments it again towards the real server and back to the client.
Before, the first fragment alone was forwarded and the others dropped (`fragment`), so no
datagram over the MTU ever arrived (EDNS answers, SIP, RADIUS, syslog).

Over IPv4 and IPv6 (lab.ipv6 adds IPv6 to the lab: VIP6 and LADDR6 on director a), each from
3,000 bytes up to the largest datagram NFQUEUE can carry whole, verified byte for byte.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from director.nfqueue import COPY_RANGE
from lab import ipv6
from lab import topology as T
from lab.nsutil import http_get
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab

pytestmark = pytest.mark.lab

#: sizes of UDP payload sent and echoed: the one the issue names, one that needs more than
#: netfilterqueue's own 4,016-byte copy range, and the largest NFQUEUE carries whole (a
#: 65,531-byte packet: director.nfqueue.COPY_RANGE, less the IPv4 or IPv6 and UDP headers)
CASES = [(4, 3000), (4, 9000), (4, COPY_RANGE - 20 - 8), (6, 3000), (6, 9000), (6, COPY_RANGE - 40 - 8)]
#: attempts per size: one datagram may be lost on a busy machine; a reassembly that does not
#: work loses every one
ATTEMPTS = 3

_EXCHANGE = r"""
import hashlib, json, os, socket, sys
host, port, size, attempts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {"intact": 0, "corrupt": 0, "lost": 0, "lengths": []}
for i in range(attempts):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    data = os.urandom(size)
    s.sendto(data, (host, port))
    try:
        got = s.recv(70000)
    except socket.timeout:
        out["lost"] += 1
        continue
    finally:
        s.close()
    out["lengths"].append(len(got))
    out["intact" if got == data else "corrupt"] += 1
    if got == data:
        break
print(json.dumps(out))
"""


def exchange(ns: str, host: str, port: int, size: int) -> dict:
    """Send `size` random bytes over UDP from ns to host:port (a new socket, so a new flow, per
    attempt) and compare the echo byte for byte; stop at the first intact one."""
    cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _EXCHANGE, host, str(port),
                         str(size), str(ATTEMPTS)], cwd=str(REPO_ROOT), env=client_env(),
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return json.loads(cp.stdout.strip().splitlines()[-1])


def snmp(ns: str, family: int = 4) -> dict[str, int]:
    """The namespace's IP counters (ReasmOKs, FragOKs, ...) from /proc/net/snmp(6)."""
    path = "/proc/net/snmp" if family == 4 else "/proc/net/snmp6"
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True,
                          timeout=10, check=True).stdout
    if family == 6:
        return {k.removeprefix("Ip6"): int(v) for k, v in (ln.split() for ln in text.splitlines() if ln)}
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("Ip:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def engine(lab) -> dict:
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
    assert code == 200
    return json.loads(body)["engine"]


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def lab(request):
    """The lab with one node on director a (no pair: the node has nothing to fail over here),
    serving the VIP over IPv4 and VIP6 over IPv6 (lab.ipv6); the node runs as root, then as
    the systemd unit runs it (its own user, CAP_NET_ADMIN and CAP_NET_RAW only), which may
    not read the kernel's queue list and so cannot check the copy range it sets."""
    require_lab()
    services = T.node_config("a")["services"] + [ipv6.service("udp")]
    prefix = "tfrag" if request.param == "root" else "tfragu"
    mp = pytest.MonkeyPatch()
    if request.param == "unprivileged":
        from lab import state as lab_state
        from tests.lab.test_unprivileged import USER, ensure_user, unprivileged
        user, real_start = ensure_user(USER), lab_state.start_process

        def start_process(ns, name, cmd, log_path, env_extra=None):
            if name.startswith("node-"):
                config = cmd[list(cmd).index("--config") + 1]
                os.chown(config, 0, user.pw_gid)
                os.chmod(config, 0o640)
                cmd = unprivileged(list(cmd))
            return real_start(ns, name, cmd, log_path, env_extra)

        mp.setattr(lab_state, "start_process", start_process)
    try:
        with lab_session(prefix, node=True, ha=False, config_extra={"services": services}) as info:
            ipv6.enable(prefix)
            yield info
    finally:
        mp.undo()


@pytest.mark.parametrize("family, size", CASES, ids=[f"ipv{f}-{n}" for f, n in CASES])
def test_a_udp_datagram_over_the_mtu_goes_through_the_vip_and_its_reply_comes_back_whole(lab, family, size):
    ns = {"a": lab["directors"][0]["ns"], "client": lab["client"]["ns"]}
    before = {n: snmp(v, family) for n, v in ns.items()}
    drops_before = engine(lab)["drops"]
    r = exchange(ns["client"], lab["vip"] if family == 4 else ipv6.VIP6, 80, size)
    after = {n: snmp(v, family) for n, v in ns.items()}
    drops_after = engine(lab)["drops"]
    assert r["intact"] == 1 and r["corrupt"] == 0, (r, drops_after)
    assert drops_after.get("fragment", 0) == drops_before.get("fragment", 0), drops_after
    assert drops_after.get("truncated", 0) == drops_before.get("truncated", 0), drops_after
    # the director fragmented the rewritten request and reply again (the links' MTU is 1500),
    # and the client reassembled the reply it got in fragments.  (The director's reassembly
    # shows in ReasmOKs for IPv4 only: nf_defrag_ipv6 keeps no SNMP counters.)
    grew = {n: {k: after[n][k] - before[n][k] for k in ("ReasmOKs", "FragOKs")} for n in after}
    assert grew["a"]["FragOKs"] >= 2 and grew["client"]["ReasmOKs"] >= 1, grew
    if family == 4:
        assert grew["a"]["ReasmOKs"] >= 2, grew
