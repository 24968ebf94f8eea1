"""The predictor kit: one way to build, cross-validate, score and store a regression model of a cost or objective.

HyperPower's cost models (:mod:`nas.hyperpower.cost_models`, thesis Eq 3.2-3.3, Table 3.1) and the sub-network
search's objective predictors (:mod:`nas.subnet_search.predictors`) both

* build a scikit-learn estimator from a Hydra-style mapping (``{_target_: ..., **settings}``):
  :func:`build_estimator`, checked cheaply by :func:`check_estimator_spec`;
* judge it by k-fold cross-validated predictions (every sample predicted by a model that never saw it):
  :func:`cross_val_predictions` over a seeded, shuffled :func:`kfold`, after :func:`check_folds`;
* score those predictions with the error measures below (:func:`mape_pct`, :func:`rmspe_pct`, :func:`kendall_tau`;
  the runtime-model validation of :mod:`nas.cost.validation` uses the same ones);
* store the result as a versioned file (``{"format", "version", ...}``): :func:`save_document` /
  :func:`load_document`, strict JSON or (fitted estimators) joblib.

scikit-learn does the fitting and the cross-validation, scipy the rank correlation and Hydra the instantiation;
this module is the glue and the one wording of their errors. It sits below every part that fits a model (it
imports no part of the package but :mod:`nas.errors` and :mod:`nas.io`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.io import atomic_write_bytes, atomic_write_json, check_document, read_json_document


# ---------------------------------------------------------------------- error measures
def relative_errors(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Signed relative errors ``(ŷ - y) / |y|`` of each prediction, the base of every percentage error below.

    A true value of 0 has no percentage error: a :class:`~nas.errors.ConfigError` (callers that know why a value
    can be 0 check first and name the fix).
    """
    actual, predicted = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if np.any(actual == 0):
        raise ConfigError("a true value of 0 makes a percentage error undefined")
    return (predicted - actual) / np.abs(actual)


def mape_pct(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error (%): ``100 mean(|ŷ - y| / |y|)``."""
    return float(100.0 * np.mean(np.abs(relative_errors(actual, predicted))))


def rmspe_pct(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean square percentage error (%): ``100 sqrt(mean(((y - ŷ) / y)^2))``, HyperPower's measure of a cost
    model (thesis Table 3.1)."""
    return float(100.0 * np.sqrt(np.mean(relative_errors(actual, predicted) ** 2)))


def kendall_tau(x: np.ndarray, y: np.ndarray, undefined: float = math.nan) -> float:
    """Kendall's τ-b of two rankings (``scipy.stats.kendalltau``); ``undefined`` where τ is not defined (either
    side constant)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float(undefined)
    tau = float(kendalltau(x, y).statistic)
    return tau if math.isfinite(tau) else float(undefined)


# ---------------------------------------------------------------------- k-fold cross-validation
def check_folds(folds: Any, n_samples: int | None = None, *, what: str = "the model", samples: str = "sample(s)",
                hint: str = "") -> None:
    """k-fold cross-validation needs an integer ``k >= 2`` and at least ``k`` samples: otherwise one
    :class:`~nas.errors.ConfigError` naming ``what`` (and, where given, the ``n_samples`` it is fitted on) and
    ``hint`` (how to fix it). ``n_samples=None`` checks ``folds`` alone (a config, before any data)."""
    valid = isinstance(folds, int) and not isinstance(folds, bool) and folds >= 2
    if valid and (n_samples is None or n_samples >= folds):
        return
    fitted = "" if n_samples is None else f" fitted on {n_samples} {samples}"
    raise ConfigError(f"{what}{fitted} cannot be {folds!r}-fold cross-validated (k-fold cross-validation needs an "
                      f"integer k >= 2 and at least k {samples})" + (f"; {hint}" if hint else ""))


def kfold(folds: int, seed: int) -> Any:
    """scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)``: the split of every cross-validation here."""
    from sklearn.model_selection import KFold

    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def cross_val_predictions(estimator: Any, X: np.ndarray, y: np.ndarray, folds: int, seed: int,  # noqa: N803
                          **check: str) -> np.ndarray:
    """Out-of-fold predictions of ``estimator`` (``cross_val_predict`` over :func:`kfold`): each sample is
    predicted by a clone fitted on the other folds. ``check`` (``what``, ``samples``, ``hint``) words the
    :func:`check_folds` error."""
    from sklearn.model_selection import cross_val_predict

    check_folds(folds, len(y), **check)
    return np.asarray(cross_val_predict(estimator, X, y, cv=kfold(folds, seed)), dtype=np.float64)


# ---------------------------------------------------------------------- estimators from config
def check_estimator_spec(spec: Any, setting: str, hint: str = "") -> None:
    """Cheap check of an estimator mapping before any work: a ``_target_`` that imports (class or function)."""
    from hydra.utils import get_object

    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"{setting}: a mapping with a _target_ is required" + (f" ({hint})" if hint else ""))
    target = str(spec["_target_"])
    try:
        get_object(target)
    except Exception as err:  # noqa: BLE001 - Hydra raises ImportError or ValueError
        raise ConfigError(f"{setting}._target_={target} cannot be imported ({' '.join(str(err).split())})") from None


def build_estimator(spec: Mapping[str, Any], *, seed: int | None = None, scale_features: bool = False,
                    standardize_target: bool = False) -> Any:
    """A fresh scikit-learn estimator from ``spec`` (Hydra's ``instantiate``; nested ``_target_`` mappings, e.g.
    the steps of ``sklearn.pipeline.make_pipeline``, are built too).

    ``seed`` fills a ``random_state: null`` setting; ``scale_features`` puts a ``StandardScaler`` before the
    estimator (features on different scales), ``standardize_target`` fits it on standardised targets
    (``TransformedTargetRegressor`` + ``StandardScaler``).
    """
    from hydra.utils import instantiate
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = dict(spec)
    if seed is not None and "random_state" in spec and spec["random_state"] is None:
        spec["random_state"] = int(seed)
    estimator = instantiate(spec, _convert_="all")
    if scale_features:
        estimator = make_pipeline(StandardScaler(), estimator)
    if standardize_target:
        estimator = TransformedTargetRegressor(regressor=estimator, transformer=StandardScaler())
    return estimator


# ---------------------------------------------------------------------- versioned files
def save_document(path: str | Path, fmt: str, version: int, body: Mapping[str, Any], *,
                  pickled: bool = False) -> Path:
    """Write ``{"format": fmt, "version": version, **body}`` atomically: strict JSON, or with ``pickled`` a joblib
    file (for fitted estimators)."""
    doc = {"format": fmt, "version": version, **body}
    if not pickled:
        return atomic_write_json(path, doc)
    import joblib

    buffer = io.BytesIO()
    joblib.dump(doc, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_document(path: str | Path, setting: str, fmt: str, version: int, what: str, hint: str, *,
                  pickled: bool = False) -> dict[str, Any]:
    """Read a file of :func:`save_document`; a missing, unreadable, foreign (other ``format``) or other-version
    file is one :class:`~nas.errors.ConfigError` line naming ``setting``, the file and, where it helps, ``hint``
    (how to make a good one).

    ``pickled`` (joblib) files are pickles: load only files you wrote or trust.
    """
    if not pickled:
        return read_json_document(path, setting, fmt, version, what, hint)
    import joblib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{setting} file {path} does not exist; {hint}")
    try:
        doc = joblib.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{setting} {path} cannot be read ({type(err).__name__}: {err})") from None
    return check_document(doc, f"{setting} {path}", fmt, version, what, hint)
