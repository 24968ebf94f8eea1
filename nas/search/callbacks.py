"""Lightning callbacks of a search run."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def architecture_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The solver's architecture parameters (thresholds) if it exposes them, else all its parameters."""
    supernet = getattr(module, "supernet", None)
    if supernet is not None and hasattr(supernet, "threshold_parameters"):
        return list(supernet.threshold_parameters())
    return list(module.parameters())


class RankAgreement(pl.Callback):
    """Records ``world_size`` and the largest difference of any rank's architecture parameters from rank 0's."""

    def __init__(self) -> None:
        self.world_size = 1
        self.max_abs_diff = 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.world_size = int(trainer.world_size)
        if self.world_size <= 1:
            return
        params = [p.detach().flatten() for p in architecture_parameters(pl_module)]
        local = torch.cat(params) if params else torch.zeros(1, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local)  # (world_size, n)
        self.max_abs_diff = float((gathered - gathered[0]).abs().max())

    def summary(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "max_threshold_diff_across_ranks": self.max_abs_diff}
