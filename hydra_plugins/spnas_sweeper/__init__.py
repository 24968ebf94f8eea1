"""spnas' Hydra plugin package: registers ``hydra/sweeper/sampler=gp`` for the Optuna sweeper.

Hydra imports every module under ``hydra_plugins`` at start-up; a structured config is needed because the
Optuna sweeper types its ``sampler`` node, so a plain YAML option could not carry the GP's settings.
"""

# no ``from __future__ import annotations``: Hydra executes this module before registering it in sys.modules,
# so string annotations could not be resolved for the structured config
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_optuna_sweeper.config import SamplerConfig
except ImportError:  # the sweeper (extra "tune") is not installed: nothing to register
    SamplerConfig = None

if SamplerConfig is not None:

    @dataclass
    class GPSamplerConfig(SamplerConfig):
        """Gaussian-process Bayesian optimisation (:func:`nas.search.sweep.gp_sampler`)."""

        _target_: str = "nas.search.sweep.gp_sampler"
        seed: Optional[int] = None  # noqa: UP045
        n_initial_points: int = 3
        acq_func: str = "EI"

    ConfigStore.instance().store(group="hydra/sweeper/sampler", name="gp", node=GPSamplerConfig,
                                 provider="spnas")
