"""HyperPower (thesis Ch. 3): structure, measurements, cost models (Eq 3.2-3.3), Eq 3.4 sampler, pruning, CLI."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.estimation import rmspe_pct
from nas.hyperpower.cost_models import CostModel
from nas.hyperpower.measure import measure, peak_memory_cpu_mb, state_megabytes
from nas.hyperpower.samplers import ConstraintAwareSampler, RandomWalkSampler, SpaceCodec
from nas.hyperpower.structure import StructureSpace
from nas.hyperpower.study import PruningCallback, evaluations_to_reach, train_candidate
from nas.space.networks import build_child
from tests.conftest import MICRO_SPACE
from tests.test_entry import run

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = ["data.limit=300", "trainer.max_epochs=1", "hyperpower.cost_models.samples=10",
        "hyperpower.cost_models.folds=5", "hyperpower.n_startup_trials=2", "hyperpower.n_candidates=256"]


@pytest.fixture
def structure() -> StructureSpace:
    return StructureSpace(yaml.safe_load((CONFIG_DIR / "space" / "tiny.yaml").read_text()))


def test_structure_builds_the_network_its_parameters_describe(structure):
    params = {"s1.channels": 40, "s1.kernel": 5, "s1.expansion": 3.0, "s1.depth": 1, "s2.channels": 24,
              "s2.kernel": 3, "s2.expansion": 6.0, "s2.depth": 2, "s3.channels": 96, "s3.kernel": 3,
              "s3.expansion": 6.0}
    space, arch = structure.build(params)
    stage1 = [spec for spec in space.layers if spec.stage == 1]
    assert len(stage1) == 1 and stage1[0].out_channels == 40
    assert [spec.out_channels for spec in space.layers if spec.stage == 2] == [24, 24]
    assert space.layers[-1].out_channels == 96
    assert arch.layers[stage1[0].index].kernel == 5 and arch.layers[stage1[0].index].expansion == 3.0
    assert structure.features(params).tolist()[:4] == [40.0, 5.0, 3.0, 1.0]  # â: channels, kernel, expansion, depth
    assert structure.feature_names[:4] == ["s1.channels", "s1.kernel", "s1.expansion", "s1.depth"]
    assert set(structure.distributions()) >= {"lr", "momentum", "weight_decay"}
    assert len(structure.enumerate_structures()) == structure.num_structures()


def test_cpu_peak_memory_grows_with_width_and_counts_the_weights(structure):
    small, _ = structure.build({"s1.channels": 16, "s2.channels": 24, "s3.channels": 32})
    large, _ = structure.build({"s1.channels": 40, "s2.channels": 64, "s3.channels": 96, "s1.expansion": 6.0,
                                "s2.expansion": 6.0, "s3.expansion": 6.0})
    nets = [build_child(space, space.largest(), 1, 10) for space in (small, large)]
    mem = [peak_memory_cpu_mb(net, (1, 1, 32, 32)) for net in nets]
    assert mem[0] < mem[1]
    assert all(m > state_megabytes(net) for m, net in zip(mem, nets))  # activations on top of the weights
    assert peak_memory_cpu_mb(nets[0], (1, 1, 32, 32)) == mem[0]  # allocator events: deterministic


def test_cpu_peak_memory_falls_back_to_the_public_profiler_api_without_kineto_results(structure, monkeypatch):
    """``kineto_results`` is not a documented torch API: without it, memory_mb is read from the documented
    ``profile.events()`` (a lower bound: temporaries freed inside one op are missed), with a warning."""
    import re

    import torch.profiler

    net = build_child(*structure.build({"s1.channels": 16, "s2.channels": 24, "s3.channels": 32})[:2], 1, 10)
    exact = peak_memory_cpu_mb(net, (1, 1, 32, 32))

    class ProfileWithoutKinetoResults(torch.profiler.profile):
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            self.events()  # torch 2.14 builds the public events lazily from kineto_results: build them first
            del self.profiler.kineto_results  # what a torch without the attribute looks like

    monkeypatch.setattr(torch.profiler, "profile", ProfileWithoutKinetoResults)
    with pytest.warns(RuntimeWarning, match=re.escape(f"torch {torch.__version__} exposes no")):
        fallback = peak_memory_cpu_mb(net, (1, 1, 32, 32))
    assert state_megabytes(net) < fallback <= exact  # activations counted, never more than the exact peak
    assert fallback > state_megabytes(net) + 0.5 * (exact - state_megabytes(net))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("metric", ["power_w", "cuda_memory_mb"])
def test_gpu_metrics_ask_for_a_gpu(metric):
    net = build_child(*StructureSpace(MICRO_SPACE).build({})[:2], 1, 10)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        measure(net, (1, 1, 16, 16), [metric])


def test_linear_cost_model_recovers_a_linear_cost_and_reports_cv_rmspe():
    rng = np.random.default_rng(0)
    X = rng.integers(1, 9, size=(30, 3)).astype(float)
    y = 0.5 + X @ np.array([0.1, 0.2, 0.05])
    model = CostModel.fit("memory_mb", X, y, ["a", "b", "c"], folds=10, scale="linear")  # Eq 3.2-3.3 as written
    assert model.rmspe_cv < 1e-6 and len(model.cv_predictions) == 30
    assert np.allclose(model.predict(X[:2]), y[:2])
    noisy = CostModel.fit("memory_mb", X, y * rng.uniform(0.9, 1.1, size=30), ["a", "b", "c"], folds=10)
    assert 1.0 < noisy.rmspe_cv < 15.0
    exponential = CostModel.fit("memory_mb", X, np.exp(X @ np.array([0.1, 0.2, 0.05])), ["a", "b", "c"], folds=10)
    assert exponential.scale == "log" and exponential.rmspe_cv < 1e-6  # the default scale: linear in log(cost)
    assert rmspe_pct(np.array([1.0, 2.0]), np.array([1.1, 1.8])) == pytest.approx(100 * np.sqrt((0.01 + 0.01) / 2))


def test_no_cost_model_predicts_a_negative_cost_where_a_linear_fit_does():
    """A cost growing faster than linearly in a knob: Eq 3.2-3.3's least-squares line crosses zero at small
    structures (the tiny space with 12 profiled networks: -0.41 MB). The default, log-scale model is positive
    everywhere, in and far outside the profile; the linear scale is floored at 0."""
    from sklearn.linear_model import LinearRegression

    X = np.arange(1.0, 9.0)[:, None]  # one structural knob, 8 profiled networks
    y = 0.05 * 2.0 ** X[:, 0]  # 0.1 .. 12.8 MB
    grid = np.linspace(-5.0, 20.0, 251)[:, None]
    assert LinearRegression().fit(X, y).predict(X).min() < 0  # the plain linear fit: negative MB at 1 and 2
    model = CostModel.fit("memory_mb", X, y, ["a"], folds=4)
    assert model.scale == "log" and np.all(model.predict(grid) > 0) and min(model.cv_predictions) > 0
    assert model.predict(X) == pytest.approx(y, rel=1e-9)  # exactly linear in log(cost)
    linear = CostModel.fit("memory_mb", X, y, ["a"], folds=4, scale="linear")
    assert np.all(linear.predict(grid) >= 0) and linear.predict(X[:1])[0] == 0.0 and min(linear.cv_predictions) >= 0
    assert CostModel.fit("power_w", X, 60.0 + y, ["a"], folds=4).predict(grid).min() > 0


def _noisy_profile(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.integers(1, 9, size=(n, 3)).astype(float)
    return X, (0.5 + X @ np.array([0.1, 0.2, 0.05])) * rng.uniform(1 - noise, 1 + noise, size=n)


def test_the_default_margin_is_the_models_one_sided_cv_error_bound():
    """``hyperpower.margin: auto`` (the default): 1 - 1/q, q the ceil((n+1) 0.95)-th smallest out-of-fold ratio
    measured / predicted; it grows with the model's measured error and gates the sampler."""
    from omegaconf import OmegaConf

    from nas.hyperpower.cost_models import CostModels
    from nas.hyperpower.study import make_sampler, resolve_margin, resolve_margins

    hp = hyperpower_cfg("hyperpower.constraints.memory_mb=0.5").hyperpower
    assert hp.margin == "auto" and hp.margin_confidence == 0.95 and hp.cost_models.scale == "log"
    X, y = _noisy_profile(40, 0.15)
    model = CostModel.fit("memory_mb", X, y, ["a", "b", "c"], folds=10)
    ratios = np.sort(np.array(model.actual) / np.array(model.cv_predictions))
    margin = resolve_margin(hp.margin, model, hp.margin_confidence)
    assert margin.bound_ratio == ratios[38]  # ceil(41 x 0.95) = 39th of 40
    assert margin.value == pytest.approx(1 - 1 / ratios[38]) and 0.05 < margin.value < 0.5
    assert np.mean(ratios <= margin.bound_ratio) >= 0.95 and margin.warning is None and margin.enforceable
    worse = CostModel.fit("memory_mb", X, _noisy_profile(40, 0.3)[1], ["a", "b", "c"], folds=10)
    assert resolve_margin("auto", worse).value > margin.value  # follows the model's error
    assert resolve_margin("rmspe", model).value == pytest.approx(model.rmspe_cv / 100)

    structure = StructureSpace(MICRO_SPACE)
    configs = structure.sample_structures(np.random.default_rng(0), 40)
    Xs = structure.features_matrix(configs)  # noqa: N806
    models = CostModels.fit(configs, {"memory_mb": list((1.0 + Xs.sum(1) / 100) * np.random.default_rng(1).uniform(
        0.85, 1.15, 40))}, Xs, structure.feature_names, folds=10)
    value = resolve_margins(hp, models, {"memory_mb": 1.0})["memory_mb"].value
    assert value > 0.05
    config = {**structure.sample_structures(np.random.default_rng(7), 1)[0], "lr": 0.01, "momentum": 0.9,
              "weight_decay": 1e-3}
    predicted = float(models.models["memory_mb"].predict(structure.features(config))[0])
    hp_sampler = OmegaConf.merge(hp, {"n_startup_trials": 1, "n_candidates": 8})
    for limit, ok in [(predicted / (1 - value) * 1.001, True), (predicted / (1 - value / 2), False)]:
        assert make_sampler("hyperpower", structure, models, {"memory_mb": limit}, hp_sampler, 0).feasible(
            [config])[0] == ok


