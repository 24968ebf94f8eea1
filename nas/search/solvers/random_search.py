"""Random search under a runtime target (thesis Sec 6.2): constrained sampling by rejection, brief training.

``num_samples`` architectures are drawn uniformly from the space and kept only if their LUT latency lies in
``[min_ms, target_ms]`` (rejection sampling; ``target_ms`` defaults to ``hardware.target_ms``). The epoch budget
of the trainer is shared: each sample is trained from scratch as a child network for ``epochs_per_sample``
epochs (default ``max_epochs // num_samples``), one after the other, with its own optimiser and cosine schedule,
and validated at the end of its last epoch. The derived architecture is the sample with the best validation
accuracy (ties: lower latency). Samples are drawn with ``seed`` in ``__init__``, so a resumed run sees the same
samples; their validation accuracies live in a buffer that is checkpointed.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.optimization import OptimizerFactory, SchedulerFactory, build_optimizer
from nas.search.solvers.base import NOT_HYPERPARAMETERS, SearchModule
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace

log = logging.getLogger(__name__)


def sample_under_target(space: SearchSpace, latency_ms: Any, target_ms: float, num_samples: int, seed: int,
                        min_ms: float | None = None, max_tries: int = 100_000) -> list[Architecture]:
    """``num_samples`` distinct uniform samples of ``space`` with ``min_ms <= latency_ms(arch) <= target_ms``."""
    rng = random.Random(seed)
    accepted: list[Architecture] = []
    seen: set[tuple[str, ...]] = set()
    low = float("-inf") if min_ms is None else float(min_ms)
    for _ in range(max_tries):
        arch = space.sample(rng)
        key = tuple(arch.keys)
        if key in seen:
            continue
        if low <= latency_ms(arch) <= target_ms:
            accepted.append(arch)
            seen.add(key)
            if len(accepted) == num_samples:
                return accepted
    fastest = latency_ms(space.smallest())
    raise ConfigError(f"random search found only {len(accepted)} of {num_samples} architectures with latency in "
                      f"[{min_ms if min_ms is not None else '-inf'}, {target_ms}] ms after {max_tries} samples "
                      f"(the smallest architecture takes {fastest:.4g} ms, the largest "
                      f"{latency_ms(space.largest()):.4g} ms); raise hardware.target_ms / lower solver.min_ms, "
                      "or ask for fewer solver.num_samples")


class RandomSearch(SearchModule):
    """Rejection-sampled random search, each sample trained briefly within the trainer's epoch budget.

    Settings: ``nas/conf/solver/random.yaml``.

    Args:
        target_ms: runtime target (ms); required.
        min_ms: optional lower end of the latency window (the thesis samples "within the range of interest").
        num_samples: architectures to sample and train.
        epochs_per_sample: training epochs of each sample (``None``: ``trainer.max_epochs // num_samples``).
        optimizer, lr_scheduler, label_smoothing: the training recipe of each sample (``_partial_`` torch optimiser
            and per-step schedule, one of each per sample).
        seed: seed of the sampling.
    """

    solver_name = "random"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT, *,
                 target_ms: float | None, min_ms: float | None, num_samples: int, epochs_per_sample: int | None,
                 optimizer: OptimizerFactory, label_smoothing: float, lr_scheduler: SchedulerFactory | None,
                 max_tries: int, seed: int, runtime_form: str) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_=0.0, label_smoothing=label_smoothing,
                         runtime_form=runtime_form)
        if target_ms is None:
            raise ConfigError("solver=random needs a runtime target: set hardware.target_ms=<ms> (or "
                              "solver.target_ms=<ms>)")
        if not float(target_ms) > 0:
            raise ConfigError(f"solver.target_ms must be > 0, got {target_ms}")
        if num_samples < 1:
            raise ConfigError(f"solver.num_samples must be >= 1, got {num_samples}")
        if epochs_per_sample is not None and epochs_per_sample < 1:
            raise ConfigError(f"solver.epochs_per_sample must be >= 1 (or null), got {epochs_per_sample}")
        self.automatic_optimization = False
        self.target_ms = float(target_ms)
        self.min_ms = None if min_ms is None else float(min_ms)
        self.num_samples = int(num_samples)
        self.epochs_per_sample_config = epochs_per_sample
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.samples = sample_under_target(space, self.predicted_latency_ms, self.target_ms, self.num_samples,
                                           int(seed), self.min_ms, int(max_tries))
        self.children_nets = nn.ModuleList(build_child(space, a, in_channels, num_classes) for a in self.samples)
        self.register_buffer("sample_val_acc", torch.full((self.num_samples,), -1.0))
        self.sample_accuracy = MulticlassAccuracy(num_classes, average="micro")  # synchronised over DDP ranks
        self._schedulers: list[Any] = []
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ schedule
    @property
    def epochs_per_sample(self) -> int:
        if self.epochs_per_sample_config is not None:
            return int(self.epochs_per_sample_config)
        max_epochs = getattr(self.trainer, "max_epochs", None) if self._trainer is not None else None
        if not max_epochs or max_epochs < 0:
            raise ConfigError("solver=random with epochs_per_sample=null needs trainer.max_epochs; set one of them")
        return max(1, int(max_epochs) // self.num_samples)

    def current_sample(self) -> int:
        return self.current_epoch // self.epochs_per_sample

    def on_fit_start(self) -> None:
        budget = self.epochs_per_sample * self.num_samples
        max_epochs = self.trainer.max_epochs or 0
        if 0 < max_epochs < budget:
            log.warning("random search: %d samples x %d epochs need %d epochs, trainer.max_epochs=%d; samples "
                        "not reached stay untrained", self.num_samples, self.epochs_per_sample, budget, max_epochs)

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.children_nets[min(self.current_sample(), self.num_samples - 1)](x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        index = self.current_sample()
        if index >= self.num_samples:
            return None
        optimizers = self.optimizers()
        optimizer = optimizers[index] if isinstance(optimizers, list) else optimizers
        x, y = batch
        logits = self.children_nets[index](x)
        loss = self.cross_entropy(logits, y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if self.lr_scheduler_factory is not None:
            self.sample_scheduler(index, optimizer.optimizer, batch_idx).step()
        self.log_dict({"train/ce": loss.detach(), "train/acc": self.batch_accuracy(logits, y),
                       "train/sample": float(index)}, on_step=True, on_epoch=False)
        return loss.detach()

    def on_validation_epoch_start(self) -> None:
        self.sample_accuracy.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.sample_accuracy.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        acc = float(self.sample_accuracy.compute())
        index = self.current_sample()
        if index < self.num_samples and (self.current_epoch + 1) % self.epochs_per_sample == 0:
            self.sample_val_acc[index] = acc
        self.log("val/sample_acc", acc, sync_dist=False)
        best = float(self.sample_val_acc.max())
        self.log("val/acc", best if best >= 0 else acc, prog_bar=True, sync_dist=False)
        arch = self.derive_architecture()
        self.log("val/runtime_ms", self.predicted_latency_ms(arch), prog_bar=True, sync_dist=False)
        self.log_architecture(arch)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [build_optimizer(self.optimizer_factory, [{"params": list(net.parameters())}], "solver.optimizer")
                for net in self.children_nets]

    def sample_scheduler(self, index: int, optimizer: torch.optim.Optimizer, batch_idx: int) -> Any:
        """Sample ``index``'s schedule over its own steps (created at its first step; a resumed run fast-forwards it
        to the step it resumes at)."""
        while len(self._schedulers) <= index:
            self._schedulers.append(None)
        if self._schedulers[index] is None:
            per_epoch = max(1, int(self.trainer.num_training_batches))
            total = self.epochs_per_sample * per_epoch
            scheduler = self.lr_scheduler_factory(optimizer, total_steps=total)
            done = (self.current_epoch - index * self.epochs_per_sample) * per_epoch + batch_idx
            for _ in range(done):
                scheduler.step()
            self._schedulers[index] = scheduler
        return self._schedulers[index]

    # ------------------------------------------------------------------ result
    def derive_architecture(self) -> Architecture:
        acc = self.sample_val_acc.tolist()
        latency = [self.predicted_latency_ms(a) for a in self.samples]
        best = max(range(self.num_samples), key=lambda i: (acc[i], -latency[i]))
        records = [{"architecture": a.keys, "predicted_latency_ms": round(ms, 6), "val_acc": None if v < 0 else v}
                   for a, ms, v in zip(self.samples, latency, acc)]
        return self.samples[best].with_meta(solver="random", predicted_latency_ms=round(latency[best], 6),
                                            target_ms=self.target_ms, samples=records,
                                            epochs_trained=int(self.current_epoch))
