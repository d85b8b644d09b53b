"""What a TOA module would learn, read from the wire in a real server's namespace.

Linux has no TOA module here, so the lab reads the option where the module would: in the
segment that completes each connection's handshake at the real server (the first
segment of a flow after its SYN).  A packet socket sees every segment that reaches the
namespace; for each flow to `--port` it records the TOA option (kind 254, length 8 or 20:
port, then address) of that first segment, and how many of the flow's segments carried one.

    python -m lab.toa_capture --addr RS --port 8080 --stop-file F [--seconds 60]

Prints `ready` once the socket is open, then, when the stop file appears (or after
`--seconds`, whichever comes first), one JSON line: {"flows": {"laddr:lport": {"toa":
[addr, port] | null, "segments_with_toa": n, "syn_toa": bool}}, "packets": n}.

`through(...)` runs it around `count` WHOAMI connections from the client namespace and
gives, per connection (by its client port), what the real server saw as its peer and the
TOA option of the segment that completed its handshake there.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ETH_P_ALL = 0x0003
_SYN, _ACK = 0x02, 0x10


def toa_option(tcp: bytes) -> tuple[str, int] | None:
    """The first option 254 of length 8 or 20 in a TCP header, as a TOA module reads it."""
    doff = (tcp[12] >> 4) * 4
    i, end = 20, min(doff, len(tcp))
    while i < end:
        kind = tcp[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or tcp[i + 1] < 2 or i + tcp[i + 1] > end:
            return None
        size = tcp[i + 1]
        if kind == 254 and size in (8, 20):
            port = struct.unpack_from("!H", tcp, i + 2)[0]
            return str(ipaddress.ip_address(tcp[i + 4:i + size])), port
        i += size
    return None


def _segment(pkt: bytes, addr: bytes, port: int):
    """(source, sport, tcp header bytes) of a TCP segment to addr:port, else None."""
    if not pkt:
        return None
    if pkt[0] >> 4 == 4 and len(pkt) >= 20 and pkt[9] == 6 and pkt[16:20] == addr:
        l4, src = (pkt[0] & 0xF) * 4, pkt[12:16]
    elif pkt[0] >> 4 == 6 and len(pkt) >= 40 and pkt[6] == 6 and pkt[24:40] == addr:
        l4, src = 40, pkt[8:24]
    else:
        return None
    tcp = pkt[l4:]
    if len(tcp) < 20 or struct.unpack_from("!H", tcp, 2)[0] != port:
        return None
    return str(ipaddress.ip_address(src)), struct.unpack_from("!H", tcp, 0)[0], tcp


def capture(addr: str, port: int, stop_file: str, seconds: float) -> dict:
    dst = ipaddress.ip_address(addr).packed
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    print("ready", flush=True)
    flows: dict[str, dict] = {}
    packets = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            if not select.select([s], [], [], 0.1)[0]:
                continue
            pkt, (_ifname, _proto, pkttype, *_rest) = s.recvfrom(65535)
            if pkttype == socket.PACKET_OUTGOING:
                continue
            seg = _segment(pkt, dst, port)
            if seg is None:
                continue
            packets += 1
            src, sport, tcp = seg
            key = f"{src}:{sport}"
            flags = tcp[13]
            opt = toa_option(tcp)
            if flags & _SYN:
                flows[key] = {"toa": None, "first": False, "segments_with_toa": 0,
                              "syn_toa": opt is not None}
                continue
            flow = flows.get(key)
            if flow is None:
                continue
            if not flow["first"] and flags & _ACK:
                flow["first"], flow["toa"] = True, opt and list(opt)
            flow["segments_with_toa"] += opt is not None
    finally:
        s.close()
    return {"flows": flows, "packets": packets}


#: run in the client namespace: `count` connections one after another, each asking WHOAMI
#: (the plain echo answers with the peer it sees: laddr:lport); prints {client port: peer}
_CLIENT = r"""
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = {}
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(5)
    local = s.getsockname()[1]
    s.sendall(b"WHOAMI\n")
    line = s.makefile("rb").readline().decode().split()
    seen[local] = line[1] if len(line) == 2 else None
    s.close()
print(json.dumps(seen))
"""


def through(client_ns: str, vip: str, vport: int, rs_ns: str, rs_addr: str, rs_port: int,
            count: int, cwd: str, env: dict) -> tuple[dict[int, str | None], dict[str, dict]]:
    """({client port: the peer the real server saw}, the capture's flows by that peer),
    for `count` connections to vip:vport, all of which reach rs_addr:rs_port."""
    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        cap = subprocess.Popen(["ip", "netns", "exec", rs_ns, sys.executable, "-m",
                                "lab.toa_capture", "--addr", rs_addr, "--port", str(rs_port),
                                "--stop-file", str(stop), "--seconds", "90"],
                               cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            assert cap.stdout is not None
            if cap.stdout.readline().strip() != "ready":
                raise RuntimeError(f"toa_capture did not start: {cap.communicate(timeout=10)}")
            cp = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", _CLIENT,
                                 vip, str(vport), str(count)],
                                cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
            stop.touch()
            out, err = cap.communicate(timeout=30)
        finally:
            if cap.poll() is None:
                cap.kill()
                cap.wait()
    if cp.returncode != 0:
        raise RuntimeError(f"client failed: {cp.stderr[-2000:]}")
    seen = {int(k): v for k, v in json.loads(cp.stdout.splitlines()[-1]).items()}
    return seen, json.loads(out.splitlines()[-1])["flows"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab.toa_capture", description=__doc__.split("\n")[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args(argv)
    print(json.dumps(capture(a.addr, a.port, a.stop_file, min(a.seconds, 300.0))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
