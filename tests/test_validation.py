"""Runtime-model validation: metrics, the overhead calibration, and the validation script end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import kendalltau

from nas.cost.backends import MacsProxy, count_macs
from nas.cost.profiler import fit_network_calibration
from nas.cost.signatures import calibration_networks, network_op_keys
from nas.cost.validation import (
    repeatability,
    runtime_model_metrics,
    sample_architectures,
    validate_runtime_model,
)
from nas.errors import ConfigError
from nas.space.networks import build_child
from tests.conftest import ROOT, proxy_lut


def test_metrics_against_hand_computed_values():
    m = runtime_model_metrics(np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 2.0, 3.0, 4.0]))
    assert m["mape_pct"] == pytest.approx(100 * (0.5 + 0 + 0 + 0.25) / 4)
    assert m["max_ape_pct"] == pytest.approx(50.0)
    assert m["rmse_ms"] == pytest.approx(np.sqrt((1 + 0 + 0 + 1) / 4))
    assert m["mean_signed_error_pct"] == pytest.approx(100 * (-0.5 + 0.25) / 4)
    assert runtime_model_metrics(np.arange(1.0, 6.0), np.arange(1.0, 6.0) * 3)["kendall_tau"] == pytest.approx(1.0)
    assert runtime_model_metrics(np.arange(1.0, 6.0), np.arange(5.0, 0.0, -1))["kendall_tau"] == pytest.approx(-1.0)


def test_repeatability_compares_sessions_when_there_are_several():
    # session 1 of every network runs 10 % slower than session 0: only a split by session can see it
    fast = {f"n{i}": [[1.0 + i] * 8, [1.1 * (1.0 + i)] * 8] for i in range(4)}
    by_session = repeatability(fast, list(fast), "median")
    assert by_session["between"] == "sessions"
    assert by_session["mape_pct"] == pytest.approx(100 * 0.1 / 1.1)
    # one session: even against odd runs
    one = {name: [[t for s in sessions for t in s]] for name, sessions in fast.items()}
    by_runs = repeatability({n: [[1.0, 1.2] * 4] for n in one}, list(one), "median")
    assert by_runs["between"] == "runs" and by_runs["mape_pct"] == pytest.approx(100 * 0.2 / 1.2)


def test_samples_are_distinct_and_seeded(micro_space):
    first = sample_architectures(micro_space, 12, seed=3)
    assert len({tuple(a.keys) for a in first}) == 12
    assert [a.keys for a in first] == [a.keys for a in sample_architectures(micro_space, 12, seed=3)]
    with pytest.raises(ConfigError, match="number of networks must be an integer >= 2"):
        sample_architectures(micro_space, 1, seed=0)


def coefficients(fit: dict) -> tuple[float, float, float, float]:
    return fit["scale"], fit["per_op_ms"], fit["per_se_op_ms"], fit["overhead_ms"]


def test_network_calibration_fit():
    sums, kept, se = [2.0, 3.0, 4.0, 6.0, 5.0, 2.5, 3.5], [3, 7, 5, 9, 4, 8, 6], [0, 5, 1, 3, 4, 2, 6]
    # the full model: scale, a cost per kept layer, one per SE layer and an overhead are recovered exactly
    exact = [1.1 * p - 0.02 * k + 0.01 * s + 0.3 for p, k, s in zip(sums, kept, se)]
    assert coefficients(fit_network_calibration(sums, exact, kept, se)) == pytest.approx((1.1, -0.02, 0.01, 0.3))
    # without SE counts: scale, per-op and overhead
    no_se = [1.1 * p - 0.02 * k + 0.3 for p, k in zip(sums, kept)]
    assert coefficients(fit_network_calibration(sums, no_se, kept)) == pytest.approx((1.1, -0.02, 0.0, 0.3))
    # without layer counts (or with too few networks for more coefficients): scale and overhead
    assert coefficients(fit_network_calibration(sums[:4], [1.1 * p - 0.2 for p in sums[:4]])) == \
        pytest.approx((1.1, 0.0, 0.0, -0.2))
    # too narrow a range to separate scale from overhead: a constant offset (median residual)
    assert coefficients(fit_network_calibration([2.0, 2.1, 2.05], [2.5, 2.5, 2.9])) == \
        (1.0, 0.0, 0.0, pytest.approx(0.5))
    assert coefficients(fit_network_calibration([], [])) == (1.0, 0.0, 0.0, 0.0)
    # an implausible slope (noise on few networks) falls back to the offset as well
    assert fit_network_calibration([1.0, 2.0, 3.0], [9.0, 1.0, 0.5])["scale"] == 1.0


def synthetic_networks(n: int, stage_scales: list[float], seed: int = 0):
    """``n`` networks: per-stage LUT sums, layer counts and an exact per-stage-model measurement."""
    rng = np.random.default_rng(seed)
    stages = rng.uniform(0.2, 2.0, size=(n, len(stage_scales)))
    kept = rng.integers(4, 22, size=n).astype(float)
    se = np.floor(kept * rng.uniform(0, 1, size=n))
    measured = stages @ np.asarray(stage_scales) - 0.01 * kept + 0.02 * se + 0.1
    return stages.sum(1).tolist(), measured.tolist(), kept.tolist(), se.tolist(), stages.tolist()


def test_per_stage_calibration_fit_recovers_known_coefficients():
    scales = [1.25, 1.05, 0.9]
    sums, measured, kept, se, stages = synthetic_networks(48, scales)
    fit = fit_network_calibration(sums, measured, kept, se, stages)
    assert fit["stage_scales"] == pytest.approx(scales, rel=1e-6)
    assert (fit["per_op_ms"], fit["per_se_op_ms"], fit["overhead_ms"]) == pytest.approx((-0.01, 0.02, 0.1), abs=1e-6)
    # the summary scale is the op-sum-weighted mean of the stage scales
    assert fit["scale"] == pytest.approx(float(np.sum(np.asarray(stages) * scales) / np.sum(stages)))


def test_per_stage_fit_falls_back_to_one_scale():
    scales = [1.25, 1.05, 0.9]
    # too few networks for 3 stage scales + 3 terms (4 per coefficient: 24): one scale for all stages
    sums, measured, kept, se, stages = synthetic_networks(23, scales)
    fit = fit_network_calibration(sums, measured, kept, se, stages)
    assert fit["stage_scales"] == [] and 0.9 < fit["scale"] < 1.25
    assert fit_network_calibration(*synthetic_networks(24, scales))["stage_scales"] == pytest.approx(scales)
    # one stage only, or no stage sums: the one-scale model
    one = synthetic_networks(48, [1.1])
    assert fit_network_calibration(*one)["stage_scales"] == [] and fit_network_calibration(*one)["scale"] == \
        pytest.approx(1.1)
    assert fit_network_calibration(*synthetic_networks(48, scales)[:4])["stage_scales"] == []
    # an implausible stage scale (outside [0.5, 2]) is rejected in favour of the one-scale model
    implausible = synthetic_networks(48, [2.6, 1.0, 1.0])
    assert fit_network_calibration(*implausible)["stage_scales"] == []
    # a stage whose sum never varies cannot be told from the overhead: rank-deficient, one scale
    sums, measured, kept, se, stages = synthetic_networks(48, scales)
    constant = [[0.5, *row[1:]] for row in stages]
    assert fit_network_calibration(sums, measured, kept, se, constant)["stage_scales"] == []


def test_calibration_networks_span_the_space(tiny_space):
    """Smallest and largest SE-free network, SE-free / SE-only / skip-heavy mixes, then uniformly random ones."""
    from nas.cost.signatures import arch_kept_ops, calibration_architectures

    archs = calibration_architectures(tiny_space, 24)
    assert len({tuple(a.keys) for a in archs}) == 24
    assert archs[0].keys == tiny_space.smallest().keys
    assert all(c.kernel == 5 and c.expansion == 6 and c.se_ratio == 0 for c in archs[1].layers[1:])
    assert tiny_space.largest().keys not in [a.keys for a in archs]
    se_layers = [sum(1 for c in a.layers if not c.is_skip and c.se_ratio > 0) for a in archs]
    kept = [arch_kept_ops(tiny_space, a) for a in archs]
    assert sum(s == 0 for s in se_layers) >= 3 and any(s == k - 1 for s, k in zip(se_layers, kept))  # SE-only
    assert min(kept) == arch_kept_ops(tiny_space, tiny_space.smallest()) and max(kept) == 6 and len(set(kept)) >= 3
    assert [a.keys for a in calibration_architectures(tiny_space, 24)] == [a.keys for a in archs]  # seeded


def test_robust_fit_is_not_tilted_by_one_odd_network():
    sums = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    kept = [2, 5, 3, 8, 6, 4, 9, 7]
    measured = [1.2 * p + 0.01 * k + 0.1 for p, k in zip(sums, kept)]
    measured[3] *= 1.15  # one network 15 % off the model (e.g. noise, or an effect no per-op model sees)
    fit = fit_network_calibration(sums, measured, kept)
    design = np.stack([sums, kept, np.zeros(8), np.ones(8)], 1)
    least_squares = np.linalg.lstsq(design / np.array(measured)[:, None], np.ones(8), rcond=None)[0]
    for coef in (np.array(coefficients(fit)), least_squares):
        others = [i for i in range(8) if i != 3]
        error = np.abs(design[others] @ coef - np.array(measured)[others]) / np.array(measured)[others]
        if coef is least_squares:
            assert error.max() > 0.01  # plain least squares spreads the odd network over the others
        else:
            assert error.max() < 0.005  # the robust fit keeps them within its Huber threshold


def test_calibration_removes_an_over_counted_per_call_cost(micro_space):
    """MacsProxy charges ``overhead`` once per call, so a per-op sum over-counts it (n_ops - 1) times.

    Deterministic: the networks' "measurements" are checked against an independent MAC count, and the LUT's
    calibration is the fit over the calibration networks (smallest, largest, random), not over the validation set.
    """
    backend = MacsProxy(overhead_ms=0.05, calibration_networks=5)
    result = validate_runtime_model(micro_space, backend, 1, 10, n=10, seed=0, progress=False)
    assert result["mode"] == "joint" and result["n"] == 10
    for row, arch in zip(result["rows"], sample_architectures(micro_space, 10, 0)):
        macs = count_macs(build_child(micro_space, arch, 1, 10), (1, 1, 16, 16))
        assert row["measured_ms"] == pytest.approx(0.05 + 0.01 * macs / 1e6)
        assert row["ops"] == len(network_op_keys(micro_space, arch, 1, 10))
        assert row["predicted_plain_ms"] - row["measured_ms"] == pytest.approx((row["ops"] - 1) * 0.05)
    cal_ops, cal_keys = calibration_networks(micro_space, 1, 10, 5)
    sums, measured = [], []
    for name, keys in cal_keys.items():
        sums.append(sum(result["lut"].entries[k].ms for k in keys))
        measured.append(0.05 + 0.01 * count_macs(cal_ops[name].build(), (1, 1, 16, 16)) / 1e6)
    kept = [sum(1 for k in keys if k.startswith("mbconv_")) for keys in cal_keys.values()]
    se = [sum(1 for k in keys if k.startswith("mbconv_") and "_se0_" not in k) for keys in cal_keys.values()]
    sums, measured = [round(v, 6) for v in sums], [round(v, 6) for v in measured]
    assert coefficients(result) == pytest.approx(coefficients(fit_network_calibration(sums, measured, kept, se)))
    assert result["plain_sum"]["mean_signed_error_pct"] > 0
    assert result["calibrated"]["mape_pct"] < result["plain_sum"]["mape_pct"] / 2
    # a given LUT is used as is ("lut" mode): its entries, no calibration
    given = validate_runtime_model(micro_space, backend, 1, 10, n=4, seed=1, lut=proxy_lut(micro_space),
                                   progress=False)
    assert given["mode"] == "lut" and coefficients(given) == (1.0, 0.0, 0.0, 0.0)
    assert given["calibrated"]["mape_pct"] == given["plain_sum"]["mape_pct"]


def run_validate(*overrides):
    env = {**os.environ, "PYTHONWARNINGS": "default", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_runtime_model.py"), "progress=false",
                           "space=tiny", "in_channels=1", "hardware.backend.warmup=1", "hardware.backend.repeats=3",
                           "hardware.backend.calibration_networks=2", "space.candidates.se_ratios=[0]", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_validation_script_writes_figures_and_png(tmp_path):
    proc = run_validate("n=4", "seed=5", f"hydra.run.dir={tmp_path}/joint")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "joint"
    result = json.loads((out / "validation.json").read_text())
    assert result["n"] == 4 and result["seed"] == 5 and len(result["rows"]) == 4
    assert result["hardware"]["statistic"] == "p10" and result["hardware"]["cache_flush_mb"] == 2.0
    for key in ("plain_sum", "calibrated"):
        m = result[key]
        pred = np.array([r["predicted_plain_ms" if key == "plain_sum" else "predicted_ms"] for r in result["rows"]])
        meas = np.array([r["measured_ms"] for r in result["rows"]])
        assert m["mape_pct"] == pytest.approx(100 * np.mean(np.abs(pred - meas) / meas))
        assert m["kendall_tau"] == pytest.approx(kendalltau(pred, meas).statistic)
    # two measurements of the same networks: their difference is measured, never exactly zero
    assert result["repeatability"]["mape_pct"] > 0
    assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MAPE" in proc.stdout and "Kendall tau" in proc.stdout
    # a LUT measured with other settings (statistic) is refused with hardware.strict=true, before measuring
    lut = out / "lut.json"
    proc = run_validate("n=3", f"hardware.lut_path={lut}", "hardware.backend.statistic=median",
                        "hardware.strict=true", f"hydra.run.dir={tmp_path}/strict")
    assert proc.returncode == 2 and "error: " in proc.stderr and "does not match the selected hardware" in proc.stderr
    assert "Traceback" not in proc.stderr
