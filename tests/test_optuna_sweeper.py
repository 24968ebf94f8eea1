"""The thin Optuna (>= 4) sweeper: override grammar -> distributions, config surface, a real tiny multirun."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.spnas_optuna_sweeper.optuna_sweeper import distribution_from_override
from nas.cli import CONFIG_DIR
from tests.conftest import ROOT


def parse(line: str):
    return distribution_from_override(OverridesParser.create().parse_override(line))


def test_override_grammar_maps_to_optuna_distributions():
    assert parse("x=tag(log, interval(0.005, 2.0))") == FloatDistribution(0.005, 2.0, log=True)
    assert parse("x=interval(0.1, 0.9)") == FloatDistribution(0.1, 0.9)
    assert parse("x=interval(1, 8)") == FloatDistribution(1.0, 8.0)  # Hydra intervals are floats; ints: range
    assert parse("x=range(1, 9, 2)") == IntDistribution(1, 7, step=2)  # Hydra's range excludes the end
    assert parse("x=choice(sgd, adam)") == CategoricalDistribution(["sgd", "adam"])
    assert parse("x=3") == "3"  # a fixed override is passed through to every trial


@pytest.mark.parametrize("sampler,cls", [("tpe", "TPESampler"), ("gp", "GPSampler"), ("random", "RandomSampler")])
def test_sampler_options_compose(sampler, cls):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["hparams_search=lambda_for_target", f"hydra/sweeper/sampler={sampler}"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("spnas_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweeper.sampler._target_ == f"optuna.samplers.{cls}"
    assert cfg.hydra.sweeper.sampler.seed == cfg.seed


APP = '''
import hydra

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    return -(float(cfg.x) - 0.3) ** 2 - (0 if cfg.opt == "b" else 1)

main()
'''


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
def test_a_multirun_asks_and_tells_and_writes_the_best(tmp_path, sampler):
    app = tmp_path / "app.py"
    app.write_text(APP)
    proc = subprocess.run([sys.executable, str(app), "-m", "hydra/sweeper=optuna",
                           f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.direction=maximize",
                           "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.seed=1",
                           "+x=interval(0.0, 1.0)", "+opt=choice(a, b)", f"hydra.sweep.dir={tmp_path}/sweep"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4"]
    import yaml

    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"+x", "+opt"} and 0.0 <= results["best_params"]["+x"] <= 1.0
    assert results["best_value"] <= 0.0


def test_trials_fan_out_through_the_submitit_launcher(tmp_path):
    # submitit's local executor runs each trial as its own job, as SLURM would (hydra/launcher=slurm extends it)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    app = tmp_path / "app.py"
    app.write_text(APP)
    proc = subprocess.run([sys.executable, str(app), "-m", "hydra/sweeper=optuna", "hydra/launcher=submitit_local",
                           "hydra.launcher.timeout_min=5", "hydra.sweeper.direction=maximize",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "+x=interval(0.0, 1.0)",
                           "+opt=choice(a, b)", f"hydra.sweep.dir={tmp_path}/sweep"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # the jobs went through submitit
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


def test_lambda_sweep_composes_with_the_slurm_launcher():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["hparams_search=lambda_for_target", "hardware.target_ms=80",
                                           "hydra/launcher=slurm", "hydra.sweeper.n_jobs=4"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.sweeper.n_jobs == 4 and cfg.hydra.sweeper.params["solver.lambda_"].startswith("tag(log")


def test_sweeps_sharing_a_storage_end_at_n_trials_evaluations_in_total(tmp_path):
    """Two sweep processes on one SQLite study, then a third started after them: 5 evaluations in all."""
    import optuna

    app = tmp_path / "app.py"
    app.write_text(APP)

    def sweep(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(app), "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=5",
                                 "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=1",
                                 f"hydra.sweeper.storage=sqlite:///{tmp_path}/sweep.db", "hydra.sweeper.study_name=s",
                                 "+x=interval(0.0, 1.0)", "+opt=choice(a, b)", f"hydra.sweep.dir={tmp_path}/sweep{i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    for batch in ([sweep(0), sweep(1)], [sweep(2)]):
        errors = [p.communicate(timeout=300)[1] for p in batch]
        assert [p.returncode for p in batch] == [0] * len(batch), [e[-2000:] for e in errors]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/sweep.db")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    launched = sum(1 for i in range(3) for p in (tmp_path / f"sweep{i}").glob("*") if p.is_dir())
    assert len(complete) == 5 == launched  # no job launched beyond the budget; the third process found it spent
    assert len({(t.params["+x"], t.params["+opt"]) for t in complete}) == 5  # the two processes proposed apart
