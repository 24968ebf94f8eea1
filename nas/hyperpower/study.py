"""HyperPower's loop (thesis Ch. 3) and its baselines on the same budget, with Optuna's ask-and-tell.

``run_hyperpower(cfg)`` (what ``python hyperpower.py`` runs):

1. check the inputs (objective, method, constraints, GPU for power / CUDA memory, profiling size vs folds);
2. profile ``cost_models.samples`` random networks and fit the cost models of the constrained metrics
   (Eq 3.2-3.3, 10-fold CV RMSPE), or load them (``cost_models.path``);
3. resolve each constraint's margin (``hyperpower.margin``, default ``auto``: the model's one-sided 95 % CV error
   bound, :func:`resolve_margins`), warn on the console and in ``hyperpower.json`` where the model is too
   inaccurate to enforce its limit, and refuse a constraint no configuration meets (the best predicted value is
   in the message);
4. run ``n_trials`` evaluations of Eq 3.1 (minimise validation error, or maximise ``objective=``, subject to
   the constraints) with one of the methods:

   =============  ==========================================================================================
   hyperpower     Eq 3.4 (:class:`~nas.hyperpower.samplers.ConstraintAwareSampler`): only networks the models
                  call feasible are proposed and trained; diverging ones stop early (Sec 3.3.3, a pruner)
   vanilla_bo     ``optuna.samplers.GPSampler(constraints_func=...)``: constraints learned from the measured
                  values of evaluated points (Sec 3.2); no cost models, no early termination
   random         ``optuna.samplers.RandomSampler``: constrained random search (Sec 3.4.1)
   random_walk    :class:`~nas.hyperpower.samplers.RandomWalkSampler`: ``a ~ N(a+, sigma0^2)`` (Sec 3.4.1)
   =============  ==========================================================================================

   The baselines measure each proposal's costs before training (cheap, as the thesis' low-cost constraints)
   and do not train a violating one: it uses up its evaluation and is told to the study as an untrained
   network (chance accuracy) with its measured constraint values. HyperPower's gate is the models alone; its
   networks are measured as well, after the decision, only to audit the models: a trained network that
   violates a measured constraint is a model error, reported with the model's RMSPE.
5. write ``hyperpower.json`` (every trial: parameters, predicted and measured costs, trained / pruned,
   validation error, objective, best so far) and ``cost_models.json``.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from models.child import ChildNet
from nas import shared_study
from nas.cli import SignalStop, resume_command, stop_on_signals
from nas.cost.vocabulary import UNITS
from nas.errors import ConfigError, Interrupted
from nas.hyperpower.cost_models import (
    DEFAULT_SCALE,
    CostModel,
    CostModels,
    check_form,
    check_samples,
    samples_for_bound,
)
from nas.hyperpower.measure import GPU_METRICS, METRICS, measure, require_gpu
from nas.hyperpower.samplers import ConstraintAwareSampler, RandomWalkSampler
from nas.hyperpower.structure import StructureSpace
from nas.io import append_jsonl, null_non_finite, read_jsonl
from nas.search.objectives import Measurements, Objective, build_objective
from nas.space.networks import build_child

log = logging.getLogger(__name__)

FORMAT = "spnas-hyperpower"
VERSION = 1
METHODS = ("hyperpower", "vanilla_bo", "random", "random_walk")
ENUMERATE_LIMIT = 200_000
MARGIN_RULES = ("auto", "rmspe")  # hyperpower.margin, besides a fraction of the limit
DEFAULT_MARGIN = "auto"
DEFAULT_CONFIDENCE = 0.95  # hyperpower.margin_confidence
SUGGESTED_SAMPLES = 40  # hyperpower.cost_models.samples' default: the least a warning suggests


class PruningCallback(pl.Callback):
    """Early termination of diverging candidates (Sec 3.3.3): report validation error each epoch, stop if pruned.

    optuna-integration's ``PyTorchLightningPruningCallback`` subclasses ``lightning.pytorch.Callback``; this
    project's Trainer is ``pytorch_lightning``'s, which rejects callbacks of the other package, so this is its
    few-line equivalent. It stops the fit (``trainer.should_stop``) instead of raising through Lightning.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/acc") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.last_error: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        acc = float(trainer.callback_metrics[self.monitor])
        self.last_error = 1.0 - acc if math.isfinite(acc) else 1.0
        self.trial.report(self.last_error, step=int(trainer.current_epoch))
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def evaluations_to_reach(best_so_far: list[float | None], target: float) -> int | None:
    """1-based index of the first evaluation whose best-so-far error is ``<= target`` (``None``: never)."""
    for i, value in enumerate(best_so_far):
        if value is not None and value <= target + 1e-12:
            return i + 1
    return None