def test_too_few_profiled_networks_for_the_bound_is_a_warning_naming_the_fix():
    """12 networks cannot bound the error at 95 % (that needs 19): the margin falls back to the largest
    out-of-fold under-prediction and the one-line warning names the RMSPE and the fix (the real key names)."""
    from nas.hyperpower.cost_models import samples_for_bound
    from nas.hyperpower.study import resolve_margin

    assert (samples_for_bound(0.95), samples_for_bound(0.9), samples_for_bound(0.99)) == (19, 9, 99)
    X, y = _noisy_profile(12, 0.3)
    model = CostModel.fit("memory_mb", X, y, ["a", "b", "c"], folds=3)
    margin = resolve_margin("auto", model)
    assert margin.bound_ratio == float("inf") and not margin.enforceable
    assert margin.value == pytest.approx(1 - 1 / np.max(np.array(model.actual) / np.array(model.cv_predictions)))
    warning = margin.warning
    assert "\n" not in warning and f"CV RMSPE {model.rmspe_cv:.1f} % on 12 profiled networks" in warning
    assert "too few to bound its error at 95 % (that needs >= 19)" in warning
    assert "profile more networks (hyperpower.cost_models.samples=40)" in warning and "hyperpower.margin" in warning
    assert "drop hyperpower.cost_models.path" in resolve_margin("auto", model, from_file=True).warning
    assert resolve_margin("auto", model, confidence=0.9).warning is None  # 12 >= 9: a 90 % bound exists
    assert resolve_margin(0.02, model, confidence=0.9).warning  # a fixed margin below that bound


