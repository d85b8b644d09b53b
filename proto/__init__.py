"""Wire formats only: packets, checksums, sync messages, VRRP adverts. Pure functions, no I/O."""
