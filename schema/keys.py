"""Every key of the node's config file, declared once with type, default, unit, range and doc.

The reader (director/config.py), the cores' defaults (syncd/config.py, the TCP
timeouts, takeover), docs/configuration.md, the lab's node configs and the
Ansible role's defaults all read these declarations.  Plug-ins add their own
sections at import: each scheduler its options (`scheduler.<name>`), each
health-check kind its keys (`health.<kind>`).
"""
from __future__ import annotations

from schema.core import ADDRESS, Key, Section

# -- shared ranges ---------------------------------------------------------------------------

#: a real server's weight: the config, the API, the control path and the OpenAPI document
WEIGHT = Key("weight", int, 1, lo=0, hi=65535,
             doc="0 quiesces the server: it gets no new connections, and its existing ones continue")
PORT = Key("port", int, lo=1, hi=65535)
#: the smallest secret the pair may share, and what "enough entropy" means for a passphrase
SYNC_KEY_MIN_BYTES = 16
SYNC_KEY_MIN_BITS = 64
#: the same for `hex:` bytes, whose estimate tops out at n*log2(n) (64 for 16 bytes), so
#: 16 random bytes pass while a run of repeated bytes does not
SYNC_KEY_MIN_BITS_RAW = 48

SECTIONS: dict[str, Section] = {}


def section(path: str, doc: str = "", *, restart: bool = False, keys=()) -> Section:
    if path in SECTIONS:
        raise ValueError(f"section [{path}] is declared twice")
    SECTIONS[path] = s = Section(path, doc, restart=restart, keys=keys)
    return s


NODE = section("node", "the node itself", keys=[
    Key("name", str, restart=True, doc="the node's name, shown in logs and `/status`"),
    Key("api", str, "127.0.0.1:9100", restart=True,
        doc="`host:port` the HTTP API listens on (the management address)"),
    Key("queue", int, 0, lo=0, hi=65535, restart=True,
        doc="NFQUEUE number the node binds; its iptables rules steer VIP and laddr traffic there"),
    Key("role", str, "master", choices=("master", "backup"), restart=True,
        doc="the node's role when there is no election (no `[vrrp]`), kept for good: `master` "
            "holds the VIPs and laddrs (added at start when `[interfaces]` names the interfaces) "
            "and announces them, `backup` holds none; either forwards what reaches it and runs "
            "its notify hook once at start. With `[vrrp]` this key is ignored: the node starts "
            "as `init` and the election decides"),
    Key("verify_checksums", str, "new", choices=("new", "all", "none"),
        doc="which packets have their L4 checksum verified: `new` (those that would open a "
            "connection), `all`, or `none`. A bad checksum on an established flow stays bad "
            "after the incremental rewrite, so the real server drops it either way"),
    Key("tick", float, 0.1, unit="s", lo=0.001, hi=10.0,
        doc="timer-wheel granularity. Expiry is exact to within one tick"),
    Key("expire_quiescent_template", bool, False,
        doc="a persistence template whose real server has weight 0 expires at once "
            "(the kernel's expire_quiescent_template)"),
    Key("removed_server_conns", str, "expire", choices=("expire", "keep"),
        doc="what happens to the connections of a real server a reload removes: `expire` "
            "(they end soon, as the kernel's expire_nodest_conn) or `keep`. A reload that changes "
            "this key and removes servers applies the new value to them"),
    Key("api_token", str, "", secret=True, shown='"" (changes refused)',
        doc="the bearer token that changing API requests must carry. With none set, changes "
            "are refused"),
    Key("state_dir", str, "/var/lib/tandem",
        doc="the directory of the node's state file `overrides.json`: the operator's weight "
            "and drain overrides, kept across a restart (written atomically on each change, "
            "read at start; a changed value takes effect at the next start). `\"\"` keeps them in "
            "memory only. The Ansible role's unit lets "
            "the node write here (systemd `StateDirectory=tandem`)"),
    Key("mode", str, "pair", choices=("pair", "cluster"), restart=True,
        doc="`pair`: an active/backup pair (or one node) as described everywhere else. "
            "`cluster`: one of N active directors behind a router's ECMP, each announcing the "
            "VIPs over BGP through its BIRD daemon (`[cluster]`, docs/cluster.md). Every "
            "service must use `maglev`, and `[vrrp]` has no place (BGP replaces the election)"),
    Key("script_user", str, "", restart=True, shown='"" (the node\'s own user)',
        doc="the user (name or uid) that notify hooks and `command` health checks run as, "
            "always without the node's capabilities. A node running as root switches to it "
            "(and its groups) for each script; a node running as its own user (the systemd "
            "unit) can run scripts only as itself, so it refuses to start with another user "
            "here. keepalived's `script_user`"),
])

