"""Checks of a run's settings that fail fast, before any data is loaded or any op is profiled."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from nas.errors import ConfigError


def check_trainer_config(trainer_cfg: Any) -> None:
    """Reject trainer settings that cannot run on this machine, naming the fix."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU (torch "
                          f"{torch.__version__}); use trainer=cpu or trainer=ddp_cpu, or install a CUDA build of torch")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer=tpu needs torch_xla (Lightning's XLA accelerator); on a TPU VM install "
                          f"torch_xla matching torch {torch.__version__.split('+')[0]}, or choose trainer=cpu/gpu")
