"""Single-path solver variants of thesis Sec 6.2: straight-through indicators and softmax over subsets.

* :class:`SinglePathSTESearch` -- the single-path search with the straight-through estimator (STE): the
  indicators are the hard step in the forward pass and pass the upstream gradient unchanged (gradient 1) to
  ``norm - threshold`` in the backward pass, instead of the sigmoid's gradient.
* :class:`SinglePathSoftmaxSearch` -- Eq 6.1: each decision of a superkernel (kernel size; expansion with the
  skip-op; SE ratio) is a softmax over its nested subsets, parameterised by logits ``tau``, and the superkernel
  is the probability-weighted sum of the subsets, e.g. ``w_k = p_3 * w_3x3 + p_5 * (w_3x3 + w_5x5\\3x3)``. With
  nested subsets this equals scaling subset shell ``j`` by ``P(level >= j)``, which the superkernel forward
  implements when its relaxed indicators are ``d_j = P(level >= j) / P(level >= j-1)``; the single-path runtime
  model evaluated at these ``d`` is then exactly the expected runtime ``E[R]`` under the softmax distributions.
  ``tau`` and the weights are trained bi-level (alternating steps on the architecture / training splits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.solvers.base import NOT_HYPERPARAMETERS
from nas.search.solvers.bilevel import BilevelSearch
from nas.search.solvers.single_path import SinglePathSearch
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.single_path_supernet import Decisions, SinglePathSupernet
from nas.supernets.superkernel import LayerDecision, SuperMBConv

DIMENSIONS = ("kernel", "expansion", "se")


class SinglePathSTESearch(SinglePathSearch):
    """:class:`SinglePathSearch` with ``relaxation="ste"`` (straight-through indicators, Sec 6.2)."""

    solver_name = "single_path_ste"

    def __init__(self, *args: Any, relaxation: str, **kwargs: Any) -> None:
        if relaxation != "ste":
            raise ConfigError(f"solver single_path_ste uses relaxation 'ste', got {relaxation!r}; for the sigmoid "
                              "use solver=single_path")
        super().__init__(*args, relaxation="ste", **kwargs)


def indicators_from_levels(probabilities: torch.Tensor) -> torch.Tensor:
    """Nested relaxed indicators whose level probabilities are ``probabilities`` (length m+1 -> m).

    ``d_j = P(level >= j) / P(level >= j-1)``, so ``d_1 ... d_j = P(level >= j)`` (the weight of subset shell
    j in Eq 6.1) and :func:`nas.cost.runtime_model.level_probabilities` of ``d`` gives back ``probabilities``.
    """
    tail = probabilities.flip(0).cumsum(0).flip(0)  # tail[j] = P(level >= j), tail[0] = 1
    return tail[1:] / tail[:-1].clamp_min(1e-12)


def hard_indicators(level: int, count: int, like: torch.Tensor) -> torch.Tensor:
    """``count`` indicators with the first ``level`` set: the decision that selects ``level``."""
    return (torch.arange(count, device=like.device) < level).to(like.dtype)


class SinglePathSoftmaxSearch(BilevelSearch):
    """Single-path superkernels with softmax over subsets (Eq 6.1), trained bi-level.

    The supernet's thresholds are not used (frozen); the architecture parameters are the logits ``tau``, one
    vector per decision of each searchable layer, initialised at 0 (uniform). Derivation takes the most likely
    level of each decision. Arguments: see :class:`~nas.search.solvers.bilevel.BilevelSearch`.
    """

    solver_name = "single_path_softmax"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 **kwargs: Any) -> None:
        super().__init__(space, in_channels, num_classes, lut, **kwargs)
        self.supernet = SinglePathSupernet(space, in_channels, num_classes)
        for t in self.supernet.threshold_parameters():
            t.requires_grad_(False)
        self.tau = nn.ParameterDict()
        for layer in self.supernet.super_layers():
            for dim, t in zip(DIMENSIONS, layer.thresholds()):
                self.tau[f"L{layer.spec.index}_{dim}"] = nn.Parameter(torch.zeros(t.numel() + 1))
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ decisions
    def level_probabilities(self) -> dict[str, torch.Tensor]:
        return {name: torch.softmax(tau, 0) for name, tau in self.tau.items()}

    def soft_decisions(self) -> Decisions:
        """Eq 6.1 as relaxed indicators of the superkernels (see :func:`indicators_from_levels`)."""
        probs = self.level_probabilities()
        out: Decisions = []
        for layer in self.supernet.layers:
            if not isinstance(layer, SuperMBConv):
                out.append(None)
                continue
            i = layer.spec.index
            out.append(LayerDecision(*(indicators_from_levels(probs[f"L{i}_{dim}"]) for dim in DIMENSIONS)))
        return out

    def hard_decisions(self) -> Decisions:
        out: Decisions = []
        for layer in self.supernet.layers:
            if not isinstance(layer, SuperMBConv):
                out.append(None)
                continue
            i = layer.spec.index
            levels = [int(self.tau[f"L{i}_{dim}"].argmax()) for dim in DIMENSIONS]
            counts = [t.numel() for t in layer.thresholds()]
            out.append(LayerDecision(*(hard_indicators(lv, n, layer.t_kernel) for lv, n in zip(levels, counts))))
        return out

    # ------------------------------------------------------------------ BilevelSearch
    def weight_parameters(self) -> list[nn.Parameter]:
        return self.supernet.weight_parameters()

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.tau.values())

    def expected_runtime_ms(self) -> torch.Tensor:
        return self.runtime_model(self.soft_decisions())

    def weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decisions = [d.map(torch.Tensor.detach) if d is not None else None for d in self.soft_decisions()]
        logits = self.supernet(x, decisions)
        return self.cross_entropy(logits, y), logits

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decisions = self.soft_decisions()
        logits = self.supernet(x, decisions)
        ce = self.cross_entropy(logits, y)
        runtime_ms = self.runtime_model(decisions)
        return ce + self.runtime_loss(runtime_ms, self.lambda_), ce, runtime_ms

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.hard_decisions())

    def derive_architecture(self) -> Architecture:
        with torch.no_grad():
            arch = self.supernet.derive(self.hard_decisions())
        return self.finish_derivation(arch)