def test_margin_zero_is_eq_3_4_as_written_with_a_warning():
    """``margin: 0.0``: feasible iff predicted <= limit, exactly (the gate of Eq 3.4); the model's error is still
    named on the console."""
    from omegaconf import OmegaConf

    from nas.hyperpower.cost_models import CostModels
    from nas.hyperpower.study import make_sampler, resolve_margins

    structure = StructureSpace(MICRO_SPACE)
    configs = structure.sample_structures(np.random.default_rng(0), 24)
    X = structure.features_matrix(configs)
    models = CostModels.fit(configs, {"memory_mb": list((1.0 + X.sum(1) / 100) * np.random.default_rng(1).uniform(
        0.9, 1.1, 24))}, X, structure.feature_names, folds=4)
    hp = OmegaConf.create({"n_startup_trials": 1, "n_candidates": 8, "margin": 0.0})
    everything = [{**c, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3} for c in structure.enumerate_structures()]
    predicted = models.models["memory_mb"].predict(structure.features_matrix(everything))
    limit = float(np.median(predicted))
    feasible = make_sampler("hyperpower", structure, models, {"memory_mb": limit}, hp, 0).feasible(everything)
    assert np.array_equal(feasible, predicted <= limit)  # I[M(â) <= M_T], nothing more
    at = everything[int(np.argmin(np.abs(predicted - limit)))]
    exact = float(models.models["memory_mb"].predict(structure.features(at))[0])
    assert make_sampler("hyperpower", structure, models, {"memory_mb": exact}, hp, 0).feasible([at])[0]
    assert not make_sampler("hyperpower", structure, models, {"memory_mb": np.nextafter(exact, 0)}, hp, 0).feasible(
        [at])[0]
    margin = resolve_margins(hp, models, {"memory_mb": limit})["memory_mb"]
    assert margin.value == 0.0 and "hyperpower.margin=0.0 (Eq 3.4 as written)" in margin.warning


