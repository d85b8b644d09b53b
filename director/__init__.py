"""tandem data plane: engine, connection table, schedulers, health checks, NFQUEUE adapter, HTTP API (the node wiring is in tandem/)."""
