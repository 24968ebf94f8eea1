"""Runtime model (Eq 5.8-5.10, 6.5-6.8): equals the LUT sum on discrete architectures, gradients lower R."""

from __future__ import annotations

import random

import pytest
import torch

from nas.cost.backends import TorchEagerCPU
from nas.cost.lut import LatencyEntry
from nas.cost.profiler import profile_space
from nas.cost.runtime_model import RuntimeModel, level_probabilities
from nas.cost.signatures import head_key, layer_key, stem_key
from nas.space.architecture import LayerChoice
from nas.supernets.single_path_supernet import SinglePathSupernet
from tests.conftest import proxy_lut


def plain_lut_sum(space, lut, arch, in_channels=1, num_classes=10) -> float:
    total = lut.entries[stem_key(space, in_channels)].ms + lut.entries[head_key(space, num_classes)].ms
    for spec, choice in zip(space.layers, arch.layers):
        key = layer_key(spec, choice, space.act)
        total += 0.0 if key is None else lut.entries[key].ms
    return total


@pytest.mark.parametrize("space_name", ["micro", "tiny"])
def test_exact_model_equals_lut_sum_on_random_architectures(space_name, micro_space, tiny_space):
    space = micro_space if space_name == "micro" else tiny_space
    lut = proxy_lut(space)
    model = RuntimeModel(space, lut, 1, 10)
    net = SinglePathSupernet(space, 1, 10)
    rng = random.Random(0)
    for _ in range(50):
        arch = space.sample(rng)
        want = plain_lut_sum(space, lut, arch)
        assert model(net.fixed_decisions(arch)).item() == pytest.approx(want, rel=1e-5)
        assert model.predict(arch) == pytest.approx(want, rel=1e-9)


def test_exact_model_equals_sum_of_a_measured_lut(micro_space):
    lut = profile_space(micro_space, TorchEagerCPU(warmup=1, repeats=3), 1, 10, progress=False)
    model = RuntimeModel(micro_space, lut, 1, 10)
    net = SinglePathSupernet(micro_space, 1, 10)
    rng = random.Random(1)
    for _ in range(20):
        arch = micro_space.sample(rng)
        assert model(net.fixed_decisions(arch)).item() == pytest.approx(plain_lut_sum(micro_space, lut, arch),
                                                                         rel=1e-5)


def test_gradient_of_every_threshold_is_nonzero_and_lowers_runtime(micro_space, micro_lut):
    net = SinglePathSupernet(micro_space, 1, 10)
    model = RuntimeModel(micro_space, micro_lut, 1, 10)
    runtime = model(net.decisions())
    runtime.backward()
    for layer in net.super_layers():
        for t in layer.thresholds():
            # d R / d t < 0: raising a threshold drops a weight group, and the LUT says that is faster
            assert (t.grad < 0).all(), f"{layer.spec.name}: {t.grad}"
    # gradient descent on R moves thresholds up until groups drop out and R falls
    with torch.no_grad():
        for t in net.threshold_parameters():
            t -= 1e3 * t.grad
    assert model(net.decisions()).item() < runtime.item()


def test_level_probabilities_are_one_hot_at_vertices_and_sum_to_one():
    for bits in ([], [0.0], [1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]):
        p = level_probabilities(torch.tensor(bits))
        assert p.sum().item() == pytest.approx(1.0)
        assert sorted(p.tolist())[-1] == 1.0
    soft = level_probabilities(torch.tensor([0.3, 0.8]))
    assert soft.sum().item() == pytest.approx(1.0)
    assert (soft > 0).all()


def test_thesis_form_matches_exact_when_its_assumptions_hold(micro_space, micro_lut):
    """Eq 5.10 assumes R_3x3,e = rho * R_5x5,e; Eq 6.6-6.8 assume s_0.25 = s_0.5. Build such a LUT."""
    lut = micro_lut
    rng = random.Random(0)
    for spec in micro_space.searchable_layers:
        rho = 0.6 + 0.2 * rng.random()
        for e in spec.candidates.expansions:
            base5 = 1.0 + rng.random()
            scale = {3.0: 1.2, 6.0: 1.35}[e]
            for k, factor in ((5, 1.0), (3, rho)):
                for se, s in ((0.0, 1.0), (0.25, scale), (0.5, scale)):
                    lut.entries[layer_key(spec, LayerChoice(k, e, se), micro_space.act)] = \
                        LatencyEntry(base5 * factor * s)
    exact = RuntimeModel(micro_space, lut, 1, 10, form="exact")
    thesis = RuntimeModel(micro_space, lut, 1, 10, form="thesis")
    net = SinglePathSupernet(micro_space, 1, 10)
    for _ in range(30):
        arch = micro_space.sample(rng)
        decisions = net.fixed_decisions(arch)
        assert thesis(decisions).item() == pytest.approx(exact(decisions).item(), rel=1e-5)


def test_thesis_form_is_an_approximation_on_a_real_lut(micro_space, micro_lut):
    exact = RuntimeModel(micro_space, micro_lut, 1, 10, form="exact")
    thesis = RuntimeModel(micro_space, micro_lut, 1, 10, form="thesis")
    net = SinglePathSupernet(micro_space, 1, 10)
    arch = micro_space.architecture([micro_space.layers[0].fixed] + [LayerChoice(3, 3, 0.5)] * 4)
    decisions = net.fixed_decisions(arch)
    assert thesis(decisions).item() != pytest.approx(exact(decisions).item(), rel=1e-6)
