"""Shared machinery of every search solver (a LightningModule that ends in one :class:`Architecture`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nas.cost.lut import LatencyLUT
from nas.cost.runtime_model import RuntimeModel
from nas.errors import ConfigError
from nas.search.loaders import capture_rng_state, restore_loader_position, restore_rng_state
from nas.search.monitoring import SearchMonitor
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace

CHECKPOINT_FORMAT_VERSION = 1

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def make_optimizer(param_groups: list[dict[str, Any]], config: dict[str, Any]) -> torch.optim.Optimizer:
    """An optimiser from a plain config ``{name: rmsprop, lr: ..., ...}`` (extra keys go to its constructor)."""
    config = dict(config)
    name = str(config.pop("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[name](param_groups, **config)
    except TypeError as err:
        raise ConfigError(f"optimizer {name}: bad option ({err}); see torch.optim.{OPTIMIZERS[name].__name__}") \
            from None


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up then cosine decay to 0, as a multiplier of the base learning rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class SearchModule(pl.LightningModule):
    """Base class: loss ``CE + lambda * log(R)`` bookkeeping, logging, derivation and checkpoint metadata.

    Subclasses implement :meth:`derive_architecture` and their training step.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT,
                 lambda_: float = 0.0, label_smoothing: float = 0.0, runtime_form: str = "exact") -> None:
        super().__init__()
        if lambda_ < 0 or not math.isfinite(lambda_):
            raise ConfigError(f"solver.lambda_ must be a finite number >= 0, got {lambda_}")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"solver.label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.lambda_ = float(lambda_)
        self.label_smoothing = float(label_smoothing)
        self.runtime_model = RuntimeModel(space, lut, in_channels, num_classes, form=runtime_form)
        self.monitor = SearchMonitor()  # TensorBoard figures shared by every solver (nas/search/monitoring.py)
        self._rng_to_restore: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ to implement
    def derive_architecture(self) -> Architecture:
        raise NotImplementedError

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits that validation scores: those of the network the solver currently derives."""
        raise NotImplementedError

    def validation_extras(self) -> dict[str, float]:
        """Solver-specific scalars logged with each validation (besides accuracy and predicted runtime)."""
        return {}

    # ------------------------------------------------------------------ validation (shared by the solvers)
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.eval_logits(x)
        self.log("val/ce", self.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        arch = self.derive_architecture()
        self.log("val/runtime_ms", self.predicted_latency_ms(arch), prog_bar=True, sync_dist=False)
        for name, value in self.validation_extras().items():
            self.log(name, value, sync_dist=False)
        self.log_architecture(arch)

    # ------------------------------------------------------------------ shared helpers
    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def runtime_loss(self, runtime_ms: torch.Tensor, lambda_: float) -> torch.Tensor:
        """``lambda * log(R)`` (Eq 5.7); ``R`` in ms."""
        return lambda_ * torch.log(runtime_ms.clamp_min(1e-9))

    def predicted_latency_ms(self, arch: Architecture) -> float:
        return self.runtime_model.predict(arch)

    @torch.no_grad()
    def recalibrate_batchnorm(self, forward: Callable[[torch.Tensor], torch.Tensor], num_batches: int) -> None:
        """Re-estimate BatchNorm running statistics for the current architecture (BN calibration).

        The running statistics accumulated during the search mix every architecture the supernet passed
        through; evaluating the derived network with them is unreliable. This resets them and averages the
        batch statistics of ``num_batches`` training batches (fixed order, global RNG untouched).
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None) if datamodule is not None else None
        if num_batches <= 0 or dataset is None:
            return
        norms = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        was_training = self.training
        loader = DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False)
        with torch.random.fork_rng(devices=[]):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
            self.train()
            for i, (x, _) in enumerate(loader):
                if i >= num_batches:
                    break
                # the trainer's precision applies to these batches too (e.g. float64 with precision=64-true)
                forward(self.trainer.precision_plugin.convert_input(x.to(self.device)))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.train(was_training)

    def log_architecture(self, arch: Architecture, prefix: str = "arch") -> None:
        """Per-layer decisions as scalars (kernel, expansion with 0 = skip, SE ratio) and as text."""
        for spec, choice in zip(self.space.layers, arch.layers):
            if not spec.searchable:
                continue
            tag = f"{prefix}/L{spec.index:02d}"
            self.log(f"{tag}_kernel", float(choice.kernel), on_epoch=True, sync_dist=False)
            self.log(f"{tag}_expansion", float(choice.expansion), on_epoch=True, sync_dist=False)
            self.log(f"{tag}_se", float(choice.se_ratio), on_epoch=True, sync_dist=False)
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_text") and self.global_rank == 0:
            experiment.add_text(f"{prefix}/layers", " ".join(arch.keys), self.global_step)
        self.monitor.on_architecture(self, arch)

    def on_fit_end(self) -> None:
        """Draw the derived architecture into TensorBoard (``arch/final``)."""
        arch = self.derive_architecture()
        self.monitor.on_fit_end(self, arch, self.predicted_latency_ms(arch))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        arch = self.derive_architecture()
        checkpoint["spnas"] = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "space": self.space.name,
            "space_digest": self.space.digest,
            "architecture": arch.to_dict(),
            "predicted_latency_ms": self.predicted_latency_ms(arch),
            "rng": capture_rng_state(),  # resumed runs continue the same random stream (nas/search/loaders.py)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("spnas")
        if info is None:
            raise ConfigError("checkpoint has no 'spnas' section: it was not written by a search of this framework")
        if info.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ConfigError(f"checkpoint format {info.get('format_version')} is not supported (expected "
                              f"{CHECKPOINT_FORMAT_VERSION})")
        if info.get("space_digest") != self.space.digest:
            raise ConfigError(f"checkpoint was written for space '{info.get('space')}' ({info.get('space_digest')}),"
                              f" but this run uses space '{self.space.name}' ({self.space.digest}); pass the same "
                              "space=... override as the run that wrote it")
        self._rng_to_restore = info.get("rng")

    def on_train_start(self) -> None:
        """On resume: restore the data position and RNG state saved with the checkpoint (nas/search/loaders.py)."""
        restore_loader_position(self.trainer)
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
