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


_BLOCK_HELP = "expected e.g. ir_r1_k5_s2_e6_c24_se0.25 (timm's block string notation)"


def _parse_block(text: str, where: str) -> dict[str, Any]:
    """One timm block string as ``{kind, r, k, s, e, c, se, noskip}``; options the spaces cannot express (other
    block types, activation overrides, grouped or mixed kernels, ...) are an :class:`ArchitectureError`."""
    tokens = text.split("_")
    if tokens[0] not in ("ir", "ds"):
        raise ArchitectureError(f"{where}: block {text!r} is a {tokens[0]!r} block; the spaces hold only MBConv "
                                f"('ir') and depthwise-separable ('ds') blocks; {_BLOCK_HELP}")
    out: dict[str, Any] = {"kind": tokens[0], "r": 1, "s": 1, "e": 1.0, "se": 0.0, "noskip": False, "text": text}
    try:
        for token in tokens[1:]:
            if token in ("noskip", "skip"):
                out["noskip"] = token == "noskip"
                continue
            for prefix, cast in (("se", float), ("r", int), ("k", int), ("s", int), ("e", float), ("c", int)):
                if token.startswith(prefix) and token[len(prefix):]:
                    out[prefix] = cast(token[len(prefix):])
                    break
            else:
                raise ValueError(token)
        out["k"], out["c"]  # noqa: B018 - both are required
    except (ValueError, KeyError) as err:
        raise ArchitectureError(f"{where}: cannot read {err} in block {text!r} (the spaces express r, k, s, e, c, "
                                f"se and noskip only); {_BLOCK_HELP}") from None
    if out["kind"] == "ir" and out["e"] == 1.0:
        raise ArchitectureError(f"{where}: block {text!r} is an 'ir' block with e1, which keeps an expansion conv; "
                                "the spaces' e1 layer is timm's 'ds' block")
    if out["r"] < 1:
        raise ArchitectureError(f"{where}: block {text!r} repeats r{out['r']} times; r must be >= 1")
    return out


def parse_arch_def(text: str) -> list[list[str]]:
    """Per-stage block strings from any of the written forms of an ``arch_def``:

    * the project's one-line form, stages separated by ``|`` and blocks by spaces (:func:`timm_string`);
    * timm's own ``arch_def`` as a Python/JSON list of lists of block strings (``[['ds_r1_k3_s1_c16'], ...]``).
    """
    text = text.strip()
    if text.startswith("["):
        import ast

        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise ArchitectureError(f"cannot read the arch_def list ({err}); expected timm's form, e.g. "
                                    "[['ds_r1_k3_s1_c16'], ['ir_r2_k3_s2_e6_c24']]") from None
        if not (isinstance(value, (list, tuple)) and all(isinstance(stage, (list, tuple)) and
                                                          all(isinstance(b, str) for b in stage) for stage in value)):
            raise ArchitectureError("an arch_def must be a list of stages, each a list of block strings")
        return [[b.strip() for b in stage] for stage in value]
    return parse_timm_string(text)


def architecture_from_arch_def(arch_def: list[list[str]], space: SearchSpace, source: str = "timm string") \
        -> Architecture:
    """The :class:`Architecture` of ``space`` that builds the network of a timm ``arch_def``.

    Stage ``i`` of the ``arch_def`` fills the first layers of stage ``i`` of the space, blocks with ``r > 1``
    expanded into ``r`` layers (the first with the block's stride, the others with stride 1, as timm builds
    them); the stage's remaining layers are the skip-op (all non-first layers of a stage have the same shape, so
    which ones are skipped does not matter). The first block that does not fit is an
    :class:`ArchitectureError` naming it and why.
    """
    for stage, blocks in enumerate(arch_def):  # a block that does not parse is named before any count is compared
        for block in blocks:
            _parse_block(block, f"{source} stage {stage}")
    by_stage: dict[int, list] = {}
    for spec in space.layers:
        by_stage.setdefault(spec.stage, []).append(spec)
    if len(arch_def) != len(by_stage):
        raise ArchitectureError(f"{source} has {len(arch_def)} stages but space '{space.name}' has "
                                f"{len(by_stage)}; select the space it was derived in (space=...)")
    layers: list[LayerChoice] = []
    for (stage, specs), blocks in zip(sorted(by_stage.items()), arch_def):
        expanded = []
        for block in blocks:
            b = _parse_block(block, f"{source} stage {stage}")
            expanded += [{**b, "s": b["s"] if r == 0 else 1, "repeat": r} for r in range(b["r"])]
        if len(expanded) > len(specs):
            raise ArchitectureError(f"{source} stage {stage}: block {expanded[len(specs)]['text']!r} is layer "
                                    f"{len(specs) + 1} of the stage, but space '{space.name}' has only {len(specs)} "
                                    "layers there")
        for spec, b in zip(specs, expanded):
            where = (f"{source} stage {stage}, block {b['text']!r}" + (f" (repeat {b['repeat'] + 1})" if b["r"] > 1
                                                                         else "") + f", layer {spec.index}")
            if b["c"] != spec.out_channels or b["s"] != spec.stride:
                raise ArchitectureError(f"{where}: c{b['c']} s{b['s']} does not fit: space '{space.name}' needs "
                                        f"c{spec.out_channels} s{spec.stride} there (select the space the network "
                                        "was made for with space=...)")
            if b["noskip"] and spec.has_residual:
                raise ArchitectureError(f"{where}: 'noskip' removes the residual, but the space's layer has one "
                                        f"(stride 1, {spec.in_channels} -> {spec.out_channels} channels)")
            choice = LayerChoice(b["k"], b["e"] if b["kind"] == "ir" else 1.0, b["se"])
            problem = spec.check_choice(choice)
            if problem:
                raise ArchitectureError(f"{where}: does not fit: {problem}")
            layers.append(choice)
        layers.extend(LayerChoice.skip() for _ in specs[len(expanded):])
    return space.architecture(layers)


