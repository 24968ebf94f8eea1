"""ProxylessNAS-style search: binarised path gates over the multi-path supernet, only sampled paths computed.

Weight step: one path per searchable layer is sampled from ``p = softmax(alpha)`` and only that path runs
(the network is one child network). Architecture step: two distinct paths per layer are sampled from ``p``;
one of them is made active with probability ``softmax(alpha_pair)``; the binary gates ``g`` (1 for the
active path, 0 for the other) take ProxylessNAS' gradient estimator

    dL/d alpha_i  ~=  sum_{j in pair} dL/dg_j * p_j (delta_ij - p_i),     dL/dg_j = <dL/do, o_j(x)>,

with ``p`` the softmax over the pair. It is implemented as ``g = onehot + p - p.detach()`` (forward value
binary, backward through ``p``). The active path runs with its autograd graph; the inactive one runs once
without a graph (only its output is kept, for ``dL/dg``); no other path runs, so the step's memory is that of
one child network plus one layer output per layer. After each architecture step the pair's logits are shifted
so that ``sum exp(alpha)`` over the pair is unchanged, leaving the other paths' probabilities as they were
(ProxylessNAS' rescaling). The runtime term is the expected latency from the LUT under ``softmax(alpha)``:
``CE + lambda * log(E[R])``.
"""

from __future__ import annotations

from typing import Any

import torch

from nas.cost.lut import LatencyLUT
from nas.search.solvers.base import NOT_HYPERPARAMETERS
from nas.search.solvers.multi_path import CandidatePathSearch
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace


class ProxylessSearch(CandidatePathSearch):
    """Binarised-path search (ProxylessNAS). Arguments: see :class:`~nas.search.solvers.bilevel.BilevelSearch`."""

    solver_name = "proxyless"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 **kwargs: Any) -> None:
        super().__init__(space, in_channels, num_classes, lut, **kwargs)
        self._pairs: list[torch.Tensor] = []
        self._pair_logsumexp: list[torch.Tensor] = []
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ sampling
    def sample_paths(self) -> list[int]:
        """One path per searchable layer, drawn from ``softmax(alpha)``."""
        with torch.no_grad():
            return [int(torch.multinomial(p, 1)) for p in self.supernet.probabilities()]

    def sample_gates(self) -> tuple[list[int], list[int | None], list[torch.Tensor]]:
        """Two distinct paths per layer, the active one among them, and the binary gates (active, inactive)."""
        active, inactive, gates = [], [], []
        self._pairs, self._pair_logsumexp = [], []
        for alpha in self.supernet.arch_parameters():
            with torch.no_grad():
                pair = torch.multinomial(torch.softmax(alpha, 0), min(2, alpha.numel()), replacement=False)
            p_pair = torch.softmax(alpha[pair], 0)
            pick = int(torch.multinomial(p_pair.detach(), 1))
            order = [pick, 1 - pick] if pair.numel() == 2 else [0]
            hard = torch.zeros_like(p_pair)
            hard[pick] = 1.0
            g = hard + p_pair - p_pair.detach()
            gates.append(g[order])
            active.append(int(pair[pick]))
            inactive.append(int(pair[1 - pick]) if pair.numel() == 2 else None)
            self._pairs.append(pair)
            self._pair_logsumexp.append(torch.logsumexp(alpha.detach()[pair], 0))
        return active, inactive, gates

    # ------------------------------------------------------------------ BilevelSearch
    def weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.supernet.forward_choices(x, self.sample_paths())
        return self.cross_entropy(logits, y), logits

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        active, inactive, gates = self.sample_gates()
        logits = self.supernet.forward_choices(x, active, gates, inactive)
        ce = self.cross_entropy(logits, y)
        runtime_ms = self.expected_runtime_ms()
        return ce + self.runtime_loss(runtime_ms, self.lambda_), ce, runtime_ms

    @torch.no_grad()
    def after_arch_step(self) -> None:
        """Shift the sampled pair's logits back to their old log-sum-exp (ProxylessNAS' rescaling)."""
        for alpha, pair, old in zip(self.supernet.arch_parameters(), self._pairs, self._pair_logsumexp):
            alpha[pair] += old - torch.logsumexp(alpha[pair], 0)

    def derive_architecture(self) -> Architecture:
        return self.finish_derivation(self.supernet.derive(), max_path_probability=self.max_path_probabilities())