TIMEOUTS = section("timeouts", "connection timeouts per state; the kernel's IPVS values", keys=[
    Key(name, float, float(v), unit="s", lo=0.001, doc=doc) for name, v, doc in (
        ("tcp_none", 2, "a TCP entry in no state yet"),
        ("tcp_established", 900, "an established TCP connection with no packet"),
        ("tcp_syn_sent", 120, "SYN seen from the server side"),
        ("tcp_syn_recv", 60, "SYN seen from the client, no answer yet"),
        ("tcp_fin_wait", 120, "FIN seen from the client"),
        ("tcp_time_wait", 120, "both FINs seen"),
        ("tcp_close", 10, "RST seen"),
        ("tcp_close_wait", 60, "FIN seen from the server"),
        ("tcp_last_ack", 30, "FIN from the server, then the client's"),
        ("tcp_listen", 120, "the kernel's LISTEN state"),
        ("tcp_synack", 120, "SYN-ACK seen"),
        ("udp", 300, "a UDP flow with no datagram"),
        ("udp_ops", 2, "tandem's own: how long a one-packet-scheduled datagram waits for its "
                       "reply (the kernel frees OPS entries at once; FULLNAT needs the reply "
                       "mapping)"),
    )
])

LIMITS = section("limits", "table and port limits", keys=[
    Key("max_conns", int, 1_000_000, unit="entries", lo=1,
        doc="size of the connection table. When it is full, a new connection evicts the "
            "oldest entry that is not *assured*, as nf_conntrack's early_drop does; failing that "
            "(the table being over 95% full), the oldest TCP entry in FIN_WAIT, LAST_ACK, "
            "TIME_WAIT, CLOSE or CLOSE_WAIT. If neither exists, the new connection is refused "
            "and counted as `table_full`. A TCP connection is assured once the real server's "
            "SYN-ACK has been seen and the client's ACK acknowledges it; a UDP flow once, with a "
            "reply seen, its packets still flow 2 s after the first"),
    Key("lport_min", int, 5000, lo=1024, hi=65535,
        doc="the lowest local port handed out on each laddr"),
    Key("lport_max", int, 65535, lo=1024, hi=65535,
        doc="the highest local port. A (laddr, port) pair needs to be unique only per real "
            "server. Ports are given out round-robin from one cursor per laddr, shared by every "
            "service using that laddr and kept across reloads, so a freed pair is reused only "
            "after the whole range has gone by. Pairs synced from a peer with a port outside "
            "this range do not count against it"),
])

TOP = section("", "top-level keys", keys=[
    Key("laddrs", list, [], doc="the default laddr pool for services that do not list their own"),
    Key("services", list, doc="the virtual services, as `[[services]]` tables"),
])

