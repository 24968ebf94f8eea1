"""Claims: several study processes (on one machine or on machines sharing the folder) split one list of jobs.

A process claims a job by creating ``<job>.claim`` with ``O_CREAT | O_EXCL`` (atomic on local file systems and on
NFSv3+), holding its host name, process id and the process' start time. Another process that finds the file skips
the job, unless the claim is stale: made on this host by a process that no longer runs (or whose id now belongs to
a newer process). A killed study's claims therefore never block its own re-run, and a finished job's claim is
removed by its owner. Taking over a stale claim (unlink, then the atomic create again) leaves a short window in
which two processes that both found it stale may both proceed; a study re-checks its records before the work, so
the worst case is one job done twice after a crash. (Without ``/proc`` a process' liveness cannot be told, every
claim of this host counts as stale, and processes on one such host do not split the work.)

Hand-written because neither the standard library nor the project's dependencies offer a cross-process,
crash-tolerant work claim (``fcntl`` locks are released on exit, but do not span NFS hosts reliably and would
leave no record of who is on what).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from nas.threads import start_time


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": start_time(os.getpid())}


def claim_is_stale(path: Path) -> bool:
    """Whether the claim file ``path`` was made on this host by a process that is gone (an unreadable claim, torn
    by a writer killed mid-write, is stale too). Claims of other hosts are never stale here."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True
    start = start_time(pid)
    return start is None or start != owner.get("start")


def claim(path: str | os.PathLike) -> bool:
    """Claim the job whose claim file is ``path``: ``True`` if this process now holds it (it made the file, or took
    over a stale claim, or already held it), ``False`` if another live process does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _owner()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if json.loads(path.read_text()) == me:
                    return True
            except (OSError, ValueError):
                pass
            if not claim_is_stale(path):
                return False
            path.unlink(missing_ok=True)  # a stale claim: take it over (one more try at the atomic create)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        return True
    return False


def release(path: str | os.PathLike) -> None:
    """Remove this process' claim ``path`` (someone else's is left alone)."""
    path = Path(path)
    try:
        if json.loads(path.read_text()) == _owner():
            path.unlink()
    except (OSError, ValueError):
        pass