def test_a_margin_that_leaves_nothing_predicted_feasible_is_refused_with_the_fix():
    from nas.hyperpower.cost_models import CostModels
    from nas.hyperpower.study import best_predicted, resolve_margin

    structure = StructureSpace(MICRO_SPACE)
    configs = structure.sample_structures(np.random.default_rng(0), 12)
    X = structure.features_matrix(configs)
    models = CostModels.fit(configs, {"memory_mb": list(1.0 + X.sum(1) / 100)}, X, structure.feature_names, folds=4)
    limit = {"memory_mb": float(np.max(models.models["memory_mb"].actual))}
    assert best_predicted(structure, models, limit, 0, {"memory_mb": resolve_margin(0.0, models.models["memory_mb"])})
    with pytest.raises(ConfigError, match=r"less the margin of 90.0 % kept for the cost model's error .*"
                                          r"profile more networks .*or raise the limit"):
        best_predicted(structure, models, limit, 0, {"memory_mb": resolve_margin(0.9, models.models["memory_mb"])})


def test_a_cost_model_needs_at_least_as_many_samples_as_folds():
    with pytest.raises(ConfigError, match="cannot be 10-fold cross-validated"):
        CostModel.fit("memory_mb", np.ones((5, 2)), np.ones(5), ["a", "b"], folds=10)


def test_codec_round_trips_and_perturbs_inside_the_space():
    dists = {"c": CategoricalDistribution([16, 24, 40]), "d": IntDistribution(1, 3),
             "lr": FloatDistribution(1e-3, 0.1, log=True), "opt": CategoricalDistribution(["sgd", "adam"])}
    codec = SpaceCodec(dists)
    rng = np.random.default_rng(0)
    for _ in range(20):
        params = codec.random(rng)
        u = codec.encode(params)
        assert u.shape == (5,) and np.all((0 <= u) & (u <= 1))  # ordinal c, d, lr, one-hot opt
        moved = codec.perturb(params, 0.3, rng)
        assert all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in moved.items())