SERVICE = section("services", "one virtual service (`[[services]]`)", keys=[
    Key("proto", str, choices=("tcp", "udp"), doc="the protocol"),
    Key("vip", ADDRESS, doc="the virtual IP (IPv4 or IPv6)"),
    Key("port", int, lo=1, hi=65535, doc="the virtual port"),
    Key("scheduler", str, "wlc",
        doc="a scheduler name (see Schedulers below); loaded by name on first use"),
    Key("scheduler_options", dict, {}, shown="{}",
        doc="the scheduler's options, e.g. `{table_size = 4093}` (see Schedulers below)"),
    Key("flags", list, [], doc="scheduler flags as ipvsadm names them: `sh-fallback`, "
                               "`sh-port`, `mh-fallback`, `mh-port`, `maglev-fallback`"),
    Key("laddrs", list, shown="top-level `laddrs`",
        doc="the FULLNAT local addresses: the source address real servers see. They must be "
            "the same family as the VIP, each listed once, and none may be a VIP or a real "
            "server's address (of any service)"),
    Key("real_servers", list, doc="the real servers, as `[[services.real_servers]]` tables; "
                                  "each `addr`:`port` once"),
    Key("name", str, "", shown="`proto/vip:port`", doc="the name used in the API and in metrics"),
    Key("persistent", (bool, float), 0.0, unit="s", lo=0.0,
        doc="while a client's pin is valid, its connections go to the same real server "
            "(IPVS templates). `true` means 300, 0 or `false` none"),
    Key("persist_netmask", int, shown="32 / 128", lo=0, hi=128,
        doc="the prefix length that groups client addresses for persistence"),
    Key("ops", bool, False, doc="one-packet scheduling: each UDP datagram is scheduled by itself"),
    Key("forwarding", str, "engine", choices=("engine", "kernel"),
        doc="who forwards the service's packets: `engine` (every packet through the node's engine, "
            "in user space) or `kernel` (the node schedules each new flow, the kernel's conntrack "
            "NAT forwards the rest: docs/kernel-fast-path.md). A kernel-mode service needs a VIP and "
            "laddrs of its own (no engine-mode service may use them), TCP or UDP, and no `ops`"),
    Key("client_address", str, "none", choices=("none", "proxy-v1", "proxy-v2", "toa"),
        doc="how a TCP service's real servers learn the client's address: `none`, or a PROXY "
            "protocol header (`proxy-v1` text, `proxy-v2` binary) the node puts in front of the "
            "connection's first data byte, shifting sequence numbers from then on "
            "(docs/client-address.md), or `toa`: TCP option 254 naming the client on the client "
            "segments that can complete the real server's handshake, for real servers with a TOA "
            "module (docs/client-address.md). Engine forwarding only. A UDP service may have `proxy-v2`: a version 2 header (DGRAM) on "
            "every datagram from the client"),
    Key("client_proxy_header", str, "refuse", choices=("refuse", "pass"),
        doc="on a `proxy-v1`/`proxy-v2` service, a client whose first bytes are a PROXY header of "
            "its own: `refuse` (none of its bytes reach the real server, its packets are dropped) "
            "or `pass` (its header goes through as it came and the node writes none, for a trusted "
            "proxy in front); never two headers (docs/client-address.md)"),
    Key("sorry_server", str, None, shown="none", doc="`addr:port` to use when no real server is up"),
    Key("health", dict, None, shown="none", doc="the health check (see Health-check kinds below)"),
])
#: `persistent = true`, as `ipvsadm -p` with no timeout
PERSISTENT_TRUE = 300.0

REAL_SERVER = section("services.real_servers", "one real server of a service", keys=[
    Key("addr", ADDRESS, doc="the real server's address, in the same family as the VIP"),
    Key("port", int, lo=1, hi=65535, shown="the service port", doc="the real server's port"),
    WEIGHT,
    Key("u_threshold", int, 0, unit="conns", lo=0, shown="0 (none)",
        doc="the upper connection threshold. At this many connections the server is marked "
            "OVERLOAD and gets no new ones"),
    Key("l_threshold", int, 0, unit="conns", lo=0,
        doc="the lower threshold at which OVERLOAD clears. If it is 0, OVERLOAD clears at 3/4 "
            "of `u_threshold`"),
])

INTERFACES = section("interfaces", "the pair's two interfaces, tracked with `[vrrp]`: one down "
                     "puts the node in fault. In cluster mode they are tracked only (no address is "
                     "added to them): one down withdraws every route the director announces",
                     restart=True, keys=[
    Key("front", str, doc="the name of the interface that gets the VIPs (and carries VRRP), "
                          "e.g. `eth0`; in cluster mode, the one towards the router"),
    Key("back", str, doc="the name of the interface that gets the laddrs (towards the real "
                         "servers); it may be `front` itself"),
    Key("garp_count", int, 3, lo=0, hi=100,
        doc="how many gratuitous ARPs to send on each segment on becoming master"),
    Key("garp_interval", float, 0.05, unit="s", lo=0.0, hi=10.0, doc="the time between them"),
])

