"""A real server ("destination" in IPVS terms) and the counters IPVS keeps for it.

Schedulers read these fields; the engine updates them.  Field names follow
struct ip_vs_dest so the kernel's rules can be transcribed without translation.
"""
from __future__ import annotations

import ipaddress


class Dest:
    __slots__ = (
        "addr", "port", "family", "weight", "active", "inactive", "persist",
        "u_threshold", "l_threshold", "overloaded", "available", "name",
        "packets_in", "packets_out", "bytes_in", "bytes_out", "conns_total",
    )

    def __init__(self, addr: str | bytes, port: int, weight: int = 1, *,
                 u_threshold: int = 0, l_threshold: int = 0, name: str = "") -> None:
        ip = ipaddress.ip_address(addr if isinstance(addr, str) else bytes(addr))
        self.addr: bytes = ip.packed
        self.family: int = ip.version
        self.port = port
        self.weight = weight
        self.active = 0        # activeconns
        self.inactive = 0      # inactconns
        self.persist = 0       # persistconns (templates)
        self.u_threshold = u_threshold   # 0 = no upper limit
        self.l_threshold = l_threshold
        self.overloaded = False          # IP_VS_DEST_F_OVERLOAD
        self.available = True            # IP_VS_DEST_F_AVAILABLE (False once removed from the service)
        self.name = name or f"{ip}:{port}"
        self.packets_in = self.packets_out = 0
        self.bytes_in = self.bytes_out = 0
        self.conns_total = 0

    @property
    def overhead(self) -> int:
        """ip_vs_dest_conn_overhead: an active connection costs 256 inactive ones."""
        return (self.active << 8) + self.inactive

    @property
    def total_conns(self) -> int:
        """ip_vs_dest_totalconns, the figure the thresholds are compared against."""
        return self.active + self.inactive

    def update_overload(self) -> None:
        """Set or clear OVERLOAD as ip_vs_bind_dest / ip_vs_unbind_dest do.

        Set when total >= u_threshold; cleared when total drops to l_threshold,
        or, with no l_threshold, to 3/4 of u_threshold (the kernel's default).
        """
        u = self.u_threshold
        if not u:
            self.overloaded = False
            return
        total = self.total_conns
        if total >= u:
            self.overloaded = True
        elif self.overloaded:
            low = self.l_threshold or (u * 3) // 4
            if total <= low:
                self.overloaded = False

    @property
    def addr_str(self) -> str:
        return str(ipaddress.ip_address(self.addr))

    def __repr__(self) -> str:
        return f"Dest({self.name}, w={self.weight}, a={self.active}, i={self.inactive})"
