"""The standard toolchain pair's configuration files, as text (nothing here touches the system).

The pair `make bench` compares tandem with is built only from Debian's packages, the way
their documentation builds a stateful pair: nftables does FULLNAT (dnat to a real server
chosen round-robin, snat to a floating local address), keepalived elects a master with
VRRPv3 and moves the VIP and the local address, and conntrackd replicates conntrack's
table over FTFW; keepalived's notify hook tells conntrackd when to commit what it
learned into the kernel (conntrack-tools' documented primary-backup procedure).

Every daemon of this pair gets its own files (config, lock, UNIX socket, pid files, log)
under one directory per lab, never the system's defaults, so two labs or a system
conntrackd never meet.  See lab.toolchain for the processes and docs/benchmarks.md for
why each choice was made.
"""
from __future__ import annotations

from pathlib import Path

from .plan import (BACK_IF, DIRECTORS, FRONT_IF, LADDRS, REAL_SERVERS, RS_PORT, SERVICE_PORT,
                   SYNC_PORT, VIP, VRID, director, peer)

#: the nftables table the pair's FULLNAT lives in (IPv4: the baseline serves VIP:80 TCP)
TABLE = "toolchain"
#: the one local address the pair's snat uses (it floats with the VIP, as tandem's laddrs do)
LADDR = LADDRS[0]
#: conntrackd's FTFW over UDP unicast between the directors' back addresses, on the port
#: tandem's own sync uses, so the lab's sync-loss rule (lab.faults.sync_loss) drops both alike
CTD_PORT = SYNC_PORT
#: keepalived's notify hook logs each state change here (one "<epoch> <STATE>" line)
STATES_FILE = "{name}-states"


def paths(workdir: Path, name: str) -> dict[str, Path]:
    """The files of director `name`'s daemons, all under `workdir`."""
    return {
        "nft": workdir / f"{name}.nft",
        "ctd_conf": workdir / f"conntrackd-{name}.conf",
        "ctd_lock": workdir / f"conntrackd-{name}.lock",
        "ctd_sock": workdir / f"conntrackd-{name}.ctl",
        "ctd_log": workdir / f"conntrackd-{name}.log",
        "ka_conf": workdir / f"keepalived-{name}.conf",
        "ka_pid": workdir / f"keepalived-{name}.pid",
        "ka_vrrp_pid": workdir / f"keepalived-{name}-vrrp.pid",
        "ka_tmp": workdir / f"keepalived-{name}-tmp",
        "notify": workdir / f"notify-{name}.sh",
        "states": workdir / STATES_FILE.format(name=name),
    }


def nft_ruleset() -> str:
    """FULLNAT for VIP:80 TCP, the same on both directors (loaded at start, as at boot).

    - prerouting: a new flow to the VIP goes to the next real server (numgen inc: round
      robin), port RS_PORT;
    - postrouting: a flow dnat'ed there leaves from the floating local address (the kernel
      picks the port), so the real server's reply comes back to whichever director holds it;
    - input: what is still addressed to the VIP's port, or TCP to the local address, was not
      translated (no conntrack entry with NAT): dropped, or the director's own stack would
      answer it with RST (docs/failover-pitfalls.md, 3)."""
    rs = ", ".join(f"{i} : {r['addr']}" for i, r in enumerate(REAL_SERVERS))
    rs_set = ", ".join(r["addr"] for r in REAL_SERVERS)
    return "\n".join([
        f"table ip {TABLE} {{",
        "  chain to_real {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    ip daddr {VIP} tcp dport {SERVICE_PORT} "
        f"dnat to numgen inc mod {len(REAL_SERVERS)} map {{ {rs} }} : {RS_PORT}",
        "  }",
        "  chain to_laddr {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ip daddr {{ {rs_set} }} tcp dport {RS_PORT} ct status dnat snat to {LADDR}",
        "  }",
        "  chain guard {",
        "    type filter hook input priority filter; policy accept;",
        f"    ip daddr {VIP} tcp dport {SERVICE_PORT} counter drop",
        f"    ip daddr {LADDR} meta l4proto tcp counter drop",
        "  }",
        "}",
        "",
    ])


