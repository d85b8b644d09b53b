"""VRRPv3 interop between tandem's VrrpRunner and a real keepalived 2.2.7, one VRID, 0.1 s adverts.

Topology (created and removed per test): namespace tvrrp-ka-<pid> (veth vka, 198.18.250.1/24,
keepalived) <-> namespace tvrrp-td-<pid> (veth vtd, 198.18.250.2/24, tandem's runner, whose raw
socket is made in that namespace from a thread that entered it).  VIP 198.18.250.100.

keepalived runs as ``ip netns exec NS keepalived -n -l -D -G -P -R -f CONF -p PID -r VRRP_PID`` with
TMPDIR, config, pid files and notify FIFO in a per-test temporary directory; it is stopped by its
PID (SIGTERM, then SIGKILL) and its VRRP child by the PID from its -r file.  keepalived's state
changes are read, with a monotonic timestamp, from its vrrp_notify_fifo (lines like
``INSTANCE "VI_51" MASTER 100``); tandem's from the runner's on_state_change callback.

Skipped (failed with TANDEM_REQUIRE_LAB=1) without root / network namespaces / keepalived.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.testing import require_lab
from proto.vrrp import CSUM_PSEUDO, decode
from ha.vrrp import State, VrrpConfig, master_down_interval, skew_time
from ha.vrrp_io import VrrpRunner

pytestmark = pytest.mark.lab

KA_ADDR, TD_ADDR, VIP = "198.18.250.1", "198.18.250.2", "198.18.250.100"
KA_IF, TD_IF = "vka", "vtd"
VRID = 51
#: printed beside each handover time as the expected bound (skew or Master_Down + this); the
#: tests judge why the handover happened, never how long it took (the machine is shared)
MARGIN = 0.050


def _require_keepalived() -> str:
    require_lab()
    path = shutil.which("keepalived") or ("/usr/sbin/keepalived"
                                          if os.access("/usr/sbin/keepalived", os.X_OK) else None)
    if path is None:
        if os.environ.get("TANDEM_REQUIRE_LAB") == "1":
            pytest.fail("TANDEM_REQUIRE_LAB=1 but keepalived is not installed", pytrace=False)
        pytest.skip("keepalived is not installed")
    return path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Lab:
    ns_ka: str
    ns_td: str
    tmp: Path
    keepalived: str
    procs: list = field(default_factory=list)


@pytest.fixture
def lab(tmp_path):
    path = _require_keepalived()
    sfx = str(os.getpid())
    ns_ka, ns_td = f"tvrrp-ka-{sfx}", f"tvrrp-td-{sfx}"
    made: list[str] = []
    lab = Lab(ns_ka, ns_td, tmp_path, path)
    try:
        for ns in (ns_ka, ns_td):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", ns_ka, "link", "add", KA_IF, "type", "veth", "peer", "name", TD_IF, "netns", ns_td)
        for ns, ifname, addr in ((ns_ka, KA_IF, KA_ADDR), (ns_td, TD_IF, TD_ADDR)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
        yield lab
    finally:
        for ka in lab.procs:
            ka.kill()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


# -- keepalived ---------------------------------------------------------------------------------------

class FifoWatcher(threading.Thread):
    """Reads keepalived's notify FIFO; events are (monotonic time, line)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="ka-fifo")
        self.path = path
        self.events: list[tuple[float, str]] = []
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        deadline = time.monotonic() + 10.0
        while not self.path.exists():
            if self.stop_flag.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.002)
        # O_RDWR: we are a writer too, so no EOF spin while keepalived has it closed
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        buf = b""
        try:
            while not self.stop_flag.is_set():
                r, _, _ = select.select([fd], [], [], 0.05)
                if not r:
                    continue
                now = time.monotonic()
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.events.append((now, line.decode(errors="replace").strip()))
        finally:
            os.close(fd)

    def states(self) -> list[tuple[float, str]]:
        out = []
        for t, line in self.events:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "INSTANCE":
                out.append((t, parts[2]))
        return out

    def first(self, state: str, after: float = 0.0) -> float | None:
        for t, s in self.states():
            if s == state and t >= after:
                return t
        return None


