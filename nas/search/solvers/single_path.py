"""Single-Path NAS as a LightningModule (thesis Ch. 5-6).

One optimiser with two parameter groups (weights; thresholds without weight decay) takes one gradient step
per batch on ``CE + lambda * log(R)`` (Eq 5.6-5.7): weights and thresholds are trained together, with no
bi-level alternation. During the first ``subset_dropout.epochs`` epochs indicators are randomly dropped
(Sec 5.3.3) and, by default, lambda is 0 (the runtime term switches on afterwards, as in the thesis' code).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from nas.cost.lut import LatencyLUT
from nas.errors import ConfigError
from nas.search.solvers.base import SearchModule, cosine_factor, make_optimizer
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.single_path_supernet import SinglePathSupernet, drop_subsets


class SinglePathSearch(SearchModule):
    """Single-path superkernel search with learned group-lasso thresholds.

    Args:
        space, in_channels, num_classes, lut: the search space, data shape and latency LUT.
        lambda_: runtime trade-off of Eq 5.7.
        relaxation: ``sigmoid`` (thesis default) or ``ste`` (straight-through) gradient of the indicators.
        norm: group norm compared with the thresholds (``mean_square``, ``squared``, ``l2``).
        runtime_form: ``exact`` multilinear LUT model or the thesis' ``thesis`` form (Eq 5.9-5.10, 6.8).
        optimizer: ``{name, lr, ...}`` for the weights; ``threshold_lr`` for the thresholds' group.
        subset_dropout: ``{p, epochs, rescale}``; ``runtime_warmup_epochs`` defaults to its ``epochs``.
        lr_schedule: ``cosine`` (with ``warmup_steps``) or ``constant``, for both parameter groups (the
            thresholds settle as the rate decays, so the architecture stops changing before the end).
        bn_calibration_batches: training batches used to re-estimate BatchNorm statistics of the current
            architecture before each validation (0: off).
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 lambda_: float = 0.2, relaxation: str = "sigmoid", norm: str = "mean_square",
                 runtime_form: str = "exact", label_smoothing: float = 0.1,
                 optimizer: dict[str, Any] | None = None, threshold_lr: float = 0.01,
                 subset_dropout: dict[str, Any] | None = None, runtime_warmup_epochs: int | None = None,
                 lr_schedule: str = "cosine", warmup_steps: int = 0, bn_calibration_batches: int = 10) -> None:
        super().__init__(space, in_channels, num_classes, lut, lambda_, label_smoothing, runtime_form)
        dropout = {"p": 0.4, "epochs": 0, "rescale": False, **(subset_dropout or {})}
        if not 0 <= float(dropout["p"]) < 1:
            raise ConfigError(f"solver.subset_dropout.p must lie in [0, 1), got {dropout['p']}")
        if lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"solver.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if threshold_lr < 0:
            raise ConfigError(f"solver.threshold_lr must be >= 0, got {threshold_lr}")
        self.optimizer_config = dict(optimizer or {"name": "rmsprop", "lr": 0.01, "momentum": 0.9, "eps": 1e-3,
                                                   "weight_decay": 1e-5})
        self.threshold_lr = float(threshold_lr)
        self.dropout_p = float(dropout["p"])
        self.dropout_epochs = int(dropout["epochs"])
        self.dropout_rescale = bool(dropout["rescale"])
        self.runtime_warmup_epochs = (self.dropout_epochs if runtime_warmup_epochs is None
                                      else int(runtime_warmup_epochs))
        self.lr_schedule = lr_schedule
        self.warmup_steps = int(warmup_steps)
        self.bn_calibration_batches = int(bn_calibration_batches)
        self.supernet = SinglePathSupernet(space, in_channels, num_classes, relaxation=relaxation, norm=norm)
        self.save_hyperparameters({
            "solver": "single_path", "space": space.name, "space_digest": space.digest, "lambda_": lambda_,
            "relaxation": relaxation, "norm": norm, "runtime_form": runtime_form,
            "label_smoothing": label_smoothing, "optimizer": self.optimizer_config, "threshold_lr": threshold_lr,
            "subset_dropout": dropout, "runtime_warmup_epochs": self.runtime_warmup_epochs,
            "lr_schedule": lr_schedule, "warmup_steps": warmup_steps,
            "bn_calibration_batches": bn_calibration_batches,
        })

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
        acc = (logits.argmax(1) == y).float().mean()
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
        optimizer = make_optimizer(groups, self.optimizer_config)
        if self.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        factor = partial(cosine_factor, total=total, warmup=self.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ result
    def derive_architecture(self) -> Architecture:
        arch = self.supernet.derive()
        return arch.with_meta(solver="single_path", predicted_latency_ms=round(self.predicted_latency_ms(arch), 6),
                              lambda_=self.lambda_, epochs_trained=int(self.current_epoch))

