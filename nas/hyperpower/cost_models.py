"""Linear cost models of the structural hyperparameters (thesis Eq 3.2-3.3), fitted with 10-fold CV.

``P(â) = sum_j p_j â_j`` (power), ``M(â) = sum_j m_j â_j`` (memory), and the same form for latency, with an
intercept (a constant feature ``â_0 = 1``: the stem, head and runtime overheads do not vanish at zero width).
scikit-learn fits them (``LinearRegression``); ``cross_val_predict`` over ``KFold(folds)`` gives every profiled
network a prediction from a model that never saw it, and their root mean square percentage error is the
model's RMSPE (Table 3.1). ``features: quadratic`` adds the products of pairs of hyperparameters (still
linear in the coefficients; ``Ridge`` on standardised features) for costs that grow as channels x expansion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.io import atomic_write_json

FORMAT = "spnas-hyperpower-cost-models"
VERSION = 1
FEATURES = ("linear", "quadratic")


def rmspe(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean square percentage error in %: ``100 sqrt(mean(((y - ŷ) / y)^2))``."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    return float(100.0 * np.sqrt(np.mean(((actual - predicted) / actual) ** 2)))


def _pipeline(features: str) -> Any:
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    if features == "linear":
        return LinearRegression()
    return make_pipeline(PolynomialFeatures(degree=2, include_bias=False), StandardScaler(), Ridge(alpha=1e-3))


def check_samples(n_samples: int, folds: int) -> None:
    """A cost model needs at least ``folds`` (>= 2) profiled networks to be cross-validated."""
    if folds < 2:
        raise ConfigError(f"hyperpower.cost_models.folds must be >= 2 for cross-validation, got {folds}")
    if n_samples < folds:
        raise ConfigError(f"a cost model fitted on {n_samples} profiled network(s) cannot be {folds}-fold "
                          f"cross-validated: profile at least {folds} (hyperpower.cost_models.samples >= {folds}) "
                          "or lower hyperpower.cost_models.folds")


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
        from sklearn.model_selection import KFold, cross_val_predict

        if features not in FEATURES:
            raise ConfigError(f"hyperpower.cost_models.features must be one of {list(FEATURES)}, got {features!r}")
        y = np.asarray(y, float)
        check_samples(len(y), folds)
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ConfigError(f"{metric}: profiled values must be finite and > 0 for a percentage error")
        cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
        predicted = cross_val_predict(_pipeline(features), X, y, cv=cv)
        estimator = _pipeline(features).fit(X, y)
        return cls(metric, list(feature_names), features, estimator, rmspe(y, predicted), len(y), folds,
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

    def save(self, path: str | Path) -> Path:
        """Versioned JSON (refit from the stored profile on load, so no pickles)."""
        return atomic_write_json(path, {"format": FORMAT, "version": VERSION, "configs": self.configs,
                                        "models": {m: model.to_dict() for m, model in self.models.items()}})

    @classmethod
    def load(cls, path: str | Path, feature_names: list[str], features_of: Any, seed: int = 0) -> CostModels:
        """Read ``cost_models.json`` and refit each model on its stored profile (same folds, same features)."""
        import json

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"hyperpower.cost_models.path: {path} does not exist")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ConfigError(f"{path} is not a {FORMAT} v{VERSION} file")
        first = next(iter(data["models"].values()))
        if first["feature_names"] != feature_names:
            raise ConfigError(f"{path} was fitted for the hyperparameters {first['feature_names']}, but this "
                              f"space has {feature_names}; profile again (drop hyperpower.cost_models.path)")
        X = np.stack([features_of(c) for c in data["configs"]])  # noqa: N806
        measured = {m: d["actual"] for m, d in data["models"].items()}
        return cls.fit(data["configs"], measured, X, feature_names, first["folds"], first["features"], seed)

    def summary(self) -> dict[str, float]:
        return {m: model.rmspe_cv for m, model in self.models.items()}
