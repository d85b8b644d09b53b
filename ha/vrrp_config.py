"""A VRRP instance's configuration, checked when it is made, and the RFC 5798 timers
derived from it (ha.vrrp, which re-exports every name, runs the instance).

Timers (RFC 5798 §6.1), all in seconds here, the interval in centiseconds on the wire:

    Skew_Time            = ((256 - Priority) * Master_Adver_Interval) / 256     (v2: (256 - Priority) / 256 s)
    Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time               (v2: 3 * Advertisement_Interval + skew)

    e.g. priority 100: 0.1 s -> 0.3609 s (after a priority-0 advert: Skew_Time 0.0609 s); 0.01 s -> 0.0361 s.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from proto import vrrp as P
from ha.vrrp_validate import canonical as _canon


@dataclass(frozen=True)
class VrrpConfig:
    """One VRRP instance.  advert_interval in seconds (sent in 10 ms units; v3: 0.01..40.95,
    v2: whole seconds 1..255).  addresses: the VIPs advertised (the peer must advertise the same
    set).  primary_address: this node's own address on the interface (the source of its adverts,
    the tie-breaker).  name: for logs, default VI_<vrid>."""

    vrid: int
    priority: int = 100
    advert_interval: float = 0.1
    addresses: tuple[str, ...] = ()
    primary_address: str = ""
    preempt: bool = True
    preempt_delay: float = 0.0
    nopreempt: bool = False
    version: int = 3
    unicast_peers: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"vrid must be 1..255, not {self.vrid}")
        if not 1 <= self.priority <= 255:
            raise ValueError(f"priority must be 1..255, not {self.priority}")
        if self.version not in (2, 3):
            raise ValueError(f"version must be 2 or 3, not {self.version}")
        if not (self.preempt_delay >= 0 and math.isfinite(self.preempt_delay)):
            raise ValueError("preempt_delay must be >= 0")
        cs = round(self.advert_interval * 100)
        if self.version == 3:
            if not 1 <= cs <= 4095 or abs(cs - self.advert_interval * 100) > 1e-6:
                raise ValueError(f"advert_interval must be 0.01..40.95 s in 10 ms steps, not "
                                 f"{self.advert_interval}")
        elif cs % 100 or not 1 <= cs // 100 <= 255:
            raise ValueError(f"a VRRPv2 advert_interval is 1..255 whole seconds, not {self.advert_interval}")
        if not self.primary_address:
            raise ValueError("primary_address is required")
        primary = ipaddress.ip_address(_canon(self.primary_address))
        if primary.version == 6 and not self.unicast_peers and not primary.is_link_local:
            raise ValueError("an IPv6 primary_address must be link-local (the advert source)")
        addrs = tuple(_canon(a) for a in self.addresses)
        if not addrs:
            raise ValueError("at least one address (VIP) is required")
        if any(ipaddress.ip_address(a).version != primary.version for a in addrs):
            raise ValueError("the addresses and primary_address must be of one family")
        if self.version == 2 and primary.version != 4:
            raise ValueError("VRRPv2 is IPv4 only")
        peers = tuple(_canon(p) for p in self.unicast_peers)
        if any(ipaddress.ip_address(p).version != primary.version for p in peers):
            raise ValueError("unicast_peers must be of the family of primary_address")
        object.__setattr__(self, "addresses", addrs)
        object.__setattr__(self, "primary_address", str(primary))
        object.__setattr__(self, "unicast_peers", peers)
        if not self.name:
            object.__setattr__(self, "name", f"VI_{self.vrid}")

    @property
    def advert_interval_cs(self) -> int:
        return round(self.advert_interval * 100)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.primary_address).version

    @property
    def group(self) -> str:
        return P.VRRP_GROUP4 if self.family == 4 else P.VRRP_GROUP6


def skew_time(priority: int, master_adver_int_cs: int, version: int = 3) -> float:
    """Skew_Time in seconds (RFC 5798 §6.1; v2: RFC 3768 §6.1)."""
    if version == 2:
        return (256 - priority) / 256
    return (256 - priority) * master_adver_int_cs / 256 / 100


def master_down_interval(priority: int, master_adver_int_cs: int, version: int = 3) -> float:
    """Master_Down_Interval in seconds: 3 x the (master's) interval + Skew_Time."""
    return 3 * master_adver_int_cs / 100 + skew_time(priority, master_adver_int_cs, version)
