"""The multi-path supernet of the baselines (thesis Eq 2.2, Fig 2.3): every candidate op is a separate path.

A :class:`MixedLayer` holds one plain :class:`~models.blocks.MBConv` per candidate choice of a searchable layer
(the skip-op is the identity, through the residual path) and one architecture logit per candidate. It can

* mix every path with weights ``alpha`` (DARTS softmax, FBNet Gumbel-softmax): ``o(x) = sum_j a_j o_j(x)``
  (Eq 2.2) -- memory and compute grow with the number of candidates;
* run only sampled paths with binary gates (ProxylessNAS): the active path is computed with its graph, a
  second sampled path only as a constant for the gate gradient, every other path not at all.

Its expected runtime is priced by :meth:`nas.cost.runtime_model.RuntimeModel.expected`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.child import init_weights
from nas.space.architecture import Architecture, LayerChoice
from nas.space.networks import build_head, build_layer, build_stem
from nas.space.search_space import LayerSpec, SearchSpace


class MixedLayer(nn.Module):
    """One searchable layer as parallel candidate paths (index order = ``spec.choices()``, skip first)."""

    def __init__(self, spec: LayerSpec, act: str) -> None:
        super().__init__()
        self.spec = spec
        self.choices: list[LayerChoice] = spec.choices()
        self.paths = nn.ModuleList()
        self.path_of_choice: list[int | None] = []  # index into self.paths, None for the skip-op
        for choice in self.choices:
            block = build_layer(spec, choice, act)
            self.path_of_choice.append(None if block is None else len(self.paths))
            if block is not None:
                self.paths.append(block)
        self.alpha = nn.Parameter(torch.zeros(len(self.choices)))

    def __len__(self) -> int:
        return len(self.choices)

    def run_path(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """Output of candidate ``j`` alone (the skip-op returns its input)."""
        p = self.path_of_choice[j]
        return x if p is None else self.paths[p](x)

    def forward_weighted(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Eq 2.2: ``sum_j weights_j * o_j(x)`` over every candidate path."""
        out = None
        for j in range(len(self.choices)):
            term = weights[j] * self.run_path(x, j)
            out = term if out is None else out + term
        return out

    def forward_gated(self, x: torch.Tensor, active: int, gates: torch.Tensor | None = None,
                      inactive: int | None = None) -> torch.Tensor:
        """Binary-gated output: the value of path ``active``; only ``active`` (and ``inactive``) are run.

        ``gates`` holds the gate values of ``(active, inactive)`` (forward values 1 and 0) carrying the
        gradient of the gates; the inactive path's output is computed without a graph (it enters the output
        only as ``0 * o_inactive``, which gives its gate the gradient ``<dL/do, o_inactive>``).
        """
        out = self.run_path(x, active)
        if gates is None:
            return out
        out = gates[0] * out
        if inactive is not None:
            with torch.no_grad():
                other = self.run_path(x, inactive)
            out = out + gates[1] * other
        return out


class MultiPathSupernet(nn.Module):
    """Stem, fixed layers, one :class:`MixedLayer` per searchable layer, head."""

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem = build_stem(space, in_channels)
        layers: list[nn.Module | None] = []
        for spec in space.layers:
            if spec.searchable:
                layers.append(MixedLayer(spec, space.act))
            else:
                layers.append(build_layer(spec, spec.choices()[0], space.act) or nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.head = build_head(space, num_classes)
        init_weights(self)

    def mixed_layers(self) -> list[MixedLayer]:
        return [layer for layer in self.layers if isinstance(layer, MixedLayer)]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [layer.alpha for layer in self.mixed_layers()]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def probabilities(self) -> list[torch.Tensor]:
        """``softmax(alpha)`` per searchable layer."""
        return [torch.softmax(layer.alpha, 0) for layer in self.mixed_layers()]

    def forward_weighted(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Every path of every searchable layer, mixed by ``weights`` (one vector per searchable layer)."""
        x = self.stem(x)
        it = iter(weights)
        for layer in self.layers:
            x = layer.forward_weighted(x, next(it)) if isinstance(layer, MixedLayer) else layer(x)
        return self.head(x)

    def forward_choices(self, x: torch.Tensor, active: Sequence[int], gates: Sequence[torch.Tensor] | None = None,
                        inactive: Sequence[int | None] | None = None) -> torch.Tensor:
        """Only the chosen path per searchable layer (optionally binary-gated, see :meth:`MixedLayer.forward_gated`)."""
        x = self.stem(x)
        i = 0
        for layer in self.layers:
            if isinstance(layer, MixedLayer):
                x = layer.forward_gated(x, active[i], None if gates is None else gates[i],
                                        None if inactive is None else inactive[i])
                i += 1
            else:
                x = layer(x)
        return self.head(x)

    def architecture(self, indices: Sequence[int]) -> Architecture:
        """The architecture that takes candidate ``indices[i]`` at the i-th searchable layer."""
        it = iter(indices)
        choices = []
        for spec, layer in zip(self.space.layers, self.layers):
            choices.append(layer.choices[next(it)] if isinstance(layer, MixedLayer) else spec.choices()[0])
        return self.space.architecture(choices)

    def derive(self) -> Architecture:
        """The most likely candidate (argmax of alpha) per searchable layer."""
        return self.architecture([int(layer.alpha.argmax()) for layer in self.mixed_layers()])
