"""spnas' thin Hydra sweeper on current Optuna (>= 4): ``hydra/sweeper=optuna``.

hydra-optuna-sweeper 1.3.0 pins Optuna 2.x, so spnas ships its own sweeper on Hydra's Sweeper API
(:mod:`.optuna_sweeper`). The config surface is the old plugin's: ``hydra/sweeper=optuna``,
``hydra/sweeper/sampler=tpe|gp|random``, ``hydra.sweeper.n_trials``, ``n_jobs``, ``direction``, ``study_name``,
``storage`` and ``params`` in Hydra's override grammar (``tag(log, interval(a, b))``, ``interval(a, b)``,
``range(a, b, step)``, ``choice(x, y)``). Hydra imports every module under ``hydra_plugins`` at start-up, which
registers the configs below.
"""

# no ``from __future__ import annotations``: Hydra executes this module before registering it in sys.modules,
# so string annotations could not be resolved for the structured configs
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConfig:
    """Optuna's tree-structured Parzen estimator (the default)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None  # noqa: UP045
    n_startup_trials: int = 10
    multivariate: bool = False


@dataclass
class GPSamplerConfig:
    """Optuna's native Gaussian-process BO (log EI): the thesis' "vanilla Bayesian optimisation" (Sec 3.2)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None  # noqa: UP045
    n_startup_trials: int = 3
    deterministic_objective: bool = False


@dataclass
class RandomSamplerConfig:
    """Uniform random search (the baseline)."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None  # noqa: UP045


@dataclass
class OptunaSweeperConfig:
    """``hydra/sweeper=optuna``: fields as in hydra-optuna-sweeper 1.3.0 (minus its custom search-space hook)."""

    _target_: str = "hydra_plugins.spnas_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])  # noqa: UP006
    sampler: Any = None
    direction: Any = "minimize"           # or a list for a multi-objective study
    storage: Optional[Any] = None         # noqa: UP045 - e.g. sqlite:///sweep.db (resume / share a study)
    study_name: Optional[str] = None      # noqa: UP045
    n_trials: int = 20
    n_jobs: int = 1                       # trials asked and launched together (one launcher batch)
    max_failure_rate: float = 0.0         # fraction of failed trials tolerated before the sweep stops
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045 - name -> override grammar


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConfig, provider="spnas")
for _name, _node in (("tpe", TPESamplerConfig), ("gp", GPSamplerConfig), ("random", RandomSamplerConfig)):
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="spnas")
