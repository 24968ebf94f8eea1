"""Each objective's equation (thesis Eq 6.2, MONAS Eq 1-3, PFP-NAS Alg. 1) and its bad inputs."""

from __future__ import annotations

import math

import pytest

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.search.objectives import (
    OBJECTIVES,
    Measurements,
    MonasAccuracy,
    MonasBudget,
    MonasMixed,
    PfpScore,
    TargetRuntime,
    build_objective,
)
from tests.test_entry import run


def test_eq_6_2_keeps_accuracy_under_the_target_and_scales_it_over():
    objective = TargetRuntime(target_ms=2.0)
    assert objective(Measurements(0.9, latency_ms=1.5)) == 0.9
    assert objective(Measurements(0.9, latency_ms=2.0)) == 0.9
    assert math.isclose(objective(Measurements(0.9, latency_ms=4.0)), 0.45)  # (R / R_T)^-1 = 1/2


def test_monas_eq1_weighs_accuracy_against_energy_from_latency_times_device_power():
    objective = MonasMixed(alpha=0.75, energy_unit_mj=10.0, device_power_w=5.0)
    # energy = 4 ms x 5 W = 20 mJ = 2 units
    assert math.isclose(objective.evaluate(0.8, latency_ms=4.0), 0.75 * 0.8 - 0.25 * 2.0)
    # a measured energy takes precedence over latency x device power
    assert math.isclose(objective(Measurements(0.8, latency_ms=4.0, energy_mj=10.0, device_power_w=5.0)),
                        0.75 * 0.8 - 0.25 * 1.0)
    assert MonasMixed(alpha=1.0, device_power_w=5.0).evaluate(0.7, latency_ms=100.0) == 0.7  # NAS (Zoph)
    assert math.isclose(MonasMixed(alpha=0.0, device_power_w=1.0).evaluate(0.7, latency_ms=3.0), -3.0)


def test_monas_eq2_is_accuracy_inside_the_budget_and_zero_outside():
    power = MonasBudget(budget=10.0, cost="power_w")
    assert power(Measurements(0.9, power_w=10.0)) == 0.9
    assert power(Measurements(0.9, power_w=10.01)) == 0.0
    latency = MonasBudget(budget=1.0, cost="latency_ms")
    assert latency(Measurements(0.6, latency_ms=0.5)) == 0.6 and latency(Measurements(0.99, latency_ms=1.5)) == 0.0


def test_monas_eq3_rewards_low_normalised_energy_only_above_the_accuracy_threshold():
    objective = MonasAccuracy(threshold=0.9, energy_min_mj=10.0, energy_max_mj=30.0)
    assert math.isclose(objective(Measurements(0.95, energy_mj=15.0)), 1 - 0.25)
    assert objective(Measurements(0.9, energy_mj=10.0)) == 1.0          # at the threshold: feasible
    assert objective(Measurements(0.95, energy_mj=50.0)) == 0.0         # Energy* clipped to 1
    assert objective(Measurements(0.89, energy_mj=10.0)) == 0.0         # below the threshold: zero reward


def test_pfp_score_jumps_down_by_the_penalty_at_thres():
    objective = PfpScore(thres=2.0, penalty=0.5)
    assert objective(Measurements(0.8, latency_ms=2.0)) == 0.8          # at THRES: plain accuracy
    just_over = objective(Measurements(0.8, latency_ms=2.0 + 1e-9))
    assert math.isclose(just_over, 0.8 - 0.5, abs_tol=1e-8)             # the jump: at least PENALTY
    assert math.isclose(objective(Measurements(0.8, latency_ms=4.0)), 0.8 - 2 * 0.5)
    assert objective(Measurements(0.8, latency_ms=1.0)) == 0.8


def test_every_objective_has_a_config_and_builds_from_it():
    import yaml

    for name in OBJECTIVES:
        node = yaml.safe_load((CONFIG_DIR / "objective" / f"{name}.yaml").read_text())
        assert node["name"] == name
    assert build_objective({"name": "pfp", "thres": 1.0, "penalty": 2}).penalty == 2.0
    assert build_objective(None, target_ms=3.0) == TargetRuntime(3.0)
    assert build_objective(None).name == "accuracy"


@pytest.mark.parametrize("cfg,match", [
    ({"name": "monas_mixed", "alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
    ({"name": "monas_mixed", "alpha": -0.1}, r"alpha must lie in \[0, 1\]"),
    ({"name": "pfp", "thres": 0.0}, "THRES"),
    ({"name": "pfp", "thres": -1.0}, "THRES"),
    ({"name": "pfp", "thres": "???"}, "thres must be a finite number"),
    ({"name": "monas_accuracy", "energy_max_mj": 1.0, "energy_min_mj": 2.0}, "energy_min_mj < energy_max_mj"),
    ({"name": "monas_budget", "budget": 1.0, "cost": "flops"}, "unknown cost"),
    ({"name": "nope"}, "unknown objective"),
    ({"name": "pfp", "thres": 1.0, "treshold": 2}, "unknown setting"),
])
def test_bad_settings_are_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_objective(cfg)


def test_energy_or_power_without_a_measurement_or_device_power_is_refused():
    with pytest.raises(ConfigError, match="device_power_w"):
        MonasMixed(alpha=0.5).evaluate(0.9, latency_ms=1.0)
    with pytest.raises(ConfigError, match="NVML on a CUDA GPU"):
        MonasBudget(budget=5.0).evaluate(0.9, latency_ms=1.0)


@pytest.mark.parametrize("overrides,message", [
    (["objective=monas_mixed", "objective.alpha=1.5"], "error: objective monas_mixed: alpha must lie in [0, 1]"),
    (["objective=pfp", "objective.thres=0"], "error: objective pfp: THRES (thres) must be > 0"),
])
def test_search_refuses_bad_objective_settings_with_one_line(tmp_path, overrides, message):
    proc = run("search.py", *overrides, "progress=false", f"hydra.run.dir={tmp_path}/run",
               f"paths.cache_dir={tmp_path}/cache")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # refused before any profiling
