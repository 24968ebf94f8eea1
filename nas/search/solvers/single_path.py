"""Single-Path NAS as a LightningModule (thesis Ch. 5-6).

One optimiser with two parameter groups (weights; thresholds without weight decay) takes one gradient step
per batch on ``CE + lambda * log(R)`` (Eq 5.6-5.7): weights and thresholds are trained together, with no
bi-level alternation. During the first ``subset_dropout.epochs`` epochs indicators are randomly dropped
(Sec 5.3.3) and, by default, lambda is 0 (the runtime term switches on afterwards, as in the thesis' code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.optimization import OptimizerFactory, SchedulerFactory, build_optimizer, step_schedule
from nas.search.solvers.base import NOT_HYPERPARAMETERS, SearchModule
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.single_path_supernet import SinglePathSupernet, drop_subsets


class SinglePathSearch(SearchModule):
    """Single-path superkernel search with learned group-lasso thresholds (``nas/conf/solver/single_path.yaml``).

    Args:
        space, in_channels, num_classes, lut: the search space, data shape and latency LUT.
        lambda_: runtime trade-off of Eq 5.7.
        relaxation: ``sigmoid`` (thesis default) or ``ste`` (straight-through) gradient of the indicators.
        norm: group norm compared with the thresholds (``mean_square``, ``squared``, ``l2``).
        runtime_form: ``exact`` multilinear LUT model or the thesis' ``thesis`` form (Eq 5.9-5.10, 6.8).
        optimizer: ``_partial_`` torch optimiser for the weights; ``threshold_lr`` for the thresholds' group.
        subset_dropout: ``{p, epochs, rescale}``; ``runtime_warmup_epochs`` (``None``: its ``epochs``).
        lr_scheduler: ``_partial_`` per-step schedule of both parameter groups, called with
            ``(optimizer, total_steps=...)`` (the thresholds settle as the rate decays); ``None``: constant rates.
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics of the current
            architecture before each validation (0: off).
    """

    solver_name = "single_path"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT, *,
                 lambda_: float, relaxation: str, norm: str, runtime_form: str, label_smoothing: float,
                 optimizer: OptimizerFactory, threshold_lr: float, subset_dropout: Mapping[str, Any],
                 runtime_warmup_epochs: int | None, lr_scheduler: SchedulerFactory | None,
                 bn_calibration_batches: int) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_=lambda_, label_smoothing=label_smoothing,
                         runtime_form=runtime_form)
        missing = {"p", "epochs", "rescale"} - set(subset_dropout)
        if missing:
            raise ConfigError(f"solver.subset_dropout needs p, epochs and rescale; missing {sorted(missing)}")
        if not 0 <= float(subset_dropout["p"]) < 1:
            raise ConfigError(f"solver.subset_dropout.p must lie in [0, 1), got {subset_dropout['p']}")
        if isinstance(threshold_lr, bool) or not isinstance(threshold_lr, (int, float)) or not threshold_lr >= 0:
            raise ConfigError(f"solver.threshold_lr must be a number >= 0, got {threshold_lr!r}")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.threshold_lr = float(threshold_lr)
        self.dropout_p = float(subset_dropout["p"])
        self.dropout_epochs = int(subset_dropout["epochs"])
        self.dropout_rescale = bool(subset_dropout["rescale"])
        self.runtime_warmup_epochs = (self.dropout_epochs if runtime_warmup_epochs is None
                                      else int(runtime_warmup_epochs))
        self.bn_calibration_batches = int(bn_calibration_batches)
        self.supernet = SinglePathSupernet(space, in_channels, num_classes, relaxation=relaxation, norm=norm)
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)

    # ------------------------------------------------------------------ schedule of the method
    def current_lambda(self) -> float:
        return self.lambda_ if self.current_epoch >= self.runtime_warmup_epochs else 0.0

    def dropout_active(self) -> bool:
        return self.dropout_p > 0 and self.current_epoch < self.dropout_epochs

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        decisions = self.supernet.decisions()
        forward_decisions = (drop_subsets(decisions, self.dropout_p, self.dropout_rescale)
                             if self.dropout_active() else decisions)
        logits = self.supernet(x, forward_decisions)
        ce = self.cross_entropy(logits, y)
        runtime_ms = self.runtime_model(decisions)
        lam = self.current_lambda()
        loss = ce + self.runtime_loss(runtime_ms, lam)
        acc = self.batch_accuracy(logits, y)
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/runtime_ms": runtime_ms, "train/acc": acc,
                       "train/lambda": lam, "train/subset_dropout": float(self.dropout_active())},
                      on_step=True, on_epoch=False, prog_bar=False)
        self.log("R_ms", runtime_ms, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log("ce", ce, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        decisions = [d.map(torch.Tensor.detach) if d is not None else None for d in self.supernet.decisions()]
        self.recalibrate_batchnorm(lambda x: self.supernet(x, decisions), self.bn_calibration_batches)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.supernet.decisions())

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        groups = [
            {"params": self.supernet.weight_parameters(), "name": "weights"},
            {"params": self.supernet.threshold_parameters(), "name": "thresholds", "lr": self.threshold_lr,
             "weight_decay": 0.0},
        ]
        optimizer = build_optimizer(self.optimizer_factory, groups, "solver.optimizer")
        schedule = step_schedule(self.lr_scheduler_factory, optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, **({"lr_scheduler": schedule[0]} if schedule else {})}

    # ------------------------------------------------------------------ result
    def derive_architecture(self) -> Architecture:
        arch = self.supernet.derive()
        return arch.with_meta(solver=self.solver_name, predicted_latency_ms=round(self.predicted_latency_ms(arch), 6),
                              lambda_=self.lambda_, epochs_trained=int(self.current_epoch))