def architecture_from_timm_string(text: str, space: SearchSpace) -> Architecture:
    """The :class:`Architecture` of ``space`` written as ``text`` (the inverse of :func:`timm_string`; timm's own
    block strings with ``r > 1`` and ``noskip`` are accepted too, see :func:`architecture_from_arch_def`)."""
    return architecture_from_arch_def(parse_arch_def(text), space)


def timm_model_arch_def(name: str) -> tuple[list[list[str]], Any]:
    """timm's ``arch_def`` of the MBConv network ``name`` (e.g. ``spnasnet_100``) and the model built from it.

    The model is built with ``pretrained=False`` (nothing is downloaded) while timm's ``decode_arch_def`` is
    watched, which receives the block strings of every ``EfficientNet``-family generator.
    """
    import timm
    from timm.models import efficientnet

    if name not in timm.list_models():
        close = [m for m in timm.list_models() if name.split("_")[0] in m][:8]
        raise ArchitectureError(f"timm has no model {name!r}" + (f"; similar: {close}" if close else ""))
    seen: list[tuple[Any, float]] = []
    original = efficientnet.decode_arch_def

    def watch(arch_def: Any, depth_multiplier: float = 1.0, *args: Any, **kwargs: Any) -> Any:
        seen.append((arch_def, depth_multiplier))
        return original(arch_def, depth_multiplier, *args, **kwargs)

    efficientnet.decode_arch_def = watch
    try:
        model = timm.create_model(name, pretrained=False)
    finally:
        efficientnet.decode_arch_def = original
    if not seen:
        raise ArchitectureError(f"timm:{name} is not an EfficientNet-family (MBConv) network; only those fit the "
                                "spaces (e.g. timm:spnasnet_100, timm:mnasnet_100)")
    arch_def, depth = seen[0]
    if depth != 1.0:
        raise ArchitectureError(f"timm:{name} scales its block repeats by {depth}; only depth multiplier 1.0 "
                                "networks are expressed block by block")
    return [list(stage) for stage in arch_def], model


def architecture_from_timm_model(name: str, space: SearchSpace, in_channels: int = 3,
                                 num_classes: int = 1000) -> Architecture:
    """The architecture of timm's ``name`` in ``space``; checks that the space's network is timm's network.

    Besides every block fitting (:func:`architecture_from_arch_def`), the stem, head and activation must be the
    space's: the child network built from the result must have timm's parameter count (``num_classes``
    outputs, ``in_channels`` inputs), else an :class:`ArchitectureError` names the difference.
    """
    from nas.space.networks import build_child

    arch_def, model = timm_model_arch_def(name)
    arch = architecture_from_arch_def(arch_def, space, source=f"timm:{name}")
    act = type(getattr(getattr(model, "bn1", None), "act", None)).__name__.lower()
    if space.act not in act:
        raise ArchitectureError(f"timm:{name} uses activation {act!r}, space '{space.name}' uses {space.act!r}")
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    theirs = sum(p.numel() for p in model.parameters())
    ours = sum(p.numel() for p in build_child(space, arch, in_channels, num_classes).parameters())
    if theirs != ours:
        raise ArchitectureError(
            f"timm:{name} has {theirs:,} parameters, its blocks in space '{space.name}' give {ours:,}: its stem "
            f"({getattr(model, 'conv_stem', None)}) or head ({model.num_features} features) differ from the "
            f"space's (stem {space.stem.channels}, head {space.head.channels})")
    return arch.with_meta(source=f"timm:{name}", parameters=ours)
