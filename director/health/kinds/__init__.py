"""Health-check kinds: one module per kind, each registering its keys, parser and probe
(director.health.config.register_kind)."""
