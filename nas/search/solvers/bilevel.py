"""Bi-level search (thesis Eq 2.3): alternate architecture steps and weight steps, the Lightning way.

``min_alpha min_w L(alpha, w) + lambda * log(R)``: each training step first takes one architecture step on a
batch of the architecture split (``CE + lambda * log(E[R])``, architecture optimiser), then one weight step on
the training batch (``CE``, weight optimiser). Both use manual optimisation with ``self.optimizers()`` and
``self.manual_backward``, so the strategy (DDP included) handles gradient synchronisation. The architecture
gradient is first-order (no unrolled weight step, as in first-order DARTS, FBNet and ProxylessNAS).

Architecture data (``arch_data``):

* ``val`` (default): the datamodule's validation split, the DARTS protocol. The split is seeded and disjoint
  from the training split; each rank reads its own shard (``DistributedSampler``) under DDP. The supernet's
  ``val/acc`` is then measured on data the architecture was fitted on: compare solvers on retrained derived
  nets (``scripts/compare_solvers.py`` reports the test split).
* ``train``: the architecture step reuses the current training batch (single-level, cheaper, no held-out data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.optimization import OptimizerFactory, SchedulerFactory, build_optimizer, step_schedule
from nas.search.solvers.base import SearchModule
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace

ARCH_DATA = ("val", "train")


class BilevelSearch(SearchModule):
    """Base of the alternating solvers (``single_path_softmax``, ``multi_path``, ``proxyless``).

    Subclasses implement :meth:`weight_parameters`, :meth:`arch_parameters`, :meth:`weight_loss`,
    :meth:`arch_loss`, :meth:`eval_logits` and :meth:`derive_architecture`; :meth:`after_arch_step` is an
    optional hook run after every architecture update. Settings: ``nas/conf/solver_common/bilevel.yaml``.

    Args:
        lambda_: runtime trade-off of ``CE + lambda * log(E[R])`` in the architecture step.
        optimizer / arch_optimizer: ``_partial_`` torch optimisers of the weights and of the architecture.
        arch_data: ``val`` or ``train`` (see the module docstring).
        arch_warmup_epochs: epochs of weight steps only before architecture steps start.
        lr_scheduler: ``_partial_`` per-step schedule of the weight optimiser (``None``: constant).
        bn_calibration_batches: BN re-estimation for the derived architecture before each validation.
        seed: seed of the architecture-batch order.
    """

    solver_name = "bilevel"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT, *,
                 lambda_: float, label_smoothing: float, runtime_form: str, optimizer: OptimizerFactory,
                 arch_optimizer: OptimizerFactory, arch_data: str, arch_warmup_epochs: int,
                 lr_scheduler: SchedulerFactory | None, bn_calibration_batches: int, seed: int) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_=lambda_, label_smoothing=label_smoothing,
                         runtime_form=runtime_form)
        if arch_data not in ARCH_DATA:
            raise ConfigError(f"solver.arch_data must be one of {list(ARCH_DATA)}, got {arch_data!r}")
        if isinstance(arch_warmup_epochs, bool) or not isinstance(arch_warmup_epochs, int) or arch_warmup_epochs < 0:
            raise ConfigError(f"solver.arch_warmup_epochs must be an integer >= 0, got {arch_warmup_epochs!r}")
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.arch_optimizer_factory = arch_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.arch_data = arch_data
        self.arch_warmup_epochs = int(arch_warmup_epochs)
        self.bn_calibration_batches = int(bn_calibration_batches)
        self.seed = int(seed)
        self._arch_batches: Iterator[Any] | None = None
        self.arch_steps_taken = 0

    # ------------------------------------------------------------------ to implement
    def weight_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CE, logits)`` of a weight step."""
        raise NotImplementedError

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(CE + lambda * log(E[R]), CE, E[R] in ms)`` of an architecture step."""
        raise NotImplementedError

    def expected_runtime_ms(self) -> torch.Tensor:
        raise NotImplementedError

    def after_arch_step(self) -> None:
        """Hook after each architecture update."""

    def extra_train_logs(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ schedule
    def arch_active(self) -> bool:
        return self.current_epoch >= self.arch_warmup_epochs

    def _arch_batch_iterator(self) -> Iterator[Any]:
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_set", None) if datamodule is not None else None
        if dataset is None:
            raise ConfigError("solver.arch_data=val needs a datamodule with a validation split (val_set); pass "
                              "datamodule=... to trainer.fit or set solver.arch_data=train")
        batch_size = int(getattr(datamodule, "batch_size", 64))
        world = int(self.trainer.world_size)
        rounds = 0
        while True:
            if world > 1:
                sampler = DistributedSampler(dataset, num_replicas=world, rank=int(self.trainer.global_rank),
                                             shuffle=True, seed=self.seed)
                sampler.set_epoch(rounds)
            else:
                sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed * 100003 + rounds))
            yield from DataLoader(dataset, batch_size=batch_size, sampler=sampler)
            rounds += 1

    def next_arch_batch(self, train_batch: Any) -> Any:
        if self.arch_data == "train":
            return train_batch
        if self._arch_batches is None:
            self._arch_batches = self._arch_batch_iterator()
        x, y = next(self._arch_batches)
        return x.to(self.device), y.to(self.device)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        weight_opt, arch_opt = self.optimizers()
        logs: dict[str, Any] = {}
        if self.arch_active():
            xa, ya = self.next_arch_batch(batch)
            arch_opt.zero_grad()
            arch_total, arch_ce, runtime_ms = self.arch_loss(xa, ya)
            self.manual_backward(arch_total)
            arch_opt.step()
            self.after_arch_step()
            self.arch_steps_taken += 1
            logs.update({"train/arch_loss": arch_total.detach(), "train/arch_ce": arch_ce.detach(),
                         "train/expected_runtime_ms": runtime_ms.detach()})
            self.log("E[R]_ms", runtime_ms.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        x, y = batch
        weight_opt.zero_grad()
        ce, logits = self.weight_loss(x, y)
        self.manual_backward(ce)
        weight_opt.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        acc = self.batch_accuracy(logits, y)
        logs.update({"train/ce": ce.detach(), "train/acc": acc, "train/lambda": self.lambda_,
                     "train/arch_active": float(self.arch_active()), **self.extra_train_logs()})
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("ce", ce.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return ce.detach()

    def on_validation_epoch_start(self) -> None:
        self.recalibrate_batchnorm(self.eval_logits, self.bn_calibration_batches)

    def validation_extras(self) -> dict[str, float]:
        with torch.no_grad():
            return {"val/expected_runtime_ms": float(self.expected_runtime_ms())}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        weight_opt = build_optimizer(self.optimizer_factory, [{"params": self.weight_parameters(), "name": "weights"}],
                                     "solver.optimizer")
        arch_opt = build_optimizer(self.arch_optimizer_factory, [{"params": self.arch_parameters(), "name": "arch"}],
                                   "solver.arch_optimizer")
        return [weight_opt, arch_opt], step_schedule(self.lr_scheduler_factory, weight_opt,
                                                     self.trainer.estimated_stepping_batches)

    def finish_derivation(self, arch: Architecture, **meta: Any) -> Architecture:
        return arch.with_meta(solver=self.solver_name, predicted_latency_ms=round(self.predicted_latency_ms(arch), 6),
                              lambda_=self.lambda_, epochs_trained=int(self.current_epoch), **meta)
