"""The thread budget of a process: torch's intra-op threads set to this process' share of the CPUs it may use.

Every spnas process (a search, a rank, a HyperPower worker, a sweep trial, a study's job) runs
:func:`apply_thread_budget` in the run shell (:func:`nas.run_shell.run_task`) before its task. The number of threads,
first rule that applies:

1. ``threads=<n>`` in the config (``threads: null`` in ``nas/conf/process/default.yaml`` means automatic);
2. ``OMP_NUM_THREADS`` in the environment (the user's choice, also what OpenMP itself reads);
3. automatic: the CPUs the process may use, ``min(affinity, cgroup quota)``, divided by the processes of this run
   that share them, at least 1.

The CPUs: ``os.sched_getaffinity(0)`` (taskset, SLURM's and Kubernetes' CPU sets) and the cgroup CPU quota
(v2 ``cpu.max`` "quota period", v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``ceil(quota / period)``, the
smallest along the process' cgroup path). The processes sharing them: ``LOCAL_WORLD_SIZE`` (torchrun), else the
local ranks a Lightning DDP trainer starts (``trainer.devices`` with a ``ddp*`` strategy), times the jobs a Hydra
launcher runs side by side (``hydra.launcher.n_jobs``, e.g. joblib). A parent that runs spnas children side by side
hands each its share in ``OMP_NUM_THREADS`` (:func:`child_environment`).

Why: a process takes a thread per core by default; two of them on the same cores spin-wait for each other's
threads and each runs many times slower than alone (issue 22: 0.15 instead of 9.7 validations/s).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import ConfigError

log = logging.getLogger("nas")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_last_logged: str | None = None


@dataclass(frozen=True)
class ThreadBudget:
    """The threads chosen (``threads``), why (``source``: ``auto``, ``OMP_NUM_THREADS`` or ``threads=``) and what
    the automatic share was computed from."""

    threads: int
    source: str
    affinity: int
    quota: int | None
    local_processes: int

    @property
    def cpus(self) -> int:
        """The CPUs this process may use: its affinity, capped by the cgroup quota."""
        return min(self.affinity, self.quota) if self.quota else self.affinity

    def describe(self) -> str:
        """One log line, e.g. ``threads: 1 of 2 CPUs (affinity 2, cgroup none, 2 local processes)``."""
        n = self.local_processes
        basis = (f"affinity {self.affinity}, cgroup {self.quota if self.quota else 'none'}, "
                 f"{n} local process{'' if n == 1 else 'es'}")
        if self.source == "auto":
            return f"threads: {self.threads} of {self.cpus} CPUs ({basis})"
        return f"threads: {self.threads} ({self.source}; automatic would be {share(self.cpus, None, n)} of " \
               f"{self.cpus} CPUs: {basis})"


def share(affinity: int, quota: int | None, local_processes: int) -> int:
    """This process' threads: ``min(affinity, quota)`` CPUs split over ``local_processes`` processes, at least 1."""
    cpus = min(affinity, quota) if quota else affinity
    return max(1, cpus // max(1, local_processes))


def parse_setting(value: Any, name: str = "threads", fix: str = "set threads=<n> or threads=null") -> int | None:
    """A ``threads`` setting: ``None`` / ``"auto"`` (automatic) or an integer >= 1; anything else is a
    :class:`ConfigError` naming the fix."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "")):
        return None
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ConfigError(f"{name} must be an integer >= 1 or null (automatic: this process' share of its CPUs), "
                          f"got {value!r}; {fix}")
    return number


def resolve(setting: Any, env: Mapping[str, str], affinity: int, quota: int | None,
            local_processes: int) -> ThreadBudget:
    """The budget from a ``threads`` setting, the environment and the machine (pure; the order in the module
    docstring: config, then ``OMP_NUM_THREADS``, then the automatic share)."""
    configured = parse_setting(setting)
    local_processes = max(1, int(local_processes))
    if configured is not None:
        return ThreadBudget(configured, f"threads={configured}", affinity, quota, local_processes)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:  # OpenMP allows a list (nested levels): the first is this level's
        threads = parse_setting(omp.split(",")[0], "OMP_NUM_THREADS", "unset it or set threads=<n>")
        return ThreadBudget(int(threads or 1), f"OMP_NUM_THREADS={omp}", affinity, quota, local_processes)
    return ThreadBudget(share(affinity, quota, local_processes), "auto", affinity, quota, local_processes)


def affinity_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where it does not exist)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
                  processes: int | None = None) -> ThreadBudget:
    """The budget of this process under config ``cfg`` (its ``threads`` and ``trainer``): reads the affinity, the
    cgroup quota, the environment and the Hydra launcher; ``processes`` (the local ranks a launcher such as srun
    reported) replaces the count of processes sharing the CPUs."""
    env = os.environ if env is None else env
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    local = local_processes(env, trainer, launcher_jobs()) if processes is None else processes
    return resolve(cfg.get("threads"), env, affinity_cpus(), cgroup_cpus(), local)


def apply_thread_budget(cfg: Mapping[str, Any], processes: int | None = None) -> ThreadBudget:
    """Set torch's intra-op threads (and its inter-op threads, where torch still allows it) to this process'
    budget and log it (once per process while it stays the same); the budget. A bad ``threads`` value is a
    :class:`ConfigError` before anything runs. ``processes``: as in :func:`thread_budget`."""
    global _last_logged
    budget = thread_budget(cfg, processes=processes)
    import torch

    torch.set_num_threads(budget.threads)
    if torch.get_num_interop_threads() != budget.threads:
        try:  # allowed once, before any inter-op work: a process that already ran some keeps its pool
            torch.set_num_interop_threads(budget.threads)
        except RuntimeError:
            pass
    line = budget.describe()
    if line != _last_logged:
        log.info(line)
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
