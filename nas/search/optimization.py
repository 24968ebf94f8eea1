"""Optimisers and learning-rate schedules from the config: ``_partial_`` torch objects, built with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nas.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def build_optimizer(factory: OptimizerFactory, param_groups: list[dict[str, Any]], where: str) -> torch.optim.Optimizer:
    """``factory(param_groups)`` (a ``_partial_`` optimiser from the config); a bad option is a :class:`ConfigError`."""
    try:
        return factory(param_groups)
    except (TypeError, ValueError) as err:
        name = getattr(getattr(factory, "func", factory), "__name__", "optimizer")
        raise ConfigError(f"{where}: torch.optim.{name} rejects its settings ({err}); fix {where}.*") from None


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps`` steps, then cosine decay to 0 at ``total_steps`` (torch's schedulers)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps) - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=max(1, warmup_steps - 1))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def step_schedule(scheduler_factory: SchedulerFactory | None, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> list[dict[str, Any]]:
    """Lightning's ``lr_scheduler`` entry for a per-step schedule (``[]`` when the config sets none)."""
    if scheduler_factory is None:
        return []
    return [{"scheduler": scheduler_factory(optimizer, total_steps=max(1, int(total_steps))), "interval": "step"}]
