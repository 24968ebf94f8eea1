"""The Hydra apps of the search entry points: ``spnas search | train | subnet-search | hyperpower``.

Each ``*_main`` is the ``@hydra.main`` task function (it returns the value a Hydra sweeper optimises); each
``run_*`` checks the command line with :func:`nas.cli.hydra_entry` (a bad override is one ``error:`` line, exit 2)
and then runs it. The configs are ``nas/conf/<name>.yaml``; ``hydra.job.name`` in each keeps the log file's name
(``search.log``, ...) whichever alias runs it.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nas.cli import CONFIG_DIR, fail, hydra_entry, main_guard


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="search")
def search_main(cfg: DictConfig) -> float:
    """Returns the objective (validation accuracy, or Eq 6.2 with hardware.target_ms) for Hydra sweepers."""
    from nas.search.pipeline import run_search

    objective = main_guard(lambda: run_search(cfg)["objective"])
    return float("nan") if objective is None else objective  # None: no validation ran (a sweeper's failed trial)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float:
    """Returns the test accuracy."""
    from nas.search.training import run_train

    test_acc = main_guard(lambda: run_train(cfg)["test_acc"])
    return float("nan") if test_acc is None else test_acc


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="subnet_search")
def subnet_search_main(cfg: DictConfig) -> float:
    """Returns the hypervolume of the first device's front (for Hydra sweepers)."""
    from nas.subnet_search.run import run_subnet_search

    result = main_guard(lambda: run_subnet_search(cfg))
    return float(next(iter(result["pareto"]["devices"].values()))["hypervolume"])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="hyperpower")
def hyperpower_main(cfg: DictConfig) -> float | None:
    """Returns the best validation error (for sweeps over seeds or settings)."""
    try:
        from nas.hyperpower.study import run_hyperpower
    except ModuleNotFoundError as err:
        if err.name != "optuna":
            raise
        fail("hyperpower needs Optuna, the optional extra spnas[tune]: pip install 'spnas[tune]' (or -e '.[tune]')")
    return main_guard(lambda: (run_hyperpower(cfg)["best"] or {}).get("val_error"))


def run_search() -> None:
    """``spnas search [overrides]`` / ``python search.py [overrides]``."""
    hydra_entry(search_main, "search")


def run_train() -> None:
    """``spnas train arch=<search run>/arch.json [overrides]`` / ``python train.py ...``."""
    hydra_entry(train_main, "train")


def run_subnet_search() -> None:
    """``spnas subnet-search supernet=<ckpt> [overrides]`` / ``python subnet_search.py ...``."""
    hydra_entry(subnet_search_main, "subnet_search")


def run_hyperpower() -> None:
    """``spnas hyperpower hyperpower.constraints.memory_mb=0.6 [overrides]`` / ``python hyperpower.py ...``."""
    hydra_entry(hyperpower_main, "hyperpower")
