"""Cost models of the structural hyperparameters (thesis Eq 3.2-3.3), fitted with 10-fold CV.

``P(â) = sum_j p_j â_j`` (power), ``M(â) = sum_j m_j â_j`` (memory), and the same form for latency, with an
intercept (a constant feature ``â_0 = 1``: the stem, head and runtime overheads do not vanish at zero width).
scikit-learn fits them (``LinearRegression``); ``cross_val_predict`` over ``KFold(folds)`` gives every profiled
network a prediction from a model that never saw it, and their root mean square percentage error is the
model's RMSPE (Table 3.1). ``features: quadratic`` adds the products of pairs of hyperparameters (still
linear in the coefficients; ``Ridge`` on standardised features) for costs that grow as channels x expansion.

``scale`` is the scale the linear form is fitted on. ``log`` (the default): ``log c = b + sum_j w_j â_j``, i.e.
``c = exp(...)``, which is positive for every structure, so no prediction is a physically impossible negative
power or memory; least squares on ``log c`` minimises the squared log ratio of measured to predicted cost, which
is the squared relative error to first order, the quantity the RMSPE scores and a margin (a fraction of the
limit) must cover. ``linear``: Eq 3.2-3.3 fitted as written, on the cost itself; a linear fit extrapolates
below zero at small structures (12 profiled networks of the tiny space, 3 folds, seed 0: -0.41 MB), so its
predictions are floored at 0 (never negative; the log scale is the form that needs no floor).

:meth:`CostModel.error_bound` turns the out-of-fold predictions into a one-sided bound on the model's
under-prediction (the margin of :func:`nas.hyperpower.study.resolve_margins`). The estimators, the
cross-validation, the RMSPE and the versioned file are the predictor kit's (:mod:`nas.estimation`), shared with
the sub-network search's predictors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.estimation import build_estimator, check_folds, cross_val_predictions, load_document, rmspe_pct, save_document

FORMAT = "spnas-hyperpower-cost-models"
VERSION = 1
# hyperpower.cost_models.features -> the scikit-learn estimator (nas.estimation.build_estimator)
ESTIMATORS: dict[str, dict[str, Any]] = {
    "linear": {"_target_": "sklearn.linear_model.LinearRegression"},  # Eq 3.2-3.3, with intercept
    "quadratic": {"_target_": "sklearn.pipeline.make_pipeline", "_args_": [
        {"_target_": "sklearn.preprocessing.PolynomialFeatures", "degree": 2, "include_bias": False},
        {"_target_": "sklearn.preprocessing.StandardScaler"},
        {"_target_": "sklearn.linear_model.Ridge", "alpha": 1e-3}]},
}
FEATURES = tuple(ESTIMATORS)
# hyperpower.cost_models.scale: the cost's scale the model is linear on (log: c = exp(b + w·â) > 0 always)
SCALES = ("log", "linear")
DEFAULT_SCALE = "log"


def check_form(features: Any, scale: Any) -> None:
    """``hyperpower.cost_models.features`` and ``.scale`` name a known model form (checked before any work)."""
    if features not in FEATURES:
        raise ConfigError(f"hyperpower.cost_models.features must be one of {list(FEATURES)}, got {features!r}")
    if scale not in SCALES:
        raise ConfigError(f"hyperpower.cost_models.scale must be one of {list(SCALES)}, got {scale!r}")


def make_estimator(features: str, scale: str) -> Any:
    """A fresh estimator of the form ``features`` on the ``scale`` (log: fitted to ``log c``, predicts ``exp``)."""
    estimator = build_estimator(ESTIMATORS[features])
    if scale == "log":
        from sklearn.compose import TransformedTargetRegressor

        estimator = TransformedTargetRegressor(regressor=estimator, func=np.log, inverse_func=np.exp)
    return estimator


def samples_for_bound(confidence: float) -> int:
    """The fewest profiled networks with a finite one-sided ``confidence`` bound (:meth:`CostModel.error_bound`):
    the smallest ``n`` with ``ceil((n + 1) confidence) <= n`` (19 for 0.95, 9 for 0.9)."""
    return max(1, math.ceil(confidence / (1.0 - confidence) - 1e-9))


def check_samples(n_samples: int, folds: int) -> None:
    """A cost model needs at least ``folds`` (>= 2) profiled networks to be cross-validated."""
    check_folds(folds, n_samples, what="a cost model", samples="profiled network(s)",
                hint="set hyperpower.cost_models.folds between 2 and hyperpower.cost_models.samples (profile more "
                     "networks for more folds)")


@dataclass
class CostModel:
    """One fitted cost model: ``predict(â)``, its CV RMSPE and the data it was fitted on."""

    metric: str
    feature_names: list[str]
    features: str
    estimator: Any
    rmspe_cv: float
    n_samples: int
    folds: int
    cv_predictions: list[float] = field(default_factory=list)
    actual: list[float] = field(default_factory=list)
    scale: str = DEFAULT_SCALE

    @classmethod
    def fit(cls, metric: str, X: np.ndarray, y: Sequence[float], feature_names: list[str],  # noqa: N803
            folds: int = 10, features: str = "linear", seed: int = 0, scale: str = DEFAULT_SCALE) -> CostModel:
        """Fit on every sample after a ``folds``-fold ``cross_val_predict`` for the RMSPE."""
        check_form(features, scale)
        y = np.asarray(y, float)
        check_samples(len(y), folds)
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ConfigError(f"{metric}: profiled values must be finite and > 0 for a percentage error")
        with np.errstate(over="ignore"):  # exp of a wild extrapolation is inf: a cost no limit admits
            predicted = floor(cross_val_predictions(make_estimator(features, scale), X, y, folds, seed))
        estimator = make_estimator(features, scale).fit(X, y)
        return cls(metric, list(feature_names), features, estimator, rmspe_pct(y, predicted), len(y), folds,
                   [float(v) for v in predicted], [float(v) for v in y], scale)

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Predicted costs of the rows of ``X``: positive on the log scale, floored at 0 on the linear one."""
        with np.errstate(over="ignore"):
            return floor(np.asarray(self.estimator.predict(np.atleast_2d(X)), float))

    def error_bound(self, confidence: float) -> float:
        """One-sided bound ``q`` on the ratio measured / predicted cost, from the out-of-fold predictions.

        ``q`` is the ``ceil((n + 1) confidence)``-th smallest of the ``n`` out-of-fold ratios ``y_i / ŷ_i``: the
        split-conformal upper bound, so for a structure drawn like the profiled ones (exchangeable with them)
        ``P(measured <= q · predicted) >= confidence``. The profile is random, the search's proposals are not (it
        seeks the limit), and the bound is applied to the model fitted on every sample, so the guarantee is
        approximate there. ``inf`` where ``n`` is too small (:func:`samples_for_bound`) or a prediction is 0.
        """
        ratios = np.sort(self._ratios())
        rank = math.ceil((len(ratios) + 1) * confidence - 1e-9)
        return float(ratios[rank - 1]) if rank <= len(ratios) else math.inf

    def largest_ratio(self) -> float:
        """The largest out-of-fold ratio measured / predicted (the worst under-prediction of the profile)."""
        return float(self._ratios().max())

    def _ratios(self) -> np.ndarray:
        predicted, actual = np.asarray(self.cv_predictions, float), np.asarray(self.actual, float)
        with np.errstate(divide="ignore"):
            return np.where(predicted > 0, actual / np.where(predicted > 0, predicted, 1.0), math.inf)

    def to_dict(self) -> dict[str, Any]:
        coef, intercept = None, None
        if self.features == "linear":  # on the log scale: the coefficients of log(cost)
            regressor = self.estimator.regressor_ if self.scale == "log" else self.estimator
            coef = dict(zip(self.feature_names, map(float, regressor.coef_)))
            intercept = float(regressor.intercept_)
        return {"metric": self.metric, "features": self.features, "scale": self.scale,
                "feature_names": self.feature_names, "coefficients": coef, "intercept": intercept,
                "rmspe_cv_pct": self.rmspe_cv, "n_samples": self.n_samples, "folds": self.folds,
                "actual": self.actual, "cv_predictions": self.cv_predictions}


