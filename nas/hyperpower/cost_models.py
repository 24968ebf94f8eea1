"""Linear cost models of the structural hyperparameters (thesis Eq 3.2-3.3), fitted with 10-fold CV.

``P(â) = sum_j p_j â_j`` (power), ``M(â) = sum_j m_j â_j`` (memory), and the same form for latency, with an
intercept (a constant feature ``â_0 = 1``: the stem, head and runtime overheads do not vanish at zero width).
scikit-learn fits them (``LinearRegression``); ``cross_val_predict`` over ``KFold(folds)`` gives every profiled
network a prediction from a model that never saw it, and their root mean square percentage error is the
model's RMSPE (Table 3.1). ``features: quadratic`` adds the products of pairs of hyperparameters (still
linear in the coefficients; ``Ridge`` on standardised features) for costs that grow as channels x expansion.
The estimators, the cross-validation, the RMSPE and the versioned file are the predictor kit's
(:mod:`nas.estimation`), shared with the sub-network search's predictors.
"""

from __future__ import annotations

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

    @classmethod
    def fit(cls, metric: str, X: np.ndarray, y: Sequence[float], feature_names: list[str],  # noqa: N803
            folds: int = 10, features: str = "linear", seed: int = 0) -> CostModel:
        """Fit on every sample after a ``folds``-fold ``cross_val_predict`` for the RMSPE."""
        if features not in FEATURES:
            raise ConfigError(f"hyperpower.cost_models.features must be one of {list(FEATURES)}, got {features!r}")
        y = np.asarray(y, float)
        check_samples(len(y), folds)
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ConfigError(f"{metric}: profiled values must be finite and > 0 for a percentage error")
        predicted = cross_val_predictions(build_estimator(ESTIMATORS[features]), X, y, folds, seed)
        estimator = build_estimator(ESTIMATORS[features]).fit(X, y)
        return cls(metric, list(feature_names), features, estimator, rmspe_pct(y, predicted), len(y), folds,
                   [float(v) for v in predicted], [float(v) for v in y])

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return np.asarray(self.estimator.predict(np.atleast_2d(X)), float)

    def to_dict(self) -> dict[str, Any]:
        coef, intercept = None, None
        if self.features == "linear":
            coef = dict(zip(self.feature_names, map(float, self.estimator.coef_)))
            intercept = float(self.estimator.intercept_)
        return {"metric": self.metric, "features": self.features, "feature_names": self.feature_names,
                "coefficients": coef, "intercept": intercept, "rmspe_cv_pct": self.rmspe_cv,
                "n_samples": self.n_samples, "folds": self.folds, "actual": self.actual,
                "cv_predictions": self.cv_predictions}


@dataclass
class CostModels:
    """The fitted models of every constrained metric, plus the profiled configurations."""

    models: dict[str, CostModel]
    configs: list[dict[str, Any]]

    @classmethod
    def fit(cls, configs: list[dict[str, Any]], measured: Mapping[str, Sequence[float]], X: np.ndarray,  # noqa: N803
            feature_names: list[str], folds: int = 10, features: str = "linear", seed: int = 0) -> CostModels:
        return cls({m: CostModel.fit(m, X, y, feature_names, folds, features, seed) for m, y in measured.items()},
                   configs)

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
        """Read ``cost_models.json`` and refit each model on its stored profile (same folds, same features)."""
        data = load_document(path, "hyperpower.cost_models.path", FORMAT, VERSION,
                             "a cost_models.json of hyperpower.py", "drop hyperpower.cost_models.path to profile anew")
        return cls.from_document(data, feature_names, features_of, seed, str(path))

    @classmethod
    def from_document(cls, data: Mapping[str, Any], feature_names: list[str], features_of: Any, seed: int = 0,
                      source: str = "the cost models") -> CostModels:
        """Refit the models of a :meth:`document` on its stored profile (same folds, same features)."""
        first = next(iter(data["models"].values()))
        if first["feature_names"] != feature_names:
            raise ConfigError(f"{source} was fitted for the hyperparameters {first['feature_names']}, but this "
                              f"space has {feature_names}; profile again (drop hyperpower.cost_models.path)")
        X = np.stack([features_of(c) for c in data["configs"]])  # noqa: N806
        measured = {m: d["actual"] for m, d in data["models"].items()}
        return cls.fit(list(data["configs"]), measured, X, feature_names, first["folds"], first["features"], seed)

    def summary(self) -> dict[str, float]:
        return {m: model.rmspe_cv for m, model in self.models.items()}
