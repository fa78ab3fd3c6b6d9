"""Is the process that owns a run or a trial still alive? One check, safe against reused PIDs.

An owner is ``{"host", "pid", "start"}``: the host name, the process id and the process's start
time (field 22 of ``/proc/PID/stat``, where /proc exists). A PID that was reused by a new process
has another start time, so a crashed owner is never mistaken for a live one. Used by resume (a run
whose process is alive is never taken over) and by the sweeper (trials of a dead sweeper are
failed at once instead of after the heartbeat's grace period).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot, or None where /proc is not readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> dict[str, Any]:
    """This process as an owner record."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def owner_tag() -> str:
    """This process as a string ``host:pid:start`` (an MLflow tag)."""
    o = owner()
    return f"{o['host']}:{o['pid']}:{o['start'] or ''}"


def parse_tag(tag: str | None) -> dict[str, Any] | None:
    """``host:pid[:start]`` -> an owner record (None when the tag is empty or malformed)."""
    if not tag:
        return None
    parts = tag.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        host, pid, start = parts
    elif len(parts) >= 2 and parts[-1].isdigit():  # host:pid, written by older versions
        host, pid, start = ":".join(parts[:-1]), parts[-1], ""
    else:
        return None
    return {"host": host, "pid": int(pid), "start": start or None}


def alive(owner_: Mapping[str, Any] | None) -> bool | None:
    """True/False for a process on this host; None when it ran on another host (or is unknown)."""
    if not owner_ or owner_.get("host") != socket.gethostname():
        return None
    pid = int(owner_.get("pid", -1))
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = owner_.get("start")
    return start is None or _proc_start(pid) in (None, start)