def conntrackd_conf(name: str, p: dict[str, Path]) -> str:
    """FTFW over UDP unicast to the peer's back address, the external cache on (the
    documented default: the backup keeps the peer's states in user space and commits them
    into the kernel when it becomes master).  Only TCP is synced; the directors' own
    addresses (API, VRRP, sync) are ignored."""
    me, other = director(name), director(peer(name))
    ignore = ["127.0.0.1"] + [d[k] for d in DIRECTORS for k in ("front_addr", "back_addr")]
    return "\n".join([
        "Sync {",
        "\tMode FTFW {",
        "\t\tResendQueueSize 131072",
        "\t\tPurgeTimeout 60",
        "\t\tACKWindowSize 300",
        "\t\tDisableExternalCache no",
        "\t}",
        "\tUDP {",
        f"\t\tIPv4_address {me['back_addr']}",
        f"\t\tIPv4_Destination_Address {other['back_addr']}",
        f"\t\tPort {CTD_PORT}",
        f"\t\tInterface {BACK_IF}",
        "\t\tSndSocketBuffer 1249280",
        "\t\tRcvSocketBuffer 1249280",
        "\t\tChecksum yes",
        "\t}",
        "\tOptions {",
        "\t\tTCPWindowTracking no",
        "\t}",
        "}",
        "General {",
        "\tSystemd no",
        "\tHashSize 32768",
        "\tHashLimit 131072",
        f"\tLogFile {p['ctd_log']}",
        "\tSyslog no",
        f"\tLockFile {p['ctd_lock']}",
        "\tUNIX {",
        f"\t\tPath {p['ctd_sock']}",
        "\t}",
        "\tNetlinkBufferSize 2097152",
        "\tNetlinkBufferSizeMaxGrowth 8388608",
        "\tNetlinkOverrunResync yes",
        "\tFilter From Userspace {",
        "\t\tProtocol Accept {",
        "\t\t\tTCP",
        "\t\t}",
        "\t\tAddress Ignore {",
        *[f"\t\t\tIPv4_address {a}" for a in ignore],
        "\t\t}",
        "\t}",
        "}",
        "",
    ])


def keepalived_conf(name: str, p: dict[str, Path], advert_interval: float) -> str:
    """VRRPv3 on the front segment, the same VRID and priorities as tandem's lab pair (the
    higher priority preempts); the VIP on the front and the local address on the back move
    together; every state change runs the notify hook."""
    me = director(name)
    return "\n".join([
        "global_defs {",
        f"\trouter_id toolchain_{name}",
        "\tvrrp_version 3",
        "\tscript_user root",
        "}",
        "vrrp_instance VI_TOOLCHAIN {",
        "\tstate BACKUP",
        f"\tinterface {FRONT_IF}",
        f"\tvirtual_router_id {VRID}",
        f"\tpriority {me['priority']}",
        f"\tadvert_int {advert_interval:g}",
        "\tvirtual_ipaddress {",
        f"\t\t{VIP}/32 dev {FRONT_IF}",
        f"\t\t{LADDR}/32 dev {BACK_IF}",
        "\t}",
        f"\tnotify {p['notify']}",
        "}",
        "",
    ])


def notify_script(p: dict[str, Path], conntrackd: str) -> str:
    """keepalived's notify hook (arguments: INSTANCE, name, state, priority).  It first
    notes the state change with bash's own clock (no fork), then drives conntrackd as
    conntrack-tools' primary-backup procedure does:

    - MASTER: commit the external cache (the peer's states) into the kernel, flush both
      caches, resync the internal cache from the kernel, send it all to the peer;
    - BACKUP: shorten the kernel's timers of stale entries, ask the master for a resync;
    - FAULT: shorten the timers.

    conntrackd itself is started and stopped by the lab (by PID), not by this hook."""
    c = f"{conntrackd} -C {p['ctd_conf']}"
    return "\n".join([
        "#!/bin/bash",
        f'echo "$EPOCHREALTIME $3" >> {p["states"]}',
        'case "$3" in',
        f"  MASTER) {c} -c; {c} -f; {c} -R; {c} -B ;;",
        f"  BACKUP) {c} -t; {c} -n ;;",
        f"  FAULT) {c} -t ;;",
        "esac",
        "exit 0",
        "",
    ])


def parse_states(text: str) -> list[dict[str, object]]:
    """The notify hook's lines as the drill reads role changes: [{"at", "to"}] in time order
    (hooks run concurrently, so lines may be written out of order)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            at = float(parts[0].replace(",", "."))   # a locale's decimal comma
        except ValueError:
            continue
        out.append({"at": at, "to": parts[1].lower()})
    return sorted(out, key=lambda c: c["at"])