def check_config(cfg: DictConfig) -> tuple[Objective, dict[str, float], str]:
    """Every input check that needs no data, profiling or training (so bad input fails in a second)."""
    hp = cfg.hyperpower
    objective = build_objective(cfg.get("objective"), None)
    method = str(hp.method)
    if method not in METHODS:
        raise ConfigError(f"hyperpower.method must be one of {list(METHODS)}, got {method!r}")
    constraints = {}
    for metric, limit in (OmegaConf.to_container(hp.constraints, resolve=True) or {}).items():
        if metric not in METRICS:
            raise ConfigError(f"hyperpower.constraints.{metric}: unknown; choose among {list(METRICS)}")
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ConfigError(f"hyperpower.constraints.{metric} must be > 0 {UNITS[metric]}, got {limit!r}")
        constraints[metric] = float(limit)
    if not constraints:
        raise ConfigError("HyperPower needs at least one constraint (Eq 3.1): e.g. hyperpower.constraints."
                          "memory_mb=<MB> or hyperpower.constraints.latency_ms=<ms>")
    for metric in constraints:
        require_gpu(metric)
    if hp.cost_models.get("path") is None:
        check_samples(int(hp.cost_models.samples), int(hp.cost_models.folds))
        check_form(hp.cost_models.get("features", "linear"), hp.cost_models.get("scale", DEFAULT_SCALE))
    check_margin(hp.get("margin", DEFAULT_MARGIN), hp.get("margin_confidence", DEFAULT_CONFIDENCE))
    if int(hp.n_trials) < 1:
        raise ConfigError(f"hyperpower.n_trials must be >= 1, got {hp.n_trials}")
    shared_study.check_storage(cfg.get("storage"))
    name = cfg.get("study_name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"study_name must be a non-empty name (or null: hyperpower-<method>-<seed>), got {name!r}")
    return objective, constraints, method


def make_structure(cfg: DictConfig) -> StructureSpace:
    hp = cfg.hyperpower
    return StructureSpace(OmegaConf.to_container(cfg.space, resolve=True), widths=list(hp.structure.widths),
                          lr=list(hp.training.lr), momentum=list(hp.training.momentum),
                          weight_decay=list(hp.training.weight_decay))


def profile_cost_models(structure: StructureSpace, metrics: list[str], input_shape: tuple[int, ...],
                        in_channels: int, num_classes: int, samples: int, folds: int, features: str, seed: int,
                        backend: Any = None, scale: str = DEFAULT_SCALE) -> CostModels:
    """Measure ``samples`` distinct random networks and fit one cost model per metric (Eq 3.2-3.3)."""
    rng = np.random.default_rng(seed)
    configs: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    limit = min(samples, structure.num_structures())
    check_samples(limit, folds)
    while len(configs) < limit:
        config = structure.sample_structures(rng, 1)[0]
        key = tuple(sorted(config.items()))
        if key not in seen:
            seen.add(key)
            configs.append(config)
    measured: dict[str, list[float]] = {m: [] for m in metrics}
    for config in configs:
        space, arch = structure.build(config)
        values = measure(build_child(space, arch, in_channels, num_classes), input_shape, metrics, backend)
        for m in metrics:
            measured[m].append(values[m])
    return CostModels.fit(configs, measured, structure.features_matrix(configs), structure.feature_names, folds,
                          features, seed, scale)


def best_predicted(structure: StructureSpace, models: CostModels, constraints: dict[str, float],
                   seed: int, margins: dict[str, Margin] | None = None) -> dict[str, float]:
    """Smallest predicted value of each constrained metric over the structural space; refuses unmeetable limits,
    and (with ``margins``, HyperPower's) limits no structure is predicted to meet less the margin."""
    margins = margins or {}
    if structure.num_structures() <= ENUMERATE_LIMIT:
        configs, how = structure.enumerate_structures(), "all"
    else:
        configs, how = structure.sample_structures(np.random.default_rng(seed), 50_000), "50000 random"
    predictions = models.predict(structure.features_matrix(configs))
    best = {m: float(predictions[m].min()) for m in constraints}
    for m, limit in constraints.items():
        if best[m] > limit:
            raise ConfigError(f"no configuration can meet {m} <= {limit:g} {UNITS[m]}: the best predicted value over "
                              f"{how} {len(configs)} configurations is {best[m]:.4g} {UNITS[m]} (cost model RMSPE "
                              f"{models.models[m].rmspe_cv:.1f} %); raise the limit or widen the space")
    allowed = {m: limit * (1.0 - margins[m].value) if m in margins else limit for m, limit in constraints.items()}
    for m, limit in constraints.items():
        if best[m] > allowed[m]:
            raise ConfigError(f"no configuration is predicted to meet {m} <= {limit:g} {UNITS[m]} less the margin of "
                              f"{100 * margins[m].value:.1f} % kept for the cost model's error (<= {allowed[m]:.4g} "
                              f"{UNITS[m]}): the best predicted value over {how} {len(configs)} configurations is "
                              f"{best[m]:.4g} {UNITS[m]}; {margins[m].profile_more} for a more accurate model and a "
                              "smaller margin, set a smaller hyperpower.margin (0.0: Eq 3.4 as written), or raise "
                              "the limit")
    joint = np.ones(len(configs), bool)
    for m in constraints:
        joint &= predictions[m] <= allowed[m]
    if not joint.any():
        raise ConfigError(f"no configuration meets all constraints {constraints} together, though each alone can "
                          f"be met (best predicted values {best}); loosen one of them")
    log.info("Predicted feasible: %d of %s %d configurations (%.0f %%)", int(joint.sum()), how, len(configs),
             100 * joint.mean())
    return best


class KnownCosts:
    """Measured costs by structure: a structure's cost is a property of the network, so once it is measured
    (profiled for the models, or evaluated in this study) the measurement replaces the model's prediction."""

    def __init__(self, structure: StructureSpace) -> None:
        self.keys = list(structure.structural_distributions())
        self.values: dict[tuple, dict[str, float]] = {}

    def key(self, params: dict[str, Any]) -> tuple:
        return tuple(params.get(k) for k in self.keys)

    def add(self, params: dict[str, Any], measured: dict[str, float]) -> None:
        self.values.setdefault(self.key(params), {}).update(measured)

    def get(self, params: dict[str, Any], metric: str) -> float | None:
        return self.values.get(self.key(params), {}).get(metric)


def check_margin(margin: Any, confidence: Any) -> None:
    """``hyperpower.margin``: ``auto``, ``rmspe`` or a fraction in [0, 1); ``margin_confidence`` in (0, 1)."""
    fraction = isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0.0 <= margin < 1.0
    if margin not in MARGIN_RULES and not fraction:
        raise ConfigError(f"hyperpower.margin must be 'auto', 'rmspe' or a fraction in [0, 1), got {margin!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"hyperpower.margin_confidence must lie strictly between 0 and 1, got {confidence!r}")


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


@dataclass(frozen=True)
class Margin:
    """The share of a constraint's limit HyperPower keeps free for its cost model's error: a structure not measured
    yet is feasible iff ``predicted <= limit * (1 - value)`` (``value = 0``: Eq 3.4 as written).

    ``bound_ratio`` is the model's one-sided ``confidence`` bound on measured / predicted cost
    (:meth:`~nas.hyperpower.cost_models.CostModel.error_bound`; ``inf``: too few profiled networks for one), and
    ``1 - 1 / bound_ratio`` the margin that bound asks for. ``warning`` (one line) says when the margin in use is
    less than that, or there is no bound, i.e. the model is too inaccurate to enforce its limit (with the fix);
    ``profile_more`` is the profiling part of a fix."""

    metric: str
    setting: Any
    value: float
    confidence: float
    bound_ratio: float
    samples: int
    samples_needed: int
    rmspe_cv: float
    warning: str | None
    profile_more: str

    @property
    def bound_margin(self) -> float:
        """The margin the bound asks for, ``1 - 1 / bound_ratio`` (0 where the model never under-predicts)."""
        return max(0.0, 1.0 - 1.0 / self.bound_ratio)

    @property
    def enforceable(self) -> bool:
        return self.warning is None

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "margin": self.value, "confidence": self.confidence,
                "bound_ratio": self.bound_ratio if math.isfinite(self.bound_ratio) else None,
                "bound_margin": self.bound_margin if math.isfinite(self.bound_ratio) else None,
                "samples": self.samples, "samples_needed_for_bound": self.samples_needed,
                "rmspe_cv_pct": self.rmspe_cv, "enforceable": self.enforceable, "warning": self.warning}


def resolve_margin(setting: Any, model: CostModel, confidence: float = DEFAULT_CONFIDENCE,
                   from_file: bool = False) -> Margin:
    """The margin of ``hyperpower.margin`` for ``model``'s metric.

    ``auto`` (default): ``1 - 1 / q`` with ``q`` the model's one-sided ``confidence`` bound on measured /
    predicted cost from its out-of-fold predictions, so a structure predicted at the margin is within the limit
    with probability >= ``confidence`` where the bound's assumption holds (a structure like the randomly profiled
    ones; see :meth:`~nas.hyperpower.cost_models.CostModel.error_bound`). Fewer profiled networks than the bound
    needs (:func:`~nas.hyperpower.cost_models.samples_for_bound`: 19 at 95 %): the largest out-of-fold
    under-prediction instead, with a warning. ``rmspe``: the model's CV RMSPE as a fraction. A number: that
    fraction (0: Eq 3.4 as written). Any margin below the bound's, or without a bound, carries a warning.
    """
    check_margin(setting, confidence)
    metric, n, rmspe = model.metric, model.n_samples, model.rmspe_cv
    needed, bound = samples_for_bound(confidence), model.error_bound(confidence)
    if setting == "auto":
        ratio = bound if math.isfinite(bound) else model.largest_ratio()
        value = max(0.0, 1.0 - 1.0 / ratio)
    elif setting == "rmspe":
        value = min(rmspe / 100.0, 1.0)
    else:
        value = float(setting)
    conf = f"{100 * confidence:g} %"
    more = max(SUGGESTED_SAMPLES, 2 * (n if math.isfinite(bound) else needed))
    profile_more = (f"{'drop hyperpower.cost_models.path and ' if from_file else ''}profile more networks "
                    f"(hyperpower.cost_models.samples={more})")
    head = f"{metric} cost model (CV RMSPE {rmspe:.1f} % on {n} profiled networks)"
    if not math.isfinite(bound):
        fix = f"{profile_more} or set hyperpower.margin to a larger fraction than {value:.3f}"
        reason = (f"{n} profiled networks are too few to bound its error at {conf} (that needs >= {needed})"
                  if n < needed else "an out-of-fold prediction of 0 leaves its error unbounded")
        used = (f"its margin is the largest out-of-fold under-prediction, {_pct(value)} of the limit"
                if setting == "auto" else f"hyperpower.margin={setting} keeps {_pct(value)} of the limit free")
        warning: str | None = (f"{head} is too inaccurate to enforce the {metric} limit: {reason}; {used}, so networks "
                               f"over the limit may be trained. Fix: {fix}")
    else:
        need = max(0.0, 1.0 - 1.0 / bound)
        fix = (f"set hyperpower.margin=auto (here {need:.3f}) or a fraction >= {need:.3f}, or {profile_more} for a "
               "more accurate model")
        warning = None
        if value < need - 1e-12:
            eq = " (Eq 3.4 as written)" if value == 0 else ""
            warning = (f"{head} is too inaccurate to enforce the {metric} limit with hyperpower.margin={setting}"
                       f"{eq}: it keeps {_pct(value)} of the limit free, its {conf} error bound needs {_pct(need)}, "
                       f"so networks over the limit may be trained. Fix: {fix}")
    return Margin(metric, setting, value, confidence, bound, n, needed, rmspe, warning, profile_more)


def resolve_margins(hp: DictConfig, models: CostModels, constraints: dict[str, float]) -> dict[str, Margin]:
    """:func:`resolve_margin` of ``hyperpower.margin`` / ``margin_confidence`` for every constrained metric."""
    setting = hp.get("margin", DEFAULT_MARGIN)
    confidence = float(hp.get("margin_confidence", DEFAULT_CONFIDENCE))
    from_file = (hp.get("cost_models") or {}).get("path") is not None
    return {m: resolve_margin(setting, models.models[m], confidence, from_file) for m in constraints}


def make_sampler(method: str, structure: StructureSpace, models: CostModels, constraints: dict[str, float],
                 hp: DictConfig, seed: int, known: KnownCosts | None = None, shared: bool = False,
                 margins: dict[str, Margin] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``method``. ``shared`` (workers on one study, one seed): HyperPower's and the random walk's
    proposals are drawn from ``(seed, trial number)``, Optuna's samplers are seeded per process, so no two workers
    propose the same points. ``margins``: HyperPower's (default: :func:`resolve_margins` of ``hp``)."""
    distributions = structure.distributions()
    if method == "hyperpower":
        margins = margins or resolve_margins(hp, models, constraints)

        def feasible(configs: list[dict[str, Any]]) -> np.ndarray:
            """Eq 3.4's indicators: predicted cost (measured where known) within the limit (less the margin)."""
            predictions = models.predict(structure.features_matrix(configs))
            ok = np.ones(len(configs), bool)
            for m, limit in constraints.items():
                for i, config in enumerate(configs):
                    value = known.get(config, m) if known is not None else None
                    ok[i] &= (value <= limit) if value is not None else (
                        predictions[m][i] <= limit * (1 - margins[m].value))
            return ok

        return ConstraintAwareSampler(distributions, feasible, int(hp.n_startup_trials), int(hp.n_candidates), seed,
                                      per_trial_seed=shared)
    own_seed = None if shared else seed
    if method == "vanilla_bo":
        return optuna.samplers.GPSampler(seed=own_seed, n_startup_trials=int(hp.n_startup_trials),
                                         constraints_func=lambda t: t.user_attrs["constraints"])
    if method == "random":
        return optuna.samplers.RandomSampler(seed=own_seed)
    return RandomWalkSampler(distributions, float(hp.random_walk_sigma), seed=seed, per_trial_seed=shared)


def train_candidate(cfg: DictConfig, net: ChildNet, optimizer: Any, datamodule: Any,
                    callbacks: list[pl.Callback]) -> float:
    """Train ``net`` for ``trainer.max_epochs`` (or until pruned) with the trial's ``optimizer`` (its searched
    hyperparameters), ``hyperpower.label_smoothing`` and a cosine schedule; its final validation accuracy (0 when
    it is not finite). The training itself is :func:`nas.search.training.train_child`; its threads follow the
    other spnas processes on these CPUs (:class:`~nas.search.callbacks.ThreadRebalance`)."""
    from nas.search.callbacks import ThreadRebalance
    from nas.search.optimization import warmup_cosine
    from nas.search.training import train_child

    callbacks = [*callbacks, ThreadRebalance()]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks, enable_checkpointing=False,
                                      num_sanity_val_steps=0, enable_progress_bar=False,
                                      enable_model_summary=False)
    trained = train_child(net, datamodule, optimizer=optimizer, lr_scheduler=partial(warmup_cosine, warmup_steps=0),
                          label_smoothing=float(cfg.hyperpower.label_smoothing), trainer=trainer, test=False)
    return trained["val_acc"] if trained["val_acc"] is not None else 0.0


def run_hyperpower(cfg: DictConfig) -> dict[str, Any]:
    """Fit or load the cost models, then run ``hyperpower.n_trials`` evaluations; write ``hyperpower.json``.

    ``storage=<URL>``: the study lives in that Optuna storage and this process is one of its workers
    (:mod:`nas.shared_study`): the cost models are the study's (the first worker profiles and publishes them), every
    worker proposes through Eq 3.4 with them, and the study ends at ``n_trials`` evaluations in total. Each worker
    writes its own run folder (``trials.jsonl``, one writer); the summary covers the whole study so far."""
    start = time.perf_counter()
    objective, constraints, method = check_config(cfg)
    hp = cfg.hyperpower
    seed = int(cfg.seed)
    n_trials = int(hp.n_trials)
    storage_url = shared_study.check_storage(cfg.get("storage"))
    shared = storage_url is not None
    out = Path(cfg.resume) if cfg.get("resume") else Path(cfg.paths.output_dir)
    trials_path = out / "trials.jsonl"  # one record per finished evaluation: what a resumed run continues from
    models_path = hp.cost_models.get("path")
    if cfg.get("resume"):
        if not trials_path.is_file():
            raise ConfigError(f"resume={out}: no trials.jsonl there; pass the folder of the stopped hyperpower run")
        models_path = models_path or out / "cost_models.json"
    elif trials_path.is_file():
        raise ConfigError(f"{out} already holds a hyperpower run (trials.jsonl); continue it with resume={out}, or "
                          "choose another run folder (hydra.run.dir=...)")
    # Optuna's storage keeps the study's trials: a stopped run's sampler sees them again on resume, and workers
    # sharing one storage see each other's
    out.mkdir(parents=True, exist_ok=True)
    if shared:
        storage: Any = shared_study.open_storage(storage_url)
        where = f"storage {shared_study.redact(storage_url)}"
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
        where = str(out / "optuna.journal")
    study_name = str(cfg.get("study_name") or f"hyperpower-{method}-{seed}")
    study = optuna.create_study(direction="minimize", storage=storage, study_name=study_name, load_if_exists=True)
    if shared:
        check_same_settings(study, {"method": method, "constraints": constraints,
                                    "margin": hp.get("margin", DEFAULT_MARGIN),
                                    "margin_confidence": hp.get("margin_confidence", DEFAULT_CONFIDENCE),
                                    "space": str(cfg.space.name)})
    if hp.get("threads"):
        # tiny networks gain nothing from intra-op threads, and spinning threads collapse on a loaded machine
        import torch

        torch.set_num_threads(int(hp.threads))
    structure = make_structure(cfg)
    pruner = instantiate(hp.pruner) if method == "hyperpower" and hp.get("pruner") else optuna.pruners.NopPruner()
    datamodule = instantiate(cfg.data)
    metrics = list(constraints)
    input_shape = (int(hp.batch_size), datamodule.in_channels, structure_resolution(cfg), structure_resolution(cfg))
    # an untrained network's score (chance accuracy at the limits): what the baselines tell for a violating
    # proposal; computing it now also checks that the objective only needs costs this run measures
    y_untrained = -objective(Measurements(1.0 / datamodule.num_classes, device_power_w=objective.device_power_w,
                                          **{m: constraints[m] for m in metrics if m != "cuda_memory_mb"}))
    backend = None
    if "latency_ms" in metrics:
        from nas.cost.backends import build_backend

        backend = build_backend(cfg.hardware.backend)

    if models_path:
        models = CostModels.load(models_path, structure.feature_names, structure.features, seed)
    elif shared and "cost_models" in study.user_attrs:
        log.info("Cost models: study %s's (profiled by its first worker)", study_name)
        models = CostModels.from_document(study.user_attrs["cost_models"], structure.feature_names,
                                          structure.features, seed, f"study {study_name}")
    else:
        log.info("Profiling %d networks for the cost models of %s", int(hp.cost_models.samples), metrics)
        models = profile_cost_models(structure, metrics, input_shape, datamodule.in_channels,
                                     datamodule.num_classes, int(hp.cost_models.samples),
                                     int(hp.cost_models.folds), str(hp.cost_models.features), seed, backend,
                                     str(hp.cost_models.get("scale", DEFAULT_SCALE)))
    if shared:
        if "cost_models" not in study.user_attrs:
            study.set_user_attr("cost_models", null_non_finite(models.document()))
        # every worker gates its proposals with the study's models (the first published, if two profiled at once)
        models = CostModels.from_document(study.user_attrs["cost_models"], structure.feature_names,
                                          structure.features, seed, f"study {study_name}")
    missing = set(metrics) - set(models.models)
    if missing:
        raise ConfigError(f"{models_path or 'the study'}'s cost models have no model for {sorted(missing)}; "
                          "profile again")
    models.save(out / "cost_models.json")
    for m, model in models.models.items():
        log.info("Cost model %s (%s scale): %d-fold CV RMSPE %.2f %% on %d networks", m, model.scale, model.folds,
                 model.rmspe_cv, model.n_samples)
    # HyperPower's gate is the models: the margin each limit keeps for their error, and a warning where it falls short
    margins = resolve_margins(hp, models, constraints) if method == "hyperpower" else {}
    for m, margin in margins.items():
        log.info("Margin %s: %.2f %% of the limit (hyperpower.margin=%s; %g %% bound: %s)", m, 100 * margin.value,
                 margin.setting, 100 * margin.confidence, "none" if not math.isfinite(margin.bound_ratio) else
                 f"measured <= {margin.bound_ratio:.3f} x predicted")
    warning_lines = [margin.warning for margin in margins.values() if margin.warning]
    for line in warning_lines:  # on the console, not only in the log: the run may train networks over the limit
        log.warning(line)
        print(f"warning: {line}", file=sys.stderr, flush=True)
    best_pred = best_predicted(structure, models, constraints, seed, margins)

    known = KnownCosts(structure)
    for i, config in enumerate(models.configs):
        known.add(config, {m: model.actual[i] for m, model in models.models.items()})
    trials: list[dict[str, Any]] = read_jsonl(trials_path, "hyperpower trial")  # this run folder's evaluations
    for record in trials:  # a resumed run: what the stopped one measured
        known.add(record["params"], record["measured"])
    if shared:
        stale = shared_study.fail_dead_workers(study)  # trials of workers of this host that were killed
    else:
        stale = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        for number in stale:
            study.tell(number, state=optuna.trial.TrialState.FAIL)  # the evaluation a stop cut short
    if stale:
        log.info("Marked %d stopped evaluation(s) failed: trial(s) %s", len(stale), stale)
    sampler = make_sampler(method, structure, models, constraints, hp, seed, known, shared, margins)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    distributions = structure.distributions()
    trial = None
    try:
        with stop_on_signals():
            while True:
                records = study_records(study, trials)
                for record in records:  # other workers' measurements replace predictions as well
                    known.add(record["params"], record["measured"])
                if shared_study.evaluations(study) >= n_trials:
                    break
                trial = study.ask(fixed_distributions=distributions)
                shared_study.mark_worker(trial)
                if not shared_study.claim(study, trial, n_trials):  # another worker took the last one meanwhile
                    trial = None
                    break
                record, _ = evaluate_trial(
                    trial, study, cfg, structure, models, metrics, constraints, objective, method, datamodule,
                    input_shape, backend, known, y_untrained, best_error_of(records), shared)
                append_jsonl(trials_path, record)
                trials.append(record)
                trial = None
    except (SignalStop, SIGTERMException) as stop:
        signum = stop.signum if isinstance(stop, SignalStop) else signal.SIGTERM
        if trial is not None:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        done = shared_study.evaluations(study)
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} after {done} of {n_trials} evaluations"
                          f" (kept in {trials_path} and {where})\n"
                          f"resume with: {resume_command('resume', str(out))}") from None
    result = summarise(study_records(study, trials), method, seed, constraints, models, best_pred, objective,
                       margins)
    if shared:
        workers = {r.get("worker") for r in result["trials"]}
        result["study"] = {"name": study_name, "storage": shared_study.redact(storage_url), "workers": len(workers),
                           "evaluations_by_this_worker": len(trials)}
    result["output_dir"] = str(out)
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    print(format_summary(result, out))
    return result


