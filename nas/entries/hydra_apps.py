"""The Hydra apps of the search entry points: ``spnas search | train | subnet-search | hyperpower``.

Each is a :class:`~nas.run_shell.Task` run in the run shell by :func:`nas.cli.hydra_command`: ``*_main`` is the
``@hydra.main`` app (it returns the value a Hydra sweeper optimises), ``run_*`` checks the command line first (a
bad override is one ``error:`` line, exit 2) and then runs it. The configs are ``nas/conf/<name>.yaml``;
``hydra.job.name`` in each keeps the log file's name (``search.log``, ...) whichever alias runs it. The task
modules are imported when the task runs, after the command line was checked.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from nas.cli import fail, hydra_command
from nas.run_shell import Task


def _nan_for_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)  # None: no validation ran (a sweeper's failed trial)


def search(cfg: DictConfig) -> dict[str, Any]:
    from nas.search.pipeline import run_search

    return run_search(cfg)


def train(cfg: DictConfig) -> dict[str, Any]:
    from nas.search.training import run_train

    return run_train(cfg)


def subnet_search(cfg: DictConfig) -> dict[str, Any]:
    from nas.subnet_search.run import run_subnet_search

    return run_subnet_search(cfg)


def hyperpower(cfg: DictConfig) -> dict[str, Any]:
    try:
        from nas.hyperpower.study import run_hyperpower
    except ModuleNotFoundError as err:
        if err.name != "optuna":
            raise
        fail("hyperpower needs Optuna, the optional extra spnas[tune]: pip install 'spnas[tune]' (or -e '.[tune]')")
    return run_hyperpower(cfg)


#: ``spnas search``: returns the objective (validation accuracy, or Eq 6.2 with hardware.target_ms)
SEARCH = Task(search, summary="summary.json", returns=lambda r: _nan_for_none(r["objective"]))
#: ``spnas train arch=<search run>/arch.json``: returns the test accuracy
TRAIN = Task(train, summary="train_summary.json", returns=lambda r: _nan_for_none(r["test_acc"]))
#: ``spnas subnet-search supernet=<ckpt>``: returns the hypervolume of the first device's front
SUBNET_SEARCH = Task(subnet_search, summary="summary.json", summary_of=lambda r: r["summary"],
                     returns=lambda r: float(next(iter(r["pareto"]["devices"].values()))["hypervolume"]))
#: ``spnas hyperpower hyperpower.constraints.memory_mb=0.6``: returns the best validation error
HYPERPOWER = Task(hyperpower, summary="hyperpower.json", returns=lambda r: (r["best"] or {}).get("val_error"))

search_main, run_search = hydra_command(SEARCH, "search")
train_main, run_train = hydra_command(TRAIN, "train")
subnet_search_main, run_subnet_search = hydra_command(SUBNET_SEARCH, "subnet_search")
hyperpower_main, run_hyperpower = hydra_command(HYPERPOWER, "hyperpower")
