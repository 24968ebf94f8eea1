"""Shared machinery of every search solver (a LightningModule that ends in one :class:`Architecture`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from nas.cost.lut import LatencyLUT
from nas.cost.runtime_model import RuntimeModel
from nas.errors import ConfigError
from nas.search.loaders import capture_rng_state, restore_loader_position, restore_rng_state
from nas.search.monitoring import SearchMonitor
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.bn_calibration import reestimate_batchnorm

CHECKPOINT_FORMAT_VERSION = 1

#: constructor arguments that are objects, not settings: not saved as hyperparameters (the run's resolved config,
#: which holds their settings, is logged by the pipeline instead)
NOT_HYPERPARAMETERS = ("space", "lut", "optimizer", "arch_optimizer", "lr_scheduler")

class SearchModule(pl.LightningModule):
    """Base class: loss ``CE + lambda * log(R)`` bookkeeping, logging, derivation and checkpoint metadata.

    Subclasses implement :meth:`derive_architecture` and their training step.
    """

    solver_name = "search"

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, lut: LatencyLUT, *,
                 lambda_: float, label_smoothing: float, runtime_form: str) -> None:
        super().__init__()
        if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not lambda_ >= 0 \
                or not math.isfinite(lambda_):
            raise ConfigError(f"solver.lambda_ must be a finite number >= 0, got {lambda_!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing < 1:
            raise ConfigError(f"solver.label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.lambda_ = float(lambda_)
        self.label_smoothing = float(label_smoothing)
        self.runtime_model = RuntimeModel(space, lut, in_channels, num_classes, form=runtime_form)
        self.monitor = SearchMonitor()  # TensorBoard figures shared by every solver (nas/search/monitoring.py)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")  # synchronised over DDP ranks
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
        self.val_accuracy(logits, y)
        self.log("val/acc", self.val_accuracy, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        arch = self.derive_architecture()
        self.log("val/runtime_ms", self.predicted_latency_ms(arch), prog_bar=True, sync_dist=False)
        for name, value in self.validation_extras().items():
            self.log(name, value, sync_dist=False)
        self.log_architecture(arch)

    # ------------------------------------------------------------------ shared helpers
    def batch_accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Top-1 accuracy of one training batch (for the step logs)."""
        return multiclass_accuracy(logits.detach(), target, self.num_classes, average="micro")

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
        convert = self.trainer.precision_plugin.convert_input

        def batches() -> Iterator[torch.Tensor]:
            # a generator: the loader (which draws a seed from the global RNG) starts inside the forked RNG;
            # the trainer's precision applies to these batches too (e.g. float64 with precision=64-true)
            for x, _ in islice(DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False), num_batches):
                yield convert(x.to(self.device))

        reestimate_batchnorm(self, forward, batches())

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
            "solver": self.solver_name,
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
