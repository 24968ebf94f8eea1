"""The network an architecture denotes: plain blocks (``models``) for each layer choice of a space."""

from __future__ import annotations

from models.blocks import ConvBnAct, Head, MBConv
from models.child import ChildNet
from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import LayerSpec, SearchSpace


def build_layer(spec: LayerSpec, choice: LayerChoice, act: str) -> MBConv | None:
    """The plain MBConv for one layer's choice; ``None`` for the skip-op."""
    if choice.is_skip:
        return None
    return MBConv(spec.in_channels, spec.out_channels, spec.stride, choice.kernel,
                  spec.mid_channels(choice.expansion), spec.se_channels(choice.se_ratio, choice.expansion), act)


def build_stem(space: SearchSpace, in_channels: int) -> ConvBnAct:
    return ConvBnAct(in_channels, space.stem.channels, space.stem.kernel, space.stem.stride, act=space.act)


def build_head(space: SearchSpace, num_classes: int) -> Head:
    return Head(space.final_channels, space.head.channels, num_classes, space.act, space.head.dropout)


def build_child(space: SearchSpace, arch: Architecture, in_channels: int = 3, num_classes: int = 1000) -> ChildNet:
    """The :class:`~models.child.ChildNet` of ``arch``: stem, the chosen MBConv layers (skips removed), head."""
    arch.validate(space)
    blocks = {}
    for spec, choice in zip(space.layers, arch.layers):
        block = build_layer(spec, choice, space.act)
        if block is not None:
            blocks[str(spec.index)] = block
    return ChildNet(build_stem(space, in_channels), blocks, build_head(space, num_classes), space=space, arch=arch,
                    in_channels=in_channels)
