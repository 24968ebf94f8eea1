"""The single-path supernet (thesis Fig 5.4): stem, one superkernel MBConv per searchable layer, head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.child import ChildNet, init_weights
from nas.space.architecture import Architecture
from nas.space.networks import build_child, build_head, build_layer, build_stem
from nas.space.search_space import SearchSpace
from nas.supernets.superkernel import LayerDecision, SuperMBConv

Decisions = list[LayerDecision | None]


class SinglePathSupernet(nn.Module):
    """All candidate networks of ``space`` in one single-path network (Eq 5.5).

    Searchable layers are :class:`SuperMBConv`; fixed layers are plain MBConv blocks. ``decisions()`` reads
    the current indicators off the weights and thresholds; ``forward(x, decisions)`` runs the network they
    select; ``derive()`` returns that network as an :class:`Architecture`.
    """

    def __init__(self, space: SearchSpace, in_channels: int = 3, num_classes: int = 1000,
                 relaxation: str = "sigmoid", norm: str = "mean_square") -> None:
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem = build_stem(space, in_channels)
        layers: list[nn.Module] = []
        for spec in space.layers:
            if spec.searchable:
                layers.append(SuperMBConv(spec, space.act, relaxation, norm))
            else:
                layers.append(build_layer(spec, spec.choices()[0], space.act))
        self.layers = nn.ModuleList(layers)
        self.head = build_head(space, num_classes)
        init_weights(self)

    # ------------------------------------------------------------------ parameter groups
    def threshold_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (thresholds), for their own optimiser parameter group."""
        return [p for layer in self.super_layers() for p in layer.thresholds()]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.threshold_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def super_layers(self) -> list[SuperMBConv]:
        return [layer for layer in self.layers if isinstance(layer, SuperMBConv)]

    # ------------------------------------------------------------------ decisions
    def decisions(self) -> Decisions:
        """Current relaxed indicators per layer (``None`` for fixed layers)."""
        return [layer.decision() if isinstance(layer, SuperMBConv) else None for layer in self.layers]

    def fixed_decisions(self, arch: Architecture) -> Decisions:
        """Constant indicators that make the supernet compute exactly ``arch``."""
        arch.validate(self.space)
        return [layer.fixed_decision(choice) if isinstance(layer, SuperMBConv) else None
                for layer, choice in zip(self.layers, arch.layers)]

    def derive(self, decisions: Decisions | None = None) -> Architecture:
        """The discrete architecture selected by the hard indicators (never by dropped/rescaled values)."""
        with torch.no_grad():
            decisions = self.decisions() if decisions is None else decisions
        choices = []
        for spec, layer, dec in zip(self.space.layers, self.layers, decisions):
            choices.append(layer.choice_of(dec) if isinstance(layer, SuperMBConv) else spec.choices()[0])
        return self.space.architecture(choices)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, decisions: Decisions | None = None) -> torch.Tensor:
        if decisions is None:
            decisions = self.decisions()
        x = self.stem(x)
        for layer, dec in zip(self.layers, decisions):
            x = layer(x, dec) if isinstance(layer, SuperMBConv) else layer(x)
        return self.head(x)

    # ------------------------------------------------------------------ child extraction
    def extract_child(self, arch: Architecture) -> ChildNet:
        """A :class:`ChildNet` of ``arch`` initialised with the supernet's shared weights."""
        child = build_child(self.space, arch, self.in_channels, self.num_classes)
        child.stem.load_state_dict(self.stem.state_dict())
        child.head.load_state_dict(self.head.state_dict())
        for spec, layer, choice in zip(self.space.layers, self.layers, arch.layers):
            if choice.is_skip:
                continue
            block = layer.extract(choice, self.space.act) if isinstance(layer, SuperMBConv) else layer
            child.blocks[str(spec.index)].load_state_dict(block.state_dict())
        return child


def drop_subsets(decisions: Sequence[LayerDecision | None], p: float, rescale: bool = False,
                 generator: torch.Generator | None = None) -> Decisions:
    """Subset dropout (thesis Sec 5.3.3): drop each indicator with probability ``p``.

    Dropping an indicator removes its weight group (and, by nesting, every group after it) for this step, so
    the supernet does not learn as an ensemble. With ``rescale`` kept indicators are divided by ``1 - p`` as in
    the thesis' code; the default keeps them at 1 so every sampled sub-network is an exact child network.
    """
    if p <= 0:
        return list(decisions)
    out: Decisions = []
    for dec in decisions:
        if dec is None:
            out.append(None)
            continue

        def drop(ind: torch.Tensor) -> torch.Tensor:
            if ind.numel() == 0:
                return ind
            keep = (torch.rand(ind.shape, generator=generator, device="cpu") >= p).to(ind.device, ind.dtype)
            if rescale:
                keep = keep / (1.0 - p)
            return ind * keep

        out.append(dec.map(drop))
    return out
