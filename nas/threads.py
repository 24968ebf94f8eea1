"""The thread budget of a process: torch's intra-op threads set to this process' share of the CPUs it may use.

Every spnas process (a search, a rank, a HyperPower worker, a sweep trial, a study's job) runs
:func:`apply_thread_budget` in the run shell (:func:`nas.run_shell.run_task`) before its task. The number of threads,
first rule that applies:

1. ``threads=<n>`` in the config (``threads: null`` in ``nas/conf/process/default.yaml`` means automatic);
2. ``OMP_NUM_THREADS`` in the environment (the user's choice, also what OpenMP itself reads);
3. automatic: the CPUs the process may use, ``min(affinity, cgroup quota)``, divided by the processes that share
   them (below), at least 1.

The CPUs: ``os.sched_getaffinity(0)`` (taskset, SLURM's and Kubernetes' CPU sets) and the cgroup CPU quota
(v2 ``cpu.max`` "quota period", v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``ceil(quota / period)``, the
smallest along the process' cgroup path). The processes sharing them: ``LOCAL_WORLD_SIZE`` (torchrun), else the
local ranks a Lightning DDP trainer starts (``trainer.devices`` with a ``ddp*`` strategy), times the jobs a Hydra
launcher runs side by side (``hydra.launcher.n_jobs``, e.g. joblib). A parent that runs spnas children side by side
hands each its share in ``OMP_NUM_THREADS`` (:func:`child_environment`).

Processes a user starts independently (two ``spnas subnet-search`` in two terminals, a HyperPower worker beside a
search) know nothing of each other's run, so every spnas process also enters a host-wide **registry**
(:func:`register`): one small file per process in a per-user runtime folder (``$SPNAS_RUNTIME_DIR/processes``,
else ``$XDG_RUNTIME_DIR/spnas/processes``, else ``<tempdir>/spnas-<uid>/processes``), named and keyed by its pid
and start time (``/proc/<pid>/stat`` field 22, so a reused pid is not mistaken for it) and holding its CPU
affinity, written atomically and removed at exit. A reader ignores and deletes the entries of dead processes (no
such pid, or another start time); entries of another pid namespace are ignored and left alone. Without
``/proc`` (not Linux) there is no registry and the count below is the local one. The rule:

    processes sharing the CPUs = max(local processes of this run, live registered processes whose affinity
    overlaps this one's, this one included)

Why ``max`` and not a sum: the ranks and jobs of this run register themselves too, so a sum would count each of
them twice; ``max`` counts them once whether or not they have registered yet, and every process outside this run
adds one (while some of this run's own processes have not registered yet, an outsider can be missed; the next
:func:`rebalance` counts it). Every spnas process registers, whatever its budget's source (one with
``threads=1`` still takes a CPU from the others; each counts as one process); only an automatic budget is divided
by the count. A parent that waits on a child it started (a study's job, :func:`nas.cli.run_entry`) withdraws its
entry while it waits (:func:`waiting_on_children`), so the child is not counted twice either.

The count changes while a process runs: :func:`rebalance` (rate-limited to once every
:data:`REBALANCE_INTERVAL_S` s of wall time, one ``listdir`` and a liveness check per entry) re-applies an
automatic budget and logs a line when the count changes. Long loops call it: the sub-network search once per
validation (``nas.subnet_search.engine``, its ranks), Lightning training once per batch
(``nas.search.callbacks.ThreadRebalance``, in search, train and HyperPower's trials). A search that started alone
with 2 threads drops to 1 when a second arrives, and goes back to 2 when it leaves.

Why: a process takes a thread per core by default; two of them on the same cores spin-wait for each other's
threads and each runs many times slower than alone (issue 22: 0.15 instead of 9.7 validations/s).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.errors import ConfigError, whole_number

log = logging.getLogger("nas")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_last_logged: str | None = None
#: the environment variable naming the runtime folder of the registry (tests; else XDG_RUNTIME_DIR or the temp dir)
RUNTIME_ENV = "SPNAS_RUNTIME_DIR"
#: the least wall time between two registry reads of :func:`rebalance`
REBALANCE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ThreadBudget:
    """The threads chosen (``threads``), why (``source``: ``auto``, ``OMP_NUM_THREADS`` or ``threads=``) and what
    the automatic share was computed from."""

    threads: int
    source: str
    affinity: int
    quota: int | None
    local_processes: int
    registered: int = 0  # live registered spnas processes on these CPUs, this one included (0: not read)

    @property
    def processes(self) -> int:
        """The processes the CPUs are shared by: ``max(local processes, registered)`` (module docstring)."""
        return max(1, self.local_processes, self.registered)

    @property
    def cpus(self) -> int:
        """The CPUs this process may use: its affinity, capped by the cgroup quota."""
        return min(self.affinity, self.quota) if self.quota else self.affinity

    def describe(self) -> str:
        """One log line, e.g. ``threads: 1 of 2 CPUs (affinity 2, cgroup none, 1 local process, 2 spnas processes
        on these CPUs)``."""
        n, r = self.local_processes, self.registered
        basis = (f"affinity {self.affinity}, cgroup {self.quota if self.quota else 'none'}, "
                 f"{n} local process{'' if n == 1 else 'es'}")
        if r:
            basis += f", {r} spnas process{'' if r == 1 else 'es'} on these CPUs"
        if self.source == "auto":
            return f"threads: {self.threads} of {self.cpus} CPUs ({basis})"
        return f"threads: {self.threads} ({self.source}; automatic would be {share(self.cpus, None, self.processes)} " \
               f"of {self.cpus} CPUs: {basis})"


def share(affinity: int, quota: int | None, local_processes: int) -> int:
    """This process' threads: ``min(affinity, quota)`` CPUs split over ``local_processes`` processes, at least 1."""
    cpus = min(affinity, quota) if quota else affinity
    return max(1, cpus // max(1, local_processes))


def parse_setting(value: Any, name: str = "threads", fix: str = "set threads=<n> or threads=null") -> int | None:
    """A ``threads`` setting: ``None`` / ``"auto"`` (automatic) or an integer >= 1; anything else is a
    :class:`ConfigError` naming the fix."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
        return None
    number = whole_number(value)
    if number is None or number < 1:
        raise ConfigError(f"{name} must be an integer >= 1 or null (automatic: this process' share of its CPUs), "
                          f"got {value!r}; {fix}")
    return number


def resolve(setting: Any, env: Mapping[str, str], affinity: int, quota: int | None,
            local_processes: int, registered: int = 0) -> ThreadBudget:
    """The budget from a ``threads`` setting, the environment and the machine (pure; the order in the module
    docstring: config, then ``OMP_NUM_THREADS``, then the automatic share over ``max(local_processes,
    registered)`` processes; ``registered``: live spnas processes of the registry on these CPUs, this one
    included)."""
    configured = parse_setting(setting)
    local_processes = max(1, int(local_processes))
    registered = max(0, int(registered))
    if configured is not None:
        return ThreadBudget(configured, f"threads={configured}", affinity, quota, local_processes, registered)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:  # OpenMP allows a list (nested levels): the first is this level's
        threads = parse_setting(omp.split(",")[0], "OMP_NUM_THREADS", "unset it or set threads=<n>")
        return ThreadBudget(int(threads or 1), f"OMP_NUM_THREADS={omp}", affinity, quota, local_processes,
                            registered)
    return ThreadBudget(share(affinity, quota, max(local_processes, registered)), "auto", affinity, quota,
                        local_processes, registered)


def affinity_set() -> frozenset[int]:
    """The CPUs this process may run on (``os.sched_getaffinity``; all of ``os.cpu_count`` where it does not
    exist)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(max(1, os.cpu_count() or 1)))


