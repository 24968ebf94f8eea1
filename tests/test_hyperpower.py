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
    model = CostModel.fit("memory_mb", X, y, ["a", "b", "c"], folds=10)
    assert model.rmspe_cv < 1e-6 and len(model.cv_predictions) == 30
    assert np.allclose(model.predict(X[:2]), y[:2])
    noisy = CostModel.fit("memory_mb", X, y * rng.uniform(0.9, 1.1, size=30), ["a", "b", "c"], folds=10)
    assert 1.0 < noisy.rmspe_cv < 15.0
    assert rmspe_pct(np.array([1.0, 2.0]), np.array([1.1, 1.8])) == pytest.approx(100 * np.sqrt((0.01 + 0.01) / 2))


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
    for trial in report["trials"]:
        assert trial["predicted_feasible"] and trial["trained"]  # Eq 3.4: never an infeasible proposal
        assert trial["predicted"]["memory_mb"] <= 0.45
        assert (trial["measured"]["memory_mb"] > 0.45) == bool(trial["violated"])
    assert report["violating_trained"] == len(report["model_errors"])
    models = strict_json(tmp / "hp" / "cost_models.json")
    assert models["models"]["memory_mb"]["folds"] == 5 and len(models["models"]["memory_mb"]["actual"]) == 10
    assert report["cost_models"]["memory_mb"]["rmspe_cv_pct"] > 0
    assert "HyperPower (hyperpower, seed 0): 3 evaluations" in proc.stdout


def test_baseline_reuses_the_cost_models_and_skips_measured_violations(hyperpower_run, tmp_path):
    tmp, _ = hyperpower_run
    proc = run("hyperpower.py", "hyperpower.constraints.memory_mb=0.3", "hyperpower.n_trials=4",
               "hyperpower.method=random", f"hyperpower.cost_models.path={tmp}/hp/cost_models.json", *FAST,
               f"hydra.run.dir={tmp_path}/rs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = strict_json(tmp_path / "rs" / "hyperpower.json")
    assert report["violating_trained"] == 0  # a baseline measures first and never trains a violator
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
