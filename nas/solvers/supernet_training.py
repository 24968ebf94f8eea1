"""Supernet training for sub-network search (``solver=supernet``): train once, search many.

The single-path solver converges to one path, so its shared weights rank other sub-networks poorly. This solver
trains the same :class:`~nas.supernet.SinglePathSupernet` so that *every* sub-network can be evaluated with the
shared weights afterwards (``subnet_search.py``):

* ``sampling=uniform``: each step trains ``num_random`` sub-networks drawn uniformly from the space, as in
  single-path one-shot NAS (SPOS, Guo et al. 2020);
* ``sampling=sandwich``: each step trains the largest, the smallest and ``num_random`` random sub-networks
  (the sandwich rule of OFA / BigNAS), so both ends of the space are always trained.

Every sampled network runs through the superkernels with constant 0/1 indicators
(:meth:`~nas.supernet.SinglePathSupernet.fixed_decisions`), so it computes exactly the child network that
``extract_child`` would build. The loss is the mean cross-entropy over the step's sub-networks (their gradients
accumulate into the shared weights); there is no runtime term and no threshold is learned. Validation scores the
largest network after re-estimating BatchNorm statistics for it. Sampling is a function of ``(seed, step)``, so a
resumed run trains the same sub-networks as an uninterrupted one.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import torch

from nas.arch import Architecture
from nas.errors import ConfigError
from nas.latency.lut import LatencyLUT
from nas.solvers.base import SearchModule, cosine_factor, make_optimizer
from nas.space import SearchSpace
from nas.supernet import SinglePathSupernet

SAMPLINGS = ("uniform", "sandwich")


def sample_step_architectures(space: SearchSpace, sampling: str, num_random: int, seed: int,
                              step: int) -> list[Architecture]:
    """The sub-networks trained at ``step``: ``num_random`` uniform samples, preceded by the largest and the
    smallest network with ``sampling="sandwich"``. Deterministic in ``(seed, step)`` (resume-safe)."""
    rng = random.Random(f"spnas-supernet:{seed}:{step}")
    archs = [space.largest(), space.smallest()] if sampling == "sandwich" else []
    archs += [space.sample(rng) for _ in range(num_random)]
    return archs


class SupernetTraining(SearchModule):
    """Weight-sharing supernet training with sampled sub-networks (SPOS uniform sampling / sandwich rule).

    Args:
        space, in_channels, num_classes, lut: the search space, data shape and latency LUT (the LUT only prices
            the largest network for the summary; the runtime takes no part in training).
        sampling: ``uniform`` or ``sandwich``.
        num_random: uniformly sampled sub-networks per step (``>= 1`` for ``uniform``, ``>= 0`` for ``sandwich``).
        optimizer, lr_schedule, warmup_steps, label_smoothing: the training recipe of the shared weights.
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics before validation.
        seed: seed of the sub-network sampling.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 sampling: str = "sandwich", num_random: int = 1, optimizer: dict[str, Any] | None = None,
                 lr_schedule: str = "cosine", warmup_steps: int = 0, label_smoothing: float = 0.1,
                 bn_calibration_batches: int = 10, seed: int = 0, lambda_: float = 0.0) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_, label_smoothing)
        if sampling not in SAMPLINGS:
            raise ConfigError(f"solver.sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
        minimum = 1 if sampling == "uniform" else 0
        if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < minimum:
            raise ConfigError(f"solver.num_random must be an integer >= {minimum} with sampling={sampling}, "
                              f"got {num_random!r}")
        if lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"solver.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.sampling = sampling
        self.num_random = int(num_random)
        self.optimizer_config = dict(optimizer or {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                   "weight_decay": 4e-5})
        self.lr_schedule = lr_schedule
        self.warmup_steps = int(warmup_steps)
        self.bn_calibration_batches = int(bn_calibration_batches)
        self.seed = int(seed)
        self.supernet = SinglePathSupernet(space, in_channels, num_classes)
        for p in self.supernet.threshold_parameters():  # no thresholds to learn: decisions are always fixed
            p.requires_grad_(False)
        self.save_hyperparameters({
            "solver": "supernet", "space": space.name, "space_digest": space.digest, "sampling": sampling,
            "num_random": num_random, "optimizer": self.optimizer_config, "lr_schedule": lr_schedule,
            "warmup_steps": warmup_steps, "label_smoothing": label_smoothing,
            "bn_calibration_batches": bn_calibration_batches, "seed": seed,
        })

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor, arch: Architecture | None = None) -> torch.Tensor:
        return self.supernet(x, self.supernet.fixed_decisions(arch or self.space.largest()))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        archs = sample_step_architectures(self.space, self.sampling, self.num_random, self.seed, self.global_step)
        losses = []
        for arch in archs:
            logits = self.supernet(x, self.supernet.fixed_decisions(arch))
            losses.append(self.cross_entropy(logits, y))
        loss = torch.stack(losses).mean()
        logs = {"train/loss": loss, "train/subnets_per_step": float(len(archs))}
        if self.sampling == "sandwich":
            logs["train/ce_largest"] = losses[0]
            logs["train/ce_smallest"] = losses[1]
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("ce", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        decisions = self.supernet.fixed_decisions(self.space.largest())
        self.recalibrate_batchnorm(lambda x: self.supernet(x, decisions), self.bn_calibration_batches)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.supernet.fixed_decisions(self.space.largest()))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = make_optimizer([{"params": self.supernet.weight_parameters(), "name": "weights"}],
                                   self.optimizer_config)
        if self.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(cosine_factor, total=total, warmup=self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ result
    def derive_architecture(self) -> Architecture:
        """The largest sub-network: the supernet has no single answer; ``subnet_search.py`` searches it."""
        arch = self.space.largest()
        return arch.with_meta(solver="supernet", predicted_latency_ms=round(self.predicted_latency_ms(arch), 6),
                              note="largest sub-network of a weight-sharing supernet; search it with "
                                   "subnet_search.py supernet=<run>/checkpoints/last.ckpt",
                              epochs_trained=int(self.current_epoch))
