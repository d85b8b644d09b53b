"""Run inside a director's namespace by tests/lab/test_kernel_burst.py; prints one JSON object.

Listens to VRRP (IP protocol 112) for SECONDS with a raw socket and reports, per source
address, how many adverts arrived and the gaps between them, timed by the kernel on
arrival (SO_TIMESTAMPNS), not by this process: how late the sender's adverts came is read
off the wire, whatever this probe's own scheduling.  Bounded: it stops after SECONDS."""
from __future__ import annotations

import json
import socket
import struct
import sys
import time

VRRP = 112
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def listen(seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.settimeout(0.2)
    seen: dict[str, list[float]] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data, anc, _flags, addr = s.recvmsg(2048, 64)
        except socket.timeout:
            continue
        at = None
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("=qq", raw[:16])
                at = sec + nsec / 1e9
        seen.setdefault(addr[0], []).append(at if at is not None else time.time())
    s.close()
    out = {}
    for src, times in seen.items():
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        out[src] = {"adverts": len(times),
                    "max_gap_ms": round(gaps[-1] * 1e3, 1) if gaps else None,
                    "p99_gap_ms": round(gaps[int(len(gaps) * 0.99)] * 1e3, 1) if gaps else None,
                    "median_gap_ms": round(gaps[len(gaps) // 2] * 1e3, 1) if gaps else None}
    return out


if __name__ == "__main__":
    print(json.dumps(listen(float(sys.argv[1]))))
