"""A thin Hydra sweeper on Optuna's ask-and-tell interface (Optuna >= 4).

Structure (after hydra-optuna-sweeper 1.3.0's ``_impl.py``, rewritten for the current Optuna API):
``setup`` instantiates Hydra's launcher (basic, joblib, submitit/SLURM, ...); ``sweep`` turns the ``params``
node and the command-line sweep overrides into Optuna distributions, then repeats: ``study.ask`` a batch of
``n_jobs`` trials, launch them as one batch of jobs, ``study.tell`` each job's return value (or FAIL). The
best parameters are written to ``<sweep dir>/optimization_results.yaml``.

With a ``storage`` (``sqlite:///sweep.db``, an RDB URL, a ``*.journal`` file), several sweep processes work on one
study (:mod:`nas.shared_study`): the study ends at ``n_trials`` evaluations in total (a second process, or a
re-run, continues it instead of adding ``n_trials`` more), a surplus ask is failed, never launched, and each
process' sampler is reseeded so no two propose the same points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

if TYPE_CHECKING:  # Optuna is the optional extra spnas[tune]: imported when a sweep runs, not at Hydra's start-up
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)


def distribution_from_override(override: Override) -> BaseDistribution | str:
    """An Optuna distribution for a sweep override, or the plain value (as a string) for a fixed one.

    ``choice(a, b)`` -> categorical; ``range(a, b[, step])`` -> int (float with a float step), end exclusive as
    in Hydra; ``interval(a, b)`` -> float (int when both ends are ints); ``tag(log, interval(a, b))`` -> log scale.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    log_scale = "log" in (getattr(value, "tags", None) or set())
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(start), int(stop) - int(step), step=1 if log_scale else int(step),
                                   log=log_scale)
        return FloatDistribution(float(start), float(stop) - float(step), step=float(step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: unsupported sweep for the Optuna sweeper (use choice, range, "
                     "interval or tag(log, interval(...)))")


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna``; see :mod:`hydra_plugins.spnas_optuna_sweeper` for the options."""

    def __init__(self, sampler: Any = None, direction: Any = "minimize", storage: Any = None,
                 study_name: str | None = None, n_trials: int = 20, n_jobs: int = 1, max_failure_rate: float = 0.0,
                 params: DictConfig | None = None) -> None:
        self.sampler_config = sampler
        directions = OmegaConf.to_container(direction) if isinstance(direction, ListConfig) else direction
        self.directions = [str(d) for d in (directions if isinstance(directions, Sequence)
                                            and not isinstance(directions, str) else [directions])]
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ImportError("hydra/sweeper=optuna needs Optuna: pip install 'spnas[tune]'") from None
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        # Hydra instantiates the plugin recursively, so the sampler usually arrives built already
        sampler = self.sampler_config
        if isinstance(sampler, (DictConfig, dict)):
            sampler = instantiate(sampler)
        self.sampler = sampler

    def _parse(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
        from optuna.distributions import BaseDistribution

        lines = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        distributions, fixed = {}, {}
        for override in parser.parse_overrides(lines):
            value = distribution_from_override(override)
            if isinstance(value, BaseDistribution):
                distributions[override.get_key_element()] = value
            else:
                fixed[override.get_key_element()] = value
        return distributions, fixed

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        import optuna

        from nas import shared_study

        distributions, fixed = self._parse(arguments)
        storage = shared_study.open_storage(str(self.storage), "hydra.sweeper.storage") if self.storage else None
        if storage is not None and self.sampler is not None:
            self.sampler.reseed_rng()  # workers sharing one study and one seed would propose the same points
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                    directions=self.directions, load_if_exists=True)
        if storage is not None:
            stale = shared_study.fail_dead_workers(study)
            log.info("Study %s in %s: %d of %d evaluations made or under way%s", study.study_name,
                     shared_study.redact(str(self.storage)), shared_study.evaluations(study), self.n_trials,
                     f"; marked the trials {stale} of stopped processes failed" if stale else "")
        log.info("Study %s, sampler %s, directions %s", study.study_name, type(study.sampler).__name__,
                 self.directions)
        log.info("Search space: %s", ", ".join(f"{k}: {d}" for k, d in distributions.items()))
        failures = 0
        while (remaining := self.n_trials - shared_study.evaluations(study)) > 0:
            batch = min(remaining, self.n_jobs)
            asked = [study.ask(fixed_distributions=distributions) for _ in range(batch)]
            for trial in asked:
                shared_study.mark_worker(trial)
            trials = [trial for trial in asked if shared_study.claim(study, trial, self.n_trials)]
            if not trials:  # other processes took the remaining evaluations meanwhile
                break
            overrides = [tuple(f"{k}={v}" for k, v in trial.params.items()) + tuple(f"{k}={v}" for k, v in
                                                                                      fixed.items())
                         for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                try:
                    values = ret.return_value  # re-raises the job's exception
                    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
                    if len(values) != len(self.directions):
                        raise ValueError(f"the task returned {len(values)} value(s) for {len(self.directions)} "
                                         "direction(s)")
                    study.tell(trial, values)
                except Exception as err:  # noqa: BLE001 - any job failure is a FAIL trial, as in Hydra's plugin
                    failures += 1
                    log.warning("Trial %d failed: %s", trial.number, err)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    if failures > self.max_failure_rate * self.n_trials:
                        raise
        self._write_results(study)

    def _write_results(self, study: optuna.Study) -> None:
        if len(self.directions) == 1:
            results = {"name": "optuna", "best_params": study.best_params, "best_value": study.best_value}
        else:
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values}
                                                       for t in study.best_trials]}
        from nas.io import atomic_write_text

        # the sweep folder does not exist when this process ran no trial (a shared study already at n_trials)
        atomic_write_text(f"{self.config.hydra.sweep.dir}/optimization_results.yaml",
                          OmegaConf.to_yaml(OmegaConf.create(results)))
        log.info("Best: %s", results.get("best_params", results.get("solutions")))
