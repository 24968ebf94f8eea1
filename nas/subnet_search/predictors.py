"""Objective predictors on encodings of sub-networks (source 002 §4.3, §5.4; PFP-NAS's MLP predictors).

A predictor maps an architecture to one objective (``error``, ``ce``, ``latency``, ...). Features are the one-hot
encoding of the genome: one block per searchable layer, one column per candidate (skip included), so a linear
model on them is a per-layer additive table, which is exactly the form of a LUT, and ridge regression can learn
the latency of an additive cost model exactly. The estimators are scikit-learn's (``nas/conf/predictor/*.yaml``):

* ``ridge`` and ``svr``: the predictors of source 002 (§4.3: "converge more quickly, require fewer training
  examples and much less hyper-parameter optimisation than MLPs");
* ``mlp``: PFP-NAS's three-layer perceptron (``MLPRegressor`` with three hidden layers);
* ``auto``: ``GridSearchCV`` over ridge and SVR settings, scored by the objective's MAPE.

Targets are standardised (``TransformedTargetRegressor`` + ``StandardScaler``): SVR's ``epsilon`` and the MLP's
initialisation assume unit-scale targets, and latencies are fractions of a millisecond.

``features: structure`` replaces the one-hot code by four numbers per layer (MACs, parameters, kept, SE): the
latency model to fit from a few hundred *measured* whole networks on a device without per-op profiling.

**MAPE of an error rate.** A sub-network with top-1 error 0 has no percentage error, so for ``error`` the MAPE is
computed on the top-1 accuracy ``1 - error``, as source 002 §5.4 reports it (MAPE of top-1 accuracy); for every
other objective on the objective itself. Kendall τ is the rank agreement of predictions and truths.

The estimator construction, the k-fold cross-validation, MAPE, τ and the versioned file are the predictor kit's
(:mod:`nas.estimation`), shared with HyperPower's cost models.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.estimation import (
    build_estimator,
    check_estimator_spec,
    check_folds,
    cross_val_predictions,
    kendall_tau,
    kfold,
    load_document,
    mape_pct,
    save_document,
)
from nas.io import finite_or_none
from nas.subnet_search.encoding import GenomeCodec

PREDICTOR_FORMAT = "spnas-predictor"
PREDICTOR_VERSION = 1


def one_hot(codec: GenomeCodec, genes: np.ndarray) -> np.ndarray:
    """One-hot features of genomes ``(n, n_var)``: a block of ``len(choices)`` columns per searchable layer."""
    genes = np.atleast_2d(np.asarray(genes)).astype(int)
    widths = codec.xu + 1
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    out = np.zeros((len(genes), int(widths.sum())), dtype=np.float64)
    rows = np.repeat(np.arange(len(genes)), codec.n_var)
    out[rows, (genes + offsets).ravel()] = 1.0
    return out


FEATURES = ("onehot", "structure")


def structure_features(codec: GenomeCodec, genes: np.ndarray) -> np.ndarray:
    """Structural features of genomes: per searchable layer its MACs (millions), parameters (millions), whether
    it is kept (not the skip-op) and whether it has SE; ``4 * n_var`` columns.

    Four numbers per layer instead of one column per candidate: with a few hundred measured networks of a
    21-layer space (267 one-hot columns) these generalise where one-hot codes cannot, because a layer's cost
    grows with its work (the runtime model's form) and candidates share that trend.
    """
    genes = np.atleast_2d(np.asarray(genes)).astype(int)
    tables = getattr(codec, "_structure_tables", None)
    if tables is None:
        from nas.cost.backends import count_macs
        from nas.space.networks import build_layer

        tables = []
        for spec, options in zip(codec.layers, codec.choices):
            shape = (1, spec.in_channels, spec.input_resolution, spec.input_resolution)
            rows = []
            for choice in options:
                layer = build_layer(spec, choice, codec.space.act)
                macs = count_macs(layer, shape) / 1e6 if layer is not None else 0.0
                params = sum(p.numel() for p in layer.parameters()) / 1e6 if layer is not None else 0.0
                rows.append([macs, params, 0.0 if choice.is_skip else 1.0, 1.0 if choice.se_ratio > 0 else 0.0])
            tables.append(np.array(rows, dtype=np.float64))
        codec._structure_tables = tables  # type: ignore[attr-defined]  (a cache on the codec)
    return np.hstack([table[genes[:, j]] for j, table in enumerate(tables)])


def encode_features(codec: GenomeCodec, genes: np.ndarray, features: str) -> np.ndarray:
    """The predictor's input for ``features`` (``onehot`` or ``structure``)."""
    if features == "onehot":
        return one_hot(codec, genes)
    if features == "structure":
        return structure_features(codec, genes)
    raise ConfigError(f"predictor.features={features!r} is unknown; choose one of {list(FEATURES)}")


def feature_count(codec: GenomeCodec, features: str) -> int:
    return int((codec.xu + 1).sum()) if features == "onehot" else 4 * codec.n_var


def percentage_base(objective: str, y: np.ndarray) -> np.ndarray:
    """The quantity a MAPE is taken of: top-1 accuracy for ``error`` (see the module docstring), else ``y``."""
    y = np.asarray(y, dtype=np.float64)
    return 1.0 - y if objective == "error" else y


def objective_mape_pct(objective: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute percentage error (%) of ``y_pred`` for ``objective`` (:func:`nas.estimation.mape_pct` of
    :func:`percentage_base`)."""
    t, p = percentage_base(objective, y_true), percentage_base(objective, y_pred)
    if np.any(t == 0):
        raise ConfigError(f"a true {objective} value makes a percentage error undefined (its base is 0); use "
                          "objective=ce or a validation split where no sub-network is entirely wrong")
    return mape_pct(t, p)


def rank_agreement(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Kendall τ-b of predictions against truths, 0 where either side is constant (a predictor that ranks
    nothing; NaN-free for the JSON summaries)."""
    return kendall_tau(y_true, y_pred, undefined=0.0)


def grid_search(objective: str, cv_folds: int, seed: int, ridge: Mapping[str, Sequence[Any]],
                svr: Mapping[str, Sequence[Any]]) -> Any:
    """``predictor=auto``: scikit-learn ``GridSearchCV`` over ridge and SVR (each on standardised targets),
    scored by the objective's MAPE (:func:`objective_mape_pct`), refitted on all records with the best setting."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import Ridge
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    grid = [{"regressor": [Ridge()], **{f"regressor__{k}": list(v) for k, v in ridge.items()}},
            {"regressor": [SVR()], **{f"regressor__{k}": list(v) for k, v in svr.items()}}]
    scorer = make_scorer(functools.partial(objective_mape_pct, objective), greater_is_better=False)
    base = TransformedTargetRegressor(regressor=Ridge(), transformer=StandardScaler())
    return GridSearchCV(base, grid, scoring=scorer, cv=kfold(cv_folds, seed), error_score="raise")


class ObjectivePredictor:
    """One objective's predictor: a scikit-learn regressor on one-hot genomes, with the checks and metadata to
    reuse it (``save`` / ``load``: ``predictors/<objective>.joblib``).

    Args:
        objective: what it predicts (``error``, ``ce``, ``latency``, ``macs``, ``params``).
        codec: the genome codec of the search (the features' layout).
        config: a ``nas/conf/predictor/*.yaml`` mapping: ``name``, ``estimator`` (instantiated by Hydra),
            ``standardize_target``, ``cv_folds``.
        seed: seeds the cross-validation split and stochastic estimators (``random_state``).
    """

    def __init__(self, objective: str, codec: GenomeCodec, config: Mapping[str, Any], seed: int = 0) -> None:
        check_predictor_config(config)
        self.objective = objective
        self.codec = codec
        self.config = dict(config)
        self.name = str(self.config.get("name", "?"))
        self.seed = int(seed)
        self.cv_folds = int(self.config.get("cv_folds", 5))
        self.features = str(self.config.get("features", "onehot"))
        self.model: Any = None
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    def _estimator(self) -> Any:
        spec = dict(self.config["estimator"])
        if spec["_target_"].endswith("grid_search"):
            spec.update(objective=self.objective, cv_folds=self.cv_folds, seed=self.seed)
        # structure features: MACs, parameters and 0/1 flags live on different scales
        return build_estimator(spec, seed=self.seed, scale_features=self.features == "structure",
                               standardize_target=bool(self.config.get("standardize_target", True)))

    def check_data(self, genes: np.ndarray, y: np.ndarray) -> None:
        """Refuse what no predictor can learn from, naming the fix (checked before fitting)."""
        n = len(y)
        if len(genes) != n:
            raise ConfigError(f"{len(genes)} genomes but {n} {self.objective} values")
        check_folds(self.cv_folds, n, what=f"predictor={self.name} for {self.objective}", samples="record(s)",
                    hint="validate more sub-networks first (raise tactic.population / tactic.sample) or lower "
                         "predictor.cv_folds")
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ConfigError(f"the {self.objective} values contain NaN/inf; the records are broken")
        if np.ptp(y) == 0:
            raise ConfigError(f"all {n} records have {self.objective} = {y[0]:g}: a predictor cannot learn from "
                              "constant labels (the supernet is untrained or the validation split too small); "
                              "train the supernet longer or validate on more images")

    def fit(self, genes: np.ndarray, y: np.ndarray, cross_validate: bool = True) -> ObjectivePredictor:
        """Fit on ``genes`` -> ``y``; with ``cross_validate``, record the ``cv_folds``-fold cross-validated MAPE
        and Kendall τ in ``meta`` (predictions of each record by a model that did not see it)."""
        genes = np.atleast_2d(np.asarray(genes)).astype(int)
        y = np.asarray(y, dtype=np.float64)
        self.check_data(genes, y)
        X = encode_features(self.codec, genes, self.features)
        self.meta = {"objective": self.objective, "predictor": self.name, "n_train": int(len(y)),
                     "feature_kind": self.features, "features": int(X.shape[1]), "space": self.codec.space.name,
                     "space_digest": self.codec.space.digest}
        if cross_validate:
            pred = cross_val_predictions(self._estimator(), X, y, self.cv_folds, self.seed)
            self.meta["cv"] = {"folds": self.cv_folds, "mape_pct": finite_or_none(self._mape(y, pred)),
                               "kendall_tau": rank_agreement(y, pred)}
        self.model = self._estimator().fit(X, y)
        if hasattr(self.model, "best_params_"):
            self.meta["selected"] = {k: repr(v) for k, v in self.model.best_params_.items()}
        return self

    def _mape(self, y: np.ndarray, pred: np.ndarray) -> float:
        try:
            return objective_mape_pct(self.objective, y, pred)
        except ConfigError:
            return math.nan

    def predict(self, genes: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("predict() before fit()")
        return np.asarray(self.model.predict(encode_features(self.codec, genes, self.features)), dtype=np.float64)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write ``{format, version, meta, config, model}`` with joblib, atomically."""
        if self.model is None:
            raise RuntimeError("save() before fit()")
        return save_document(path, PREDICTOR_FORMAT, PREDICTOR_VERSION, {
            "meta": {**self.meta, **extra}, "config": self.config, "seed": self.seed, "model": self.model},
            pickled=True)

    @classmethod
    def load(cls, path: str | Path, codec: GenomeCodec) -> ObjectivePredictor:
        """Read a predictor written by :meth:`save` for ``codec``'s space (a file of another space is refused).

        joblib files are pickles: load only predictors you wrote or trust.
        """
        doc = load_document(path, "predictor", PREDICTOR_FORMAT, PREDICTOR_VERSION,
                            "a predictor file of this framework", "write one with subnet_search.py tactic=concurrent",
                            pickled=True)
        meta = doc["meta"]
        expected = feature_count(codec, str(meta.get("feature_kind", "onehot")))
        if meta.get("space_digest") != codec.space.digest or meta.get("features") != expected:
            raise ConfigError(f"{path} predicts sub-networks of space '{meta.get('space')}' (digest "
                              f"{meta.get('space_digest')}, {meta.get('features')} features), not of space "
                              f"'{codec.space.name}' (digest {codec.space.digest}, {expected} features with this "
                              "search's mask)")
        out = cls(meta["objective"], codec, doc["config"], doc.get("seed", 0))
        out.model, out.meta = doc["model"], meta
        return out


def check_predictor_config(config: Mapping[str, Any]) -> None:
    """Cheap checks of a ``predictor=`` mapping before any work (the estimator's import included)."""
    spec = config.get("estimator") if isinstance(config, Mapping) else None
    check_estimator_spec(spec, "predictor.estimator", "see nas/conf/predictor/*.yaml")
    check_folds(config.get("cv_folds", 5), what=f"predictor={config.get('name', '?')}", samples="record(s)",
                hint="set predictor.cv_folds to an integer >= 2")
    if config.get("features", "onehot") not in FEATURES:
        raise ConfigError(f"predictor.features={config.get('features')!r} is unknown; choose one of {list(FEATURES)}")
