"""Supernet training for sub-network search (``solver=supernet``): train once, search many.

The single-path solver converges to one path, so its shared weights rank other sub-networks poorly. This solver
trains the same :class:`~nas.supernets.single_path_supernet.SinglePathSupernet` so that *every* sub-network can be
evaluated with the shared weights afterwards (``subnet_search.py``):

* ``sampling=uniform``: each step trains ``num_random`` sub-networks drawn uniformly from the space, as in
  single-path one-shot NAS (SPOS, Guo et al. 2020);
* ``sampling=sandwich``: each step trains the largest, the smallest and ``num_random`` random sub-networks
  (the sandwich rule of OFA / BigNAS), so both ends of the space are always trained;
* ``distill=true`` (with the sandwich rule): in-place distillation (BigNAS, Yu et al. 2020, Sec. 3.1; OFA, Cai et
  al. 2020): the largest network learns from the labels (cross-entropy with label smoothing) and every other
  network of the same step from the largest one's *detached* soft predictions, with the knowledge-distillation
  loss of Hinton et al. (2015) ``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))`` (:func:`distillation_loss`).

Every sampled network runs through the superkernels with constant 0/1 indicators
(:meth:`~nas.supernets.single_path_supernet.SinglePathSupernet.fixed_decisions`), so it computes exactly the child
network that ``extract_child`` would build. The loss is the mean over the step's sub-networks of their
cross-entropy (or, distilled, their distillation loss; the gradients accumulate into the shared weights); there is
no runtime term and no threshold is learned. Validation scores the largest network after re-estimating BatchNorm
statistics for it. Sampling is a function of ``(seed, step)``, so a resumed run trains the same sub-networks as an
uninterrupted one (distillation adds no randomness: the teacher's logits come from the same step's batch).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.optimization import OptimizerFactory, SchedulerFactory, build_optimizer, step_schedule
from nas.search.solvers.base import NOT_HYPERPARAMETERS, SearchModule
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.single_path_supernet import SinglePathSupernet

SAMPLINGS = ("uniform", "sandwich")


def sample_step_architectures(space: SearchSpace, sampling: str, num_random: int, seed: int,
                              step: int) -> list[Architecture]:
    """The sub-networks trained at ``step``: ``num_random`` uniform samples, preceded by the largest and the
    smallest network with ``sampling="sandwich"``. Deterministic in ``(seed, step)`` (resume-safe)."""
    rng = random.Random(f"spnas-supernet:{seed}:{step}")
    archs = [space.largest(), space.smallest()] if sampling == "sandwich" else []
    archs += [space.sample(rng) for _ in range(num_random)]
    return archs


def check_sampling_settings(sampling: str, num_random: int, distill: bool = False,
                            distill_temperature: float = 1.0) -> None:
    """Raise :class:`ConfigError` (one line naming the fix) unless the settings of ``solver=supernet`` fit together:
    a known ``sampling``, enough random sub-networks, and distillation only with the sandwich rule (its teacher is
    the largest network, which only the sandwich rule trains in every step)."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"solver.sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
    minimum = 1 if sampling == "uniform" else 0
    if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < minimum:
        raise ConfigError(f"solver.num_random must be an integer >= {minimum} with sampling={sampling}, "
                          f"got {num_random!r}")
    if not isinstance(distill, bool):
        raise ConfigError(f"solver.distill must be true or false, got {distill!r}")
    if distill and sampling != "sandwich":
        raise ConfigError(f"solver.distill=true needs solver.sampling=sandwich (the largest network, trained in every "
                          f"step, is the teacher), got sampling={sampling}; set solver.sampling=sandwich or "
                          "solver.distill=false")
    if isinstance(distill_temperature, bool) or not isinstance(distill_temperature, (int, float)) \
            or not math.isfinite(distill_temperature) or distill_temperature <= 0:
        raise ConfigError(f"solver.distill_temperature must be a finite number > 0, got {distill_temperature!r}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015, Eq. 2 with the ``T²`` gradient scaling):
    ``T² · mean_batch KL(softmax(z_t / T) ‖ softmax(z_s / T))``.

    Its gradient in the student's logits equals that of the soft cross-entropy ``−Σ p_t log p_s`` of BigNAS / OFA
    (they differ by the teacher's entropy, a constant); unlike it, the loss is 0 when the student matches the
    teacher. The teacher's logits are detached here: no gradient reaches the teacher through its soft target.
    """
    t = float(temperature)
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return t * t * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


class SupernetTraining(SearchModule):
    """Weight-sharing supernet training with sampled sub-networks (SPOS uniform sampling / sandwich rule).

    Settings: ``nas/conf/solver/supernet.yaml``.

    Args:
        space, in_channels, num_classes, lut: the search space, data shape and latency LUT (the LUT only prices
            the largest network for the summary; the runtime takes no part in training).
        sampling: ``uniform`` or ``sandwich``.
        num_random: uniformly sampled sub-networks per step (``>= 1`` for ``uniform``, ``>= 0`` for ``sandwich``).
        optimizer, lr_scheduler, label_smoothing: the training recipe of the shared weights (``_partial_`` torch
            optimiser and per-step schedule).
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics before validation.
        seed: seed of the sub-network sampling.
        distill: in-place distillation (``sampling=sandwich`` only): the largest network is trained on the labels,
            every other sampled network on the largest one's detached soft predictions (:func:`distillation_loss`).
        distill_temperature: ``T`` of the distillation loss (1: the teacher's plain softmax, as in BigNAS).
    """

    solver_name = "supernet"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT, *,
                 sampling: str, num_random: int, optimizer: OptimizerFactory, lr_scheduler: SchedulerFactory | None,
                 label_smoothing: float, bn_calibration_batches: int, seed: int, runtime_form: str,
                 distill: bool = False, distill_temperature: float = 1.0) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_=0.0, label_smoothing=label_smoothing,
                         runtime_form=runtime_form)
        check_sampling_settings(sampling, num_random, distill, distill_temperature)
        self.sampling = sampling
        self.num_random = int(num_random)
        self.distill = bool(distill)
        self.distill_temperature = float(distill_temperature)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.bn_calibration_batches = int(bn_calibration_batches)
        self.seed = int(seed)
        self.supernet = SinglePathSupernet(space, in_channels, num_classes)
        for p in self.supernet.threshold_parameters():  # no thresholds to learn: decisions are always fixed
            p.requires_grad_(False)
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor, arch: Architecture | None = None) -> torch.Tensor:
        return self.supernet(x, self.supernet.fixed_decisions(arch or self.space.largest()))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Mean loss of the step's sub-networks: each one's cross-entropy; with ``distill`` the largest (first)
        one's cross-entropy and the others' distillation loss towards its detached logits (BigNAS Sec. 3.1)."""
        x, y = batch
        archs = sample_step_architectures(self.space, self.sampling, self.num_random, self.seed, self.global_step)
        losses = []
        teacher: torch.Tensor | None = None
        for i, arch in enumerate(archs):
            logits = self.supernet(x, self.supernet.fixed_decisions(arch))
            if self.distill and i > 0:
                assert teacher is not None
                losses.append(distillation_loss(logits, teacher, self.distill_temperature))
            else:
                losses.append(self.cross_entropy(logits, y))
            if self.distill and i == 0:
                teacher = logits.detach()
        loss = torch.stack(losses).mean()
        logs = {"train/loss": loss, "train/subnets_per_step": float(len(archs))}
        if self.sampling == "sandwich":
            logs["train/ce_largest"] = losses[0]
            logs["train/distill_smallest" if self.distill else "train/ce_smallest"] = losses[1]
        if self.distill and len(losses) > 1:
            logs["train/distill"] = torch.stack(losses[1:]).detach().mean()
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
        optimizer = build_optimizer(self.optimizer_factory, [{"params": self.supernet.weight_parameters(),
                                                              "name": "weights"}], "solver.optimizer")
        schedule = step_schedule(self.lr_scheduler_factory, optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, **({"lr_scheduler": schedule[0]} if schedule else {})}

    # ------------------------------------------------------------------ result
    def derive_architecture(self) -> Architecture:
        """The largest sub-network: the supernet has no single answer; ``subnet_search.py`` searches it."""
        arch = self.space.largest()
        return arch.with_meta(solver="supernet", predicted_latency_ms=round(self.predicted_latency_ms(arch), 6),
                              note="largest sub-network of a weight-sharing supernet; search it with "
                                   "subnet_search.py supernet=<run>/checkpoints/last.ckpt",
                              epochs_trained=int(self.current_epoch))
