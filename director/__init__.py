"""tandem data plane: engine, connection table, schedulers, NFQUEUE adapter, node."""
