"""Multi-path differentiable NAS (thesis Sec 2.4, Eq 2.2-2.3): DARTS-style softmax or FBNet-style Gumbel-softmax.

Every candidate op of a searchable layer is its own path with its own weights; a layer's output is the sum of
all paths weighted by ``softmax(alpha)`` (``weighting=softmax``) or by a Gumbel-softmax sample of ``alpha`` at
temperature ``T`` (``weighting=gumbel``; ``T = max(min, initial * decay^epoch)``, FBNet's exponential
schedule). Architecture and weight steps alternate (:class:`~nas.search.solvers.bilevel.BilevelSearch`); the runtime
term is the expected latency from the same LUT, ``CE + lambda * log(E[R])`` with ``E[R] = R_const +
sum_i sum_j softmax(alpha_i)_j LUT_ij``. The derived architecture takes the argmax of ``alpha`` per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.solvers.base import NOT_HYPERPARAMETERS
from nas.search.solvers.bilevel import BilevelSearch
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.multi_path_supernet import MultiPathSupernet

WEIGHTINGS = ("softmax", "gumbel")


def gumbel_temperature(epoch: int, initial: float, decay: float, minimum: float) -> float:
    """FBNet's schedule: ``max(minimum, initial * decay^epoch)``."""
    return max(float(minimum), float(initial) * float(decay) ** int(epoch))


class CandidatePathSearch(BilevelSearch):
    """Base of the solvers over a :class:`~nas.supernets.multi_path_supernet.MultiPathSupernet` (one path per
    candidate op, one logit per candidate): its weights and logits, the expected runtime ``E[R]`` under
    ``softmax(alpha)`` from the shared runtime model, and validation of the argmax architecture. Subclasses decide
    how paths are weighted or sampled.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 **kwargs: Any) -> None:
        super().__init__(space, in_channels, num_classes, lut, **kwargs)
        self.supernet = MultiPathSupernet(space, in_channels, num_classes)

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        return self.supernet.weight_parameters()

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return self.supernet.arch_parameters()

    def expected_runtime_ms(self) -> torch.Tensor:
        """Calibrated ``E[R]`` under ``softmax(alpha)``, from the one runtime model every solver shares."""
        return self.runtime_model.expected(self.supernet.probabilities())

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        best = [int(a.argmax()) for a in self.supernet.arch_parameters()]
        return self.supernet.forward_choices(x, best)

    def max_path_probabilities(self) -> list[float]:
        return [round(float(p.detach().max()), 4) for p in self.supernet.probabilities()]


class MultiPathSearch(CandidatePathSearch):
    """Multi-path supernet search; every path is computed in every step (memory grows with the candidates).

    Args:
        weighting: ``softmax`` (DARTS) or ``gumbel`` (FBNet).
        temperature: ``{initial, decay, min}`` of the Gumbel-softmax schedule (per epoch).
        Other arguments: see :class:`~nas.search.solvers.bilevel.BilevelSearch`.
    """

    solver_name = "multi_path"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 weighting: str, temperature: Mapping[str, float], **kwargs: Any) -> None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"solver.weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
        if set(temperature) != {"initial", "decay", "min"} or not (
                float(temperature["initial"]) > 0 and 0 < float(temperature["decay"]) <= 1
                and float(temperature["min"]) > 0):
            raise ConfigError(f"solver.temperature needs exactly initial > 0, 0 < decay <= 1 and min > 0, got "
                              f"{dict(temperature)}")
        super().__init__(space, in_channels, num_classes, lut, **kwargs)
        self.weighting = weighting
        if weighting != "softmax":
            self.solver_name = f"multi_path_{weighting}"
        self.temperature_schedule = {k: float(v) for k, v in temperature.items()}
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ weighting
    def temperature(self) -> float:
        s = self.temperature_schedule
        return gumbel_temperature(self.current_epoch, s["initial"], s["decay"], s["min"])

    def path_weights(self) -> list[torch.Tensor]:
        """Per-layer path weights: ``softmax(alpha)`` or a Gumbel-softmax sample at the current temperature."""
        if self.weighting == "softmax":
            return self.supernet.probabilities()
        tau = self.temperature()
        return [F.gumbel_softmax(a, tau=tau, hard=False) for a in self.supernet.arch_parameters()]

    def extra_train_logs(self) -> dict[str, float]:
        return {"train/temperature": self.temperature()} if self.weighting == "gumbel" else {}

    # ------------------------------------------------------------------ BilevelSearch
    def weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = [w.detach() for w in self.path_weights()]
        logits = self.supernet.forward_weighted(x, weights)
        return self.cross_entropy(logits, y), logits

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.supernet.forward_weighted(x, self.path_weights())
        ce = self.cross_entropy(logits, y)
        runtime_ms = self.expected_runtime_ms()
        return ce + self.runtime_loss(runtime_ms, self.lambda_), ce, runtime_ms

    def derive_architecture(self) -> Architecture:
        return self.finish_derivation(self.supernet.derive(), weighting=self.weighting,
                                      max_path_probability=self.max_path_probabilities())