def test_eq_3_4_sampler_never_proposes_a_configuration_the_models_call_infeasible():
    dists = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}

    def feasible(configs):  # the "cost model": x + y <= 0.8
        return np.array([c["x"] + c["y"] <= 0.8 for c in configs])

    sampler = ConstraintAwareSampler(dists, feasible, n_startup_trials=3, n_candidates=256, seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(12):
        trial = study.ask(fixed_distributions=dists)
        x, y = trial.params["x"], trial.params["y"]
        assert x + y <= 0.8
        study.tell(trial, (x - 0.7) ** 2 + (y - 0.7) ** 2)  # unconstrained optimum is infeasible
    # the GP's EI pushes to the constraint boundary nearest (0.7, 0.7): x + y close to 0.8
    assert sum(study.best_params.values()) > 0.6


def test_eq_3_4_sampler_refuses_when_nothing_is_predicted_feasible():
    dists = {"x": FloatDistribution(0.0, 1.0)}
    sampler = ConstraintAwareSampler(dists, lambda cs: np.zeros(len(cs), bool), n_candidates=16, max_rounds=2)
    with pytest.raises(ConfigError, match="infeasible"):
        optuna.create_study(sampler=sampler).ask(fixed_distributions=dists)


def test_random_walk_moves_around_the_best_point():
    dists = {"x": FloatDistribution(0.0, 1.0)}
    study = optuna.create_study(sampler=RandomWalkSampler(dists, sigma=0.05, seed=0))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dists, value=0.0))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.9}, distributions=dists, value=1.0))
    xs = [study.ask(fixed_distributions=dists).params["x"] for _ in range(10)]
    assert all(abs(x - 0.5) < 0.3 for x in xs)


def test_random_walk_starts_over_until_it_has_a_feasible_point():
    dists = {"x": FloatDistribution(0.0, 1.0)}
    study = optuna.create_study(sampler=RandomWalkSampler(dists, sigma=0.01, seed=0))
    infeasible = optuna.trial.create_trial(params={"x": 0.95}, distributions=dists, value=-0.1,
                                           user_attrs={"constraints": [0.2]})
    study.add_trial(infeasible)
    xs = [study.ask(fixed_distributions=dists).params["x"] for _ in range(10)]
    assert min(xs) < 0.8  # uniform, not a walk around the infeasible 0.95


def test_hyperpower_feasibility_uses_measurements_where_known_and_the_margin_elsewhere():
    from omegaconf import OmegaConf

    from nas.hyperpower.cost_models import CostModels
    from nas.hyperpower.study import KnownCosts, make_sampler

    structure = StructureSpace(MICRO_SPACE)
    configs = structure.sample_structures(np.random.default_rng(0), 12)
    X = structure.features_matrix(configs)
    models = CostModels.fit(configs, {"memory_mb": list(1.0 + X.sum(1) / 100)}, X, structure.feature_names, folds=4)
    config = {**configs[0], "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}
    predicted = float(models.models["memory_mb"].predict(structure.features(config))[0])
    hp = OmegaConf.create({"n_startup_trials": 1, "n_candidates": 8, "margin": 0.0})
    known = KnownCosts(structure)
    limit = {"memory_mb": predicted * 1.01}
    feasible = make_sampler("hyperpower", structure, models, limit, hp, 0, known).feasible
    assert feasible([config])[0]
    hp.margin = 0.05  # the prediction is within 5 % of the limit: not feasible with the margin
    assert not make_sampler("hyperpower", structure, models, limit, hp, 0, known).feasible([config])[0]
    known.add(config, {"memory_mb": predicted * 1.02})  # measured over the limit: the measurement wins
    assert not feasible([config])[0]


def test_evaluations_to_reach():
    assert evaluations_to_reach([None, 0.5, 0.3, 0.3, 0.2], 0.3) == 3
    assert evaluations_to_reach([None, 0.5], 0.1) is None


def test_pruning_callback_stops_a_diverging_candidate(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("hyperpower", overrides=["data.limit=200", "trainer.max_epochs=3",
                                               f"paths.output_dir={tmp_path}"])
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.5))
    trial = study.ask()
    pruning = PruningCallback(trial)
    net = build_child(*StructureSpace(MICRO_SPACE).build({})[:2], 1, 10)
    # lr = 0: the network cannot learn, its validation error stays near chance (0.9) -> pruned after epoch 1
    acc = train_candidate(cfg, net, partial(torch.optim.SGD, lr=0.0), instantiate(cfg.data), [pruning])
    assert pruning.pruned and acc < 0.5
    assert list(study.trials[0].intermediate_values) == [0]  # one epoch reported, the other two never ran


