"""The IPVS TCP state machine (ip_vs_proto_tcp.c), as data.

Transcribed from mainline's tcp_states[] (sloppy_tcp and secure_tcp off).  A
connection's state moves on every packet by (table row for the direction and
event, column for the current state).  Rows: INPUT (client -> server), OUTPUT
(server -> client) and INPUT_ONLY, used while no reply has been seen.
"""
from __future__ import annotations

from proto.consts import ACK, FIN, RST, SYN
from proto.consts import (CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT, LAST_ACK, LISTEN, NONE,
                          SYN_RECV, SYN_SENT, SYNACK, TCP_STATES as STATES, TIME_WAIT)
from schema.keys import TIMEOUTS

_ABBR = {"sNO": NONE, "sES": ESTABLISHED, "sSS": SYN_SENT, "sSR": SYN_RECV,
         "sFW": FIN_WAIT, "sTW": TIME_WAIT, "sCL": CLOSE, "sCW": CLOSE_WAIT,
         "sLA": LAST_ACK, "sLI": LISTEN, "sSA": SYNACK}

# Columns are the current state, in STATES order.
_TABLE = """
INPUT
 syn        sSR  sES  sES  sSR  sSR  sSR  sSR  sSR  sSR  sSR  sSR
 fin        sCL  sCW  sSS  sTW  sTW  sTW  sCL  sCW  sLA  sLI  sTW
 ack        sES  sES  sSS  sES  sFW  sTW  sCL  sCW  sCL  sLI  sES
 rst        sCL  sCL  sCL  sSR  sCL  sCL  sCL  sCL  sLA  sLI  sSR
OUTPUT
 syn        sSS  sES  sSS  sSR  sSS  sSS  sSS  sSS  sSS  sLI  sSR
 fin        sTW  sFW  sSS  sTW  sFW  sTW  sCL  sTW  sLA  sLI  sTW
 ack        sES  sES  sSS  sES  sFW  sTW  sCL  sCW  sLA  sES  sES
 rst        sCL  sCL  sSS  sCL  sCL  sTW  sCL  sCL  sCL  sCL  sCL
INPUT_ONLY
 syn        sSR  sES  sES  sSR  sSR  sSR  sSR  sSR  sSR  sSR  sSR
 fin        sCL  sFW  sSS  sTW  sFW  sTW  sCL  sCW  sLA  sLI  sTW
 ack        sES  sES  sSS  sES  sFW  sTW  sCL  sCW  sCL  sLI  sES
 rst        sCL  sCL  sCL  sSR  sCL  sCL  sCL  sCL  sLA  sLI  sCL
"""

INPUT, OUTPUT, INPUT_ONLY = 0, 1, 2
EVENTS = ("syn", "fin", "ack", "rst")


def _parse(text: str) -> tuple[tuple[tuple[int, ...], ...], ...]:
    rows: list[list[tuple[int, ...]]] = []
    for line in text.strip().splitlines():
        words = line.split()
        if len(words) == 1:
            rows.append([])
        else:
            rows[-1].append(tuple(_ABBR[w] for w in words[1:]))
    return tuple(tuple(r) for r in rows)


#: TRANSITIONS[direction][event][state] -> next state
TRANSITIONS = _parse(_TABLE)

# tcp_state_idx: RST first, then SYN, FIN, ACK; a packet with none of them
# gives -1, and the kernel then moves the connection to CLOSE.
EVENT_OF_FLAGS = tuple(
    3 if f & RST else 0 if f & SYN else 1 if f & FIN else 2 if f & ACK else -1
    for f in range(256)
)

#: Kernel defaults (seconds), tcp_timeouts[] and udp_timeouts[], and tandem's udp_ops:
#: declared in the config schema ([timeouts]).
DEFAULT_TIMEOUTS = TIMEOUTS.defaults()


def timeout_table(timeouts: dict[str, float]) -> tuple[float, ...]:
    """Per-state timeouts indexed by state, from a merged timeouts mapping."""
    return tuple(float(timeouts[f"tcp_{s.lower()}"]) for s in STATES)


#: NEXT[direction][tcp flags byte][state] -> next state: the table above with
#: tcp_state_idx folded in (a packet with no RST/SYN/FIN/ACK moves to CLOSE), so
#: the per-packet step is one lookup and no branch.
NEXT = tuple(
    tuple(TRANSITIONS[d][e] if e >= 0 else (CLOSE,) * len(STATES) for e in EVENT_OF_FLAGS)
    for d in (INPUT, OUTPUT, INPUT_ONLY)
)


def next_state(state: int, direction: int, flags: int) -> int:
    return NEXT[direction][flags][state]
