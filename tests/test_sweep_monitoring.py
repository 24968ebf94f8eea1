"""λ tuning with Hydra's Optuna sweeper (a 2-trial sweep of tiny searches) and the TensorBoard tags a run writes."""

from __future__ import annotations

import json
import math

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.search.objectives import target_objective
from nas.search.sweep import best_trial, write_sweep_report
from nas.space.architecture import Architecture
from tests.conftest import ROOT, load_space
from tests.test_entry import run

TARGET_MS = 0.05  # between the smallest and the largest tiny-space network under the MAC-count cost model


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run("search.py", "-m", "hparams_search=lambda_for_target", f"hardware.target_ms={TARGET_MS}",
               "hydra.sweeper.n_trials=2", "hardware=macs_proxy", "trainer.max_epochs=1", "data.limit=300",
               "progress=false", "solver.subset_dropout.epochs=0", "trainer.log_every_n_steps=1",
               f"hydra.sweep.dir={tmp}/sweep", f"paths.cache_dir={tmp}/cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep", proc


def test_lambda_sweep_writes_best_lambda_architecture_and_plot(sweep):
    sweep_dir, proc = sweep
    report = json.loads((sweep_dir / "lambda_sweep.json").read_text())
    assert report["format"] == "spnas-lambda-sweep" and report["target_ms"] == TARGET_MS
    assert report["num_trials"] == 2 and [t["trial"] for t in report["trials"]] == [0, 1]
    lambdas = [t["lambda_"] for t in report["trials"]]
    assert len(set(lambdas)) == 2 and all(0.005 <= lam <= 2.0 for lam in lambdas)  # the sampler proposed them
    for trial in report["trials"]:
        # each trial's objective is Eq 6.2 of its own accuracy and runtime, as returned to the sweeper
        assert math.isclose(trial["objective"],
                            target_objective(trial["val_acc"], trial["predicted_latency_ms"], TARGET_MS))
    best = report["best"]
    assert best["objective"] == max(t["objective"] for t in report["trials"])
    # Optuna's own record agrees with ours
    optuna_best = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"solver.lambda_: {best['lambda_']}" in optuna_best
    arch = Architecture.load(sweep_dir / "best_arch.json", load_space("tiny"))
    assert arch.keys == best["architecture"]
    assert (sweep_dir / "objective_vs_trial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best λ = {best['lambda_']}" in proc.stdout


def test_sweep_report_rejects_a_folder_without_trials(tmp_path):
    with pytest.raises(ConfigError, match="no finished trial"):
        write_sweep_report(tmp_path)
    with pytest.raises(ConfigError, match="finite objective"):
        best_trial([{"trial": 0, "objective": float("nan")}])


def tensorboard_tags(tb_dir) -> set[str]:
    tags = set()
    for path in tb_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_tensorboard_has_the_monitoring_tags(sweep):
    sweep_dir, _ = sweep
    tags = tensorboard_tags(sweep_dir / "0" / "tb")
    # the two loss terms over steps (Fig 5.6)
    assert {"train/ce", "train/runtime_ms", "train/lambda"} <= tags
    searchable = [spec.index for spec in load_space("tiny").searchable_layers]
    for i in searchable:
        # per-layer decisions over time and the per-shell superkernel std (Fig 5.9)
        assert {f"arch/L{i:02d}_kernel", f"arch/L{i:02d}_expansion", f"arch/L{i:02d}_se"} <= tags
        assert {f"superkernel_std/L{i:02d}_k3", f"superkernel_std/L{i:02d}_k5"} <= tags
    # images: std heatmap, decisions over time, the final architecture
    assert {"superkernel/std_heatmap", "arch/decisions_over_time", "arch/final"} <= tags
    # hparams plugin with the final metrics
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= tags
    assert {"hparams/val_acc", "hparams/predicted_latency_ms", "hparams/objective"} <= tags


def test_gp_sampler_is_optunas_native_gaussian_process():
    import optuna
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["hparams_search=lambda_for_target", "hydra/sweeper/sampler=gp"],
                      return_hydra_config=True)
    sampler_cfg = cfg.hydra.sweeper.sampler
    assert sampler_cfg._target_ == "optuna.samplers.GPSampler"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=instantiate(sampler_cfg, seed=0))
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    # a smooth 1-d objective with its maximum at λ = 0.3: after 3 random points the GP should close in
    study.optimize(lambda trial: -(math.log(trial.suggest_float("lambda_", 0.005, 2.0, log=True) / 0.3)) ** 2,
                   n_trials=10)
    assert abs(math.log(study.best_params["lambda_"] / 0.3)) < 0.5


def test_a_current_optuna_and_no_scikit_optimize_dependency():
    import optuna

    assert int(optuna.__version__.split(".")[0]) >= 4
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert not [r for r in requirements if r.startswith(("scikit-optimize", "hydra-optuna-sweeper"))]
    assert any(r.startswith("optuna>=4") for r in project["optional-dependencies"]["tune"])


def test_lambda_sweep_without_a_target_is_refused(capsys):
    from hydra import compose, initialize_config_dir

    from nas.search.sweep import LambdaSweepReport

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["hparams_search=lambda_for_target"], return_hydra_config=True)
    assert cfg.hydra.callbacks.lambda_sweep_report._target_ == "nas.search.sweep.LambdaSweepReport"
    with pytest.raises(SystemExit) as exit_info:  # before any trial runs, as `search.py -m` would
        LambdaSweepReport().on_multirun_start(cfg)
    assert exit_info.value.code == 2
    assert ("error: hparams_search=lambda_for_target needs the runtime target: add hardware.target_ms="
            in capsys.readouterr().err)
