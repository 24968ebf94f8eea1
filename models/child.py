"""Standalone (child) networks built from a derived :class:`~nas.arch.Architecture`."""

from __future__ import annotations

import torch
from torch import nn

from models.blocks import ConvBnAct, Head, MBConv
from nas.arch import Architecture, LayerChoice
from nas.space import LayerSpec, SearchSpace


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


class ChildNet(nn.Module):
    """The network of one architecture: stem, the chosen MBConv layers (skips removed), head."""

    def __init__(self, space: SearchSpace, arch: Architecture, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        arch.validate(space)
        self.space = space
        self.arch = arch
        self.stem = build_stem(space, in_channels)
        self.blocks = nn.ModuleDict()
        for spec, choice in zip(space.layers, arch.layers):
            block = build_layer(spec, choice, space.act)
            if block is not None:
                self.blocks[str(spec.index)] = block
        self.head = build_head(space, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks.values():
            x = block(x)
        return self.head(x)


def init_weights(module: nn.Module) -> None:
    """timm/EfficientNet-style init: fan-out normal for convs, uniform for the classifier."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.weight.shape[1] ** 0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
