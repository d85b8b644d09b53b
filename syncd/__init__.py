"""Connection-state sync and VRRP election (see issues 4 and 5)."""
