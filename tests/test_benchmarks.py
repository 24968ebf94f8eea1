"""The benchmarks of ``scripts/`` (logic in :mod:`nas.benchmarks`): their command lines, and small runs of those
that fit in a test."""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch

from nas.cost.backends import MacsProxy
from nas.cost.profiler import profile_space
from tests.conftest import ROOT, load_space
from tests.test_subnet_search import fake_checkpoint

BENCHMARKS = ["bench_hyperpower", "bench_latency_drift", "bench_search_step", "bench_solvers", "bench_subnet_search",
              "bench_tactics", "bench_validation", "calibration_ablation", "compare_solvers", "latency_report",
              "supernet_truth"]
MEASUREMENTS = ROOT / "docs" / "measurements"


def run_script(name: str, args: list[str], monkeypatch) -> int:
    """``python scripts/<name>.py <args>`` in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    try:
        runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name="__main__")
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_scripts_print_their_help_and_refuse_a_bad_flag_in_one_line(name, monkeypatch, capsys):
    assert run_script(name, ["--help"], monkeypatch) == 0
    assert capsys.readouterr().out.startswith(f"usage: {name}.py")
    required = {"bench_subnet_search": ["--supernet", "x"], "bench_tactics": ["--supernet", "x"],
                "supernet_truth": ["--checkpoint", "a=x"], "calibration_ablation": ["x"], "latency_report": ["x"]}
    assert run_script(name, [*required.get(name, []), "--no-such-flag"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unrecognized arguments: --no-such-flag"), err
    assert err[0].endswith(f"(see {name}.py --help)")


def test_every_benchmark_script_is_listed_here():
    thin_aliases = {"evaluate_predictor", "export_ops", "gpu_check", "latency", "popdb", "profile_lut", "study_anchors",
                    "study_solvers", "study_truth", "validate_runtime_model"}
    assert sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem not in thin_aliases) == BENCHMARKS


def test_latency_report_and_calibration_ablation_rebuild_the_docs_tables(monkeypatch, capsys):
    from nas.benchmarks.calibration_models import ablate_runs
    from nas.benchmarks.latency_tables import report

    files = sorted(MEASUREMENTS.glob("validation_*.json"))
    text = report(files)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert sum(line.endswith((" yes |", " yes (floor) |", " no |")) for line in rows) == len(files)
    assert "| space | precision | seed | network |" in text

    # the documented glob also catches a run whose LUT was not kept: it is skipped and named, the others scored
    scores = ablate_runs([str(f) for f in files])
    paired = [f for f in files if (f.parent / f.name.replace("validation", "lut", 1)).is_file()]
    assert sorted(scores) == [str(f) for f in paired] and len(paired) < len(files)
    assert all(0 <= s["mape_pct"] <= s["max_ape_pct"] for run in scores.values() for s in run.values())
    assert "skipped" in capsys.readouterr().err
    unpaired = next(f for f in files if f not in paired)
    assert run_script("calibration_ablation", [str(unpaired)], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert run_script("latency_report", [str(MEASUREMENTS / "no_such.json")], monkeypatch) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_latency_drift_benchmark_on_a_deterministic_backend(tmp_path, capsys):
    """MacsProxy times never move: the temporal floor and the protocol effect it reports must be exactly none."""
    from nas.benchmarks.latency_drift import main

    doc = main(["--space", "tiny", "--hardware", "macs_proxy", "--repetitions", "2", "--interval", "0",
                "--protocol", "smallest", "--alternations", "1", "--json", str(tmp_path / "drift.json"),
                "+hardware.backend.calibration_networks=4"])
    runs = doc["temporal"]["runs"]
    assert len(runs) == 2 and doc["temporal"]["networks"] == 4 and len(runs[0]["network_ms"]) == 4
    for part in ("networks", "ops"):
        assert runs[1][part]["median_ratio"] == pytest.approx(1.0) and runs[1][part]["median_abs_dev_pct"] == 0
    (pair,) = doc["protocol"]["alternations"]
    assert pair["short_op_sum_ms"] == pytest.approx(pair["full_op_sum_ms"])
    assert pair["op_ratio"]["median_ratio"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "drift.json").read_text())["format"] == "spnas-latency-drift"
    assert "repetition 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--repetitions", "1"])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: --repetitions must be 0")


def test_latency_report_scores_int8_by_its_target_and_compares_precisions():
    from nas.benchmarks.latency_tables import meets, precision_comparisons

    def run(prec, measured, mape=1.0, max_ape=3.0, off=0, floor=1.0, archs=None):
        """A validation result; ``off`` of its networks predicted 20 % high (outside +-10 %)."""
        rows = [{"architecture": a, "measured_ms": m, "predicted_ms": m * (1.2 if i < off else 1.0)}
                for i, (a, m) in enumerate(zip(archs or [["x", str(i)] for i in range(4)], measured))]
        return {"space": {"name": "tiny"}, "seed": 0, "n": len(rows), "rows": rows,
                "hardware": {"precision": prec} if prec == "int8" else {},
                "calibrated": {"mape_pct": mape, "max_ape_pct": max_ape},
                "repeatability": {"mape_pct": floor}}

    assert meets(run("int8", [1] * 4)) == "yes"
    assert meets(run("int8", [1] * 4, mape=2.0, floor=2.0)) == "yes (floor)"  # <= 1.25 x the floor
    assert meets(run("int8", [1] * 4, off=1)) == "no"                          # 75 % < 99 % within +-10 %
    assert meets(run("int8", [1] * 4, max_ape=5.5)) == "no"
    assert meets(run(None, [1] * 4, mape=2.0, max_ape=5.5, floor=2.0)) == "yes (floor)"  # fp32's own rule
    fp32, int8 = run(None, [1.0, 2.0, 3.0, 4.0]), run("int8", [0.5, 1.5, 1.0, 2.5])
    (c,) = precision_comparisons([fp32, int8])
    assert c["kendall_tau"] == pytest.approx(2 / 3) and c["ratio_median"] == pytest.approx((0.5 + 0.625) / 2)
    assert c["int8_faster_pct"] == 100.0 and (c["ratio_min"], c["ratio_max"]) == pytest.approx((1 / 3, 0.75))
    other = run("int8", [0.5, 1.5, 1.0, 2.5], archs=[["y", str(i)] for i in range(4)])
    assert precision_comparisons([fp32, other]) == []  # not the same networks: nothing compared


def test_step_benchmarks_measure_every_variant_of_a_config_space(capsys):
    from nas.benchmarks import solver_step_cost, supernet_step_cost

    small = ["--batch", "2", "--steps", "1", "--rounds", "1", "--threads", "1"]
    args = supernet_step_cost.parser().parse_args(small)
    variants = supernet_step_cost.run(args)
    assert list(variants) == ["single-path supernet", "largest child", "smallest child"]
    assert all(v["step_ms"] > 0 and v["activation_bytes"] > 0 and v["state_bytes"] > 0 for v in variants.values())
    solvers = solver_step_cost.run(solver_step_cost.parser().parse_args(small))
    assert list(solvers) == ["single_path", "single_path_softmax", "multi_path", "proxyless"]
    assert solvers["multi_path"]["state_bytes"] > solvers["single_path"]["state_bytes"]
    assert "x single" in capsys.readouterr().out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stop:
            supernet_step_cost.main([*small, "--device", "cuda"])
        assert stop.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        supernet_step_cost.main([*small, "--space", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "tiny" in err[0]  # names the spaces there are


def test_solver_comparison_reports_recorded_runs_without_searching_again(tmp_path, monkeypatch, capsys):
    from nas.benchmarks import solver_comparison

    tiny = load_space("tiny")
    for solver, seed, acc in (("single_path", 0, 0.9), ("single_path", 1, 0.8), ("random", 0, None)):
        record = {"solver": solver, "seed": seed, "architecture": tiny.smallest().keys, "predicted_latency_ms": 0.1,
                  "measured_latency_ms": 0.12, "search_val_acc": 0.5, "search_wall_s": 10.0, "search_process_s": 12.0,
                  "search_peak_rss_mib": 900.0, "retrain_epochs": 2, "retrained_val_acc": acc,
                  "retrained_test_acc": acc, "parameters": 1000}
        path = tmp_path / "runs" / solver / f"seed{seed}" / "record.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
    searched = []

    def failing_search(entry, overrides, log_path):  # only the run without a record is searched; it fails
        searched.append((entry, log_path.parent.relative_to(tmp_path)))
        return 1, None

    monkeypatch.setattr(solver_comparison, "run_entry", failing_search)
    monkeypatch.setattr(solver_comparison, "retrain_from_scratch", lambda *a, **k: pytest.fail("retrained again"))
    records = solver_comparison.main(["--solvers", "single_path", "random", "--seeds", "0", "1", "--retrain-epochs",
                                      "2", "--hardware", "macs_proxy", "--target-ms", "0.15", "--out", str(tmp_path)])
    assert searched == [("search", Path("runs/random/seed1"))]
    assert "random seed 1: search failed (exit 1)" in capsys.readouterr().out
    assert [(r["solver"], r["seed"]) for r in records] == [("single_path", 0), ("random", 0), ("single_path", 1)]
    text = (tmp_path / "comparison.md").read_text()
    assert "| single_path | 2 | 0.85 ± 0.071 |" in text and "| random | 1 | n/a | n/a |" in text
    assert (tmp_path / "acc_vs_latency.png").stat().st_size > 0
    assert json.loads((tmp_path / "runs.json").read_text())["target_ms"] == 0.15


def test_subnet_benchmark_and_truth_check_on_a_supernet_checkpoint(tmp_path, capsys):
    from nas.benchmarks import subnet_search_algorithms, weight_sharing_truth

    space = load_space("tiny")
    ckpt = fake_checkpoint(tmp_path / "supernet.ckpt", space)
    other = profile_space(space, MacsProxy(ms_per_mmac=0.02, overhead_ms=0.001), 1, 10, progress=False)
    other.save(tmp_path / "lut_b.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the second device's LUT was "measured" on other hardware
        report = subnet_search_algorithms.main([
            "--supernet", str(ckpt), "--seeds", "0", "--budget", "20", "--population", "10", "--no-warm",
            "--device-a", "macs_proxy", "--device-b", "cpu_torch", "--lut-b", str(tmp_path / "lut_b.json"),
            "--bn-batches", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sub"),
            "--docs", str(tmp_path / "docs")])
    assert sorted(report["runs"]) == ["nsga2/macs_proxy/seed0", "random/macs_proxy/seed0"]
    assert all(r["validations"] == 20 for r in report["runs"].values())
    assert report["supernet_evaluations"] <= 40  # the runs share one validation store
    assert json.loads((tmp_path / "sub" / "bench.json").read_text())["runs"] == report["runs"]
    assert (tmp_path / "docs" / "subnet_search_hv.png").is_file()
    assert (tmp_path / "docs" / "subnet_search_front.png").is_file()

    truth = weight_sharing_truth.main([
        "--checkpoint", f"fake={ckpt}", "--pareto", str(tmp_path / "sub" / "bench.json"), "--n-front", "1",
        "--n-random", "1", "--epochs", "1", "--bn-batches", "1", "--out", str(tmp_path / "truth"),
        "--docs", str(tmp_path / "docs")])
    assert [a["kind"] for a in truth["architectures"]] == ["front", "random"]
    assert all(0 <= a["retrained_error"] <= 1 for a in truth["architectures"])
    assert truth["checkpoints"]["fake"]["solver"] == "supernet"
    assert json.loads((tmp_path / "truth" / "truth.json").read_text())["space"] == "tiny"
    assert (tmp_path / "docs" / "supernet_truth.png").is_file()
    with pytest.raises(SystemExit) as stop:
        weight_sharing_truth.main(["--checkpoint", str(ckpt)])
    assert stop.value.code == 2 and "expected label=path" in capsys.readouterr().err


def test_tactics_benchmark_compares_predictors_random_search_and_keeps_every_runs_files(tmp_path, capsys):
    from nas.benchmarks import subnet_tactics

    ckpt = fake_checkpoint(tmp_path / "supernet.ckpt", load_space("tiny"), seed=1)
    common = ["--supernet", str(ckpt), "--val-batches", "1", "--cache-dir", str(tmp_path / "cache")]
    doc = subnet_tactics.main([
        *common, "--seeds", "0", "1", "--reference-seeds", "0", "--reference-budget", "100", "--compare-at", "50",
        "--random-budget", "50", "--concurrent-iterations", "2", "--predictor", "ridge", "constant", "--no-full",
        "--out", str(tmp_path / "bench"), "--runs-dir", str(tmp_path / "runs")])
    runs = doc["runs"]
    assert sorted(runs) == sorted(f"{name}/seed{s}" for s in (0, 1) for name in
                                  ("validation", "random", "concurrent-ridge", "concurrent-constant"))
    # only the reference seed's validation run goes to the reference budget; the rest stop at --compare-at
    assert [runs[f"validation/seed{s}"]["validations"] for s in (0, 1)] == [100, 50]
    assert all(runs[f"random/seed{s}"]["validations"] == 50 for s in (0, 1))
    assert all(r["validations"] == 40 for k, r in runs.items() if k.startswith("concurrent"))
    assert doc["validation_samples"] <= 1000  # one validation batch of the digits' split
    for label, run in runs.items():
        folder = tmp_path / "runs" / label
        pareto = json.loads((folder / "pareto.json").read_text())
        assert pareto["format"] == "spnas-pareto" and pareto["seed"] == run["seed"]
        assert pareto["devices"]["macs_proxy"]["validations"] == run["validations"]
        assert pareto["devices"]["macs_proxy"]["hypervolume"] == pytest.approx(run["curve"][-1][1])
        assert (folder / "hv.csv").read_text().splitlines()[-1].split(",")[2] == str(run["validations"])
    row = doc["summary"]["per_seed"][0]
    assert row["random_at_random_budget"] == pytest.approx(runs["random/seed0"]["curve"][-1][1])
    assert row["concurrent_constant_over_validation_pct"] == pytest.approx(
        100 * row["concurrent_constant_at_100"] / row["validation_at_compare"])
    assert doc["summary"]["reference_hypervolume"] == pytest.approx(runs["validation/seed0"]["curve"][-1][1])
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["runs"] == json.loads(json.dumps(runs))
    capsys.readouterr()
    for bad, message in ((["--reference-seeds", "5"], "--reference-seeds [5] names none of --seeds [0]"),
                         (["--predictor", "ridge", "ridge"], "lists a predictor twice"),
                         (["--val-batches", "0"], "--val-batches must be >= 1")):
        with pytest.raises(SystemExit) as stop:
            subnet_tactics.main([*common, "--seeds", "0", *bad, "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "bad").exists()  # refused before the supernet was loaded


def test_validation_throughput_measures_validate_against_its_forward_passes(tmp_path, capsys):
    from nas.benchmarks import validation_throughput

    out = tmp_path / "throughput.json"
    doc = validation_throughput.main(["--spaces", "tiny", "--archs", "1", "--repeats", "1", "--bn-batches", "1",
                                      "--engine-budget", "50", "--json", str(out)])
    tiny = doc["spaces"]["tiny"]
    p = tiny["per_validation"]
    assert set(p) == {"limit", "validate", "rebuild", "engine"}
    assert all(v["cpu_s"] > 0 and v["wall_s"] > 0 for v in p.values())
    assert tiny["ratio_to_limit"]["cpu_s"] == pytest.approx(
        p["limit"]["cpu_s"] / (p["validate"]["cpu_s"] + p["engine"]["cpu_s"]))
    assert tiny["bn_batches"] == 1 and tiny["val_samples"] > 0 and doc["conditions"]["threads"] == 1
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert "ratio" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        validation_throughput.main(["--archs", "0"])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: --archs")


def test_hyperpower_benchmark_counts_evaluations_to_within_the_given_points_of_the_best():
    from nas.benchmarks.hyperpower_vs_baselines import markdown, summary_rows

    def run(method: str, curve: list[float | None]) -> dict:
        return {"method": method, "seed": 0, "num_trials": len(curve), "num_trained": len(curve), "num_pruned": 0,
                "violating_proposals": 0, "violating_trained": 0, "model_errors": {}, "wall_time_s": 1.0,
                "best": {"val_error": curve[-1]}, "best_error_curve": curve}

    runs = [run("hyperpower", [None, 0.30, 0.204, 0.204, 0.20]), run("vanilla_bo", [0.40, 0.26, 0.22, 0.216, 0.21])]
    rows = {r["method"]: r for r in summary_rows(runs, [0], within=0.5)}
    assert rows["hyperpower"]["evals_to_within_own_best"] == 3        # 0.204 <= 0.20 + 0.005
    assert rows["vanilla_bo"]["evals_to_within_own_best"] == 5        # 0.216 > 0.21 + 0.005
    assert rows["vanilla_bo"]["evals_to_within_best_of_all_methods"] is None  # never within 0.5 pt of 0.20
    wide = {r["method"]: r for r in summary_rows(runs, [0], within=1.0)}
    assert wide["vanilla_bo"]["evals_to_within_best_of_all_methods"] == 5
    text = markdown({"summary": list(rows.values()), "within_points": 0.5})
    assert "evals to own best + 0.5 pt" in text and "| hyperpower | 0 | 20.00 % | 3 |" in text
