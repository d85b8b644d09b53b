"""Numbers every layer shares, defined once: IP protocol numbers, connection
flags and the connection states that cross the wire in sync messages.

Everything else (the engine, the sync codec and policy, the API, the bench)
imports them from here, so a flag or a state means the same thing on both
directors and in every file.
"""
from __future__ import annotations

# -- IP protocol numbers (IANA) ----------------------------------------------------
ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58

#: the L4 protocols a virtual service can balance, by config name and back
PROTOS = {"tcp": TCP, "udp": UDP}
PROTO_NAMES = {number: name for name, number in PROTOS.items()}

# -- TCP header flag bits ----------------------------------------------------------
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# -- connection flags, named after IP_VS_CONN_F_* ---------------------------------
INACTIVE = 0x01     # counted in the dest's inactive, not active, connections
NOOUTPUT = 0x02     # no reply seen yet: the TCP state machine uses INPUT_ONLY
SYNCED = 0x04       # created from a sync message, not by this node's scheduler
ASSURED = 0x08      # proven two-way (see director.protocol): never early-dropped
ONE_PACKET = 0x10   # one-packet scheduling: only the REPLY tuple is indexed

#: the flags a sync entry carries; the others are local to one director
SYNC_FLAGS = INACTIVE | NOOUTPUT | ASSURED
FLAG_NAMES = (("inactive", INACTIVE), ("nooutput", NOOUTPUT), ("synced", SYNCED),
              ("assured", ASSURED), ("one_packet", ONE_PACKET))

# -- connection states (IP_VS_TCP_S_*, IP_VS_UDP_S_*), as numbered on the wire -----
TCP_STATES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
              "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")
(NONE, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT,
 CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, SYNACK) = range(len(TCP_STATES))
#: the TCP states in which a connection is sent to the peer (IPVS syncs these; the
#: engine's TCP operations and the sync policy both read this one set)
TCP_SYNC_STATES = frozenset((ESTABLISHED, FIN_WAIT, CLOSE, CLOSE_WAIT, TIME_WAIT))
#: UDP has one state (IP_VS_UDP_S_NORMAL), shown as "UDP"
UDP_STATES = ("UDP",)
#: state names by protocol: a sync entry's state must index its protocol's tuple
STATE_NAMES = {TCP: TCP_STATES, UDP: UDP_STATES}
