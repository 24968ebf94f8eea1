"""Training a derived architecture from scratch (what ``python train.py`` runs)."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from models.child import ChildNet
from nas.arch import Architecture
from nas.checkpoint import AtomicCheckpointIO
from nas.errors import ArchitectureError
from nas.io import atomic_write_json
from nas.solvers.base import cosine_factor, make_optimizer
from nas.space import SearchSpace

log = logging.getLogger(__name__)


class ChildTrainingModule(pl.LightningModule):
    """Cross-entropy training of a :class:`ChildNet` with a cosine schedule; logs accuracy per split."""

    def __init__(self, net: ChildNet, optimizer: dict[str, Any] | None = None, label_smoothing: float = 0.1,
                 warmup_steps: int = 0) -> None:
        super().__init__()
        self.net = net
        self.optimizer_config = dict(optimizer or {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                   "weight_decay": 4e-5})
        self.label_smoothing = label_smoothing
        self.warmup_steps = warmup_steps
        self.save_hyperparameters({"architecture": net.arch.keys, "space": net.space.name,
                                   "optimizer": self.optimizer_config, "label_smoothing": label_smoothing,
                                   "warmup_steps": warmup_steps})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{split}/acc", acc, on_step=on_step, on_epoch=not on_step, prog_bar=split != "train",
                 sync_dist=not on_step)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = make_optimizer([{"params": self.net.parameters()}], self.optimizer_config)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(cosine_factor, total=total,
                                                                         warmup=self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_architecture(path: str, space: SearchSpace) -> Architecture:
    """Read ``arch.json`` and check it belongs to ``space`` (clear error naming the fix otherwise)."""
    arch = Architecture.load(path)
    if arch.space_name and arch.space_name != space.name:
        raise ArchitectureError(f"{path} was derived in space '{arch.space_name}', but space '{space.name}' is "
                                f"selected; add the override space={arch.space_name}")
    return arch.validate(space)


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data`` and report test accuracy."""
    start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    space = SearchSpace.from_config(cfg.space)
    arch = load_architecture(str(cfg.arch), space)
    datamodule = instantiate(cfg.data)
    net = ChildNet(space, arch, datamodule.in_channels, datamodule.num_classes)
    module = ChildTrainingModule(net, optimizer=cfg.train.optimizer, label_smoothing=cfg.train.label_smoothing,
                                 warmup_steps=cfg.train.warmup_steps)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch:03d}",
                                 auto_insert_metric_name=False, save_last=True, monitor="val/acc", mode="max")
    logger = TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=[checkpoint],
                                      plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val_acc = float(trainer.callback_metrics.get("val/acc", float("nan")))
    test = trainer.test(module, datamodule=datamodule, verbose=False)
    result = {
        "architecture": arch.keys,
        "parameters": sum(p.numel() for p in net.parameters()),
        "val_acc": val_acc,
        "test_acc": float(test[0]["test/acc"]) if test else float("nan"),
        "epochs": int(trainer.current_epoch),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "checkpoint": str(out / "checkpoints" / "last.ckpt"),
    }
    if trainer.is_global_zero:
        atomic_write_json(out / "train_summary.json", result)
        print(f"\ntrained {' '.join(arch.keys)} ({result['parameters']} parameters) for {result['epochs']} epochs: "
              f"test accuracy {result['test_acc']:.4f} (val {result['val_acc']:.4f}); outputs in {out}")
    return result
