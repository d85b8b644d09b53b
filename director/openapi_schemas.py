"""The component schemas of the node API's OpenAPI document (director.openapi): the
shape of every answer and request body the API (director/api.py) serves, and the
building blocks they share.  tests/unit/test_api.py validates the app's answers with
them.
"""
from __future__ import annotations

from typing import Any

from schema.keys import WEIGHT

#: a real server's weight, with the config schema's range
_WEIGHT = {"type": "integer", "minimum": WEIGHT.lo, "maximum": WEIGHT.hi}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(desc: str, schema: dict) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


_INT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number"}
STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_NUM_OR_NULL = {"type": "number", "nullable": True}
_ADDR_PORT = {"type": "string", "description": "addr:port (IPv6 addresses unbracketed)",
              "example": "198.18.2.21:8080"}
#: the one rule for times (docs/operations.md, "Times"): an instant is epoch seconds, UTC, to
#: the ms; a duration says its unit in its name (`_s`, `_ms`, `expires_in` in seconds)
TIMES = ("Every instant the API reports is epoch seconds (UTC, to the ms), converted from the "
         "node's monotonic clock when the answer is built; durations carry their unit.")


def _epoch(what: str, nullable: bool = False) -> dict:
    out: dict[str, Any] = {"type": "number", "description": f"{what}: epoch seconds, UTC, to the ms",
                           "example": 1796337029.093}
    if nullable:
        out["nullable"] = True
    return out


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "description": "Every error answer: `error` is one line saying what was wrong "
                       "(`PARAM: PROBLEM` for a bad parameter, `FILE: FIELD: PROBLEM` for a bad "
                       "config file), never a secret or a traceback.",
        "properties": {"error": {"type": "string", "minLength": 1}, "detail": STR},
    },
    "Status": {
        "type": "object",
        "required": ["node", "role", "uptime_s", "conns", "engine", "queue"],
        "properties": {
            "node": STR,
            "role": {"type": "string", "description": "master | backup | fault | init (VRRP state)"},
            "priority": {"type": "integer", "nullable": True},
            "peer": {"type": "string", "nullable": True,
                     "description": "the peer's address (peer_status.address), on either role"},
            "peer_status": {"nullable": True, "allOf": [ref("PeerStatus")],
                            "description": "the peer as this node knows it; null when the node "
                                           "neither elects nor syncs"},
            "uptime_s": {"type": "number", "description": "seconds since the node started, to the ms"},
            "conns": ref("ConnCounts"),
            "engine": {
                "type": "object",
                "description": "Engine counters (packets, forwarded_in, forwarded_out, conns_new, "
                               "conns_expired, conns_reused, early_drops, icmp_errors, "
                               "passed_local, kernel_handoffs: new flows of kernel-mode services "
                               "handed to the kernel with a mark) and the non-zero drop reasons.",
                "properties": {"drops": {"type": "object", "additionalProperties": _INT}},
                "additionalProperties": True,
            },
            "queue": {
                "type": "object", "description": "The kernel's NFQUEUE counters (empty off-node), "
                                                 "and the queue reader's own (wakeups, "
                                                 "serve_errors).",
                "properties": {"queue_total": _INT, "queue_dropped": _INT, "user_dropped": _INT,
                               "wakeups": _INT, "serve_errors": _INT,
                               "queued": {"type": "integer", "description": "packets the kernel "
                                          "has handed to user space through this queue so far"}},
            },
            "kernel": {
                "type": "object", "nullable": True,
                "description": "kernel-mode forwarding (null when no service is kernel-mode): "
                               "the flows followed from conntrack events and their counts, "
                               "events received, events lost (overruns: ENOBUFS), the dumps "
                               "that repaired the view (resyncs) and what they changed (repaired); "
                               "with sync, the entries made from events (sync_*: urgent, "
                               "refreshes, ends) and the injections of the peer's (inject_*); "
                               "the flows of a previous run adopted at start (adopted); the "
                               "packets tandem's rules dropped (drops: invalid, untranslated)",
                "properties": {**{k: _INT for k in (
                    "flows", "active", "inactive", "events", "overruns", "resyncs", "repaired",
                    "adopted", "adopt_conflicts", "counter_read_failures",
                    "dump_failures", "dumps_coalesced", "repair_steps", "dump_entries",
                    "deleted", "sync_entries", "sync_urgent", "sync_refreshes",
                    "sync_ends", "sync_pruned", "inject_created", "inject_updated", "inject_deleted",
                    "inject_failed", "inject_backlog")},
                    "drops": {"type": "object", "description": "packets to kernel-mode services "
                              "dropped by tandem's rules, as last read (at most ~1 s old): "
                              "invalid (conntrack found them invalid), untranslated (the guard: "
                              "still addressed to a service or laddr after NAT)",
                              "properties": {"invalid": _INT, "untranslated": _INT}}},
                "additionalProperties": True,
            },
            "cluster": {
                "type": "object", "nullable": True,
                "description": "cluster mode (null in a pair): every member with its laddrs, "
                               "whether it is alive (heard over sync) or leaving, and the "
                               "connections this node holds that use its laddrs (flows); what "
                               "is announced, what BIRD took last (bird_has), the peers' "
                               "laddrs adopted, the announcer's reason, flows_owned (ours) "
                               "and flows_foreign (peers' entries held here)",
                "properties": {"state": {"type": "string", "description": "docs/operations.md"},
                               "members": {"type": "object", "additionalProperties": True},
                               "announced": {"type": "array", "items": STR},
                               "adopted": {"type": "array", "items": STR},
                               "flows_owned": _INT, "flows_foreign": _INT},
                "additionalProperties": True,
            },
            "vrrp": {"nullable": True, "allOf": [ref("VrrpStatus")],
                     "description": "the election, null when none runs"},
            "role_changes": {"type": "array", "description": "the last 10 role changes", "items": {
                "type": "object", "properties": {
                    "at": _epoch("when the addresses changed hands"),
                    "decided": _epoch("when the election decided the change"),
                    "from": STR, "to": STR, "reason": STR}}},
            "sync": {"type": "object", "required": ["enabled", "applied"],
                     "properties": {"enabled": _BOOL, "applied": _COUNTS}},
            "forwarding": {"type": "object", "description": "each service's forwarding mode by "
                           "name: engine (every packet through the node) or kernel (the node "
                           "schedules new flows, the kernel's NAT forwards them)",
                           "additionalProperties": {"type": "string", "enum": ["engine", "kernel"]}},
        },
    },
    "ConnCounts": {
        "type": "object", "required": ["total", "active", "inactive"],
        "properties": {"total": _INT, "active": _INT, "inactive": _INT},
    },
    "RealServer": {
        "type": "object",
        "required": ["addr", "port", "weight", "active", "inactive", "overloaded", "conns_total",
                     "packets_in", "packets_out", "bytes_in", "bytes_out"],
        "properties": {
            "addr": STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "weight": _INT, "active": _INT, "inactive": _INT, "overloaded": _BOOL,
            "conns_total": _INT, "packets_in": _INT, "packets_out": _INT,
            "bytes_in": _INT, "bytes_out": _INT,
            "forward": {"type": "string", "enum": ["FullNat"],
                        "description": "the forwarding method, as ipvsadm names it (always FullNat)"},
            "health": {"type": "string", "enum": ["up", "down", "unchecked"],
                       "description": "the health check's verdict; unchecked when the service has none"},
            "scheduled": {"type": "boolean", "description": "the scheduler may give it new "
                          "connections now: false when its check has it down, when drained or "
                          "at weight 0, and while the sorry server stands in (OVERLOAD is "
                          "`overloaded`)"},
            "health_check": {"nullable": True, "allOf": [ref("HealthCheck")],
                             "description": "its health check's result; null when the service "
                                            "has no check"},
            "config_weight": {**_WEIGHT, "description": "the weight the config file gives it"},
            "override": {"nullable": True, "allOf": [ref("Override")],
                         "description": "the operator's override in force (it beats the file "
                                        "until cleared); null when none"},
        },
    },
    "Override": {
        "type": "object", "additionalProperties": False,
        "required": ["weight", "drain", "set_at", "by"],
        "description": "an operator's weight or drain, the same on both nodes of the pair",
        "properties": {
            "weight": _WEIGHT,
            "drain": {"type": "boolean", "description": "set by /drain (weight 0)"},
            "set_at": _epoch("when it was set (on the node that made it)"),
            "by": {"type": "string", "description": "the node it was set on"},
        },
    },
    "HealthCheck": {
        "type": "object", "additionalProperties": False,
        "required": ["kind", "state", "since", "last_check", "last_ok", "detail", "rise", "fall",
                     "ok_streak", "fail_streak", "checks", "changes"],
        "description": "One real server's health check (director.status.HealthCheckStatus).",
        "properties": {
            "kind": {"type": "string", "description": "tcp, http, udp, command or a plug-in's"},
            "state": {"type": "string", "enum": ["up", "down"],
                      "description": "the verdict after rise/fall"},
            "since": _epoch("the last transition, or when checking began if none yet"),
            "last_check": _epoch("when the last probe ended; null before the first", True),
            "last_ok": {"type": "boolean", "nullable": True,
                        "description": "the last probe's own result, before rise/fall"},
            "detail": {"type": "string", "description": "the last probe's detail, as the log "
                       "line gives it (\"HTTP status 503\", \"Connection refused\", \"timed out after 1s\")"},
            "rise": {"type": "integer", "minimum": 1,
                     "description": "successes in a row that bring a down server up"},
            "fall": {"type": "integer", "minimum": 1,
                     "description": "failures in a row that take an up server down"},
            "ok_streak": {**_INT, "description": "successes in a row so far (counted while down)"},
            "fail_streak": {**_INT, "description": "failures in a row so far (counted while up)"},
            "checks": {**_INT, "description": "probes run"},
            "changes": {**_INT, "description": "up/down transitions"},
        },
    },
    "Service": {
        "type": "object",
        "required": ["name", "proto", "vip", "port", "scheduler", "flags", "laddrs", "persistent",
                     "persist_netmask", "ops", "real_servers"],
        "properties": {
            "name": {"type": "string", "description": "the service key used in paths and metrics",
                     "example": "tcp/198.18.0.100:80"},
            "proto": {"type": "string", "enum": ["tcp", "udp"]},
            "vip": STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "scheduler": STR,
            "flags": {"type": "array", "items": STR},
            "laddrs": {"type": "array", "items": STR},
            "sorry_server": {"type": "string", "nullable": True,
                             "description": "addr:port of the sorry server, if one is configured"},
            "sorry_in_use": {"type": "boolean",
                             "description": "the sorry server stands in (no real server is usable)"},
            "persistent": {"type": "number", "minimum": 0, "description": "seconds; 0 = not persistent"},
            "persist_netmask": {"type": "integer", "minimum": 0, "maximum": 128},
            "ops": _BOOL,
            "forwarding": {"type": "string", "enum": ["engine", "kernel"],
                           "description": "who forwards the service's packets (config `forwarding`)"},
            "client_address": {"type": "string", "enum": ["none", "proxy-v1", "proxy-v2", "toa"],
                               "description": "how real servers learn the client's address "
                                              "(config `client_address`)"},
            "real_servers": {"type": "array", "items": ref("RealServer")},
        },
    },
    "ServiceList": {
        "type": "object", "required": ["services"],
        "properties": {"services": {"type": "array", "items": ref("Service")}},
    },
    "Conn": {
        "type": "object",
        "required": ["proto", "client", "vip", "local", "real", "state", "flags", "expires"],
        "properties": {
            "proto": {"type": "string", "enum": ["tcp", "udp"]},
            "client": {**_ADDR_PORT, "nullable": True,
                       "description": "addr:port; null unless the request carries the API token"},
            "vip": _ADDR_PORT, "local": _ADDR_PORT, "real": _ADDR_PORT,
            "state": {"type": "string", "description": "IPVS TCP state name, or UDP",
                      "enum": ["NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT",
                               "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN",
                               "SYNACK", "UDP"]},
            "flags": {"type": "array", "items": {
                "type": "string", "enum": ["inactive", "nooutput", "synced", "assured", "one_packet"]}},
            "expires": _epoch("when it expires unless refreshed (before issue 17: the node's "
                              "monotonic clock)"),
            "expires_in": {"type": "number", "description": "seconds left, to the ms"},
            "created": _epoch("when the entry was made on this node (synced: when it arrived); "
                              "null for a kernel-forwarded flow", nullable=True),
            "forwarding": {"type": "string", "enum": ["engine", "kernel"],
                           "description": "engine: an entry of the engine's table; kernel: a flow "
                                          "the kernel's conntrack NAT forwards (local, real, state "
                                          "and expires as the kernel holds them)"},
            "mark": {"type": "string", "description": "a kernel-forwarded flow's conntrack mark "
                                                      "(its binding), hex", "example": "0x54440001"},
        },
    },
    "ConnPage": {
        "type": "object", "required": ["total", "offset", "limit", "conns"],
        "properties": {
            "total": {"type": "integer", "minimum": 0, "description": "connections matching the filter"},
            "offset": _INT, "limit": _INT,
            "now": _epoch("when the page was built (before issue 17: the node's monotonic clock)"),
            "clients": {"type": "string", "enum": ["shown", "hidden"],
                        "description": "whether `client` is filled (only with the API token)"},
            "conns": {"type": "array", "items": ref("Conn")},
        },
    },
    "SyncStatus": {
        "type": "object", "required": ["enabled", "engine"], "additionalProperties": False,
        "description": "Connection sync: what the engine applied and, when the node syncs, the "
                       "sync link's counters (director.status.SyncStats).",
        "properties": {
            "enabled": _BOOL,
            "engine": {**_COUNTS, "description": "the engine's sync_stats: entries applied, "
                                                 "created, updated, replaced, ignored, ..."},
            "sender": {**_COUNTS, "description": "counters of what this node sends"},
            "receiver": {**_COUNTS, "description": "counters of what this node receives"},
            "transport": {**_COUNTS, "description": "the sync socket's counters"},
            "applied": {**_COUNTS, "description": "received entries by what applying them did"},
            "missing": {**_INT, "description": "sequence numbers from the peer still missing"},
            "lag_ms": {
                "type": "object", "required": ["p50", "p99", "max", "samples"],
                "description": "apply time minus send time over the recent DATA messages, ms to "
                               "0.1 (meaningful only with synchronised clocks)",
                "properties": {"p50": _NUM_OR_NULL, "p99": _NUM_OR_NULL, "max": _NUM_OR_NULL,
                               "samples": _INT},
            },
        },
    },
    "VrrpStatus": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "vrid", "state", "priority", "master", "master_priority",
                     "master_adver_int_ms", "resigned", "fault", "interface", "addresses", "counters"],
        "description": "The VRRP instance (director.status.VrrpStatus).",
        "properties": {
            "name": {"type": "string", "description": "the instance name (keepalived's iname)"},
            "vrid": {"type": "integer", "minimum": 1, "maximum": 255},
            "state": {"type": "string", "enum": ["Initialize", "Backup", "Master", "Fault"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 255},
            "master": {"type": "string", "nullable": True,
                       "description": "the master's address as last heard"},
            "master_priority": {"type": "integer", "nullable": True},
            "master_adver_int_ms": _INT,
            "resigned": _BOOL, "fault": _BOOL,
            "interface": {"type": "string", "description": "where the adverts go"},
            "addresses": {"type": "array", "items": STR, "description": "the VIPs advertised"},
            "counters": {**_COUNTS, "description": "rx, accepted, tx, became_master, ... and "
                                                   "drop_<reason> for each dropped advert"},
        },
    },
    "PeerStatus": {
        "type": "object", "additionalProperties": False,
        "required": ["address", "address_from", "node", "role", "role_from", "priority", "resigned",
                     "last_advert", "last_advert_note", "sync"],
        "description": "The other node of the pair (director.status.PeerStatus).  Each field comes "
                       "from the best source there is: what the peer says of itself over sync "
                       "(sent on every change and each second), the VRRP adverts heard from it, "
                       "the config (one unicast peer); null when none gives it.",
        "properties": {
            "address": {"type": "string", "nullable": True,
                        "description": "its VRRP address (the source of its adverts)"},
            "address_from": {"type": "string", "nullable": True,
                             "enum": ["sync", "advert", "config", None]},
            "node": {"type": "string", "nullable": True, "description": "its node name (sync)"},
            "role": {"type": "string", "nullable": True,
                     "description": "master | backup | fault | init"},
            "role_from": {"type": "string", "nullable": True, "enum": ["sync", "advert", None],
                          "description": "advert: a backup without sync names the master it hears"},
            "priority": {"type": "integer", "nullable": True},
            "resigned": {"type": "boolean", "nullable": True,
                         "description": "it said over sync that it has resigned"},
            "last_advert": {
                "type": "object", "nullable": True, "required": ["from", "priority", "at", "age_s"],
                "description": "the last VRRP advert this node accepted from another router.  A "
                               "backup hears the master's every interval; a master hears one "
                               "only when the peer advertises (a priority 0 when it leaves, a "
                               "claim, a higher priority that preempts): null, with "
                               "last_advert_note, for a master whose peer has only been backup",
                "properties": {"from": STR, "priority": {"type": "integer", "minimum": 0},
                               "at": _epoch("when it was accepted"),
                               "age_s": _NUM}},
            "last_advert_note": {"type": "string", "nullable": True,
                                 "description": "why last_advert is null"},
            "sync": {
                "type": "object", "nullable": True,
                "required": ["state", "last_heard_s", "missing"],
                "description": "the sync link to it; null when this node does not sync",
                "properties": {
                    "state": {"type": "string", "enum": ["ok", "repairing", "silent", "none"],
                              "description": "none: no peer proven alive yet; silent: nothing "
                                             "for 3 heartbeat intervals; repairing: sequence "
                                             "numbers missing or a bulk resync awaited"},
                    "last_heard_s": {"type": "number", "nullable": True,
                                     "description": "seconds since its last message"},
                    "missing": _INT,
                    "lag_ms": {"type": "object", "properties": {
                        "p50": _NUM_OR_NULL, "p99": _NUM_OR_NULL, "max": _NUM_OR_NULL}},
                }},
        },
    },
    "WeightChange": {
        "type": "object", "required": ["weight"], "additionalProperties": False,
        "properties": {"weight": _WEIGHT},
    },
    "WeightResult": {
        "type": "object", "required": ["service", "real", "weight"],
        "properties": {"service": STR, "real": _ADDR_PORT,
                       "weight": {**_WEIGHT, "description": "the override's weight, or the "
                                  "file's once the override is cleared"},
                       "override": {"nullable": True, "allOf": [ref("Override")]},
                       "cleared": {"type": "boolean", "description": "DELETE .../override: "
                                   "whether an override was in force"}},
    },
    "ClusterView": {"type": "object", "additionalProperties": True,
                    "description": "a cluster member's view, as /status `cluster`",
                    "required": ["name", "state", "members", "announced", "reason"]},
    "ResignResult": {
        "type": "object", "required": ["resigned", "role"],
        "description": "The node's state after the change (the role machine has carried it out: "
                       "a resigned master has let the addresses go), and what it will become if "
                       "nothing else happens.",
        "properties": {
            "resigned": {"type": "boolean", "description": "whether the node holds back from "
                         "preempting (true after /resign, until /resume or until it becomes "
                         "master again because no peer took over)"},
            "role": {"type": "string", "description": "the role now: master | backup | fault | init"},
            "vrrp_state": {"type": "string", "enum": ["Initialize", "Backup", "Master", "Fault"]},
            "expected": {
                "type": "object", "required": ["role", "within_ms", "reason"],
                "description": "the role the election will give the node if nothing else "
                               "happens; after /resume a higher-priority node takes mastership "
                               "back by preempting, after its master down timer (and "
                               "preempt_delay, preempt_yield)",
                "properties": {
                    "role": {"type": "string", "enum": ["master", "backup", "fault", "init"]},
                    "within_ms": {"type": "number", "nullable": True,
                                  "description": "an upper bound for a change still to come; "
                                                 "null when the role is already the expected one"},
                    "reason": STR,
                },
            },
        },
    },
    "ReloadResult": {
        "type": "object", "required": ["changed"],
        "description": "changed, and what the reload did (services_added, services_removed, "
                       "servers_removed, conns_expired, ...)",
        "properties": {"changed": _BOOL, "error": STR},
        "additionalProperties": True,
    },
}