VRRP = section("vrrp", "the election (VRRPv3, RFC 5798; every service VIP is advertised)",
               restart=True, keys=[
    Key("vrid", int, lo=1, hi=255, doc="the virtual router id, the same on both nodes"),
    Key("priority", int, 100, lo=1, hi=255,
        doc="255 means address owner. The higher priority becomes master"),
    Key("advert_interval", float, 0.1, unit="s", lo=0.01, hi=40.95,
        doc="in 10 ms steps (VRRPv3 carries centiseconds)"),
    Key("primary_address", ADDRESS,
        doc="this node's own address on `front`: the advert source and the tie-breaker"),
    Key("preempt", bool, True, doc="a higher-priority backup takes over from a live "
                                   "lower-priority master"),
    Key("preempt_delay", float, 0.0, unit="s", lo=0.0, doc="the wait before preempting"),
    Key("nopreempt", bool, False, doc="never take over from a live master"),
    Key("unicast_peers", list, [], doc="send adverts to these addresses instead of 224.0.0.18; "
                                       "of the family of `primary_address`"),
    Key("startup_sync_wait", float, 1.0, unit="s", lo=0.0, hi=60.0,
        doc="how long a starting node waits for the peer's bulk resync before it may become "
            "master, so it never takes over with an empty table"),
    Key("preempt_yield", float, 0.3, unit="s", lo=0.0, hi=10.0,
        doc="how long a node preempting a live master waits for it to let go of the "
            "addresses, so two nodes never own them at once (failback only; a dead master is "
            "not waited for)"),
])

#: the sync group when `sync.interface` is an IPv6 address: link scope (never routed off the
#: back link), the IPv4 default's last byte
SYNC_GROUP6 = "ff02::81"
#: the largest sync payload over IPv6 unless `sync.max_payload` is set: a 1500-byte MTU less
#: the 40-byte IPv6 and 8-byte UDP headers (IPVS's sync_maxlen for an IPv6 group)
SYNC_MAX_PAYLOAD6 = 1452

