"""The election: VRRP state machine and its runner, the HA role machine, address takeover.

Imports proto only (never director/ or syncd/): the node wiring in tandem/ connects it to
the engine and to connection sync.
"""