def check_same_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """A shared study's settings (method, constraints, margin, space) are the first worker's: a worker with other
    settings would gate its proposals differently; refused with one line."""
    settings = null_non_finite(OmegaConf.to_container(OmegaConf.create(settings), resolve=True))
    if "settings" not in study.user_attrs:
        study.set_user_attr("settings", settings)
    first = study.user_attrs["settings"]
    if first != settings:
        changed = sorted(k for k in set(first) | set(settings) if first.get(k) != settings.get(k))
        raise ConfigError(f"study {study.study_name} runs with {', '.join(f'{k}={first.get(k)!r}' for k in changed)}"
                          f", this worker with {', '.join(f'{k}={settings.get(k)!r}' for k in changed)}; use the "
                          "same settings, or another study_name=")


def study_records(study: optuna.Study, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every finished evaluation's record in trial order: this run folder's (``local``) and the ones the study holds
    (user attribute ``record``: other workers'), with ``best_error_so_far`` over the whole study."""
    by_number = {int(r["number"]): r for r in local}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED)):
        if "record" in t.user_attrs:
            by_number.setdefault(t.number, t.user_attrs["record"])
    out, best = [], None
    for number in sorted(by_number):
        record = by_number[number]
        if record["trained"] and not record["pruned"] and record["val_error"] is not None:
            best = record["val_error"] if best is None else min(best, record["val_error"])
        out.append({**record, "best_error_so_far": best})
    return out