SYNC = section("sync", "connection sync to the peer", restart=True, keys=[
    Key("key", str, secret=True,
        doc=f"the shared HMAC-SHA256 secret: a passphrase of at least {SYNC_KEY_MIN_BYTES} "
            f"bytes and about {SYNC_KEY_MIN_BITS} bits of entropy, or `hex:` and at least "
            f"{SYNC_KEY_MIN_BYTES} random bytes in hex"),
    Key("sync_id", int, 0, lo=0, hi=255, doc="a message with another id is dropped"),
    Key("threshold", int, 3, unit="packets", lo=0,
        doc="as `sync_threshold[0]`: send on inbound packet 3, 53, 103, ..."),
    Key("period", int, 50, unit="packets", lo=0, doc="as `sync_threshold[1]`"),
    Key("refresh_period", float, 0.0, unit="s", lo=0.0, doc="as `sync_refresh_period` (0 = off)"),
    Key("retries", int, 0, lo=0, hi=3, doc="as `sync_retries`"),
    Key("persist_mode", bool, False, doc="as `sync_persist_mode`"),
    Key("on_established", bool, True,
        doc="also send a TCP connection the moment it enters ESTABLISHED, at once (no flush "
            "delay). The kernel waits for the threshold packet, which a reused client port may "
            "have passed long ago; `false` restores the kernel's rule exactly"),
    Key("on_syn", bool, True,
        doc="also send a new TCP connection when its first SYN is scheduled, at once. A client "
            "whose handshake completed just before the master died (its ACK still queued there) "
            "then still finds its entry on the backup; the kernel sends nothing before the "
            "threshold packet. `false` (with `on_established = false`) restores its rule exactly"),
    Key("max_payload", int, 1472, unit="bytes", lo=256, hi=65507,
        shown=f"1472 ({SYNC_MAX_PAYLOAD6} over IPv6)",
        doc="the largest datagram payload, MAC included (IPVS `sync_maxlen`: a 1500-byte MTU "
            "less the IP and UDP headers)"),
    Key("flush_delay", float, 0.020, unit="s", above=0.0,
        doc="a partly filled message goes out this long after its first entry"),
    Key("heartbeat_interval", float, 0.2, unit="s", above=0.0,
        doc="an idle sender sends the last seq this often, so a lost tail is seen"),
    Key("tail_probe", float, 0.005, unit="s", lo=0.0,
        doc="when nothing followed a message with an urgent entry (a new or an ESTABLISHED "
            "connection) for this long, that last message is sent once more, and heartbeats "
            "follow at doubling intervals up to `heartbeat_interval` (TCP's tail loss probe): "
            "a lost last message is made good within milliseconds, before a failover could "
            "orphan its connections. A copy the peer already had counts as `replayed` there. "
            "0 = off"),
    Key("urgent_repeat", float, 0.010, unit="s", lo=0.0,
        doc="a message with an urgent entry (a new or an ESTABLISHED connection) is sent once "
            "more this long after it first went out, whatever followed it: a young "
            "connection's entry survives the loss of one copy without a NACK round trip, which "
            "a master that dies tens of milliseconds later may not live to answer. One more "
            "datagram per urgent message; a copy the peer already had counts as `replayed` "
            "there. 0 = off"),
    Key("resend_window", int, 4096, unit="messages", lo=1,
        doc="messages kept for answering NACKs. Beyond this, a bulk resync is sent"),
    Key("resend_holdoff", float, 0.005, unit="s", lo=0.0,
        doc="the same message is not re-sent twice within this long (two NACKs for one loss "
            "crossing). Well below `nack_retry`: the peer times its quick retry from its NACK, "
            "this node its holdoff from its answer, and a master busy with a burst answered "
            "10 ms late, so a 20 ms holdoff refused the retry of a lost resend"),
    Key("resend_per_nack", int, 256, unit="messages", lo=1,
        doc="at most this many messages are re-sent for one NACK; the peer asks again for "
            "the rest"),
    Key("resend_rate", float, 5000.0, unit="messages/s", above=0.0,
        doc="at most this many messages are re-sent per second in all"),
    Key("bulk_rate", float, 50_000.0, unit="entries/s", above=0.0,
        doc="the pace of a bulk resync"),
    Key("bulk_interval", float, 0.010, unit="s", above=0.0, doc="how often a bulk is fed"),
    Key("max_queue", int, 1024, unit="messages", lo=1,
        doc="messages built but not yet handed to the socket; past this the oldest waits "
            "for the peer's NACK"),
    Key("nack_interval", float, 0.050, unit="s", above=0.0,
        doc="how often missing messages are asked for again"),
    Key("nack_retry", float, 0.025, unit="s", lo=0.0,
        doc="a message found missing is asked for again this long after the first NACK, "
            "then at doubling intervals up to `nack_interval`: a NACK or its resend lost "
            "right before the peer dies is asked for again in time. 0 = `nack_interval` "
            "from the start"),
    Key("gap_give_up", float, 5.0, unit="s", above=0.0,
        doc="how long they are asked for before a bulk resync is requested instead"),
    Key("resync_retry", float, 1.0, unit="s", above=0.0,
        doc="an unanswered resync request is repeated after this long"),
    Key("lag_samples", int, 1024, lo=1, doc="sync-lag samples kept for the p50/p99/max report"),
    Key("max_age", float, 30.0, unit="s", lo=0.0,
        doc="a resent message sent more than this long before the newest one of its sender "
            "(by the sender's own clock; the pair's clocks need not agree) is not applied, and "
            "a bulk resync is asked for instead: a restarted node never applies old state "
            "from the peer's resend window. Above `gap_give_up`; 0 = off"),
    Key("overrides_interval", float, 1.0, unit="s", above=0.0,
        doc="how often the operator's overrides (weights, drains and their clears) are sent "
            "to the peer again, besides at once on each change and when the peer (re)starts: "
            "a lost message is made good within this long"),
    Key("mode", str, "multicast", choices=("multicast", "unicast"), doc="the transport"),
    Key("group", ADDRESS, "224.0.0.81", shown=f"224.0.0.81 (`{SYNC_GROUP6}` when `interface` is IPv6)",
        doc="multicast: the group, of the family of `interface`. The IPv4 default is IPVS's; "
            "the IPv6 one is link-scope (ff02::), so it never leaves the back link"),
    Key("port", int, 8848, lo=0, hi=65535,
        doc="the group's port, or the local port in unicast mode (IPVS's)"),
    Key("ttl", int, 1, lo=1, hi=255, doc="multicast TTL"),
    Key("interface", ADDRESS, None, shown="required for multicast",
        doc="multicast: the address (IPv4 or IPv6, not the name) of the interface to join the group and "
            "send on (the back address). Without it the kernel picks the interface by route, so connection data "
            "could leave on the client side; a multicast sync without it is refused"),
    Key("bind", ADDRESS, None, shown="`interface`, else the back interface's address",
        doc="unicast: the local address to bind. Never the wildcard (refused): connection data "
            "must not leave on the client side"),
    Key("peers", list, [], doc="unicast: the peers as `host:port`"),
    Key("sock_buf", int, 1 << 20, unit="bytes", lo=0, doc="SO_SNDBUF / SO_RCVBUF (0 = the system's)"),
])

