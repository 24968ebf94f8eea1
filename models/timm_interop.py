"""timm interop: a derived architecture as timm ``arch_def`` block strings (``ir_r1_k5_s2_e6_c24_se0.25``).

``timm_arch_def`` gives one list of block strings per stage (skip-op layers left out); ``timm_string`` joins
them into one line (blocks by spaces, stages by ``|``); ``build_timm_model`` builds the network with
``timm.models.efficientnet.EfficientNet``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.arch import Architecture, format_number
from nas.space import SearchSpace


def _block_string(kind: str, kernel: int, stride: int, expansion: float, out_ch: int, se_ratio: float) -> str:
    parts = [kind, "r1", f"k{kernel}", f"s{stride}"]
    if kind == "ir":
        parts.append(f"e{format_number(expansion)}")
    parts.append(f"c{out_ch}")
    if se_ratio > 0:
        parts.append(f"se{format_number(se_ratio)}")
    return "_".join(parts)


def timm_arch_def(arch: Architecture, space: SearchSpace) -> list[list[str]]:
    """Per-stage lists of timm block strings for ``arch`` (skip-op layers omitted)."""
    stages: dict[int, list[str]] = {}
    for spec, choice in zip(space.layers, arch.layers):
        stages.setdefault(spec.stage, [])
        if choice.is_skip:
            continue
        kind = "ds" if choice.expansion == 1.0 else "ir"
        stages[spec.stage].append(_block_string(kind, choice.kernel, spec.stride, choice.expansion,
                                                spec.out_channels, choice.se_ratio))
    return [blocks for _, blocks in sorted(stages.items()) if blocks]


def timm_string(arch: Architecture, space: SearchSpace) -> str:
    """One-line form: ``ds_r1_k3_s1_c16 | ir_r1_k5_s2_e6_c24_se0.25 ir_r1_k3_s1_e3_c24 | ...``."""
    return " | ".join(" ".join(blocks) for blocks in timm_arch_def(arch, space))


def parse_timm_string(text: str) -> list[list[str]]:
    """Inverse of :func:`timm_string`: per-stage block strings."""
    return [stage.split() for stage in text.split("|") if stage.strip()]


def timm_model_kwargs(space: SearchSpace) -> dict[str, Any]:
    """The ``EfficientNet`` keyword arguments besides ``block_args`` that reproduce the backbone."""
    return {
        "stem_size": space.stem.channels,
        "stem_kernel_size": space.stem.kernel,
        "stem_stride": space.stem.stride,
        "num_features": space.head.channels,
        "act_layer": space.act,
        "drop_rate": space.head.dropout,
    }


def build_timm_model(arch_def: list[list[str]], *, num_classes: int, in_chans: int = 3, stem_size: int,
                     num_features: int, act_layer: str = "relu", stem_kernel_size: int = 3, stem_stride: int = 2,
                     drop_rate: float = 0.0) -> nn.Module:
    """Build the network with timm's EfficientNet class from ``arch_def`` (e.g. ``arch.json['timm']``).

    timm's stem always has stride 2; for spaces with a stride-1 stem the stem conv's stride is patched.
    """
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    model = EfficientNet(block_args=decode_arch_def(arch_def), num_classes=num_classes, in_chans=in_chans,
                         stem_size=stem_size, stem_kernel_size=stem_kernel_size, fix_stem=True,
                         num_features=num_features, act_layer=act_layer, round_chs_fn=int, drop_rate=drop_rate)
    if stem_stride != 2:
        model.conv_stem.stride = (stem_stride, stem_stride)
    return model
