"""One cost model for every solver: each optimises and reports the same calibrated ``R`` (nas.cost.runtime_model).

The LUT here has a calibration that is not the identity (stage scales != 1 and different per stage, per-op cost
!= 0, overhead != 0), so a solver that priced runtime from the raw LUT sum, from one global scale, or from its
own copy of the calibration, would fail.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import network_op_keys
from nas.supernets.single_path_supernet import SinglePathSupernet
from tests.conftest import make_solver, proxy_lut

# micro space: stem, the fixed stage 0 and stage 1 are the first cost group, stage 2 and the head the second
STAGE_SCALES, PER_OP, PER_SE, OVERHEAD = (1.3, 0.7), -0.004, 0.003, 0.07
SCALE = 1.1  # the LUT's summary scale: unused by predictions when it has stage scales


@pytest.fixture
def calibrated_lut(micro_space):
    lut = proxy_lut(micro_space)
    lut.scale, lut.per_op_ms, lut.per_se_op_ms, lut.overhead_ms = SCALE, PER_OP, PER_SE, OVERHEAD
    lut.stage_scales = list(STAGE_SCALES)
    return lut


def stage_of_key(space, arch) -> list[int]:
    """The stage scale of each key of ``network_op_keys`` for the micro space, written out independently."""
    layers = [0 if spec.stage <= 1 else 1 for spec, c in zip(space.layers, arch.layers) if not c.is_skip]
    return [0, *layers, 1]


def by_hand(space, lut, arch) -> float:
    """``sum_s scale_s * (LUT sum of stage s) + per_op * (MBConv layers kept) + per_se * (those with SE) +
    overhead``, written out independently."""
    keys = network_op_keys(space, arch, 1, 10)
    scaled = sum(STAGE_SCALES[g] * lut.entries[k].ms for k, g in zip(keys, stage_of_key(space, arch)))
    kept = sum(1 for c in arch.layers if not c.is_skip)
    se = sum(1 for c in arch.layers if not c.is_skip and c.se_ratio > 0)
    return scaled + PER_OP * kept + PER_SE * se + OVERHEAD


def architectures(space, n=6):
    rng = random.Random(0)
    return [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(n))]


def test_predict_forward_and_expected_are_one_calibrated_model(micro_space, calibrated_lut):
    model = RuntimeModel(micro_space, calibrated_lut, 1, 10)
    thesis = RuntimeModel(micro_space, calibrated_lut, 1, 10, form="thesis")
    net = SinglePathSupernet(micro_space, 1, 10)
    for arch in architectures(micro_space):
        want = by_hand(micro_space, calibrated_lut, arch)
        assert want != pytest.approx(model.plain_sum(arch), rel=1e-3)  # the calibration is not the identity
        kept = sum(1 for c in arch.layers if not c.is_skip)
        se = sum(1 for c in arch.layers if not c.is_skip and c.se_ratio > 0)
        for scale in (SCALE, *STAGE_SCALES):  # nor one scale for all stages, whichever
            assert abs(want - (scale * model.plain_sum(arch) + PER_OP * kept + PER_SE * se + OVERHEAD)) > 1e-3 * want
        assert model.predict(arch) == pytest.approx(want, rel=1e-9)
        assert float(model(net.fixed_decisions(arch))) == pytest.approx(want, rel=1e-5)
        one_hot = [torch.eye(len(micro_space.layers[i].choices()))[micro_space.layers[i].choices().index(
            arch.layers[i])] for i in model.searchable]
        assert float(model.expected(one_hot)) == pytest.approx(want, rel=1e-5)
        # the thesis' form approximates the per-layer sums, but calibrates them the same way (stage by stage)
        plain_thesis = RuntimeModel(micro_space, proxy_lut(micro_space), 1, 10, form="thesis")
        decisions = net.fixed_decisions(arch)
        raw = [float(plain_thesis.group_constant_ms[0]), float(plain_thesis.group_constant_ms[1])]
        for i in plain_thesis.searchable:
            raw[0 if micro_space.layers[i].stage <= 1 else 1] += float(plain_thesis.layer_runtime_thesis(
                i, decisions[i]))
        kept = sum(1 for c in arch.layers if not c.is_skip)
        se = sum(1 for c in arch.layers if not c.is_skip and c.se_ratio > 0)
        assert float(thesis(decisions)) == pytest.approx(
            STAGE_SCALES[0] * raw[0] + STAGE_SCALES[1] * raw[1] + PER_OP * kept + PER_SE * se + OVERHEAD, rel=1e-5)


def test_expected_layer_counts_are_differentiable(micro_space, calibrated_lut):
    """The per-op terms reach the thresholds: with entries of 0 ms, R depends on the skip and SE indicators only."""
    lut = calibrated_lut
    for key in lut.entries:
        lut.entries[key] = type(lut.entries[key])(0.0)
    model = RuntimeModel(micro_space, lut, 1, 10)
    net = SinglePathSupernet(micro_space, 1, 10)
    runtime = model(net.decisions())
    runtime.backward()
    skippable = [layer for layer in net.super_layers() if layer.spec.can_skip]
    assert skippable and all(layer.thresholds()[1].grad.abs().sum() > 0 for layer in skippable)
    assert all(layer.thresholds()[2].grad.abs().sum() > 0 for layer in net.super_layers())  # SE thresholds


def set_one_hot(alphas, space, arch) -> None:
    with torch.no_grad():
        searchable = [spec for spec in space.layers if spec.searchable]
        for alpha, spec in zip(alphas, searchable):
            alpha.fill_(-50.0)
            alpha[spec.choices().index(arch.layers[spec.index])] = 50.0


@pytest.mark.parametrize("solver", ["single_path", "single_path_ste", "single_path_softmax", "multi_path",
                                    "multi_path_gumbel", "proxyless", "random"])
def test_every_solver_optimises_and_reports_the_calibrated_runtime(solver, micro_space, calibrated_lut):
    space, lut = micro_space, calibrated_lut
    name, settings = {
        "multi_path_gumbel": ("multi_path", {"weighting": "gumbel"}),
        "random": ("random", {"target_ms": 1e9, "num_samples": 3}),
    }.get(solver, (solver, {}))
    module = make_solver(name, space, lut, **settings)
    assert isinstance(module.runtime_model, RuntimeModel) and module.runtime_model.lut is lut
    for arch in architectures(space, 3):
        want = by_hand(space, lut, arch)
        assert module.predicted_latency_ms(arch) == pytest.approx(want, rel=1e-9)  # what it reports
        if solver in ("single_path", "single_path_ste"):  # what it optimises: R(indicators), Eq 5.8
            optimised = module.runtime_model(module.supernet.fixed_decisions(arch))
        elif solver in ("multi_path", "multi_path_gumbel", "proxyless"):  # E[R] under softmax(alpha)
            set_one_hot(module.supernet.arch_parameters(), space, arch)
            assert module.derive_architecture().keys == arch.keys
            optimised = module.expected_runtime_ms()
        else:
            continue
        assert float(optimised) == pytest.approx(want, rel=1e-5)
    if solver == "single_path_ste":  # the hard indicators the solver trains with price its derived network
        with torch.no_grad():
            for t in module.supernet.threshold_parameters():
                t.copy_(torch.randn(t.shape) * 0.01)
        arch = module.derive_architecture()
        runtime = module.runtime_model(module.supernet.decisions()).detach()
        assert float(runtime) == pytest.approx(by_hand(space, lut, arch), rel=1e-5)
    if solver == "single_path_softmax":  # one-hot level distributions: E[R] is the derived network's R
        rng = random.Random(1)
        with torch.no_grad():
            for tau in module.tau.values():
                tau.fill_(-50.0)
                tau[rng.randrange(tau.numel())] = 50.0
        arch = module.derive_architecture()
        assert float(module.expected_runtime_ms()) == pytest.approx(by_hand(space, lut, arch), rel=1e-5)
    if solver == "random":  # samples are priced (and filtered) by the same model
        for record, arch in zip(module.derive_architecture().meta["samples"], module.samples):
            assert record["predicted_latency_ms"] == pytest.approx(by_hand(space, lut, arch), abs=1e-6)


def test_subnet_search_prices_with_the_same_calibration(micro_space, calibrated_lut):
    """The sub-network search folds the calibration, stage scales included, into an additive per-layer table."""
    from nas.subnet_search.encoding import GenomeCodec
    from nas.subnet_search.search_objectives import Target, latency_table, lut_fingerprint

    codec = GenomeCodec(micro_space)
    target = Target.from_lut("device", micro_space, calibrated_lut, 1, 10)
    table = latency_table(codec, target)
    for arch in architectures(micro_space):
        assert float(table(codec.encode(arch))[0]) == pytest.approx(by_hand(micro_space, calibrated_lut, arch),
                                                                   rel=1e-9)
    before = lut_fingerprint(calibrated_lut)
    calibrated_lut.stage_scales = [1.3, 0.71]
    assert lut_fingerprint(calibrated_lut) != before  # a cached table is never reused across calibrations


@pytest.fixture(scope="module")
def tiny_calibrated():
    """The tiny space and a LUT with a calibration that is not the identity in any term: a different scale per
    stage, per-op, per-SE and overhead terms."""
    from tests.conftest import load_space

    space = load_space("tiny")
    lut = proxy_lut(space)
    groups = RuntimeModel(space, lut, 1, 10).num_groups
    lut.scale, lut.per_op_ms, lut.per_se_op_ms, lut.overhead_ms = 1.05, -0.0037, 0.0021, 0.043
    lut.stage_scales = [1.0 + 0.13 * (g + 1) * (-1) ** g for g in range(groups)]
    return space, lut


def random_architectures(space, n=50, seed=7):
    rng = random.Random(seed)
    return [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(n - 2))]


def test_one_price_formula_is_the_runtime_models(tiny_calibrated):
    """``calibrated_ms`` (nas.cost.measurement_core) is the one price: ``RuntimeModel.predict``,
    ``LatencyLUT.network_ms`` and the differentiable path (tensors through the same arithmetic) agree with it, and
    it agrees with the formula written out, with stage scales and with one scale for every stage."""
    from nas.cost.measurement_core import calibrated_ms

    space, lut = tiny_calibrated
    flat = dataclasses.replace(lut, stage_scales=[])
    for table in (lut, flat):
        model = RuntimeModel(space, table, 1, 10)
        scales = table.stage_scales or [table.scale] * model.num_groups
        for arch in random_architectures(space):
            sums = model.group_sums(arch)
            kept = sum(1 for c in arch.layers if not c.is_skip)
            se = sum(1 for c in arch.layers if not c.is_skip and c.se_ratio > 0)
            price = calibrated_ms(sums, kept, se, table.calibration)
            assert model.predict(arch) == price
            written = (sum(s * v for s, v in zip(scales, sums)) + table.per_op_ms * kept + table.per_se_op_ms * se
                       + table.overhead_ms)
            assert price == pytest.approx(written, rel=1e-12)
            assert table.network_ms(sum(sums), kept, se, sums) == pytest.approx(price, rel=1e-12)
            tensor = calibrated_ms([torch.tensor(v, dtype=torch.float64) for v in sums],
                                   torch.tensor(float(kept), dtype=torch.float64), se, table.calibration)
            assert float(tensor) == pytest.approx(price, rel=1e-12)
    with pytest.raises(ValueError, match="stage scales"):
        calibrated_ms([1.0], 0, 0, lut.calibration)


def test_subnet_search_table_equals_runtime_model_predict(tiny_calibrated):
    """The sub-network search's vectorised form of the price (an additive per-layer table) equals
    ``RuntimeModel.predict`` on random architectures of the tiny space."""
    import numpy as np

    from nas.subnet_search.encoding import GenomeCodec
    from nas.subnet_search.search_objectives import Target, latency_table

    space, lut = tiny_calibrated
    codec = GenomeCodec(space)
    target = Target.from_lut("device", space, lut, 1, 10)
    archs = random_architectures(space)
    values = latency_table(codec, target)(np.stack([codec.encode(a) for a in archs]))
    predicted = np.array([target.runtime.predict(a) for a in archs])
    assert np.ptp(predicted) > 0.1 * predicted.mean()  # the architectures differ in price
    np.testing.assert_allclose(values, predicted, rtol=1e-12)
