"""timm interop: a derived architecture as timm ``arch_def`` block strings (``ir_r1_k5_s2_e6_c24_se0.25``).

``timm_arch_def`` gives one list of block strings per stage (skip-op layers left out); ``timm_string`` joins
them into one line (blocks by spaces, stages by ``|``); ``build_timm_model`` builds the network with
``timm.models.efficientnet.EfficientNet``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.errors import ArchitectureError
from nas.space.architecture import Architecture, LayerChoice, format_number
from nas.space.search_space import SearchSpace


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


def timm_record(arch: Architecture, space: SearchSpace) -> dict[str, Any]:
    """What ``arch.json`` stores under ``timm``: the ``arch_def`` and the ``EfficientNet`` keyword arguments."""
    return {"arch_def": timm_arch_def(arch, space), **timm_model_kwargs(space)}


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


def _parse_block(text: str, where: str) -> dict[str, Any]:
    tokens = text.split("_")
    if tokens[0] not in ("ir", "ds"):
        raise ArchitectureError(f"{where}: block {text!r} is not an 'ir_...' or 'ds_...' block string (e.g. "
                                "ir_r1_k5_s2_e6_c24_se0.25)")
    out: dict[str, Any] = {"kind": tokens[0], "r": 1, "s": 1, "e": 1.0, "se": 0.0}
    try:
        for token in tokens[1:]:
            for prefix, cast in (("se", float), ("r", int), ("k", int), ("s", int), ("e", float), ("c", int)):
                if token.startswith(prefix) and token[len(prefix):]:
                    out[prefix] = cast(token[len(prefix):])
                    break
            else:
                raise ValueError(token)
        out["k"], out["c"]  # noqa: B018 - both are required
    except (ValueError, KeyError) as err:
        raise ArchitectureError(f"{where}: cannot read {err} in block {text!r}; expected e.g. "
                                "ir_r1_k5_s2_e6_c24_se0.25") from None
    return out


def architecture_from_timm_string(text: str, space: SearchSpace) -> Architecture:
    """The :class:`Architecture` of ``space`` that :func:`timm_string` writes as ``text`` (its inverse).

    Stage ``i`` of the string fills the first layers of stage ``i`` of the space; its remaining layers are the
    skip-op (all non-first layers of a stage have the same shape, so which ones are skipped does not matter).
    """

    stages_text = parse_timm_string(text)
    by_stage: dict[int, list] = {}
    for spec in space.layers:
        by_stage.setdefault(spec.stage, []).append(spec)
    if len(stages_text) != len(by_stage):
        raise ArchitectureError(f"timm string has {len(stages_text)} stages ('|'-separated) but space '{space.name}' "
                                f"has {len(by_stage)}; select the space it was derived in (space=...)")
    layers: list[LayerChoice] = []
    for (stage, specs), blocks in zip(sorted(by_stage.items()), stages_text):
        if len(blocks) > len(specs):
            raise ArchitectureError(f"timm string stage {stage} has {len(blocks)} blocks but the space's stage has "
                                    f"only {len(specs)} layers")
        for spec, block in zip(specs, blocks):
            where = f"timm string stage {stage}, layer {spec.index}"
            b = _parse_block(block, where)
            if b["r"] != 1 or b["c"] != spec.out_channels or b["s"] != spec.stride:
                raise ArchitectureError(f"{where}: block {block!r} has r{b['r']}/c{b['c']}/s{b['s']}, the space's "
                                        f"layer needs r1, c{spec.out_channels}, s{spec.stride}; select the space "
                                        "the string was derived in (space=...)")
            layers.append(LayerChoice(b["k"], b["e"] if b["kind"] == "ir" else 1.0, b["se"]))
        layers.extend(LayerChoice.skip() for _ in specs[len(blocks):])
    return space.architecture(layers)