@pytest.fixture(scope="module")
def hyperpower_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hyperpower")
    proc = run("hyperpower.py", "hyperpower.constraints.memory_mb=0.45", "hyperpower.n_trials=3", *FAST,
               f"hydra.run.dir={tmp}/hp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def strict_json(path):
    def no_nan(token):
        raise AssertionError(f"{path} holds {token}")
    return json.loads(path.read_text(), parse_constant=no_nan)


def test_hyperpower_trains_only_predicted_feasible_networks(hyperpower_run):
    tmp, proc = hyperpower_run
    report = strict_json(tmp / "hp" / "hyperpower.json")
    assert report["format"] == "spnas-hyperpower" and report["method"] == "hyperpower"
    assert report["num_trials"] == 3 and len(report["trials"]) == 3
    models = strict_json(tmp / "hp" / "cost_models.json")
    profiled = {json.dumps(c, sort_keys=True): y for c, y in zip(models["configs"],
                                                                  models["models"]["memory_mb"]["actual"])}
    margin = report["margins"]["memory_mb"]["margin"]
    for trial in report["trials"]:
        assert trial["predicted_feasible"] and trial["trained"]  # Eq 3.4: never an infeasible proposal
        structural = json.dumps({k: v for k, v in trial["params"].items()
                                 if k not in ("lr", "momentum", "weight_decay")}, sort_keys=True)
        # predicted within the limit less the margin, or a profiled structure measured within the limit
        assert trial["predicted"]["memory_mb"] <= 0.45 * (1 - margin) or profiled.get(structural, 1e9) <= 0.45
        assert (trial["measured"]["memory_mb"] > 0.45) == bool(trial["violated"])
    assert report["violating_trained"] == len(report["model_errors"])
    assert models["models"]["memory_mb"]["folds"] == 5 and models["models"]["memory_mb"]["scale"] == "log"
    assert models["models"]["memory_mb"]["folds"] == 5 and len(models["models"]["memory_mb"]["actual"]) == 10
    assert report["cost_models"]["memory_mb"]["rmspe_cv_pct"] > 0
    assert "HyperPower (hyperpower, seed 0): 3 evaluations" in proc.stdout


def test_an_unenforceable_cost_model_is_a_console_warning_and_in_the_summary(hyperpower_run):
    """10 profiled networks (FAST) cannot bound the memory model's error at 95 %: one ``warning:`` line on
    stderr (not only the log), repeated under the summary on stdout, and recorded in hyperpower.json."""
    tmp, proc = hyperpower_run
    report = strict_json(tmp / "hp" / "hyperpower.json")
    margin = report["margins"]["memory_mb"]
    assert margin["setting"] == "auto" and margin["bound_ratio"] is None and not margin["enforceable"]
    assert margin["samples"] == 10 and margin["samples_needed_for_bound"] == 19 and 0 < margin["margin"] < 1
    assert report["warnings"] == [margin["warning"]]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("warning: memory_mb cost model")]
    assert lines == [f"warning: {margin['warning']}"]
    assert "hyperpower.cost_models.samples=40" in lines[0] and f"warning: {margin['warning']}" in proc.stdout