def best_error_of(records: list[dict[str, Any]]) -> float | None:
    """The best validation error so far (of :func:`study_records`)."""
    return records[-1]["best_error_so_far"] if records else None


def evaluate_trial(trial: Any, study: Any, cfg: DictConfig, structure: Any, models: CostModels, metrics: list[str],
                   constraints: dict[str, float], objective: Objective, method: str, datamodule: Any,
                   input_shape: tuple[int, ...], backend: Any, known: Any, y_untrained: float,
                   best_error: float | None, shared: bool = False) -> tuple[dict[str, Any], float | None]:
    """One evaluation (thesis Sec 3.3): build the proposed network, measure its costs, train it unless a
    baseline measured a violation, and tell the study; returns its record and the best error so far. The record
    goes to the study too (user attribute ``record``), for the summaries of the workers sharing it (``shared``:
    with this worker's ``host:pid``)."""
    seed = int(cfg.seed)
    t0 = time.perf_counter()
    params = dict(trial.params)
    pl.seed_everything(seed * 100_003 + trial.number, workers=True, verbose=False)
    space, arch = structure.build(params)
    net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes)
    features = structure.features(params)
    predicted = {m: float(models.models[m].predict(features)[0]) for m in metrics}
    measured = measure(net, input_shape, metrics, backend)
    known.add(params, measured)
    violated = [m for m in metrics if measured[m] > constraints[m]]
    trial.set_user_attr("constraints", [measured[m] - constraints[m] for m in metrics])
    record: dict[str, Any] = {
        "number": trial.number, "params": params, "architecture": arch.keys,
        "predicted": predicted, "measured": measured,
        "predicted_feasible": all(predicted[m] <= constraints[m] for m in metrics),
        "violated": violated, "trained": False, "pruned": False, "val_acc": None, "val_error": None,
        "objective": None}
    if shared:
        record["worker"] = "{host}:{pid}".format(**shared_study.worker_id())
    value: float | None = None
    if violated and method != "hyperpower":
        trial.set_user_attr("y", y_untrained)
        value = y_untrained
    else:
        pruning = PruningCallback(trial)
        acc = train_candidate(cfg, net, structure.optimizer_config(params), datamodule, [pruning])
        score = objective(Measurements(acc, device_power_w=objective.device_power_w,
                                       **{m: measured[m] for m in metrics if m != "cuda_memory_mb"}))
        trial.set_user_attr("y", -score)
        value = None if pruning.pruned else -score
        record.update(trained=True, pruned=pruning.pruned, val_acc=acc, val_error=1.0 - acc, objective=score)
        if not pruning.pruned:
            best_error = record["val_error"] if best_error is None else min(best_error, record["val_error"])
    record["best_error_so_far"] = best_error
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    trial.set_user_attr("record", null_non_finite(record))
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value)
    log.info("[%s] trial %d: %s%s%s, error %s, best %s (%.1f s)", method, trial.number,
             ", ".join(f"{m} {measured[m]:.4g} (pred {predicted[m]:.4g})" for m in metrics),
             " VIOLATES " + ",".join(violated) if violated else "",
             " [pruned]" if record["pruned"] else "" if record["trained"] else " [not trained]",
             "-" if record["val_error"] is None else f"{record['val_error']:.4f}",
             "-" if best_error is None else f"{best_error:.4f}", record["wall_s"])
    return record, best_error


