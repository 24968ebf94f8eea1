"""The run shell around every entry point's task (lightning-hydra-template's ``task_wrapper``, for spnas).

One :class:`Task` per command says what the command does (a function of the composed config that returns its
result) and what it leaves behind (the summary file's name). :func:`run_task` does the rest the same way for
every command, so no entry point writes it again:

* the thread budget: torch's threads set to this process' share of its CPUs, or ``threads=`` of the config, and
  logged (:func:`nas.threads.apply_thread_budget`), first, so a bad value is refused before any work;
* seeding: ``seed`` of the config, through Lightning's ``seed_everything`` (Python, NumPy and torch, and the
  data-loader workers), before the task runs;
* the output folder: ``paths.output_dir`` (a task may name another, e.g. the folder of the run it resumes, with
  ``output_dir`` in its summary);
* timing: ``wall_time_s`` of the whole task unless the task measured its own (a resumed search adds the time of
  its earlier processes);
* the summary file: the task's summary with non-finite numbers as ``null`` and a ``run`` block (command line,
  spnas version, start time in UTC, seed, threads, wall time), written atomically by the process of global rank 0 only.

Composition and the command-line preflight (:func:`nas.cli.hydra_entry`), the one-line errors
(:func:`nas.cli.main_guard`) and the logger (:func:`nas.search.monitoring.build_logger`, ``logger=`` group) sit
around and inside this shell; :func:`nas.cli.hydra_command` puts them together.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nas.errors import ConfigError, whole_number
from nas.io import atomic_write_json, null_non_finite

#: the ``run`` block of every summary file
RUN_FORMAT = "spnas-run"
RUN_VERSION = 1


def _identity(result: Any) -> Any:
    return result


def _nothing(result: Any) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """What one command does: ``run(cfg)`` returns its result; ``summary`` names the summary file written to the
    output folder (``None``: the command's product is its only output); ``summary_of`` picks the summary out of
    the result; ``returns`` is the value the Hydra app returns to a sweeper."""

    run: Callable[[DictConfig], Any]
    summary: str | None = None
    summary_of: Callable[[Any], dict[str, Any]] = _identity
    returns: Callable[[Any], Any] = _nothing


def is_global_zero() -> bool:
    """Whether this process is the one of global rank 0 (the only one in a single-process run)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def command_line(setting: str | None = None, value: str | None = None) -> str:
    """This process's command line as a user would type it again; with ``setting``, ``setting=value`` in place of
    any earlier ``setting=...`` (:func:`nas.cli.resume_command`)."""
    import shlex

    program = Path(sys.argv[0]).name if sys.argv else "spnas"
    prefix = f"python {program}" if program.endswith(".py") else program
    kept = [a for a in sys.argv[1:] if setting is None or a.split("=", 1)[0].lstrip("+") != setting]
    extra = [] if setting is None else [f"{setting}={shlex.quote(str(value))}"]
    return " ".join([prefix, *map(shlex.quote, kept), *extra])


def spnas_version() -> str | None:
    """The installed distribution's version (``None`` in a source checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spnas")
    except PackageNotFoundError:
        return None


def seed_run(cfg: DictConfig) -> int | None:
    """Seed Python, NumPy and torch (and data-loader workers) with ``cfg.seed``; the seed, or ``None`` without one."""
    seed = cfg.get("seed")
    if seed is None:
        return None
    value = whole_number(seed)
    if value is None:
        raise ConfigError(f"seed must be an integer, got {seed!r}; set seed=<integer>")
    import lightning_fabric

    lightning_fabric.seed_everything(value, workers=True, verbose=False)
    return value


def run_task(task: Task, cfg: DictConfig) -> Any:
    """Set the thread budget, seed, run ``task`` on ``cfg`` and time it, then write its summary file (see the module
    docstring)."""
    from nas.threads import apply_thread_budget

    started = datetime.now(timezone.utc)
    start = time.perf_counter()
    threads = apply_thread_budget(cfg)
    seed = seed_run(cfg)
    result = task.run(cfg)
    wall = round(time.perf_counter() - start, 2)
    if task.summary is None:
        return result
    summary = task.summary_of(result)
    summary.setdefault("wall_time_s", wall)
    out = Path(summary.get("output_dir") or cfg.paths.output_dir)
    if is_global_zero():
        run = {"format": RUN_FORMAT, "version": RUN_VERSION, "command": command_line(), "cwd": os.getcwd(),
               "spnas_version": spnas_version(), "started_utc": started.isoformat(timespec="seconds"),
               "seed": seed, "threads": threads.threads, "wall_time_s": wall}
        atomic_write_json(out / task.summary, null_non_finite({**summary, "run": run}))
    return result
