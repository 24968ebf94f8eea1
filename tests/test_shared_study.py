"""Workers on one Optuna study (nas/shared_study.py): the shared budget, stale trials, HyperPower with 2 workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.hyperpower.structure import StructureSpace
from nas.hyperpower.study import profile_cost_models
from nas.shared_study import check_storage, claim, evaluations, fail_dead_workers, mark_worker, open_storage, redact
from tests.conftest import ROOT
from tests.test_hyperpower import FAST

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_budget_counts_running_trials_and_fails_a_surplus_ask(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="x")
    first, second = study.ask(), study.ask()  # two workers under way
    assert evaluations(study) == 2 and claim(study, first, 2) and claim(study, second, 2)
    late = study.ask()  # a third worker counted before the second asked: its trial is surplus
    assert not claim(study, late, 2)
    frozen = study.get_trials()[late.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["surplus"] and evaluations(study) == 2
    study.tell(second, state=TrialState.FAIL)  # a stopped evaluation frees its place
    assert evaluations(study) == 1 and claim(study, study.ask(), 2)


def test_a_starting_worker_fails_only_the_trials_of_dead_processes_of_its_host():
    study = optuna.create_study()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed, alive, elsewhere = study.ask(), study.ask(), study.ask()
    mark_worker(alive)  # this process: alive
    killed.set_user_attr("worker", {**alive.user_attrs["worker"], "pid": dead.pid})
    elsewhere.set_user_attr("worker", {"host": "another-host", "pid": dead.pid})
    alive.set_user_attr("worker", {**alive.user_attrs["worker"], "pid": os.getppid()})
    assert fail_dead_workers(study) == [killed.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]


def test_storage_settings_are_checked_and_passwords_never_shown(tmp_path):
    assert check_storage(None) is None and check_storage("sqlite:///hp.db") == "sqlite:///hp.db"
    assert check_storage(f"{tmp_path}/hp.journal").endswith("hp.journal")
    with pytest.raises(ConfigError, match=r"storage='hp.db' is neither an Optuna storage URL"):
        check_storage("hp.db")
    with pytest.raises(ConfigError, match=r"^cannot open storage=sqlite:///.*/missing/hp.db: the folder .* does not"):
        open_storage(f"sqlite:///{tmp_path}/missing/hp.db")
    assert redact("postgresql://me:secret@db:5432/hp") == "postgresql://me:***@db:5432/hp"
    assert redact("sqlite:///hp.db") == "sqlite:///hp.db"


@pytest.mark.slow
def test_two_hyperpower_workers_share_one_sqlite_study(tmp_path):
    """Two processes on one study: n_trials evaluations in total, each by one worker, every trained network
    predicted feasible (Eq 3.4), both summaries the whole study."""
    structure = StructureSpace(yaml.safe_load((CONFIG_DIR / "space" / "tiny.yaml").read_text()))
    models = profile_cost_models(structure, ["memory_mb"], (1, 1, 32, 32), 1, 10, 10, 5, "linear", 0)
    models.save(tmp_path / "cost_models.json")  # profiled once here: the workers' time goes to the trials
    limit = float(np.quantile(models.models["memory_mb"].actual, 0.6))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    settings = [f"hyperpower.constraints.memory_mb={limit}", "hyperpower.n_trials=3",
                f"hyperpower.cost_models.path={tmp_path}/cost_models.json", f"storage=sqlite:///{tmp_path}/hp.db",
                "study_name=two", *FAST, "data.limit=200"]
    workers = [subprocess.Popen([sys.executable, str(ROOT / "hyperpower.py"), *settings, "threads=1",
                                 f"hydra.run.dir={tmp_path}/w{i}"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path}/hp.db")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 3 and not study.get_trials(states=(TrialState.RUNNING,))
    mine = [[json.loads(line) for line in (tmp_path / f"w{i}" / "trials.jsonl").read_text().splitlines()]
            for i in range(2)]
    numbers = sorted(r["number"] for records in mine for r in records)
    assert numbers == sorted(t.number for t in done)  # each evaluation made once, by one worker
    last = max(range(2), key=lambda i: (tmp_path / f"w{i}" / "hyperpower.json").stat().st_mtime)
    report = json.loads((tmp_path / f"w{last}" / "hyperpower.json").read_text())
    assert report["num_trials"] == 3 and [t["number"] for t in report["trials"]] == numbers
    assert report["study"]["name"] == "two" and report["study"]["workers"] >= 1
    for trial in report["trials"]:
        assert trial["trained"] and trial["predicted_feasible"] and trial["predicted"]["memory_mb"] <= limit
    assert len({json.dumps(t["params"], sort_keys=True) for t in report["trials"]}) == 3  # no duplicate proposals
    assert study.user_attrs["settings"]["constraints"] == {"memory_mb": limit}


def test_workers_with_one_seed_propose_apart_and_each_trial_number_alike():
    """``per_trial_seed`` (workers on one study): the proposal of trial n is drawn from (seed, n), so two workers
    with the same seed never repeat each other's start, and any worker proposes for trial n what another would."""
    from optuna.distributions import FloatDistribution

    from nas.hyperpower.samplers import ConstraintAwareSampler

    dists = {"x": FloatDistribution(0.0, 1.0)}
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="shared")
    workers = [optuna.load_study(study_name="shared", storage=storage, sampler=ConstraintAwareSampler(
        dists, lambda c: np.ones(len(c), bool), n_startup_trials=5, n_candidates=16, seed=0, per_trial_seed=True))
        for _ in range(2)]
    proposals = []
    for i in range(4):  # the two workers, same seed, ask in turn
        trial = workers[i % 2].ask(dists)
        proposals.append(trial.params["x"])
        workers[i % 2].tell(trial, trial.params["x"])
    assert len(set(proposals)) == 4
    alone = optuna.create_study(sampler=ConstraintAwareSampler(dists, lambda c: np.ones(len(c), bool), 5, 16, 0,
                                                               per_trial_seed=True))
    assert [alone.ask(dists).params["x"] for _ in range(4)] == proposals


def test_a_worker_with_other_settings_is_refused_by_a_shared_study():
    from nas.hyperpower.study import check_same_settings

    study = optuna.create_study()
    check_same_settings(study, {"method": "hyperpower", "constraints": {"memory_mb": 0.4}})
    check_same_settings(study, {"method": "hyperpower", "constraints": {"memory_mb": 0.4}})  # a second worker
    with pytest.raises(ConfigError, match=r"runs with constraints=\{'memory_mb': 0.4\}, this worker with "
                                          r"constraints=\{'memory_mb': 0.3\}; use the same settings"):
        check_same_settings(study, {"method": "hyperpower", "constraints": {"memory_mb": 0.3}})
