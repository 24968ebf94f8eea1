"""The drift check of a LUT (nas.cost.drift): reference networks chosen, their ratios, the rescaled range."""

from __future__ import annotations

import dataclasses

import pytest

from nas.cost.backends import MacsProxy
from nas.cost.drift import (
    calibration_error_band,
    drift_fields,
    estimate_drift,
    measure_network,
    reference_networks,
)
from nas.cost.lut import LatencyEntry
from nas.cost.profiler import profile_space
from nas.cost.signatures import OpSpec
from nas.space.networks import build_child


@pytest.fixture
def calibrated_lut(micro_space):
    return profile_space(micro_space, MacsProxy(overhead_ms=0.05, calibration_networks=8), 1, 10, progress=False)


def test_references_span_the_calibration_networks_and_are_the_luts(micro_space, calibrated_lut):
    refs, why = reference_networks(micro_space, calibrated_lut, 1, 10, count=4)
    assert why == "" and len(refs) == 4
    stored = calibrated_lut.meta["calibration"]["measured_ms"]
    times = sorted(r.lut_ms for r in refs.values())
    assert times[0] == min(stored) and times[-1] == max(stored)  # the fastest and the slowest are references
    for key, ref in refs.items():
        assert key == ref.op.key == f"reference_{ref.name}"
    # MacsProxy is deterministic: each reference measured again costs what the LUT stored (to its rounding)
    backend = MacsProxy(overhead_ms=0.05)
    for ref in refs.values():
        assert backend.measure(ref.op.build(), ref.op.input_shape).ms == pytest.approx(ref.lut_ms, abs=1e-6)
    all_refs, _ = reference_networks(micro_space, calibrated_lut, 1, 10, count=50)
    assert len(all_refs) == 8  # never more than the LUT has


def test_a_lut_without_its_networks_yields_no_references_and_says_why(micro_space, calibrated_lut):
    none, why = reference_networks(micro_space, calibrated_lut, 1, 10, count=0)
    assert none == {} and "off" in why
    bare = dataclasses.replace(calibrated_lut, meta={})
    none, why = reference_networks(micro_space, bare, 1, 10)
    assert none == {} and "stores no calibration networks" in why
    # an entry changed since the fit: the stored sums no longer match, so these are not the LUT's networks
    key = next(iter(calibrated_lut.entries))
    changed = dataclasses.replace(calibrated_lut, entries={**calibrated_lut.entries, key: LatencyEntry(ms=9.0)})
    none, why = reference_networks(micro_space, changed, 1, 10)
    assert none == {} and "not this space's" in why


def test_drift_factor_range_and_rescaled_prediction(micro_space, calibrated_lut):
    refs, _ = reference_networks(micro_space, calibrated_lut, 1, 10, count=4)
    drift = estimate_drift(refs, {k: 1.1 * r.lut_ms for k, r in refs.items()}, error_band=0.02)
    assert drift.factor == pytest.approx(1.1) and drift.low == pytest.approx(1.1) and drift.high == pytest.approx(1.1)
    rescaled, (low, high) = drift.rescale(2.0)
    assert rescaled == pytest.approx(2.2) and low == pytest.approx(2.2 * 0.98) and high == pytest.approx(2.2 * 1.02)
    keys = list(refs)
    factors = dict(zip(keys, (0.9, 1.0, 1.2, 1.5)))
    drift = estimate_drift(refs, {k: factors[k] * refs[k].lut_ms for k in keys})
    assert drift.factor == pytest.approx(1.1) and (drift.low, drift.high) == pytest.approx((0.9, 1.5))
    fields = drift_fields(drift, predicted_ms=1.0, measured_ms=1.6)
    assert fields["drift_predicted_ms"] == pytest.approx(1.1) and fields["drift_range_covers"] is False
    assert fields["drift_error_pct"] == pytest.approx(100 * (1.1 - 1.6) / 1.6)
    assert drift_fields(None, 1.0, 1.0) == {"drift": None}


def test_error_band_is_the_calibrations_error_on_its_networks(micro_space, calibrated_lut):
    band = calibration_error_band(calibrated_lut)
    assert 0.0 <= band < 0.5
    assert calibration_error_band(dataclasses.replace(calibrated_lut, meta={})) == 0.0
    # a calibration that prices every network 10 % high has a band of 10 % (every relative error is 0.1)
    record = calibrated_lut.meta["calibration"]
    exact = {**record, "measured_ms": [v / 1.1 for v in record["measured_ms"]]}
    off = dataclasses.replace(calibrated_lut, meta={**calibrated_lut.meta, "calibration": exact})
    errors_before = calibration_error_band(calibrated_lut, quantile=1.0)
    assert calibration_error_band(off, quantile=0.0) >= 0.1 - 1.1 * errors_before - 1e-9


def test_measure_network_measures_references_in_the_same_rounds(micro_space, calibrated_lut):
    arch = micro_space.largest()
    net = OpSpec("network", (1, micro_space.resolution, micro_space.resolution),
                 lambda: build_child(micro_space, arch, 1, 10), "largest")
    entry, drift, why = measure_network(net, micro_space, calibrated_lut, MacsProxy(overhead_ms=0.05), 1, 10,
                                        references=3)
    assert why == "" and entry.ms > 0 and len(drift.ratios) == 3 and drift.factor == pytest.approx(1.0, rel=1e-3)
    # twice as slow a machine: the references say so
    entry2, drift2, _ = measure_network(net, micro_space, calibrated_lut, MacsProxy(overhead_ms=0.1,
                                                                                     ms_per_mmac=0.02), 1, 10, 3)
    assert entry2.ms == pytest.approx(2 * entry.ms, rel=1e-3) and drift2.factor == pytest.approx(2.0, rel=1e-3)


def test_validation_of_a_given_lut_measures_its_drift(micro_space, calibrated_lut):
    from nas.cost.validation import validate_runtime_model

    # the same LUT on a machine twice as slow: every network's error is about +100 % / -50 %, the drift explains it
    slower = MacsProxy(overhead_ms=0.1, ms_per_mmac=0.02)
    result = validate_runtime_model(micro_space, slower, 1, 10, n=6, seed=3, lut=calibrated_lut, progress=False,
                                    drift_references=4)
    assert result["mode"] == "lut" and result["drift"]["references"] == 4
    assert result["drift"]["factor"] == pytest.approx(2.0, rel=1e-3)
    assert result["calibrated"]["mean_signed_error_pct"] < -40
    assert result["calibrated_drift"]["mape_pct"] < result["calibrated"]["mape_pct"] / 5
    off = validate_runtime_model(micro_space, slower, 1, 10, n=6, seed=3, lut=calibrated_lut, progress=False,
                                 drift_references=0)
    assert off["drift"] is None and off["calibrated_drift"] is None and "off" in off["drift_note"]
