"""Layer signatures: the keys of a latency LUT, and the ops behind them.

An op's runtime depends only on its shape, so a LUT entry is keyed by the layer signature (input resolution,
input/output channels, stride, kernel, expansion, SE ratio, activation), not by the layer's position: layers
with the same signature share one measurement, and a LUT serves any space whose layers it covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def calibration_networks(space: SearchSpace, in_channels: int, num_classes: int, count: int,
                         seed: int = 1234) -> tuple[dict[str, OpSpec], dict[str, list[str]]]:
    """``count`` whole networks of ``space`` to calibrate a LUT's ``scale`` and ``overhead_ms``: the smallest, the
    largest (so the fit spans the space's range), then seeded random ones.

    Returns the networks as ops (key ``network_<i>``) and, per network, the LUT keys its prediction sums.
    """
    import random

    from nas.space.networks import build_child

    rng = random.Random(seed)
    ops: dict[str, OpSpec] = {}
    keys: dict[str, list[str]] = {}
    fixed = [space.smallest(), space.largest()]
    for i in range(count):
        arch = fixed[i] if i < len(fixed) else space.sample(rng)
        name = f"network_{i}"
        ops[name] = OpSpec(name, (in_channels, space.resolution, space.resolution),
                           lambda a=arch: build_child(space, a, in_channels, num_classes), f"calibration network {i}")
        keys[name] = network_op_keys(space, arch, in_channels, num_classes)
    return ops, keys
