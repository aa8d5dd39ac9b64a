"""One run per workspace: a lock file naming its owner (pid, host, start time, command).

A second run refuses with that owner in the message. A lock whose owner process is gone (same
host, pid not alive) is stale and is taken over, so a `kill -9` never leaves the workspace blocked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from gpo.errors import GpoError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}


def acquire(path: Path) -> dict:
    """Create the lock atomically (O_EXCL) or raise GpoError naming the live owner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _owner()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            pid = int(owner.get("pid", -1))
            if owner.get("host") == me["host"] and pid > 0 and not _alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if pid == me["pid"] and owner.get("host") == me["host"]:
                return owner  # re-entrant within one process
            raise GpoError(f"another gpo run holds this workspace: pid {owner.get('pid')} on {owner.get('host')}, "
                           f"started {owner.get('started')} ({owner.get('command', '?')})", file=str(path),
                           fix="wait for it to finish, or stop it; a lock left by a dead process is "
                               "recovered automatically") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me
    raise GpoError("could not take the workspace lock", file=str(path), fix="remove the file if no gpo run is active")


def release(path: Path) -> None:
    path = Path(path)
    try:
        owner = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if owner.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def workspace_lock(path: Path):
    owner = acquire(path)
    mine = owner.get("pid") == os.getpid()
    try:
        yield owner
    finally:
        if mine:
            release(path)