def structure_resolution(cfg: DictConfig) -> int:
    return int(cfg.space.resolution)


def summarise(trials: list[dict[str, Any]], method: str, seed: int, constraints: dict[str, float],
              models: CostModels, best_pred: dict[str, float], objective: Objective,
              margins: dict[str, Margin] | None = None) -> dict[str, Any]:
    """``hyperpower.json``: every trial, the cost models, HyperPower's margins and their warnings, the curve."""
    margins = margins or {}
    trained = [t for t in trials if t["trained"]]
    completed = [t for t in trained if not t["pruned"]]
    best = min(completed, key=lambda t: t["val_error"]) if completed else None
    curve = [t["best_error_so_far"] for t in trials]
    final = best["val_error"] if best else None
    model_errors = [{"number": t["number"], "violated": t["violated"],
                     **{f"{m}_predicted": t["predicted"][m] for m in t["violated"]},
                     **{f"{m}_measured": t["measured"][m] for m in t["violated"]},
                     **{f"{m}_rmspe_pct": models.models[m].rmspe_cv for m in t["violated"]}}
                    for t in trained if t["violated"]]
    return {
        "format": FORMAT, "version": VERSION, "method": method, "seed": seed, "objective": objective.name,
        "constraints": constraints, "best_predicted": best_pred,
        "cost_models": {m: {"rmspe_cv_pct": model.rmspe_cv, "n_samples": model.n_samples, "folds": model.folds,
                            "features": model.features, "scale": model.scale} for m, model in models.models.items()},
        "margins": {m: margin.to_dict() for m, margin in margins.items()},
        "warnings": [margin.warning for margin in margins.values() if margin.warning],
        "num_trials": len(trials), "num_trained": len(trained), "num_pruned": len(trained) - len(completed),
        "violating_proposals": sum(bool(t["violated"]) for t in trials),
        "violating_trained": len(model_errors), "model_errors": model_errors,
        "best": best, "best_error_curve": curve,
        "evaluations_to_within_1pct": None if final is None else evaluations_to_reach(curve, final + 0.01),
        "trials": trials,
    }


