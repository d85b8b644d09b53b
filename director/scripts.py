"""How the node runs programs of the operator's (notify hooks, `command` health probes):
as the configured script user, and never with the node's capabilities.

A node run by the systemd unit is an unprivileged user holding CAP_NET_ADMIN and
CAP_NET_RAW in its *ambient* set, so that the iptables it runs inherit them.  A
program it starts would inherit them too: a notify hook could then rewrite the
firewall.  So every script is started with the ambient and inheritable sets
cleared (through util-linux's `setpriv`, which lowers them and execs the program;
lowering needs no privilege), and gets no capability.

Which user (`[node] script_user`, keepalived's `script_user`):
- unset: the node's own user.  A node running as root runs scripts as root (keepalived
  does the same, with a warning); set script_user there.
- set, and the node runs as root: the child switches to that user, its primary group and
  its supplementary groups before the exec (setuid from root clears every capability).
- set, and the node is not root: it cannot switch users (it holds no CAP_SETUID, and must
  not), so the user must be the node's own; anything else is refused when the node starts.
"""
from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import shutil
from dataclasses import dataclass
from typing import Any, Iterable

log = logging.getLogger("tandem.scripts")

#: what clears the ambient and inheritable capability sets, then execs the program
SETPRIV = ("--inh-caps=-all", "--ambient-caps=-all", "--")


class ScriptUserError(ValueError):
    """The configured script user cannot be used by this process (the reason says why)."""


def _ambient_caps(status: str = "/proc/self/status") -> int:
    try:
        with open(status) as fh:
            for line in fh:
                if line.startswith("CapAmb:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def lookup(name: str) -> pwd.struct_passwd:
    """The passwd entry of a user name or numeric uid; KeyError when there is none."""
    return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)


@dataclass(frozen=True)
class ScriptUser:
    """Who scripts run as, and how they are started (see the module docstring)."""
    name: str
    uid: int | None = None              # switch to this uid (root only)
    gid: int | None = None
    groups: tuple[int, ...] = ()
    wrap: tuple[str, ...] = ()          # argv prefix that drops inherited capabilities

    @classmethod
    def resolve(cls, name: str = "", *, euid: int | None = None,
                ambient: int | None = None, setpriv: str | None = None) -> "ScriptUser":
        """The policy for this process; raises ScriptUserError when `name` cannot be used."""
        euid = os.geteuid() if euid is None else euid
        ambient = _ambient_caps() if ambient is None else ambient
        wrap: tuple[str, ...] = ()
        if ambient:
            tool = setpriv if setpriv is not None else shutil.which("setpriv")
            if not tool:
                raise ScriptUserError("the node holds ambient capabilities and setpriv "
                                      "(util-linux) is not installed to drop them for scripts")
            wrap = (tool, *SETPRIV)
        if not name:
            me = _name_of(euid)
            return cls(me, wrap=wrap)
        try:
            pw = lookup(name)
        except (KeyError, OverflowError):
            raise ScriptUserError(f"no user {name!r} on this host") from None
        if euid == 0:
            groups = tuple(sorted({g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
                                  | {pw.pw_gid}))
            return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, wrap)
        if pw.pw_uid != euid:
            raise ScriptUserError(
                f"the node runs as {_name_of(euid)!r} (uid {euid}) without the capability to "
                f"switch users, so scripts can run only as that user, not as {name!r}")
        return cls(pw.pw_name, wrap=wrap)

    def argv(self, argv: Iterable[str]) -> list[str]:
        return [*self.wrap, *argv]

    def spawn_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


_current: ScriptUser | None = None


def use(user: ScriptUser) -> None:
    """Set the process's script policy (the node does, once it has read its config)."""
    global _current
    _current = user
    log.info("scripts run as %s%s", user.name,
             ", without the node's capabilities" if user.wrap or user.uid else "")


def current() -> ScriptUser:
    """The policy set by `use`, else the process's own user with its capabilities dropped."""
    global _current
    if _current is None:
        _current = ScriptUser.resolve("")
    return _current


async def spawn(argv: Iterable[str], **kw: Any) -> asyncio.subprocess.Process:
    """Start a script (argv, no shell) under the current policy; kw as for
    asyncio.create_subprocess_exec."""
    user = current()
    program, *args = user.argv(argv)
    return await asyncio.create_subprocess_exec(program, *args, **kw, **user.spawn_kwargs())
