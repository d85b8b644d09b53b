"""Real-server health checks, with keepalived's semantics.

* `config`: a check's configuration (`HealthCheckConfig`, `parse_health`) and the registry
  of check kinds.  Each kind is a plug-in, one module of `kinds/` (tcp, http, udp,
  command) loaded by name, registering its config keys into the schema, its parser and
  its probe.
* `state`: `HealthState`, the sans-IO rise/fall machine, one per real server: `fall`
  consecutive failures take an up server down, `rise` consecutive successes bring a down
  server back; a result that agrees with the current state resets the opposite streak.
  `effective_weight` spells out the two `action`s: `weight0` (keepalived's
  inhibit_on_failure: weight 0, established connections carry on) and `remove` (out of
  the scheduler's list).  When every real server is down (`needs_sorry_server`) the
  service's sorry server, if any, takes new connections.
* `probe`: one probe through its kind, bounded by the check's timeout.
* `runner`: `HealthChecker`, the asyncio tasks; it logs each transition once, and keeps
  each server's `CheckResult` (verdict, last detail, since when, rise/fall streaks) for the API.

A check is configured per service (it applies to all its real servers) as a TOML
sub-table, e.g.

    health = {kind = "http", interval = 2.0, timeout = 1.0, rise = 2, fall = 3,
              path = "/healthz", expect_status = 200, host = "www.example.com",
              action = "weight0", initial = "up"}
"""
from director.health.config import (HealthCheckConfig, Kind, kind_names, load_all_kinds,
                                    load_kind, parse_health, register_kind)
from director.health.probe import ProbeFailed, run_probe
from director.health.runner import CheckResult, CheckTarget, HealthChecker, targets_for_service
from director.health.state import (HealthState, effective_weight, needs_sorry_server,
                                   transition_message)

__all__ = ["CheckResult", "CheckTarget", "HealthCheckConfig", "HealthChecker", "HealthState",
           "Kind", "ProbeFailed", "effective_weight", "kind_names", "load_all_kinds", "load_kind",
           "needs_sorry_server", "parse_health", "register_kind", "run_probe",
           "targets_for_service", "transition_message"]