def format_summary(result: dict[str, Any], out: Path) -> str:
    best = result["best"]
    rmspe = ", ".join(f"{m} {v['rmspe_cv_pct']:.2f} %" for m, v in result["cost_models"].items())
    lines = [f"\nHyperPower ({result['method']}, seed {result['seed']}): {result['num_trials']} evaluations, "
             f"{result['num_trained']} trained ({result['num_pruned']} stopped early), "
             f"{result['violating_proposals']} violating proposals, {result['violating_trained']} violating "
             f"networks trained",
             f"cost models ({next(iter(result['cost_models'].values()))['folds']}-fold CV RMSPE): {rmspe}"]
    if result.get("margins"):
        lines.append("margins (share of the limit kept for model error): " + ", ".join(
            f"{m} {100 * v['margin']:.1f} % (hyperpower.margin={v['setting']})" for m, v in result["margins"].items()))
    lines += [f"warning: {line}" for line in result.get("warnings", [])]
    if "study" in result:
        study = result["study"]
        lines.append(f"study {study['name']} ({study['storage']}): {result['num_trials']} evaluations by "
                     f"{study['workers']} worker(s), {study['evaluations_by_this_worker']} by this one")
    if best:
        lines.append(f"best: validation error {best['val_error']:.4f} at evaluation {best['number'] + 1} "
                     f"({' '.join(best['architecture'])}); within 1 % after "
                     f"{result['evaluations_to_within_1pct']} evaluations")
    lines.append(f"written to: {out / 'hyperpower.json'}")
    return "\n".join(lines)


__all__ = ["GPU_METRICS", "METHODS", "PruningCallback", "run_hyperpower"]
