"""The predictor kit (nas.estimation): error measures, k-fold CV, estimators from config, versioned files; and that
HyperPower's cost models and the sub-network predictors cross-validate through it exactly as before."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LinearRegression, Ridge, RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.estimation import (
    build_estimator,
    check_estimator_spec,
    check_folds,
    cross_val_predictions,
    kendall_tau,
    load_document,
    mape_pct,
    relative_errors,
    rmspe_pct,
    save_document,
)
from nas.hyperpower.cost_models import FORMAT, VERSION, CostModel, CostModels
from nas.subnet_search.predictors import ObjectivePredictor, objective_mape_pct, one_hot, rank_agreement

ACTUAL = np.array([2.0, 4.0, 5.0, 10.0])
PREDICTED = np.array([2.2, 3.0, 5.0, 11.0])  # relative errors +10 %, -25 %, 0 %, +10 %


def test_percentage_errors_of_a_known_vector():
    assert relative_errors(ACTUAL, PREDICTED) == pytest.approx([0.1, -0.25, 0.0, 0.1])
    assert mape_pct(ACTUAL, PREDICTED) == pytest.approx((10 + 25 + 0 + 10) / 4)  # 11.25 %
    assert rmspe_pct(ACTUAL, PREDICTED) == pytest.approx(math.sqrt((100 + 625 + 0 + 100) / 4))  # 14.36 %
    assert mape_pct([-2.0], [-1.0]) == pytest.approx(50.0)  # relative to |y|
    with pytest.raises(ConfigError, match="percentage error undefined"):
        mape_pct([0.0, 1.0], [0.1, 1.0])


def test_kendall_tau_of_a_known_ranking_and_where_it_is_undefined():
    # pairs of (1, 3, 2, 4) against (1, 2, 3, 4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    assert kendall_tau([1, 2, 3], [5, 5, 5], undefined=0.0) == 0.0 == rank_agreement(np.ones(3), np.arange(3.0))


@pytest.mark.parametrize("folds, n, fitted", [(10, 5, "fitted on 5 thing(s) "), (1, 40, "fitted on 40 thing(s) "),
                                              (True, 40, "fitted on 40 thing(s) "), (1, None, "")])
def test_k_fold_needs_k_of_at_least_2_and_k_samples_in_one_message(folds, n, fitted):
    with pytest.raises(ConfigError) as err:
        check_folds(folds, n, what="the model", samples="thing(s)", hint="fix it")
    message = str(err.value)
    assert message == (f"the model {fitted}cannot be {folds!r}-fold cross-validated (k-fold cross-validation needs "
                       "an integer k >= 2 and at least k thing(s)); fix it")
    check_folds(5, 5)
    check_folds(2)


def test_cross_val_predictions_are_scikit_learns_over_a_seeded_shuffled_kfold():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(23, 3)), rng.normal(size=23)
    for seed in (0, 7):
        expected = cross_val_predict(Ridge(), X, y, cv=KFold(5, shuffle=True, random_state=seed))
        assert np.array_equal(cross_val_predictions(Ridge(), X, y, 5, seed), expected)
    with pytest.raises(ConfigError, match="fitted on 4 sample"):
        cross_val_predictions(Ridge(), X[:4], y[:4], 5, 0)


def test_estimators_from_config():
    mlp = build_estimator({"_target_": "sklearn.neural_network.MLPRegressor", "random_state": None}, seed=4)
    assert mlp.random_state == 4
    pipe = build_estimator({"_target_": "sklearn.pipeline.make_pipeline", "_args_": [
        {"_target_": "sklearn.preprocessing.StandardScaler"}, {"_target_": "sklearn.linear_model.Ridge", "alpha": 2}]})
    assert [type(step).__name__ for _, step in pipe.steps] == ["StandardScaler", "Ridge"] and pipe[-1].alpha == 2
    wrapped = build_estimator({"_target_": "sklearn.svm.SVR"}, scale_features=True, standardize_target=True)
    assert isinstance(wrapped, TransformedTargetRegressor) and isinstance(wrapped.transformer, StandardScaler)
    assert type(wrapped.regressor.steps[0][1]).__name__ == "StandardScaler"
    check_estimator_spec({"_target_": "nas.subnet_search.predictors.grid_search"}, "predictor.estimator")
    with pytest.raises(ConfigError, match=r"^predictor.estimator._target_=sklearn.nope.Ridge cannot be imported"):
        check_estimator_spec({"_target_": "sklearn.nope.Ridge"}, "predictor.estimator")
    with pytest.raises(ConfigError, match="a mapping with a _target_ is required"):
        check_estimator_spec({"alpha": 1}, "predictor.estimator")


@pytest.mark.parametrize("pickled", [False, True])
def test_versioned_files_round_trip_and_refuse_another_version_or_format(tmp_path, pickled):
    path = tmp_path / ("m.joblib" if pickled else "m.json")
    save_document(path, "spnas-test", 2, {"x": [1, 2]}, pickled=pickled)
    assert load_document(path, "model", "spnas-test", 2, "a test file", "write one", pickled=pickled) == {
        "format": "spnas-test", "version": 2, "x": [1, 2]}
    for fmt, version, message in [("spnas-test", 3, "version 2 is not supported"),
                                  ("spnas-other", 2, "is not a test file")]:
        with pytest.raises(ConfigError) as err:
            load_document(path, "model", fmt, version, "a test file", "write one", pickled=pickled)
        assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist; write one"):
        load_document(tmp_path / "none", "model", "spnas-test", 2, "a test file", "write one", pickled=pickled)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match=str(path)):
        load_document(path, "model", "spnas-test", 2, "a test file", "write one", pickled=pickled)


# ---------------------------------------------------------------------- the two users, as before
def _profile(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 9, size=(30, 3)).astype(float)
    return X, (0.5 + X @ np.array([0.1, 0.2, 0.05])) * rng.uniform(0.9, 1.1, size=30)


@pytest.mark.parametrize("features", ["linear", "quadratic"])
@pytest.mark.parametrize("seed", [0, 3])
def test_hyperpower_cost_models_cross_validate_as_before(features, seed):
    """Eq 3.2-3.3 / Table 3.1: the out-of-fold predictions and RMSPE of the estimator the cost models always used
    (``scale=linear``), and of the same estimator fitted to log(cost) (``scale=log``, the default)."""
    X, y = _profile()
    old = LinearRegression() if features == "linear" else make_pipeline(
        PolynomialFeatures(degree=2, include_bias=False), StandardScaler(), Ridge(alpha=1e-3))
    cv = KFold(n_splits=10, shuffle=True, random_state=seed)
    for scale, estimator in [("linear", old), ("log", TransformedTargetRegressor(regressor=old, func=np.log,
                                                                                  inverse_func=np.exp))]:
        expected = cross_val_predict(estimator, X, y, cv=cv)
        model = CostModel.fit("memory_mb", X, y, ["a", "b", "c"], folds=10, features=features, seed=seed, scale=scale)
        assert model.cv_predictions == [float(v) for v in expected]
        assert model.rmspe_cv == pytest.approx(100 * np.sqrt(np.mean(((y - expected) / y) ** 2)), rel=1e-12)


def test_hyperpower_cost_models_file_keeps_its_layout_and_refuses_another_version(tmp_path):
    X, y = _profile()
    configs = [{"i": i} for i in range(len(y))]
    models = CostModels.fit(configs, {"memory_mb": list(y)}, X, ["a", "b", "c"], folds=5)
    path = models.save(tmp_path / "cost_models.json")
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == (FORMAT, VERSION) == ("spnas-hyperpower-cost-models", 1)
    assert list(doc) == ["format", "version", "configs", "models"]
    assert set(doc["models"]["memory_mb"]) >= {"coefficients", "intercept", "rmspe_cv_pct", "actual", "cv_predictions",
                                               "scale"}
    again = CostModels.load(path, ["a", "b", "c"], lambda c: X[c["i"]])
    assert again.models["memory_mb"].cv_predictions == models.models["memory_mb"].cv_predictions
    linear = CostModels.fit(configs, {"memory_mb": list(y)}, X, ["a", "b", "c"], folds=5, scale="linear")
    assert CostModels.load(linear.save(tmp_path / "linear.json"), ["a", "b", "c"],
                           lambda c: X[c["i"]]).models["memory_mb"].scale == "linear"  # refit on its own scale
    del doc["models"]["memory_mb"]["scale"]  # a file of an earlier version: refit on the default, log, scale
    path.write_text(json.dumps(doc))
    assert CostModels.load(path, ["a", "b", "c"], lambda c: X[c["i"]]).models["memory_mb"].scale == "log"
    path.write_text(json.dumps({**doc, "version": 2}))
    with pytest.raises(ConfigError, match=r"hyperpower.cost_models.path .*cost_models.json: version 2 is not supp"):
        CostModels.load(path, ["a", "b", "c"], lambda c: X[c["i"]])


def test_subnet_predictors_cross_validate_as_before(micro_space):
    """The ridge predictor's cross-validated MAPE and τ are those of the estimator and split it always used."""
    from nas.subnet_search.encoding import GenomeCodec

    codec = GenomeCodec(micro_space)
    genes = codec.random(np.random.default_rng(1), 40)
    X = one_hot(codec, genes)
    y = 0.3 + X @ np.random.default_rng(2).uniform(0.0, 0.05, X.shape[1])
    config = yaml.safe_load((CONFIG_DIR / "predictor" / "ridge.yaml").read_text())
    model = ObjectivePredictor("error", codec, config, seed=3).fit(genes, y)
    old = TransformedTargetRegressor(regressor=RidgeCV(alphas=config["estimator"]["alphas"]),
                                     transformer=StandardScaler())
    expected = cross_val_predict(old, X, y, cv=KFold(5, shuffle=True, random_state=3))
    assert model.meta["cv"]["mape_pct"] == pytest.approx(objective_mape_pct("error", y, expected), rel=1e-12)
    assert model.meta["cv"]["mape_pct"] == pytest.approx(100 * np.mean(np.abs(expected - y) / (1 - y)), rel=1e-12)
    assert model.meta["cv"]["kendall_tau"] == pytest.approx(kendall_tau(y, expected), rel=1e-12)