def floor(predicted: np.ndarray) -> np.ndarray:
    """No cost is negative: a linear-scale prediction below 0 is 0 (log-scale predictions are positive already)."""
    return np.maximum(predicted, 0.0)


@dataclass
class CostModels:
    """The fitted models of every constrained metric, plus the profiled configurations."""

    models: dict[str, CostModel]
    configs: list[dict[str, Any]]

    @classmethod
    def fit(cls, configs: list[dict[str, Any]], measured: Mapping[str, Sequence[float]], X: np.ndarray,  # noqa: N803
            feature_names: list[str], folds: int = 10, features: str = "linear", seed: int = 0,
            scale: str = DEFAULT_SCALE) -> CostModels:
        return cls({m: CostModel.fit(m, X, y, feature_names, folds, features, seed, scale)
                    for m, y in measured.items()}, configs)

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803
        return {m: model.predict(X) for m, model in self.models.items()}

    def document(self) -> dict[str, Any]:
        """The profile and the fitted models as plain JSON (what :meth:`save` writes, less format and version)."""
        return {"configs": self.configs, "models": {m: model.to_dict() for m, model in self.models.items()}}

    def save(self, path: str | Path) -> Path:
        """Versioned JSON (refit from the stored profile on load, so no pickles)."""
        return save_document(path, FORMAT, VERSION, self.document())

    @classmethod
    def load(cls, path: str | Path, feature_names: list[str], features_of: Any, seed: int = 0) -> CostModels:
        """Read ``cost_models.json`` and refit each model on its stored profile (same folds, features and scale)."""
        data = load_document(path, "hyperpower.cost_models.path", FORMAT, VERSION,
                             "a cost_models.json of hyperpower.py", "drop hyperpower.cost_models.path to profile anew")
        return cls.from_document(data, feature_names, features_of, seed, str(path))

    @classmethod
    def from_document(cls, data: Mapping[str, Any], feature_names: list[str], features_of: Any, seed: int = 0,
                      source: str = "the cost models") -> CostModels:
        """Refit the models of a :meth:`document` on its stored profile (same folds, features and scale; a document
        of an earlier version has no scale and is refit on the default, log, scale)."""
        first = next(iter(data["models"].values()))
        if first["feature_names"] != feature_names:
            raise ConfigError(f"{source} was fitted for the hyperparameters {first['feature_names']}, but this "
                              f"space has {feature_names}; profile again (drop hyperpower.cost_models.path)")
        X = np.stack([features_of(c) for c in data["configs"]])  # noqa: N806
        measured = {m: d["actual"] for m, d in data["models"].items()}
        return cls.fit(list(data["configs"]), measured, X, feature_names, first["folds"], first["features"], seed,
                       first.get("scale", DEFAULT_SCALE))

    def summary(self) -> dict[str, float]:
        return {m: model.rmspe_cv for m, model in self.models.items()}
