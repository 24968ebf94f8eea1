"""Layer signatures: the keys of a latency LUT, and the ops behind them.

An op's runtime depends only on its shape, so a LUT entry is keyed by the layer signature (input resolution,
input/output channels, stride, kernel, expansion, SE ratio, activation), not by the layer's position: layers
with the same signature share one measurement, and a LUT serves any space whose layers it covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nas.space.architecture import Architecture, LayerChoice, format_number
from nas.space.search_space import LayerSpec, SearchSpace


def layer_key(spec: LayerSpec, choice: LayerChoice, act: str) -> str | None:
    """LUT key of one MBConv choice at one layer position; ``None`` for the skip-op (costs nothing)."""
    if choice.is_skip:
        return None
    return (f"mbconv_r{spec.input_resolution}_i{spec.in_channels}_o{spec.out_channels}_s{spec.stride}"
            f"_k{choice.kernel}_e{format_number(choice.expansion)}_se{format_number(choice.se_ratio)}_{act}")


def stem_key(space: SearchSpace, in_channels: int) -> str:
    s = space.stem
    return f"stem_r{space.resolution}_i{in_channels}_o{s.channels}_k{s.kernel}_s{s.stride}_{space.act}"


def head_key(space: SearchSpace, num_classes: int) -> str:
    return (f"head_r{space.final_resolution}_i{space.final_channels}_o{space.head.channels}"
            f"_c{num_classes}_{space.act}")


def network_op_keys(space: SearchSpace, arch: Architecture, in_channels: int, num_classes: int) -> list[str]:
    """The LUT keys whose sum is the runtime of ``arch`` (stem, every non-skipped layer, head), in order."""
    keys = [stem_key(space, in_channels)]
    for spec, choice in zip(space.layers, arch.layers):
        key = layer_key(spec, choice, space.act)
        if key is not None:
            keys.append(key)
    keys.append(head_key(space, num_classes))
    return keys


@dataclass(frozen=True)
class OpSpec:
    """One distinct op to profile: its LUT key, input shape (C, H, W), a builder and a readable origin."""

    key: str
    input_shape: tuple[int, int, int]
    build: Callable[[], nn.Module]
    origin: str


def required_ops(space: SearchSpace, in_channels: int, num_classes: int) -> dict[str, OpSpec]:
    """Every distinct op the runtime model of ``space`` needs, in a stable order."""
    from nas.space.networks import build_head, build_layer, build_stem

    ops: dict[str, OpSpec] = {}
    ops[stem_key(space, in_channels)] = OpSpec(stem_key(space, in_channels),
                                               (in_channels, space.resolution, space.resolution),
                                               lambda: build_stem(space, in_channels), "stem")
    for spec in space.layers:
        shape = (spec.in_channels, spec.input_resolution, spec.input_resolution)
        for choice in spec.choices():
            key = layer_key(spec, choice, space.act)
            if key is None or key in ops:
                continue
            ops[key] = OpSpec(key, shape, (lambda s=spec, c=choice: build_layer(s, c, space.act)),
                              f"layer {spec.index} ({spec.name}) {choice.key}")
    hk = head_key(space, num_classes)
    ops[hk] = OpSpec(hk, (space.final_channels, space.final_resolution, space.final_resolution),
                     lambda: build_head(space, num_classes), "head")
    return ops


def cost_groups(space: SearchSpace) -> tuple[int, list[int], int, int]:
    """``(stem group, [group of each layer], head group, number of groups)``: the stages of the network
    calibration, each with its own scale (``LatencyLUT.stage_scales``).

    A group is a stage of the space with at least one searchable layer; a stage without one (e.g. the fixed
    first layer) joins the next such stage (the last one at the end), the stem joins the first layer's group and
    the head the last layer's. So every group's LUT sum varies across networks and its scale can be fitted
    (the constant ops would otherwise be indistinguishable from the overhead).
    """
    searchable_stages = sorted({spec.stage for spec in space.layers if spec.searchable})
    if not searchable_stages:
        return 0, [0] * len(space.layers), 0, 1
    index = {stage: g for g, stage in enumerate(searchable_stages)}

    def group(stage: int) -> int:
        later = [s for s in searchable_stages if s >= stage]
        return index[later[0] if later else searchable_stages[-1]]

    layers = [group(spec.stage) for spec in space.layers]
    return layers[0] if layers else 0, layers, layers[-1] if layers else 0, len(searchable_stages)


def network_op_groups(space: SearchSpace, arch: Architecture) -> list[int]:
    """The cost group (:func:`cost_groups`) of each key of :func:`network_op_keys`, in the same order."""
    stem, layers, head, _ = cost_groups(space)
    return [stem, *(g for g, choice in zip(layers, arch.layers) if not choice.is_skip), head]


def arch_kept_ops(space: SearchSpace, arch: Architecture) -> int:
    """MBConv layers of ``arch`` that are not the skip-op (fixed layers included): the calibration's ``per_op_ms``
    multiplies this count."""
    return sum(1 for choice in arch.layers if not choice.is_skip)


def arch_se_ops(space: SearchSpace, arch: Architecture) -> int:
    """Kept MBConv layers of ``arch`` with squeeze-and-excitation: the count ``per_se_op_ms`` multiplies."""
    return sum(1 for choice in arch.layers if not choice.is_skip and choice.se_ratio > 0)


def sample_mix(space: SearchSpace, rng: Any, p_skip: float, p_se: float) -> Architecture:
    """A random architecture whose layers are skipped with probability ``p_skip`` (where allowed) and otherwise
    get an SE ratio > 0 with probability ``p_se``; kernel, expansion and the ratio itself are uniform."""
    def layer(spec: LayerSpec) -> LayerChoice:
        if spec.fixed is not None:
            return spec.fixed
        c = spec.candidates
        if spec.can_skip and rng.random() < p_skip:
            return LayerChoice.skip()
        with_se = [r for r in c.se_ratios if r > 0]
        without = [r for r in c.se_ratios if r == 0]
        pool = with_se if (rng.random() < p_se and with_se) or not without else without
        return LayerChoice(rng.choice(c.kernels), rng.choice(c.expansions), rng.choice(pool))
    return space.architecture([layer(spec) for spec in space.layers])


# (P(skip) where skipping is allowed, P(SE > 0)) of the mixed calibration networks: skip-free SE-free,
# skip-heavy SE-only, half-and-half, skip-heavy SE-free. With the smallest network and the largest SE-free one they
# stretch the fit over layer counts and SE shares; the rest of the calibration set is uniformly random, like the
# networks the model is used on (a set of extreme designs alone tilts the fit: docs/latency.md).
CALIBRATION_MIXES = ((0.0, 0.0), (0.6, 1.0), (0.3, 0.5), (0.6, 0.0))


def calibration_architectures(space: SearchSpace, count: int, seed: int = 1234) -> list[Architecture]:
    """``count`` distinct architectures for the network calibration, spanning ``space`` and like its networks.

    The smallest network and the largest SE-free one (every layer at its largest kernel and expansion, no SE)
    span the range of runtimes and layer counts; then one seeded random network per :data:`CALIBRATION_MIXES`
    entry (SE-free / SE-only, skip-free / skip-heavy); then uniformly random networks (:meth:`SearchSpace.sample`).
    The largest network (every layer with the largest SE) is deliberately not among them: uniform all-SE
    networks run markedly slower than any per-op model predicts here, and would tilt the fit for every other one.
    """
    import random

    rng = random.Random(seed)
    largest_se_free = space.architecture([spec.fixed or LayerChoice(spec.candidates.kernels[-1],
                                                                    spec.candidates.expansions[-1],
                                                                    spec.candidates.se_ratios[0])
                                          for spec in space.layers])
    designs = [space.smallest(), largest_se_free] + [sample_mix(space, rng, p_skip, p_se)
                                                     for p_skip, p_se in CALIBRATION_MIXES]
    out: dict[tuple[str, ...], Architecture] = {}
    for arch in designs:
        if len(out) < count:
            out.setdefault(tuple(arch.keys), arch)
    tries = 0
    while len(out) < min(count, space.num_architectures()) and tries < 100 * count:
        arch = space.sample(rng)
        out.setdefault(tuple(arch.keys), arch)
        tries += 1
    return list(out.values())


def calibration_networks(space: SearchSpace, in_channels: int, num_classes: int, count: int,
                         seed: int = 1234) -> tuple[dict[str, OpSpec], dict[str, list[str]]]:
    """``count`` whole networks of ``space`` (:func:`calibration_architectures`) to fit a LUT's network
    calibration (stage scales, ``per_op_ms``, ``per_se_op_ms``, ``overhead_ms``).

    Returns the networks as ops (key ``network_<i>``) and, per network, the LUT keys its prediction sums (the
    groups of those keys: :func:`calibration_network_groups`).
    """
    from nas.space.networks import build_child

    ops: dict[str, OpSpec] = {}
    keys: dict[str, list[str]] = {}
    for i, arch in enumerate(calibration_architectures(space, count, seed) if count > 0 else []):
        name = f"network_{i}"
        ops[name] = OpSpec(name, (in_channels, space.resolution, space.resolution),
                           lambda a=arch: build_child(space, a, in_channels, num_classes), f"calibration network {i}")
        keys[name] = network_op_keys(space, arch, in_channels, num_classes)
    return ops, keys


def calibration_network_groups(space: SearchSpace, count: int, seed: int = 1234) -> dict[str, list[int]]:
    """Per calibration network (``network_<i>`` of :func:`calibration_networks`), the cost group of each of its
    LUT keys (:func:`network_op_groups`)."""
    return {f"network_{i}": network_op_groups(space, arch)
            for i, arch in enumerate(calibration_architectures(space, count, seed) if count > 0 else [])}
