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

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.solvers.base import SearchModule, cosine_factor, make_optimizer
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

    Args:
        target_ms: runtime target (ms); required.
        min_ms: optional lower end of the latency window (the thesis samples "within the range of interest").
        num_samples: architectures to sample and train.
        epochs_per_sample: training epochs of each sample (``null``: ``trainer.max_epochs // num_samples``).
        optimizer, lr_schedule, warmup_steps, label_smoothing: the training recipe of each sample.
        seed: seed of the sampling.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 target_ms: float | None = None, min_ms: float | None = None, num_samples: int = 4,
                 epochs_per_sample: int | None = None, optimizer: dict[str, Any] | None = None,
                 label_smoothing: float = 0.1, lr_schedule: str = "cosine", warmup_steps: int = 0,
                 max_tries: int = 100_000, seed: int = 0, lambda_: float = 0.0) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_, label_smoothing)
        if target_ms is None:
            raise ConfigError("solver=random needs a runtime target: set hardware.target_ms=<ms> (or "
                              "solver.target_ms=<ms>)")
        if not float(target_ms) > 0:
            raise ConfigError(f"solver.target_ms must be > 0, got {target_ms}")
        if num_samples < 1:
            raise ConfigError(f"solver.num_samples must be >= 1, got {num_samples}")
        if epochs_per_sample is not None and epochs_per_sample < 1:
            raise ConfigError(f"solver.epochs_per_sample must be >= 1 (or null), got {epochs_per_sample}")
        if lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"solver.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.automatic_optimization = False
        self.target_ms = float(target_ms)
        self.min_ms = None if min_ms is None else float(min_ms)
        self.num_samples = int(num_samples)
        self.epochs_per_sample_config = epochs_per_sample
        self.optimizer_config = dict(optimizer or {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                   "weight_decay": 4e-5})
        self.lr_schedule = lr_schedule
        self.warmup_steps = int(warmup_steps)
        self.samples = sample_under_target(space, self.predicted_latency_ms, self.target_ms, self.num_samples,
                                           int(seed), self.min_ms, int(max_tries))
        self.children_nets = nn.ModuleList(build_child(space, a, in_channels, num_classes) for a in self.samples)
        self.register_buffer("sample_val_acc", torch.full((self.num_samples,), -1.0))
        self._correct = torch.zeros(())
        self._count = torch.zeros(())
        self.save_hyperparameters({
            "solver": "random", "space": space.name, "space_digest": space.digest, "target_ms": self.target_ms,
            "min_ms": self.min_ms, "num_samples": self.num_samples, "epochs_per_sample": epochs_per_sample,
            "optimizer": self.optimizer_config, "label_smoothing": label_smoothing, "lr_schedule": lr_schedule,
            "warmup_steps": warmup_steps, "seed": seed,
        })

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
        if self.lr_schedule == "cosine":
            per_epoch = max(1, int(self.trainer.num_training_batches))
            step = (self.current_epoch - index * self.epochs_per_sample) * per_epoch + batch_idx
            factor = cosine_factor(step, total=self.epochs_per_sample * per_epoch, warmup=self.warmup_steps)
            for group in optimizer.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        x, y = batch
        logits = self.children_nets[index](x)
        loss = self.cross_entropy(logits, y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log_dict({"train/ce": loss.detach(), "train/acc": (logits.argmax(1) == y).float().mean(),
                       "train/sample": float(index)}, on_step=True, on_epoch=False)
        return loss.detach()

    def on_validation_epoch_start(self) -> None:
        self._correct = torch.zeros((), device=self.device)
        self._count = torch.zeros((), device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self._correct = self._correct + (logits.argmax(1) == y).sum()
        self._count = self._count + y.numel()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        correct = self.trainer.strategy.reduce(self._correct, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._count, reduce_op="sum")
        acc = float(correct / count.clamp_min(1))
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
        optimizers = []
        for net in self.children_nets:
            opt = make_optimizer([{"params": list(net.parameters())}], self.optimizer_config)
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
            optimizers.append(opt)
        return optimizers

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
