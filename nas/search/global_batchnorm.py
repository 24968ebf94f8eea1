"""BatchNorm over the global batch for CPU (gloo) processes, where PyTorch's ``SyncBatchNorm`` refuses to run.

``trainer.sync_batchnorm=true`` uses :class:`ProcessSyncBatchNorm` on CPU and Lightning's ``TorchSyncBatchNorm`` on
GPUs (:func:`sync_batchnorm_arguments`).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.plugins.layer_sync import LayerSync
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the batch of all processes together.

    Sums and centred sums of squares are all-reduced with the differentiable ``torch.distributed.nn`` collective,
    so gradients flow across ranks as in ``torch.nn.SyncBatchNorm``, on any backend (gloo included). Without an
    initialised process group, or in eval mode, it is a plain ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y


def _swap_batchnorm(module: nn.Module, to_global: bool) -> nn.Module:
    source, target = (nn.BatchNorm2d, GlobalBatchNorm2d) if to_global else (GlobalBatchNorm2d, nn.BatchNorm2d)
    if type(module) is source:
        new = target(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _swap_batchnorm(child, to_global))
    return module


class ProcessSyncBatchNorm(LayerSync):
    """Lightning layer-sync plugin: every ``BatchNorm2d`` becomes a :class:`GlobalBatchNorm2d` during the fit."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap_batchnorm(model, True)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap_batchnorm(model, False)


def sync_batchnorm_arguments(trainer_cfg: Any) -> dict[str, Any]:
    """Trainer keyword overrides for ``trainer.sync_batchnorm=true`` on CPU (Lightning's plugin is GPU-only)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if bool(trainer_cfg.get("sync_batchnorm", False)) and accelerator == "cpu":
        return {"sync_batchnorm": False, "layer_sync": [ProcessSyncBatchNorm()]}
    return {}
