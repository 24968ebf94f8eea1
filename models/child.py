"""Stand-alone (child) networks: a stem, a sequence of blocks and a head, in plain PyTorch.

This package is the bottom layer of spnas: it knows nothing of search spaces or architectures.
``nas.space.networks`` builds a :class:`ChildNet` for one architecture of a space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class ChildNet(nn.Module):
    """The network of one architecture: stem, the chosen blocks in order (keyed by their layer index), head.

    ``space`` and ``arch`` are the search space and architecture it was built from (kept for reporting and
    export; the network does not use them). ``init=False`` keeps the given modules' weights (a network assembled
    from trained parts).
    """

    def __init__(self, stem: nn.Module, blocks: Mapping[str, nn.Module], head: nn.Module, *, space: Any = None,
                 arch: Any = None, in_channels: int = 3, init: bool = True) -> None:
        super().__init__()
        self.space = space
        self.arch = arch
        self.in_channels = in_channels
        self.stem = stem
        self.blocks = nn.ModuleDict(dict(blocks))
        self.head = head
        if init:
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
