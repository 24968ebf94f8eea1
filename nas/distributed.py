"""Scaling a search out through Lightning's engines: trainer checks, one LUT for all ranks, rank agreement.

* :func:`check_trainer_config` turns the usual mistakes with ``trainer=gpu|ddp|tpu`` into one clear error.
* :func:`obtain_lut_once`: global rank 0 profiles (or reads the cache); every other rank waits for the cached
  LUT rank 0 writes and loads it, so all ranks optimise the same runtime model (ranks profiling on their own
  would measure slightly different LUTs and their thresholds would drift apart).
* :class:`GlobalBatchNorm2d` / :class:`ProcessSyncBatchNorm`: BatchNorm over the global batch for CPU (gloo)
  processes, where PyTorch's ``SyncBatchNorm`` refuses to run; ``trainer.sync_batchnorm=true`` uses it on CPU and
  Lightning's ``TorchSyncBatchNorm`` on GPUs.
* :class:`RankAgreement`: after the fit, gathers every rank's thresholds and records how far they differ
  (DDP keeps them identical; anything else is a bug worth seeing in ``summary.json``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.layer_sync import LayerSync
from torch import nn

from nas.errors import ConfigError, LUTError
from nas.latency.backends import LatencyBackend
from nas.latency.lut import LatencyLUT
from nas.latency.profiler import cache_path, obtain_lut
from nas.latency.signatures import required_ops
from nas.space import SearchSpace

log = logging.getLogger(__name__)

_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "JSM_NAMESPACE_RANK")


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0, from the launchers' environment (before DDP is initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in _RANK_VARIABLES)


def check_trainer_config(trainer_cfg: Any) -> None:
    """Reject trainer settings that cannot run on this machine, naming the fix."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU (torch "
                          f"{torch.__version__}); use trainer=cpu or trainer=ddp_cpu, or install a CUDA build of torch")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer=tpu needs torch_xla (Lightning's XLA accelerator); on a TPU VM install "
                          f"torch_xla matching torch {torch.__version__.split('+')[0]}, or choose trainer=cpu/gpu")


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


def obtain_lut_once(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int, *,
                    cache_dir: str | os.PathLike | None = None, lut_path: str | os.PathLike | None = None,
                    strict: bool = False, progress: bool = True, wait_s: float = 3600.0,
                    poll_s: float = 2.0) -> LatencyLUT:
    """:func:`~nas.latency.profiler.obtain_lut` on global rank 0; the other ranks load what rank 0 cached."""
    if lut_path or is_global_rank_zero():
        return obtain_lut(space, backend, in_channels, num_classes, cache_dir=cache_dir, lut_path=lut_path,
                          strict=strict, progress=progress)
    if not cache_dir:
        raise ConfigError("a multi-process search shares rank 0's LUT through paths.cache_dir; set it to a folder "
                          "all ranks can read, or pass hardware.lut_path=<LUT measured beforehand>")
    path = Path(cache_path(cache_dir, space, backend, in_channels, num_classes))
    needed = set(required_ops(space, in_channels, num_classes))
    deadline = time.monotonic() + wait_s
    while True:
        if path.is_file():
            try:
                lut = LatencyLUT.load(path)
                if needed <= set(lut.entries):
                    log.info("Using rank 0's LUT %s", path)
                    return lut
            except LUTError:
                pass  # rank 0 is replacing it; files are written atomically, so retry
        if time.monotonic() > deadline:
            raise LUTError(f"waited {wait_s:.0f} s for rank 0 to write the LUT {path}; check that paths.cache_dir is "
                           "on a filesystem shared by all nodes, or pass hardware.lut_path=...")
        time.sleep(poll_s)


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