CLUSTER = section("cluster", "cluster mode (`node.mode = \"cluster\"`): how the node "
                             "tells its BIRD daemon what to announce (docs/cluster.md)",
                  restart=True, keys=[
    Key("bird_socket", str, "/run/bird/bird.ctl",
        doc="BIRD's control socket (`birdc -s`); Debian's bird2 listens here"),
    Key("announce_include", str, "/etc/bird/tandem/announce.conf",
        doc="the file the node writes the announced prefixes to; BIRD's config includes it "
            "and exports its two static protocols, `tandem_announce4` and `tandem_announce6`, "
            "to the router (docs/cluster.md has the BIRD side)"),
    Key("drain_timeout", float, 300.0, unit="s", lo=1.0, hi=86400.0,
        doc="a draining director withdraws its VIPs at once and its laddrs when its "
            "connections have ended or after this long, whichever comes first"),
    Key("members", dict, {}, shown="{} (this director alone)",
        doc="every director of the cluster by node name, this one included, with its own "
            "laddr pool: `{ a = [\"198.19.42.11\"], b = [\"198.19.42.12\"] }`; once the "
            "cluster has kernel-mode services, each pool by forwarding mode: "
            "`a = { engine = [\"198.19.42.11\"], kernel = [\"198.19.43.11\"] }` (a peer's "
            "kernel-mode laddrs stay tracked by conntrack, its engine-mode ones are queued). This "
            "director's pool must be its services' laddrs; no laddr belongs to two directors. "
            "The same table on every director: it says whose laddr a synced connection "
            "uses (flows owned), which laddrs a survivor adopts when their owner is gone, and "
            "every director's engine-mode laddrs are queued on every director (an adopted laddr's replies "
            "need no new rule). The peers' sync addresses are `[sync] peers` (unicast)"),
])

NOTIFY = section("notify", "hooks run on entering a state: an argv list (no shell), with the "
                           "state and the node name appended; one at a time", keys=[
    Key(state, list, None, shown="none", doc=f"run on becoming {state}")
    for state in ("master", "backup", "fault")
])

HEALTH = section("services.health", "the health check of a service's real servers "
                                    "(keys common to every kind)", keys=[
    Key("kind", str, doc="the kind of probe (see below)"),
    Key("interval", float, 1.0, unit="s", lo=0.01, hi=3600.0,
        doc="one probe starts this long after the previous one started"),
    Key("timeout", float, 0.5, unit="s", above=0.0, hi=600.0, shown="0.5 (at most `interval`)",
        doc="a probe that takes longer fails"),
    Key("rise", int, 2, lo=1, hi=1000, doc="consecutive successes that bring a down server back"),
    Key("fall", int, 3, lo=1, hi=1000, doc="consecutive failures that take an up server down"),
    Key("port", int, None, lo=1, hi=65535, shown="the real server's",
        doc="probe this port instead of the real server's"),
    Key("action", str, "weight0", choices=("weight0", "remove"),
        doc="a down server keeps weight 0 (`weight0`: established connections carry on) or "
            "leaves the scheduler's list (`remove`)"),
    Key("initial", str, "up", choices=("up", "down"), doc="the state before the first verdict"),
])


def restart_sections() -> list[str]:
    """The sections a reload cannot apply."""
    return [s.path for s in SECTIONS.values() if s.restart]


def plugin_section(family: str, name: str, doc: str, keys=()) -> Section:
    """The section of one plug-in (a scheduler's options, a health kind's keys); a plug-in
    module imported twice (a reload of the module) gets its section back."""
    path = f"{family}.{name}"
    got = SECTIONS.get(path)
    if got is not None:
        return got
    return section(path, doc, keys=keys)


def plugins(family: str) -> dict[str, Section]:
    """The registered sections of one plug-in family, by plug-in name."""
    prefix = family + "."
    return {p[len(prefix):]: s for p, s in sorted(SECTIONS.items()) if p.startswith(prefix)}