class Keepalived:
    def __init__(self, lab: Lab, priority: int, unicast: bool = False, tag: str = "ka") -> None:
        self.lab = lab
        d = lab.tmp / tag
        d.mkdir()
        self.dir = d
        self.conf = d / "keepalived.conf"
        self.pidfile, self.vrrp_pidfile = d / "ka.pid", d / "ka-vrrp.pid"
        self.fifo = d / "notify.fifo"
        self.logfile = d / "ka.log"
        uc = ""
        if unicast:
            uc = f"    unicast_src_ip {KA_ADDR}\n    unicast_peer {{\n        {TD_ADDR}\n    }}\n"
        self.conf.write_text(f"""global_defs {{
    router_id TVRRP_KA
    vrrp_version 3
    vrrp_notify_fifo {self.fifo}
    vrrp_garp_master_delay 0
    vrrp_garp_master_repeat 1
    vrrp_garp_lower_prio_repeat 1
}}
vrrp_instance VI_{VRID} {{
    state BACKUP
    interface {KA_IF}
    virtual_router_id {VRID}
    priority {priority}
    advert_int 0.1
    version 3
{uc}    virtual_ipaddress {{
        {VIP}/24 dev {KA_IF}
    }}
}}
""")
        self.proc: subprocess.Popen | None = None
        self.watch = FifoWatcher(self.fifo)
        self._log = None

    def start(self) -> None:
        env = dict(os.environ, TMPDIR=str(self.dir))
        self._log = open(self.logfile, "wb")
        self.watch.start()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns_ka, self.lab.keepalived, "-n", "-l", "-D", "-G",
             "-P", "-R", "-f", str(self.conf), "-p", str(self.pidfile), "-r", str(self.vrrp_pidfile)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(self.dir))
        self.lab.procs.append(self)

    def child_pid(self) -> int | None:
        try:
            pid = int(self.vrrp_pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if self._ours(pid) else None

    def _ours(self, pid: int) -> bool:
        """pid is a keepalived started with our config (guards against PID reuse)."""
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"keepalived" in cmd and str(self.conf).encode() in cmd

    def terminate(self) -> float:
        """SIGTERM to keepalived's (parent) PID; returns the monotonic time it was sent."""
        assert self.proc is not None
        t = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        return t

    def kill(self) -> None:
        """Stop everything this object started, by PID, bounded."""
        child = self.child_pid()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        child = self.child_pid()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.watch.stop_flag.set()
        if self.watch.is_alive():
            self.watch.join(timeout=2)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def has_vip(self) -> bool:
        cp = subprocess.run(["ip", "-n", self.lab.ns_ka, "-br", "addr", "show", "dev", KA_IF],
                            capture_output=True, text=True, timeout=10)
        return VIP in cp.stdout


# -- tandem ---------------------------------------------------------------------------------------------

class Tandem:
    def __init__(self, lab: Lab, priority: int, unicast: bool = False, **kw) -> None:
        self.cfg = VrrpConfig(VRID, priority=priority, advert_interval=0.1, addresses=(VIP,),
                              primary_address=TD_ADDR, name=f"VI_{VRID}",
                              unicast_peers=(KA_ADDR,) if unicast else (), **kw)
        self.events: list[tuple[float, State, State, str]] = []
        self.active = 0
        self.overlap = False
        self.runner = VrrpRunner(self.cfg, TD_IF, self._changed)
        self.lab = lab

    async def _changed(self, old: State, new: State, reason: str) -> None:
        t = time.monotonic()
        self.active += 1
        if self.active > 1:
            self.overlap = True
        self.events.append((t, old, new, reason))
        await asyncio.sleep(0.001)   # a callback that yields: must still never overlap
        self.active -= 1

    async def start(self) -> float:
        await asyncio.to_thread(in_netns, self.lab.ns_td, self.runner.open_socket, timeout=10)
        t = time.monotonic()
        await self.runner.start()
        return t

    def first(self, state: State, after: float = 0.0) -> float | None:
        for t, _old, new, _r in self.events:
            if new is state and t >= after:
                return t
        return None


def in_netns(ns, fn, *args, **kw):
    from lab.nsutil import in_netns as _in_netns  # pyroute2: imported only once the lab is there
    return _in_netns(ns, fn, *args, **kw)


def capture_one(ifname: str, timeout: float = 2.0) -> tuple[dict, bytes]:
    """Receive one VRRP packet on ifname (run in the namespace): its IPv4 header fields and payload."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        idx = socket.if_nametoindex(ifname)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("=4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4, idx))
        s.settimeout(timeout)
        data = s.recv(2048)
    finally:
        s.close()
    ihl = (data[0] & 0x0F) * 4
    hdr = {"tos": data[1], "ttl": data[8], "proto": data[9], "src": socket.inet_ntoa(data[12:16]),
           "dst": socket.inet_ntoa(data[16:20])}
    return hdr, data[ihl:int.from_bytes(data[2:4], "big")]


async def until(pred, timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


def diag(ka: Keepalived, td: Tandem) -> str:
    return (f"\nkeepalived fifo: {ka.watch.events}\nkeepalived log:\n{ka.log()}\n"
            f"tandem events: {td.events}\ntandem counters: "
            f"{ {k: v for k, v in td.runner.counters.items() if v} } io: {td.runner.stats}")


def report(name: str, value: float, limit: float) -> None:
    print(f"\n[vrrp-interop] {name}: {value * 1000:.1f} ms (protocol bound + 50 ms: {limit * 1000:.1f} ms)")


# -- tests ------------------------------------------------------------------------------------------------

async def test_tandem_master_keepalived_backup_then_graceful_handover(lab):
    """(a) tandem 150 master, keepalived 100 stays backup; (c) tandem stop(graceful) sends priority 0
    and keepalived becomes MASTER on it (its skew time, not its Master_Down timer: how long it took
    is printed, not asserted; the machine is shared)."""
    td = Tandem(lab, 150)
    ka = Keepalived(lab, 100)
    try:
        await td.start()
        assert await until(lambda: td.runner.state is State.MASTER, 2.0), diag(ka, td)
        # what tandem puts on the wire, seen from the keepalived namespace
        hdr, payload = await asyncio.to_thread(in_netns, lab.ns_ka, capture_one, KA_IF, timeout=10)
        assert hdr["src"] == TD_ADDR and hdr["dst"] == "224.0.0.18"
        assert (hdr["ttl"], hdr["tos"], hdr["proto"]) == (255, 0xC0, 112)
        a = decode(payload, TD_ADDR, "224.0.0.18")
        assert (a.vrid, a.priority, a.max_adver_int_cs, a.addresses) == (VRID, 150, 10, (VIP,))
        assert a.checksum_form == CSUM_PSEUDO
        ka.start()
        assert await until(lambda: ka.watch.first("BACKUP") is not None, 5.0), diag(ka, td)
        await asyncio.sleep(1.0)    # 10 adverts, ~3 master-down intervals of keepalived
        assert ka.watch.first("MASTER") is None, diag(ka, td)
        assert td.runner.state is State.MASTER and len(td.events) == 2, diag(ka, td)
        assert not ka.has_vip()
        assert td.runner.stats["tx_errors"] == 0 and td.runner.stats["tx_datagrams"] >= 10

        t0 = time.monotonic()
        await td.runner.stop(graceful=True)
        assert await until(lambda: ka.watch.first("MASTER", t0) is not None, 2.0), diag(ka, td)
        took = ka.watch.first("MASTER", t0) - t0
        limit = skew_time(100, 10) + MARGIN
        report("tandem graceful stop -> keepalived MASTER", took, limit)
        assert td.runner.counters["tx_priority0"] == 1, diag(ka, td)
        assert "received priority 0" in ka.log(), diag(ka, td)
        assert td.events[-1][2] is State.INITIALIZE and not td.overlap
        assert await until(ka.has_vip, 2.0)
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()


async def test_keepalived_master_tandem_backup_then_sigterm_handover(lab):
    """(b) keepalived 150 master, tandem 100 stays backup; (c) keepalived SIGTERM sends priority 0
    and tandem becomes MASTER on it, after its skew time (the reason says so; the time is printed)."""
    td = Tandem(lab, 100)
    ka = Keepalived(lab, 150)
    try:
        ka.start()
        assert await until(lambda: ka.watch.first("MASTER") is not None, 5.0), diag(ka, td)
        await td.start()
        await asyncio.sleep(1.0)
        assert [e[2] for e in td.events] == [State.BACKUP], diag(ka, td)
        c = td.runner.counters
        assert c["accepted"] >= 8 and c["drop_bad_checksum"] == 0, diag(ka, td)
        assert td.runner.instance.master_address == KA_ADDR
        assert td.runner.instance.master_priority == 150

        t0 = ka.terminate()
        assert await until(lambda: td.first(State.MASTER, t0) is not None, 2.0), diag(ka, td)
        took = td.first(State.MASTER, t0) - t0
        limit = skew_time(100, 10) + MARGIN
        report("keepalived SIGTERM -> tandem MASTER", took, limit)
        assert "priority 0 from 198.18.250.1" in td.events[-1][3]
        assert c["rx_priority0"] == 1
        assert ka.proc.wait(timeout=5) == 0
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()


async def test_silent_master_failure_and_preempt_back(lab):
    """keepalived 150 master is frozen (SIGSTOP on its VRRP child, no priority 0): tandem 100
    takes over after Master_Down_Interval; on SIGCONT keepalived re-asserts and tandem yields."""
    td = Tandem(lab, 100)
    ka = Keepalived(lab, 150)
    try:
        ka.start()
        assert await until(lambda: ka.watch.first("MASTER") is not None, 5.0), diag(ka, td)
        await td.start()
        await asyncio.sleep(0.5)
        child = ka.child_pid()
        assert child is not None
        t0 = time.monotonic()
        os.kill(child, signal.SIGSTOP)
        try:
            assert await until(lambda: td.first(State.MASTER, t0) is not None, 2.0), diag(ka, td)
            took = td.first(State.MASTER, t0) - t0
            limit = master_down_interval(100, 10) + MARGIN
            report("keepalived frozen -> tandem MASTER", took, limit)
            assert "master down timer expired (3 x 100 ms + skew 61 ms)" in td.events[-1][3]
            await asyncio.sleep(0.3)
        finally:
            t1 = time.monotonic()
            os.kill(child, signal.SIGCONT)
        assert await until(lambda: td.first(State.BACKUP, t1) is not None, 2.0), diag(ka, td)
        report("keepalived resumed -> tandem BACKUP", td.first(State.BACKUP, t1) - t1, 1.0)
        assert "higher priority 150 from 198.18.250.1" in td.events[-1][3]
        await asyncio.sleep(0.5)
        assert td.runner.state is State.BACKUP, diag(ka, td)
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()


async def test_tandem_preempts_lower_keepalived_master(lab):
    """keepalived 100 is master alone; tandem 150 starts as Backup, discards the lower adverts and
    takes over when its own Master_Down timer expires (the reason says it preempted the lower
    master); keepalived goes BACKUP."""
    td = Tandem(lab, 150)
    ka = Keepalived(lab, 100)
    try:
        ka.start()
        assert await until(lambda: ka.watch.first("MASTER") is not None, 5.0), diag(ka, td)
        t0 = await td.start()
        assert await until(lambda: ka.watch.first("BACKUP", t0) is not None, 2.0), diag(ka, td)
        took = td.first(State.MASTER) - t0
        limit = master_down_interval(150, 10) + MARGIN
        report("tandem 150 start -> MASTER over keepalived 100", took, limit)
        assert td.events[-1][2] is State.MASTER, diag(ka, td)
        assert td.events[-1][3].startswith("preempting lower priority 100 master 198.18.250.1"), \
            diag(ka, td)
        assert td.runner.counters["discard_lower_priority"] >= 2
        await asyncio.sleep(0.5)
        assert td.runner.state is State.MASTER and not ka.has_vip(), diag(ka, td)
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()


async def test_equal_priority_tie_higher_address_wins(lab):
    """Both priority 100.  keepalived (198.18.250.1) is master; tandem (198.18.250.2) stays Backup
    (a Backup accepts an equal priority).  keepalived is frozen, tandem takes over; keepalived
    resumes as a second master: the Master tie rule applies on both sides and the higher address,
    tandem, stays MASTER while keepalived yields."""
    td = Tandem(lab, 100)
    ka = Keepalived(lab, 100)
    try:
        ka.start()
        assert await until(lambda: ka.watch.first("MASTER") is not None, 5.0), diag(ka, td)
        await td.start()
        await asyncio.sleep(0.8)
        assert [e[2] for e in td.events] == [State.BACKUP], diag(ka, td)
        child = ka.child_pid()
        assert child is not None
        t0 = time.monotonic()
        os.kill(child, signal.SIGSTOP)
        try:
            assert await until(lambda: td.first(State.MASTER, t0) is not None, 2.0), diag(ka, td)
        finally:
            t1 = time.monotonic()
            os.kill(child, signal.SIGCONT)
        assert await until(lambda: ka.watch.first("BACKUP", t1) is not None, 2.0), diag(ka, td)
        await asyncio.sleep(0.8)
        assert td.runner.state is State.MASTER and len(td.events) == 2, diag(ka, td)
        assert ka.watch.states()[-1][1] == "BACKUP", diag(ka, td)
        assert "same priority 100 but higher IP address than ours" in ka.log(), diag(ka, td)
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()


async def test_unicast_mode(lab):
    """Unicast peers on both sides (pseudo-header dst = the peer): tandem 150 master, keepalived
    100 backup; graceful stop hands over."""
    td = Tandem(lab, 150, unicast=True)
    ka = Keepalived(lab, 100, unicast=True)
    try:
        await td.start()
        assert await until(lambda: td.runner.state is State.MASTER, 2.0), diag(ka, td)
        ka.start()
        assert await until(lambda: ka.watch.first("BACKUP") is not None, 5.0), diag(ka, td)
        await asyncio.sleep(0.8)
        assert ka.watch.first("MASTER") is None, diag(ka, td)
        t0 = time.monotonic()
        await td.runner.stop(graceful=True)
        assert await until(lambda: ka.watch.first("MASTER", t0) is not None, 2.0), diag(ka, td)
        took = ka.watch.first("MASTER", t0) - t0
        report("unicast: tandem graceful stop -> keepalived MASTER", took, skew_time(100, 10) + MARGIN)
        assert td.runner.counters["tx_priority0"] == 1, diag(ka, td)
        assert "received priority 0" in ka.log(), diag(ka, td)
        # and keepalived's unicast adverts are accepted by a restarted tandem (as Backup, 100 < ...)
        td2 = Tandem(lab, 50, unicast=True)
        try:
            await td2.start()
            await asyncio.sleep(0.6)
            assert td2.runner.state is State.BACKUP, diag(ka, td2)
            assert td2.runner.counters["accepted"] >= 4 and td2.runner.counters["drop_ttl"] == 0
        finally:
            await td2.runner.stop(graceful=False)
    finally:
        await td.runner.stop(graceful=False)
        ka.kill()
