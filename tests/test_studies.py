"""Studies: the random cloud's spread, the JSONL records, λ calibration, the report, and one real resumable run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from nas.cli import compose_config
from nas.errors import ConfigError
from nas.io import append_jsonl, read_jsonl
from nas.studies.solver_study import SolverStudy, cloud_architectures, dominating_cloud, report_table, study_config
from tests.conftest import make_idx_set, proxy_lut


def test_cloud_spreads_over_the_whole_latency_range(tiny_space):
    from nas.cost.runtime_model import RuntimeModel

    model = RuntimeModel(tiny_space, proxy_lut(tiny_space), 1, 10)
    cloud = cloud_architectures(tiny_space, model.predict, size=12, seed=0, pool=600)
    assert len(cloud) == 12
    assert len({tuple(a.keys) for a, _ in cloud}) == 12
    lo, hi = min(b[0] for _, b in cloud), max(b[1] for _, b in cloud)
    assert hi >= model.predict(tiny_space.largest()) - 1e-12
    width = (hi - lo) / 12
    predicted = sorted(model.predict(a) for a, _ in cloud)
    # the end bins always hold their own networks: the cloud reaches both ends of the range
    assert predicted[0] <= lo + width and predicted[-1] >= hi - width
    assert all(lo - 1e-9 <= ms <= hi + 1e-9 for ms in predicted)
    # one network per bin (12 different bins), and the networks occupy most bins themselves
    assert len({b for _, b in cloud}) == 12
    assert len({min(11, int((ms - lo) / width)) for ms in predicted}) >= 6
    again = cloud_architectures(tiny_space, model.predict, size=12, seed=0, pool=600)
    assert [a.keys for a, _ in again] == [a.keys for a, _ in cloud]


def test_jsonl_drops_a_torn_last_line_and_refuses_damage_inside(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"key": "a", "x": float("nan")})
    append_jsonl(path, {"key": "b"})
    with open(path, "a") as handle:
        handle.write('{"key": "c", "x"')  # a writer killed mid-line
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b"]
    assert read_jsonl(path)[0]["x"] is None  # NaN is stored as null
    path.write_text('{"key": "a"}\n{broken\n{"key": "b"}\n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_dominating_cloud_counts_faster_and_better_networks():
    cloud = [{"measured_latency_ms": ms, "test_acc": acc} for ms, acc in
             [(0.05, 0.80), (0.07, 0.86), (0.09, 0.84), (0.12, 0.90)]]
    assert dominating_cloud({"measured_latency_ms": 0.09, "test_acc": 0.85}, cloud) == (1, pytest.approx(-0.01))
    assert dominating_cloud({"measured_latency_ms": 0.10, "test_acc": 0.87}, cloud) == (0, pytest.approx(0.01))
    assert dominating_cloud({"measured_latency_ms": 0.01, "test_acc": 0.5}, cloud) == (0, None)
    records = [{"kind": "search", "solver": "single_path", "seed": 0, "key": "search/single_path/seed0",
                "test_acc": 0.87, "val_acc": 0.86, "measured_latency_ms": 0.10, "predicted_latency_ms": 0.1,
                "search_wall_s": 10.0, "lambda": 0.02}] + [{"kind": "cloud", **c, "val_acc": c["test_acc"],
                                                            "predicted_latency_ms": c["measured_latency_ms"]}
                                                           for c in cloud]
    table = report_table(records)
    assert "| single_path | 1 | 0.8700 ± 0.0000" in table and "| random cloud | 4 |" in table
    assert "| search/single_path/seed0 | 0.8700 | 0.1000 | 0 | +1.00 pp |" in table


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _study(tmp_path: Path, *overrides: str, real: bool = False, cache: Path | None = None) -> SolverStudy:
    """A study on small IDX files of its own, or (``real``) on the first 600 images of the real Fashion-MNIST."""
    if real:
        data = [f"data.root={REAL_FASHION_MNIST}", "data.limit=600"]
    else:
        data = [f"data.root={make_idx_set(tmp_path / 'fm', n_train=160, n_test=40)}", "data.val_size=40"]
    common = [*data, f"paths.cache_dir={cache or tmp_path / 'cache'}", "progress=false",
              "hardware.backend.warmup=1", "hardware.backend.repeats=3", "hardware.backend.calibration_networks=3"]
    cfg = compose_config("study_solvers", with_choices=True, overrides=[
        f"records={tmp_path}/r.jsonl", f"work_dir={tmp_path}/work", f"table={tmp_path}/t.md",
        f"figure={tmp_path}/f.png", f"common={json.dumps(common)}", "lambda_search.file=null", "cloud.file=null",
        f"sitting.file={tmp_path}/sitting.json",
        *overrides])
    return SolverStudy(study_config(cfg))


def test_lambda_bisection_brackets_the_target(tmp_path, monkeypatch):
    """The calibration's arithmetic, with a stand-in search whose latency falls with λ (the real search is
    tested in test_entry.py; here only the bisection is under test)."""
    study = _study(tmp_path, "lambda_search.probes=5", "lambda_search.range=[0.001,1.0]")
    study.target_ms = 0.1

    def fake_search(entry, overrides, log_path, what):
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        lam = float(values["solver.lambda_"])
        run_dir = Path(values["hydra.run.dir"])
        run_dir.mkdir(parents=True)
        latency = 0.15 - 0.025 * math.log10(lam / 0.001)  # 0.15 ms at λ=0.001, 0.075 ms at λ=1
        (run_dir / "summary.json").write_text(json.dumps({"config": {"solver": {"lambda_": lam}},
                                                          "predicted_latency_ms": latency, "val_acc": 0.5}))

    monkeypatch.setattr(study, "_run", fake_search)
    lam = study.calibrate_lambda("single_path")
    probes = study.lambda_probes("single_path")
    assert len(probes) == 5
    # R(λ) = R_T at λ = 0.001 * 10**2 = 0.1: the chosen λ meets the target and lies within the last bracket
    assert 0.1 <= lam <= 0.1 * 10 ** (3 / 2 ** 4) + 1e-9
    assert json.loads((tmp_path / "work" / "lambda" / "single_path" / "lambda.json").read_text())["chosen"][
        "lambda"] == lam
    # finished probes are reused: a second calibration runs no search
    monkeypatch.setattr(study, "_run", lambda *a: pytest.fail("a finished probe was searched again"))
    assert study.calibrate_lambda("single_path") == lam


@pytest.mark.parametrize("override, message", [
    ("solvers=[single_pat]", "unknown solver"),
    ("target_fraction=1.5", "target_fraction must lie in (0, 1)"),
    ("lambda_search.range=[1.0,0.1]", "lambda_search.range must be [low, high]"),
])
def test_bad_study_settings_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _study(tmp_path, override)


@pytest.mark.slow
def test_study_runs_searches_and_cloud_then_resumes_without_work(tmp_path, monkeypatch, onnx_lut_cache):
    """End to end: real searches and retrainings (search.py, train.py recipe=fashion_mnist) of 1 searched and 1
    cloud network; a second run skips both. On the real Fashion-MNIST files when they are installed (.ci/run
    installs them: this is the suite's end-to-end run on real data), else on small IDX files of its own."""
    real = REAL_FASHION_MNIST.is_dir()
    study = _study(tmp_path, "seeds=[0]", "solvers=[random]", "cloud.size=1",
                   'search.overrides=["trainer.max_epochs=2"]',
                   'search.per_solver.random=["solver.num_samples=2","solver.epochs_per_sample=1"]',
                   'retrain.overrides=["trainer.max_epochs=1"]', real=real, cache=onnx_lut_cache)
    records = study.run()
    assert sorted(r["key"] for r in records) == ["cloud/000", "search/random/seed0"]
    for r in records:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["measured_latency_ms"] > 0 and r["predicted_latency_ms"] > 0
        assert r["params"] > 0 and r["macs"] > 0 and r["format"] == "spnas-study-network"
    searched = next(r for r in records if r["kind"] == "search")
    assert searched["search_wall_s"] > 0 and searched["lambda"] is None
    assert searched["search_cpu_s"] > 0 and searched["retrain_cpu_s"] > 0
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 2
    # the complete study measured every network again in one interleaved sitting
    sitting = json.loads((tmp_path / "sitting.json").read_text())
    assert sitting["format"] == "spnas-study-latency-sitting"
    assert set(sitting["networks"]) == {r["key"] for r in records}
    assert all(n["ms"] > 0 and n["runs"] > 0 for n in sitting["networks"].values())
    monkeypatch.setattr(SolverStudy, "_run", lambda *a: pytest.fail("recorded work was run again"))
    again = _study(tmp_path, "seeds=[0]", "solvers=[random]", "cloud.size=1", real=real, cache=onnx_lut_cache).run()
    assert len(again) == 2 and len(read_jsonl(tmp_path / "r.jsonl")) == 2
    from nas.studies.solver_study import write_report

    write_report(again, OmegaConf.create({"table": str(tmp_path / "t.md"), "figure": str(tmp_path / "f.png"),
                                          "anchors": {"MobileNet": 0.95},
                                          "sitting": {"file": str(tmp_path / "sitting.json")}}))
    table = (tmp_path / "t.md").read_text()
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and "random cloud" in table
    assert table.startswith("Measured latency: every network in one interleaved sitting")
    cloud_ms = sitting["networks"]["cloud/000"]["ms"]
    cloud_row = next(line for line in table.splitlines() if line.startswith("| random cloud |"))
    assert f"| {cloud_ms:.4f} ± 0.0000 |" in cloud_row  # the sitting's latency, not the retraining's


def test_a_step_that_ends_without_its_summary_stops_the_study_with_the_resume_hint(tmp_path, monkeypatch):
    """Lightning turns SIGTERM into a clean exit: a search or retraining that exits 0 without its summary is a
    named study error (re-run to resume), not a FileNotFoundError traceback."""
    from nas.studies.solver_study import Job, StudyStepFailed

    study = _study(tmp_path, "seeds=[0]", "solvers=[random]")
    study.target_ms = 0.1  # set by run() from the LUT
    monkeypatch.setattr(SolverStudy, "_run", lambda *a: None)  # the step "ran" and wrote nothing
    with pytest.raises(StudyStepFailed, match=r"search/random/seed0 ended without writing summary.json .*resume"):
        study.search(Job(key="search/random/seed0", kind="search", solver="random", seed=0))


@pytest.mark.parametrize("args, message", [
    (["solvers=[nope]"], "unknown solver(s) ['nope']"),
    (["sedes=[0]"], "Could not override 'sedes'"),
    (["seeds=["], "cannot parse the override"),
])
def test_study_command_line_errors_are_one_line(args, message, tmp_path):
    import subprocess
    import sys


    proc = subprocess.run([sys.executable, "-m", "nas.command", "study-solvers", *args,
                           f"records={tmp_path}/r.jsonl", f"work_dir={tmp_path}/w"], capture_output=True, text=True,
                          timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.jsonl").exists()


def test_sigterm_stops_the_study_and_its_running_step_and_says_how_to_resume(tmp_path):
    """``kill <study>`` reaches the running search too (it saves and stops), and the study says what it kept."""
    import signal
    import subprocess
    import sys
    import time

    data = make_idx_set(tmp_path / "fm", n_train=160, n_test=40)
    args = ["study-solvers", "seeds=[0]", "solvers=[random]", "cloud.size=1", "hardware=macs_proxy",
            f"data.root={data}", "data.val_size=40", f"records={tmp_path}/r.jsonl", f"work_dir={tmp_path}/work",
            f"table={tmp_path}/t.md", f"figure={tmp_path}/f.png", "lambda_search.file=null", "cloud.file=null",
            f"sitting.file={tmp_path}/s.json", f'common=["progress=false","paths.cache_dir={tmp_path}/cache"]']
    proc = subprocess.Popen([sys.executable, "-m", "nas.command", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "work" / "search" / "random" / "seed0.log"
    deadline = time.monotonic() + 600
    while not log.exists():  # the study has started its first search
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "resume with: " in err and "study-solvers" in err
    assert "Traceback" not in err and not (tmp_path / "r.jsonl").exists()
    assert not (log.parent / "seed0" / "summary.json").exists()  # the search was stopped, not waited for
    alive = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
    assert alive.stdout.strip() == "", "the running search outlived the study"


def test_study_b_selects_by_validation_accuracy_within_the_parameter_budget():
    from nas.studies.anchor_study import anchor_table, select_networks

    records = [
        {"kind": "search", "solver": "single_path", "key": "a", "params": 90000, "val_acc": 0.88, "test_acc": 0.95},
        {"kind": "search", "solver": "single_path", "key": "b", "params": 95000, "val_acc": 0.90, "test_acc": 0.80},
        {"kind": "search", "solver": "single_path", "key": "c", "params": 120000, "val_acc": 0.99, "test_acc": 0.9},
        {"kind": "search", "solver": "random", "key": "d", "params": 50000, "val_acc": 0.95, "test_acc": 0.9},
        {"kind": "cloud", "solver": None, "key": "e", "params": 50000, "val_acc": 0.97, "test_acc": 0.9},
    ]
    assert [r["key"] for r in select_networks(records, ["single_path"], 100000, 2)] == ["b", "a"]
    assert [r["key"] for r in select_networks(records, ["single_path", "random"], 100000, 1)] == ["d"]
    table = anchor_table([{"key": "long/b", "params": 95000, "macs": 2000000, "measured_latency_ms": 0.1,
                           "test_acc": 0.9312, "total_cpu_s": 7200.0}], {"MobileNet": 0.95})
    assert "| long/b | 95,000 | 2,000,000 | 0.1000 | 93.12 % | 2.00 |" in table and "| MobileNet | 95.0 % |" in table


# ---------------------------------------------------------------------- truth study (issue 19)
def _ground_truth(path: Path, n: int = 6) -> list[dict]:
    """A fake Study A: ``n`` distinct tiny-space networks with made-up retrained accuracies, one architecture
    recorded twice (a second search finding it) and one record of another data set (ignored)."""
    import random

    from tests.conftest import load_space

    space = load_space("tiny")
    rng = random.Random(0)
    archs = {tuple(space.smallest().keys): space.smallest(), tuple(space.largest().keys): space.largest()}
    while len(archs) < n:
        arch = space.sample(rng)
        archs.setdefault(tuple(arch.keys), arch)
    records = [{"key": f"cloud/{i:03d}", "kind": "cloud", "solver": None, "architecture": arch.keys,
                "test_acc": 0.80 + 0.01 * i, "val_acc": 0.81 + 0.01 * i, "measured_latency_ms": 0.05 + 0.01 * i,
                "params": 10000 * (i + 1), "macs": 100000 * (i + 1), "space": "tiny", "data": "fashion_mnist"}
               for i, arch in enumerate(archs.values())]
    records.append({**records[2], "key": "search/random/seed0", "kind": "search", "solver": "random"})
    records.append({**records[3], "key": "cloud/other", "data": "mnist"})
    for r in records:
        append_jsonl(path, r)
    return records


def _truth_study(tmp_path: Path, *overrides: str):
    from nas.studies.truth_study import TruthStudy

    data = make_idx_set(tmp_path / "fm", n_train=160, n_test=40)
    common = [f"data.root={data}", "data.val_size=40", f"paths.cache_dir={tmp_path / 'cache'}", "progress=false"]
    cfg = compose_config("study_truth", with_choices=True, overrides=[
        f"source={tmp_path}/solvers.jsonl", f"records={tmp_path}/truth.jsonl", f"work_dir={tmp_path}/work",
        f"table={tmp_path}/truth.md", f"figure={tmp_path}/truth.png", "sitting.file=null",
        f"common={json.dumps(common)}", "eval.bn_batches=1", "bootstrap.resamples=200", "front.size=0",
        f"front.file={tmp_path}/front.json", f"front.records={tmp_path}/front.jsonl",
        'supernet.overrides=["solver=supernet","seed=0","trainer.max_epochs=1","trainer.limit_train_batches=1",'
        '"trainer.limit_val_batches=1"]',
        *overrides])
    return TruthStudy(study_config(cfg))


@pytest.mark.slow
def test_truth_study_trains_each_variant_once_records_every_network_and_reports_tau(tmp_path, monkeypatch):
    """End to end on small IDX files: two supernets (search.py, 1 epoch; one distilled), every distinct ground-truth
    network validated with each; a second run trains and validates nothing; the report has τ and ρ with
    intervals per variant."""
    from nas.studies.truth_study import write_truth_report
    from nas.subnet_search.evaluation import SupernetEvaluator

    truth = _ground_truth(tmp_path / "solvers.jsonl")
    # three front networks already retrained (front.file and front.records as a finished front retraining left
    # them): they join the ground truth, from their own source
    front = [{**r, "key": f"front/{i:03d}", "kind": "front", "test_acc": 0.7 + 0.01 * i}
             for i, r in enumerate(_ground_truth(tmp_path / "other.jsonl", n=9)[6:9])]
    (tmp_path / "front.json").write_text(json.dumps({"size": 3, "networks": [
        {"key": r["key"], "architecture": r["architecture"]} for r in front]}))
    for r in front:
        append_jsonl(tmp_path / "front.jsonl", r)
    study = _truth_study(tmp_path, 'variants={sandwich:[],distill:["solver.distill=true"]}', "front.size=3",
                         "front.files=[unused]")
    monkeypatch.setattr(SolverStudy, "retrain", lambda *a: pytest.fail("a retrained front network again"))
    records = study.run()
    assert sorted(r["key"] for r in records) == sorted(f"{v}/{k}" for v in ("sandwich", "distill")
                                                       for k in [*(f"cloud/{i:03d}" for i in range(6)),
                                                                 *(r["key"] for r in front)])
    assert {r["source"] for r in records if r["network"].startswith("front/")} == {"front.jsonl"}
    records = [r for r in records if not r["network"].startswith("front/")]
    by_key = {r["key"]: r for r in records}
    assert by_key["distill/cloud/002"]["same_architecture"] == ["search/random/seed0"]
    for r in records:
        source = next(t for t in truth if t["key"] == r["network"])
        assert r["architecture"] == source["architecture"] and r["format"] == "spnas-truth-network"
        assert r["retrained_test_error"] == pytest.approx(1 - source["test_acc"])
        assert 0.0 <= r["supernet_error"] <= 1.0 and r["eval"]["val_samples"] == 40
    digests = {v: {r["supernet_digest"] for r in records if r["variant"] == v} for v in ("sandwich", "distill")}
    assert all(len(d) == 1 for d in digests.values()) and digests["sandwich"] != digests["distill"]
    # each variant's overrides reached its supernet's training
    for variant, distill in (("sandwich", False), ("distill", True)):
        summary = json.loads((tmp_path / "work" / "supernet" / variant / "summary.json").read_text())
        assert summary["solver"] == "supernet" and summary["config"]["solver"]["distill"] is distill
    # rerun: everything is recorded, nothing is trained or validated again
    monkeypatch.setattr(SolverStudy, "_run", lambda *a: pytest.fail("a finished supernet was trained again"))
    monkeypatch.setattr(SupernetEvaluator, "validate", lambda *a: pytest.fail("a recorded network was validated"))
    assert len(_truth_study(tmp_path, 'variants={sandwich:[],distill:["solver.distill=true"]}', "front.size=3",
                            "front.files=[unused]").run()) == 18
    assert len(read_jsonl(tmp_path / "truth.jsonl")) == 18
    cfg = OmegaConf.create({"table": str(tmp_path / "truth.md"), "figure": str(tmp_path / "truth.png"),
                            "bootstrap": {"resamples": 200, "confidence": 0.95, "seed": 0}})
    table = write_truth_report(read_jsonl(tmp_path / "truth.jsonl"), cfg)
    assert (tmp_path / "truth.png").read_bytes()[:4] == b"\x89PNG"
    for variant in ("sandwich", "distill"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} | 9 |"))
        assert row.count("[") >= 2  # τ and ρ with their intervals (or n/a when the errors are all tied)
        # and within each source: Study A's 6 networks, the 3 front networks
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} | ") and "(n = 6)" in line)
        assert row.endswith("(n = 3) |")
    # the reference row of the retrained validation error: fake errors that rank exactly as the test errors
    assert "| reference: retrained validation error | 6 | +1.00 [+1.00, +1.00] |" not in table  # 9 networks now
    assert "| reference: retrained validation error | +1.00 [+1.00, +1.00] (n = 6) |" in table


def test_truth_report_computes_tau_rho_and_a_seeded_bootstrap_interval():
    from scipy.stats import kendalltau, spearmanr

    from nas.studies.truth_study import agreement, bootstrap_interval, kendall_tau_b, spearman_rho, truth_table

    rng = np.random.default_rng(1)
    y = rng.normal(size=40)
    x = y + rng.normal(scale=0.8, size=40)
    # the vectorised statistics are scipy's, ties (and a bootstrap's repeated networks) included
    for a, b in ((x, y), (np.round(x), np.round(y, 1)), (x[[0, 0, 1, 2, 2, 3]], y[[0, 0, 1, 2, 2, 3]])):
        assert kendall_tau_b(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
        assert spearman_rho(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(kendall_tau_b([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    stats = agreement(x, y, resamples=500, confidence=0.95, seed=3)
    assert stats["n"] == 40 and stats["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)
    ci = stats["kendall_ci"]
    assert ci["low"] < stats["kendall_tau"] < ci["high"] and ci["resamples"] == 500 and ci["undefined"] == 0
    assert stats["spearman_ci"]["low"] < stats["spearman_rho"] < stats["spearman_ci"]["high"]
    assert agreement(x, y, resamples=500, confidence=0.95, seed=3) == stats  # seeded
    wider = bootstrap_interval(x, y, kendall_tau_b, 500, 0.99, seed=3)
    assert wider["low"] < ci["low"] and wider["high"] > ci["high"]
    # the interval is the quantiles of the statistic over the seeded resamples of the pairs
    idx = np.random.default_rng(3).integers(0, 40, size=(500, 40))
    by_hand = [kendalltau(x[i], y[i]).statistic for i in idx]
    assert [ci["low"], ci["high"]] == pytest.approx(list(np.quantile(by_hand, [0.025, 0.975])))
    # a constant resample has no τ: dropped and counted, not a NaN interval
    tied = bootstrap_interval([0.1, 0.1, 0.2], [1.0, 2.0, 3.0], kendall_tau_b, 200)
    assert tied["undefined"] > 0 and tied["low"] is not None
    table = truth_table({"distill": {**stats, "overrides": ["solver.distill=true"], "supernet_error": [0.1, 0.3],
                                     "supernet_cpu_s": 600.0, "eval_cpu_s": 6.25}}, 0.95, 500)
    assert (f"| distill | 40 | {stats['kendall_tau']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}] |" in table
            and "| 10.0-30.0 % | 10.0 | 6.2 | `solver.distill=true` |" in table)


def test_truth_study_resumes_a_cut_supernet_and_refuses_changed_variants(tmp_path, monkeypatch):
    calls = []

    def fake_run(self, entry, overrides, log_path, what):
        calls.append(overrides)
        run_dir = Path(dict(o.split("=", 1) for o in overrides)["hydra.run.dir"])
        (run_dir / "summary.json").write_text("{}")

    monkeypatch.setattr(SolverStudy, "_run", fake_run)
    study = _truth_study(tmp_path, 'variants={distill:["solver.distill=true"]}')
    last = tmp_path / "work" / "supernet" / "distill" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"cut")
    study.train_variant("distill")
    assert f"ckpt_path={last}" in calls[0] and "solver.distill=true" in calls[0]
    study.train_variant("distill")
    assert len(calls) == 1  # finished: not trained again
    changed = _truth_study(tmp_path, 'variants={distill:["solver.distill=true","solver.num_random=2"]}')
    with pytest.raises(ConfigError, match="variant distill was trained in .* rename the variant"):
        changed.train_variant("distill")


def test_variants_that_differ_only_in_eval_share_one_supernet(tmp_path, monkeypatch):
    calls = []

    def fake_run(self, entry, overrides, log_path, what):
        calls.append(overrides)
        run_dir = Path(dict(o.split("=", 1) for o in overrides)["hydra.run.dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text("{}")

    monkeypatch.setattr(SolverStudy, "_run", fake_run)
    study = _truth_study(tmp_path, "~variants", '+variants={distill:["solver.distill=true"],'
                                   'distill_bn3:["solver.distill=true","eval.bn_batches=3","eval.val_batches=2"]}')
    assert study.train_variant("distill") == tmp_path / "work" / "supernet" / "distill"
    assert study.train_variant("distill_bn3") == tmp_path / "work" / "supernet" / "distill"
    assert len(calls) == 1 and not any(o.startswith("eval.") for o in calls[0])
    assert (study.variant_eval("distill_bn3").bn_batches, study.variant_eval("distill_bn3").val_batches) == (3, 2)
    assert (study.variant_eval("distill").bn_batches, study.variant_eval("distill").val_batches) == (1, None)
    # a variant that trains differently gets its own supernet
    other = _truth_study(tmp_path, "~variants", '+variants={distill:["solver.distill=true"],'
                                                'long:["solver.distill=true","trainer.max_epochs=2"]}')
    assert other.train_variant("long") == tmp_path / "work" / "supernet" / "long" and len(calls) == 2


def _pareto(path: Path, members: list[tuple[list[str], float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "spnas-pareto", "version": 1, "devices": {"macs_proxy": {"members": [
        {"key": " ".join(keys), "objectives": {"error": error, "latency_ms": 0.1}} for keys, error in members]}}}))
    return path


def test_front_members_are_spread_over_macs_and_retrained_once_each(tmp_path, monkeypatch):
    """The front networks: distinct members of the pareto files not in the source, evenly spread over MACs, kept
    in front.file; each retrained once (Study A's recipe and record format, retrain.hardware's latency); a
    network another live process has claimed is left to it; a re-run retrains nothing."""
    from nas.studies.truth_study import front_members, spread_over
    from tests.conftest import load_space

    assert spread_over([5.0, 1.0, 3.0, 2.0, 4.0], 3) == [1, 2, 0]  # smallest, middle, largest
    assert spread_over([1.0, 1.0, 2.0], 5) == [0, 1, 2] and spread_over([3.0, 1.0, 2.0], 1) == [2]
    truth = _ground_truth(tmp_path / "solvers.jsonl")
    space = load_space("tiny")
    rng = __import__("random").Random(7)
    sampled = {}
    while len(sampled) < 5:
        arch = space.sample(rng)
        if arch.keys not in [t["architecture"] for t in truth]:
            sampled.setdefault(tuple(arch.keys), arch)
    archs = [list(k) for k in sampled]
    a = _pareto(tmp_path / "runs" / "seed0" / "pareto.json", [(archs[0], 0.2), (archs[1], 0.3),
                                                             (truth[0]["architecture"], 0.1)])
    _pareto(tmp_path / "runs" / "seed1" / "pareto.json", [(archs[1], 0.25), *[(k, 0.3) for k in archs[2:]]])
    members = front_members([a, tmp_path / "runs" / "seed1" / "pareto.json"])
    assert len(members) == 6 and members[tuple(archs[1])]["error"] == 0.25
    assert len(members[tuple(archs[1])]["files"]) == 2

    trained = []

    def fake_run(self, entry, overrides, log_path, what):
        assert entry == "train"
        given = dict(o.split("=", 1) for o in overrides)
        trained.append(given)
        run_dir = Path(given["hydra.run.dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_summary.json").write_text(json.dumps(
            {"val_acc": 0.9, "test_acc": 0.88, "parameters": 1234, "measured_latency_ms": 0.07}))

    monkeypatch.setattr(SolverStudy, "_run", fake_run)
    overrides = ["front.size=3", f"front.files=[{tmp_path}/runs/seed*/pareto.json]", "front.only=true"]
    # front/001 (the middle one) is being retrained by another live process: its claim stays
    claimed = tmp_path / "work" / "train" / "front_001.claim"
    claimed.parent.mkdir(parents=True)
    parent = __import__("os").getppid()
    from nas.threads import start_time
    claimed.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": parent,
                                   "start": start_time(parent)}))
    _truth_study(tmp_path, *overrides).run()
    drawn = json.loads((tmp_path / "front.json").read_text())
    assert [n["key"] for n in drawn["networks"]] == ["front/000", "front/001", "front/002"]
    assert drawn["candidates"] == 5  # the member in the source is not a candidate
    macs = [n["macs"] for n in drawn["networks"]]
    assert macs == sorted(macs) and all(n["architecture"] in archs for n in drawn["networks"])
    records = read_jsonl(tmp_path / "front.jsonl")
    assert [r["key"] for r in records] == ["front/000", "front/002"]
    assert all(r["kind"] == "front" and r["format"] == "spnas-study-network" and r["test_acc"] == 0.88
               and r["hardware"] == "cpu_onnx" and r["recipe"] == "fashion_mnist" for r in records)
    assert {t["hardware"] for t in trained} == {"cpu_onnx"} and {t["recipe"] for t in trained} == {"fashion_mnist"}
    assert not (tmp_path / "work" / "train" / "front_000.claim").exists()  # released
    # the claim's owner has gone (a dead process's claim is stale): the next run takes it over, and nothing else
    claimed.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": parent,
                                   "start": -1}))
    _truth_study(tmp_path, *overrides).run()
    assert [r["key"] for r in read_jsonl(tmp_path / "front.jsonl")] == ["front/000", "front/002", "front/001"]
    assert len(trained) == 3
    assert not claimed.exists()  # taken over, then released
    with pytest.raises(ConfigError, match="holds 3 front networks, not front.size=4"):
        _truth_study(tmp_path, "front.size=4", f"front.files=[{tmp_path}/runs/seed*/pareto.json]").run()


def test_a_claim_is_held_until_released_and_a_dead_owner_is_stale(tmp_path):
    import os
    import socket

    from nas.studies.claims import claim, claim_is_stale, release
    from nas.threads import start_time

    path = tmp_path / "job.claim"
    assert claim(path) and claim(path)  # ours, twice
    release(path)
    assert not path.exists()
    parent = os.getppid()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": parent, "start": start_time(parent)}))
    assert not claim_is_stale(path) and not claim(path)  # a live process holds it
    release(path)
    assert path.exists()  # someone else's claim is left alone
    path.write_text(json.dumps({"host": "another-host", "pid": 1, "start": 0}))
    assert not claim(path)  # another machine's claim is never taken over from here
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": parent, "start": -1}))
    assert claim_is_stale(path) and claim(path)  # its process id now belongs to another process: stale
    path.write_text('{"host": "torn')
    assert claim(path)  # a torn claim is stale


@pytest.mark.parametrize("overrides, message", [
    (['+variants.bad=["solver.sampling=uniform","solver.distill=true"]'], "needs solver.sampling=sandwich"),
    (['+variants.bn=["eval.bn_batch=3"]'], "variants.bn: ['eval.bn_batch=3'] does not fit eval"),
    (['+variants.bn=["eval.bn_batches=-1"]'], "variants.bn: eval.bn_batches must be an integer >= 0"),
    (["front.size=2", "front.files=[]"], "front.size > 0 needs front.files"),
    (["front.size=2", "front.files=[nowhere/*.json]"], "nowhere/*.json matches no file"),
    (['+variants.single=["solver=single_path"]'], "not a weight-sharing supernet"),
    (["~variants", "+variants={a.b:[]}"], "variant name 'a.b'"),
    (["~variants", "+variants={}"], "variants must map a name"),
    (["bootstrap.resamples=10"], "bootstrap.resamples must be an integer >= 100"),
    (["eval.via=nope"], "eval.via must be"),
])
def test_bad_truth_study_settings_fail_before_any_training(tmp_path, monkeypatch, overrides, message):
    _ground_truth(tmp_path / "solvers.jsonl")
    monkeypatch.setattr(SolverStudy, "_run", lambda *a: pytest.fail("trained despite a bad setting"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        _truth_study(tmp_path, *overrides).run()
    assert not (tmp_path / "truth.jsonl").exists()