def affinity_cpus() -> int:
    """How many CPUs this process may run on (:func:`affinity_set`)."""
    return max(1, len(affinity_set()))


def quota_cpus(max_line: str | None = None, v1_quota: str | None = None, v1_period: str | None = None) -> int | None:
    """CPUs of a cgroup quota, ``ceil(quota / period)``: v2 ``cpu.max`` (``"max 100000"`` = none) or v1
    ``cpu.cfs_quota_us`` (``-1`` = none) and ``cpu.cfs_period_us``; ``None`` without a quota (pure)."""
    try:
        if max_line is not None:
            quota, period = (max_line.split() + ["100000"])[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        if v1_quota is not None and v1_period is not None:
            quota_us = int(v1_quota)
            return None if quota_us <= 0 else max(1, math.ceil(quota_us / int(v1_period)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The smallest CPU quota along this process' cgroup path (v2, else v1); ``None`` without one."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    candidates: list[tuple[Path, str]] = []  # (folder of the process' cgroup, "v2" | "v1")
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            candidates.append((root / path.lstrip("/"), "v2"))
            candidates.append((root / "unified" / path.lstrip("/"), "v2"))
        elif "cpu" in controllers.split(","):
            candidates.append((root / controllers / path.lstrip("/"), "v1"))
    candidates.append((root, "v2"))
    found: list[int] = []
    for folder, version in candidates:
        for level in [folder, *folder.parents]:
            if root not in (level, *level.parents):
                break
            cpus = _read_quota(level, version)
            if cpus is not None:
                found.append(cpus)
    return min(found) if found else None


def _read_quota(folder: Path, version: str) -> int | None:
    try:
        if version == "v2":
            return quota_cpus((folder / "cpu.max").read_text())
        return quota_cpus(None, (folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())
    except OSError:
        return None


def trainer_processes(trainer: Mapping[str, Any] | None) -> int:
    """Local processes a Lightning trainer config starts: ``devices`` with a ``ddp*`` strategy, else 1."""
    if not trainer or "ddp" not in str(trainer.get("strategy") or ""):
        return 1
    devices = trainer.get("devices")
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return max(1, len(devices))  # type: ignore[arg-type]
    try:
        count = int(devices)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        count = -1  # "auto"
    if count > 0:
        return count
    if str(trainer.get("accelerator", "")) in ("gpu", "cuda", "auto"):
        import torch

        return max(1, torch.cuda.device_count())
    return affinity_cpus()  # CPU DDP on every CPU: one thread each


def launcher_jobs() -> int:
    """Jobs the running Hydra multirun launcher runs side by side (``hydra.launcher.n_jobs``; 1 outside a sweep
    or with a sequential launcher)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return 1
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return 1
        jobs = int(hydra.launcher.get("n_jobs") or 1)
    except (ImportError, ValueError, TypeError, AttributeError):
        return 1
    return affinity_cpus() if jobs < 0 else max(1, jobs)


def local_processes(env: Mapping[str, str], trainer: Mapping[str, Any] | None = None, jobs: int = 1) -> int:
    """Processes of this run sharing this machine's CPUs: ``LOCAL_WORLD_SIZE`` or the trainer's local ranks,
    times ``jobs`` run side by side."""
    try:
        ranks = int(env.get("LOCAL_WORLD_SIZE", ""))
    except ValueError:
        ranks = trainer_processes(trainer)
    return max(1, ranks) * max(1, int(jobs))


def thread_budget(cfg: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  processes: int | None = None, registered: int | None = None) -> ThreadBudget:
    """The budget of this process under config ``cfg`` (its ``threads`` and ``trainer``): reads the affinity, the
    cgroup quota, the environment, the Hydra launcher and the registry; ``processes`` (the local ranks a launcher
    such as srun reported) replaces the count of this run's local processes, ``registered`` the registry's count
    (:func:`registered_processes`)."""
    env = os.environ if env is None else env
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    local = local_processes(env, trainer, launcher_jobs()) if processes is None else processes
    registered = registered_processes() if registered is None else registered
    return resolve(cfg.get("threads"), env, affinity_cpus(), cgroup_cpus(), local, registered)


def _set_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:  # allowed once, before any inter-op work: a process that already ran some keeps its pool
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass


@dataclass
class _Applied:
    """The budget this process applied last (what :func:`rebalance` re-applies), and when it last read the
    registry."""

    pid: int
    budget: ThreadBudget
    checked: float


_applied: _Applied | None = None


def apply_thread_budget(cfg: Mapping[str, Any], processes: int | None = None) -> ThreadBudget:
    """Enter this process in the registry (:func:`register`), set torch's intra-op threads (and its inter-op
    threads, where torch still allows it) to this process' budget and log it (once per process while it stays the
    same); the budget. A bad ``threads`` value is a :class:`ConfigError` before anything runs. ``processes``: as
    in :func:`thread_budget`. :func:`rebalance` re-applies an automatic budget as processes come and go."""
    global _last_logged, _applied
    budget = thread_budget(cfg, processes=processes, registered=0)  # a bad value is refused before registering
    register()
    budget = replace(budget, registered=registered_processes())
    if budget.source == "auto":
        budget = replace(budget, threads=share(budget.affinity, budget.quota, budget.processes))
    _set_threads(budget.threads)
    line = budget.describe()
    if line != _last_logged:
        log.info(line)
        _last_logged = line
    _applied = _Applied(os.getpid(), budget, time.monotonic())
    return budget


def rebalance(now: float | None = None, force: bool = False) -> ThreadBudget | None:
    """Re-apply this process' automatic budget with the registry's current count (module docstring), at most once
    every :data:`REBALANCE_INTERVAL_S` s (``force``: now); logs a line when the count changes. The budget, or
    ``None`` when nothing was checked (too soon, no budget applied yet, or one from ``threads=`` or
    ``OMP_NUM_THREADS``, which stay as they are). Cheap: a clock read between checks; one ``listdir`` and a
    liveness check per entry at a check."""
    global _last_logged
    applied = _applied
    if applied is None or applied.pid != os.getpid() or applied.budget.source != "auto":
        return None
    now = time.monotonic() if now is None else now
    if not force and now - applied.checked < REBALANCE_INTERVAL_S:
        return None
    applied.checked = now
    old = applied.budget
    count = registered_processes()
    if count == old.registered:
        return old
    budget = replace(old, affinity=affinity_cpus(), registered=count)
    budget = replace(budget, threads=share(budget.affinity, budget.quota, budget.processes))
    _set_threads(budget.threads)
    applied.budget = budget
    line = budget.describe()
    log.info("%s: %s (was %d)", "rebalanced" if budget.threads != old.threads else "count changed", line,
             old.threads)
    _last_logged = line
    return budget


def child_environment(jobs: int, env: Mapping[str, str] | None = None, cpus: int | None = None) -> dict[str, str]:
    """The environment of one of ``jobs`` child processes run side by side: ``OMP_NUM_THREADS`` set to its share
    of this process' CPUs (:func:`share`), unless the user set it already (their choice is handed on)."""
    env = dict(os.environ if env is None else env)
    if jobs > 1 and not env.get("OMP_NUM_THREADS", "").strip():
        env["OMP_NUM_THREADS"] = str(share(affinity_cpus() if cpus is None else cpus,
                                           None if cpus is not None else cgroup_cpus(), jobs))
    return env


# ---------------------------------------------------------------------------------------------- the registry
_entry: Path | None = None       # this process' registry file
_entry_pid: int | None = None    # the process that wrote it (a forked child inherits these globals, not the entry)
_atexit_added = False


def runtime_folder(env: Mapping[str, str] | None = None) -> Path:
    """The registry's folder: ``$SPNAS_RUNTIME_DIR/processes``, else ``$XDG_RUNTIME_DIR/spnas/processes``, else
    ``<tempdir>/spnas-<uid>/processes``."""
    env = os.environ if env is None else env
    if env.get(RUNTIME_ENV):
        return Path(env[RUNTIME_ENV]) / "processes"
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "spnas" / "processes"
    return Path(tempfile.gettempdir()) / f"spnas-{_uid()}" / "processes"


def _uid() -> int | str:
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else os.environ.get("USERNAME", "user")


def _usable_folder(create: bool) -> Path | None:
    """The registry's folder if it exists (``create``: made, private to this user) and this user owns it."""
    folder = runtime_folder()
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = folder.stat().st_uid
    except OSError:
        return None
    getuid = getattr(os, "getuid", None)
    return folder if getuid is None or owner == getuid() else None  # never another user's folder in /tmp


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (``/proc/<pid>/stat`` field 22, clock ticks after boot); ``None`` when there is
    no such process (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # the fields after "(comm) " begin with field 3
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _identity() -> tuple[int, int] | None:
    pid = os.getpid()
    started = start_time(pid)
    return None if started is None else (pid, started)


def register() -> Path | None:
    """Enter this process in the registry (once; again after :func:`waiting_on_children`): the file
    ``<pid>-<start time>.json`` holding its pid, start time, pid namespace and CPU affinity, written atomically
    and removed at exit. Its path, or ``None`` where there is no registry (no ``/proc``, no usable folder)."""
    global _entry, _entry_pid, _atexit_added
    pid = os.getpid()
    if _entry is not None and _entry_pid == pid and _entry.exists():
        return _entry
    identity = _identity()
    folder = _usable_folder(create=True) if identity is not None else None
    if identity is None or folder is None:
        return None
    path = folder / f"{identity[0]}-{identity[1]}.json"
    record = {"pid": identity[0], "start": identity[1], "pidns": _pid_namespace(),
              "affinity": sorted(affinity_set()), "command": " ".join(sys.argv[:1])}
    tmp = folder / f".{path.stem}.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:
        return None
    _entry, _entry_pid = path, pid
    if not _atexit_added:
        atexit.register(unregister)
        _atexit_added = True
    return path


def unregister() -> None:
    """Remove this process' registry file (at exit; a forked child that never registered removes nothing)."""
    global _entry
    if _entry is not None and _entry_pid == os.getpid():
        with contextlib.suppress(OSError):
            _entry.unlink()
        _entry = None


@contextlib.contextmanager
def waiting_on_children() -> Iterator[None]:
    """While this process only waits on a child it started (:func:`nas.cli.run_entry`), its registry entry is
    withdrawn, so the child does not count its idle parent; restored afterwards."""
    was_registered = _entry is not None and _entry_pid == os.getpid()
    unregister()
    try:
        yield
    finally:
        if was_registered:
            register()


def registry_entries(folder: Path | None = None) -> list[dict[str, Any]]:
    """The live processes of the registry in this pid namespace, this one included, each its record; entries of
    dead processes (no such pid, or another start time: the pid was reused) are deleted on the way."""
    folder = _usable_folder(create=False) if folder is None else folder
    if folder is None:
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    namespace = _pid_namespace()
    live: list[dict[str, Any]] = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = folder / name
        try:
            record = json.loads(path.read_text())
            pid, started = int(record["pid"]), int(record["start"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # vanished meanwhile, or not an entry
        if str(record.get("pidns", "")) != namespace:
            continue  # another container's process: neither counted nor judged from here
        if start_time(pid) != started:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        live.append(record)
    return live


def registered_processes(affinity: frozenset[int] | None = None, folder: Path | None = None) -> int:
    """Live spnas processes whose CPU affinity overlaps ``affinity`` (this process'), this one counted once
    whether or not it is registered: ``1 +`` the others."""
    affinity = affinity_set() if affinity is None else affinity
    me = _identity()
    others = 0
    for record in registry_entries(folder):
        if me is not None and (int(record["pid"]), int(record["start"])) == me:
            continue
        try:
            cpus = {int(c) for c in record.get("affinity", [])}
        except (TypeError, ValueError):
            continue
        if cpus & affinity:
            others += 1
    return 1 + others
