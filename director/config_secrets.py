"""A config file that holds secrets (the API token, the sync key) must not be readable by
other users: `load` (director.config) warns when it is."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from director.config import NodeConfig

log = logging.getLogger("tandem.config")


def secrets_in(cfg: NodeConfig) -> list[str]:
    """The fields of `cfg` that hold a secret."""
    held = ["node.api_token"] if cfg.api_token else []
    if cfg.ha is not None and cfg.ha.sync is not None:
        held.append("sync.key")
    return held


def warn_if_exposed(path: Path, cfg: NodeConfig) -> bool:
    """Warn (once per load) when a file holding secrets is readable by other users."""
    held = secrets_in(cfg)
    try:
        st = path.stat()
    except OSError:
        return False
    mode = st.st_mode
    # root:tandem 0640 is how a node running as its own user reads a root-owned file
    # (docs/operations.md): its group is the node's own, which holds the secrets anyway
    group_is_ours = st.st_gid == os.getegid() and st.st_uid != os.geteuid()
    exposed = stat.S_IROTH | (0 if group_is_ours else stat.S_IRGRP)
    if held and mode & exposed:
        who = "anyone" if mode & stat.S_IROTH else "its group"
        log.warning("%s: readable by %s (mode %04o) and it holds %s: chmod 600 it",
                    path, who, stat.S_IMODE(mode), " and ".join(held))
        return True
    return False