def test_baseline_reuses_the_cost_models_and_skips_measured_violations(hyperpower_run, tmp_path):
    tmp, _ = hyperpower_run
    proc = run("hyperpower.py", "hyperpower.constraints.memory_mb=0.3", "hyperpower.n_trials=4",
               "hyperpower.method=random", f"hyperpower.cost_models.path={tmp}/hp/cost_models.json", *FAST,
               f"hydra.run.dir={tmp_path}/rs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = strict_json(tmp_path / "rs" / "hyperpower.json")
    assert report["violating_trained"] == 0  # a baseline measures first and never trains a violator
    assert report["margins"] == {} and report["warnings"] == []  # no model gates its proposals
    for trial in report["trials"]:
        assert trial["trained"] == (not trial["violated"])


def hyperpower_cfg(*overrides, tmp_path="/tmp"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("hyperpower", overrides=[*overrides, f"paths.output_dir={tmp_path}"])


@pytest.mark.parametrize("overrides,message", [
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.cost_models.samples=5"],
     r"a cost model fitted on 5 profiled network\(s\) cannot be 10-fold cross-validated"),
    (["hyperpower.constraints.memory_mb=0.5", "objective=monas_mixed", "objective.alpha=2"],
     r"objective monas_mixed: alpha must lie in \[0, 1\]"),
    (["hyperpower.constraints.memory_mb=0.5", "objective=pfp", "objective.thres=-1"],
     r"objective pfp: THRES \(thres\) must be > 0"),
    (["hyperpower.constraints.memory_mb=-1"], "memory_mb must be > 0 MB"),
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.method=grid"], "hyperpower.method must be one of"),
    ([], "HyperPower needs at least one constraint"),
    (["hyperpower.constraints.memory_mb=0.5", "storage=hp.db"], "storage='hp.db' is neither an Optuna storage URL"),
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.margin=often"],
     r"hyperpower.margin must be 'auto', 'rmspe' or a fraction in \[0, 1\), got 'often'"),
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.margin=1.0"], "hyperpower.margin must be 'auto'"),
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.margin_confidence=1"],
     "hyperpower.margin_confidence must lie strictly between 0 and 1, got 1"),
    (["hyperpower.constraints.memory_mb=0.5", "hyperpower.cost_models.scale=cubic"],
     r"hyperpower.cost_models.scale must be one of \['log', 'linear'\]"),
])
def test_bad_settings_are_refused_before_any_work(overrides, message):
    from nas.hyperpower.study import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(hyperpower_cfg(*overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_power_constraint_without_a_gpu_is_one_error_line(tmp_path):
    proc = run("hyperpower.py", "hyperpower.constraints.power_w=50", f"hydra.run.dir={tmp_path}/hp")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: a power_w constraint needs a CUDA GPU") and "Traceback" not in proc.stderr
    assert not (tmp_path / "hp" / "cost_models.json").exists()  # refused before any profiling


def test_a_constraint_no_configuration_meets_names_the_best_predicted_value(tmp_path):
    proc = run("hyperpower.py", "hyperpower.constraints.memory_mb=0.001", *FAST, "hyperpower.cost_models.samples=20",
               f"hydra.run.dir={tmp_path}/hp")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no configuration can meet memory_mb <= 0.001 MB: the best predicted value")
    assert "Traceback" not in proc.stderr


def test_a_stopped_hyperpower_run_says_how_to_resume_and_the_resumed_run_completes(tmp_path, monkeypatch):
    """SIGTERM / Ctrl-C during an evaluation: the finished evaluations are kept (trials.jsonl, Optuna's journal),
    the cut one is marked failed, and ``resume=<run folder>`` runs the rest with the same cost models."""
    import signal

    import nas.hyperpower.study as hp_study
    from nas.cli import SignalStop
    from nas.errors import Interrupted

    calls = []
    real = hp_study.train_candidate

    def stopped_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SignalStop(signal.SIGTERM)  # what stop_on_signals raises when the signal arrives
        return real(*args, **kwargs)

    monkeypatch.setattr(hp_study, "train_candidate", stopped_on_the_second)
    settings = ["hyperpower.constraints.memory_mb=0.45", "hyperpower.n_trials=3", *FAST]
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM after 1 of 3 evaluations") as stop:
        hp_study.run_hyperpower(hyperpower_cfg(*settings, tmp_path=tmp_path / "first"))
    assert stop.value.exit_code == 143 and f"resume={tmp_path / 'first'}" in str(stop.value)
    first = [json.loads(line) for line in (tmp_path / "first" / "trials.jsonl").read_text().splitlines()]
    assert [t["number"] for t in first] == [0]

    monkeypatch.setattr(hp_study, "train_candidate", real)
    result = hp_study.run_hyperpower(hyperpower_cfg(*settings, f"resume={tmp_path / 'first'}",
                                                    tmp_path=tmp_path / "second"))
    assert result["num_trials"] == 3 and result["trials"][0] == first[0] and result["output_dir"] == str(
        tmp_path / "first")
    assert [t["number"] for t in result["trials"]] == [0, 2, 3]  # trial 1 was cut short and marked failed
    assert not (tmp_path / "second" / "cost_models.json").exists()  # nothing profiled again: the run's own models
    with pytest.raises(ConfigError, match="already holds a hyperpower run"):  # never continued by accident
        hp_study.run_hyperpower(hyperpower_cfg(*settings, tmp_path=tmp_path / "first"))
    with pytest.raises(ConfigError, match="no trials.jsonl there"):
        hp_study.run_hyperpower(hyperpower_cfg(*settings, f"resume={tmp_path / 'second'}", tmp_path=tmp_path))
