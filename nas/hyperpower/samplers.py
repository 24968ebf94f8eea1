"""Samplers Optuna does not ship: HyperPower's constraint-aware acquisition (Eq 3.4) and the random walk.

**Why a sampler of its own.** Eq 3.4 multiplies expected improvement by indicators of the *predicted*
constraints, ``q(a) = EI(a) * I[P(â) <= P_T] * I[M(â) <= M_T]``: a network the cost models call infeasible
has zero acquisition and is never proposed, hence never trained. Optuna's ``GPSampler(constraints_func=...)``
is a different method, the thesis' *vanilla* constrained BO (Sec 3.2): it learns each constraint from the
*evaluated* points with a GP and weights EI by the probability of feasibility, so it still proposes (and pays
for) infeasible points while it learns. Optuna's GP internals (``optuna._gp``) are private, so Eq 3.4 is built
here from public pieces: scikit-learn's ``GaussianProcessRegressor`` (Matérn 5/2 + white noise, normalised
targets) models the objective; the acquisition is maximised over a candidate set (uniform random
configurations plus Gaussian perturbations of the best ones) from which every configuration the cost models
call infeasible is removed first. The first ``n_startup_trials`` are random *feasible* configurations.

Encoding for the GP: floats and ints on [0, 1] (log scale where the distribution is log), categorical
distributions of numbers (channels, kernel, expansion) as their ordinal position on [0, 1], other categoricals
one-hot. Every trial sets the user attribute ``y`` (lower is better); pruned trials keep theirs, so a diverging
region is learned as bad.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.errors import ConfigError

Feasible = Callable[[list[dict[str, Any]]], np.ndarray]


class SpaceCodec:
    """Uniform sampling, [0, 1] encoding, decoding and Gaussian perturbation of Optuna parameter dicts."""

    def __init__(self, distributions: dict[str, BaseDistribution]) -> None:
        self.distributions = dict(distributions)

    @staticmethod
    def _ordinal(d: BaseDistribution) -> bool:
        return isinstance(d, CategoricalDistribution) and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices)

    @staticmethod
    def _bounds(d: FloatDistribution | IntDistribution) -> tuple[float, float]:
        low, high = float(d.low), float(d.high)
        return (math.log(low), math.log(high)) if d.log else (low, high)

    def random(self, rng: np.random.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution):
                out[name] = d.choices[int(rng.integers(len(d.choices)))]
            else:
                out[name] = self._decode_one(d, float(rng.random()))
        return out

    def _decode_one(self, d: BaseDistribution, u: float) -> Any:
        u = min(1.0, max(0.0, u))
        if isinstance(d, CategoricalDistribution):
            return d.choices[int(round(u * (len(d.choices) - 1)))]
        low, high = self._bounds(d)
        value = low + u * (high - low)
        value = math.exp(value) if d.log else value
        if isinstance(d, IntDistribution):
            step = d.step if not d.log else 1
            return int(min(d.high, max(d.low, d.low + round((value - d.low) / step) * step)))
        if d.step is not None:
            value = d.low + round((value - d.low) / d.step) * d.step
        return float(min(d.high, max(d.low, value)))

    def _encode_one(self, d: BaseDistribution, value: Any) -> list[float]:
        if isinstance(d, CategoricalDistribution):
            index = d.choices.index(value)
            if self._ordinal(d):
                return [index / max(1, len(d.choices) - 1)]
            return [1.0 if i == index else 0.0 for i in range(len(d.choices))]
        low, high = self._bounds(d)
        v = math.log(float(value)) if d.log else float(value)
        return [(v - low) / (high - low) if high > low else 0.0]

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([x for name, d in self.distributions.items() for x in self._encode_one(d, params[name])])

    def encode_many(self, configs: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.stack([self.encode(c) for c in configs])

    def perturb(self, params: dict[str, Any], sigma: float, rng: np.random.Generator) -> dict[str, Any]:
        """``a ~ N(a+, sigma^2)`` in the [0, 1] encoding; one-hot categoricals are redrawn with probability sigma."""
        out = {}
        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution) and not self._ordinal(d):
                out[name] = (d.choices[int(rng.integers(len(d.choices)))] if rng.random() < sigma
                             else params[name])
            else:
                u = self._encode_one(d, params[name])[0] + float(rng.normal(0.0, sigma))
                out[name] = self._decode_one(d, u)
        return out


def observations(study: Study, feasible_only: bool = False) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Finished trials (complete or pruned) and their ``y`` (lower is better).

    ``feasible_only``: skip trials whose user attribute ``constraints`` (measured value - limit) has a positive
    entry, i.e. the measured violations a baseline told the study without training.
    """
    configs, ys = [], []
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if feasible_only and any(c > 0 for c in t.user_attrs.get("constraints", ())):
            continue
        y = t.user_attrs.get("y")
        if y is None and t.value is not None:
            y = sign * t.value
        if y is not None and math.isfinite(y):
            configs.append(t.params)
            ys.append(float(y))
    return configs, np.asarray(ys, float)


def expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """``E[max(y+ - y, 0)]`` under ``y ~ N(mu, sd^2)`` (the integral of Eq 3.4 without the indicators)."""
    from scipy.stats import norm

    improvement = best - mu - xi
    sd = np.maximum(sd, 1e-12)
    z = improvement / sd
    return improvement * norm.cdf(z) + sd * norm.pdf(z)


class _FullSpaceSampler(BaseSampler):
    """Base: every parameter is sampled jointly (relative) over a search space fixed at construction."""

    def __init__(self, distributions: dict[str, BaseDistribution], seed: int | None = None,
                 per_trial_seed: bool = False) -> None:
        self.codec = SpaceCodec(distributions)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.per_trial_seed = bool(per_trial_seed) and seed is not None
        self._fallback = RandomSampler(seed=seed)

    def _start_trial(self, trial: FrozenTrial) -> None:
        """``per_trial_seed``: draw this trial's proposal from ``(seed, trial number)``, so workers sharing one
        study (and one seed) propose different points, each as any worker would for that trial number."""
        if self.per_trial_seed:
            self.rng = np.random.default_rng([int(self.seed), int(trial.number)])  # type: ignore[arg-type]

    def reseed_rng(self) -> None:
        self.rng = np.random.default_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.codec.distributions)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


class ConstraintAwareSampler(_FullSpaceSampler):
    """HyperPower (thesis Eq 3.4): EI of a GP on the objective, zero wherever the cost models predict a violation.

    ``feasible(configs) -> bool array`` evaluates the predicted constraints (Eq 3.2-3.3 models against the
    limits of Eq 3.1) on many configurations at once; only configurations it accepts are ever returned.
    """

    def __init__(self, distributions: dict[str, BaseDistribution], feasible: Feasible, n_startup_trials: int = 5,
                 n_candidates: int = 2048, seed: int | None = None, max_rounds: int = 20,
                 per_trial_seed: bool = False) -> None:
        super().__init__(distributions, seed, per_trial_seed)
        self.feasible = feasible
        self.n_startup_trials = int(n_startup_trials)
        self.n_candidates = int(n_candidates)
        self.max_rounds = int(max_rounds)

    def _feasible_candidates(self, anchors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for _ in range(self.max_rounds):
            n_local = self.n_candidates // 4 if anchors else 0
            cands = [self.codec.random(self.rng) for _ in range(self.n_candidates - n_local)]
            cands += [self.codec.perturb(anchors[i % len(anchors)], 0.1, self.rng) for i in range(n_local)]
            ok = np.asarray(self.feasible(cands), bool)
            kept = [c for c, keep in zip(cands, ok) if keep]
            if kept:
                return kept
        raise ConfigError(f"the cost models call all {self.max_rounds * self.n_candidates} sampled configurations "
                          "infeasible; loosen the constraints (see the best predicted values in the log)")

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        self._start_trial(trial)
        configs, ys = observations(study)
        if len(ys) < self.n_startup_trials:
            return self._feasible_candidates([])[0]  # constrained random start
        order = np.argsort(ys)
        anchors = [configs[i] for i in order[:5]]
        cands = self._feasible_candidates(anchors)
        gp = self._fit_gp(self.codec.encode_many(configs), ys)
        mu, sd = gp.predict(self.codec.encode_many(cands), return_std=True)
        ei = expected_improvement(mu, sd, float(ys.min()))  # x I[predicted constraints hold]: cands are feasible
        return cands[int(np.argmax(ei))]

    def _fit_gp(self, X: np.ndarray, y: np.ndarray) -> Any:  # noqa: N803
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.full(X.shape[1], 0.5), (1e-2, 1e2), nu=2.5)
                  + WhiteKernel(1e-2, (1e-6, 1.0)))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                      random_state=int(self.rng.integers(2**31)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gp.fit(X, y)


class RandomWalkSampler(_FullSpaceSampler):
    """Random walk (thesis Sec 3.4.1): ``a_{d+1} ~ N(a+, sigma0^2)`` around the best configuration so far.

    ``a+`` is the best *feasible* evaluated configuration; until one exists the walk samples uniformly (a walk
    around an infeasible start would stay in the infeasible region).
    """

    def __init__(self, distributions: dict[str, BaseDistribution], sigma: float = 0.15, n_startup_trials: int = 1,
                 seed: int | None = None, per_trial_seed: bool = False) -> None:
        super().__init__(distributions, seed, per_trial_seed)
        if not sigma > 0:
            raise ConfigError(f"hyperpower.random_walk_sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.n_startup_trials = int(n_startup_trials)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        self._start_trial(trial)
        configs, ys = observations(study, feasible_only=True)
        if len(ys) < self.n_startup_trials:
            return self.codec.random(self.rng)
        return self.codec.perturb(configs[int(np.argmin(ys))], self.sigma, self.rng)


__all__ = ["ConstraintAwareSampler", "RandomWalkSampler", "SpaceCodec", "expected_improvement"]
