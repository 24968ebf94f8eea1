"""What ``python search.py`` does, as a function of its Hydra config (so tests and sweeps can call it)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from models.timm_interop import timm_string
from nas.checkpoint import AtomicCheckpointIO
from nas.distributed import RankAgreement, check_trainer_config, obtain_lut_once, sync_batchnorm_arguments
from nas.io import atomic_write_json, atomic_write_text
from nas.latency.backends import build_backend
from nas.monitoring import log_final_hparams
from nas.objectives import Measurements, build_objective, target_objective  # noqa: F401 (re-exported)
from nas.space import SearchSpace

log = logging.getLogger(__name__)


def build_search(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate space, data, backend, LUT and solver from ``cfg`` (no training)."""
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    backend = build_backend(cfg.hardware.backend)
    lut = obtain_lut_once(space, backend, datamodule.in_channels, datamodule.num_classes,
                     cache_dir=cfg.paths.cache_dir, lut_path=cfg.hardware.get("lut_path"),
                     strict=bool(cfg.hardware.get("strict", False)), progress=bool(cfg.get("progress", True)))
    # objects are passed after instantiation: Hydra would turn dataclasses (space, LUT) into configs
    solver = instantiate(cfg.solver, _partial_=True)(space=space, in_channels=datamodule.in_channels,
                                                     num_classes=datamodule.num_classes, lut=lut)
    return {"space": space, "datamodule": datamodule, "backend": backend, "lut": lut, "solver": solver}


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Run one search and write ``arch.json``, ``arch_timm.txt``, ``lut.json`` and ``summary.json``."""
    start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    check_trainer_config(cfg.trainer)
    objective = build_objective(cfg.get("objective"), cfg.hardware.get("target_ms"))  # checked before any work
    out = Path(cfg.paths.output_dir)
    parts = build_search(cfg)
    space, datamodule, lut, solver = parts["space"], parts["datamodule"], parts["lut"], parts["solver"]
    log.info("Space '%s': %d layers (%d searchable), %.3g architectures; LUT %s",
             space.name, len(space.layers), len(space.searchable_layers), space.num_architectures(), lut.source)

    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch:03d}",
                                 auto_insert_metric_name=False, save_last=True, save_top_k=1,
                                 every_n_train_steps=cfg.checkpoint.get("every_n_train_steps"))
    logger = TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False)
    agreement = RankAgreement()
    sync = sync_batchnorm_arguments(cfg.trainer)  # CPU processes: BatchNorm over the global batch
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=[agreement, checkpoint],
                                      plugins=[AtomicCheckpointIO(), *sync.pop("layer_sync", [])], **sync)
    trainer.fit(solver, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    arch = solver.derive_architecture()
    predicted = solver.predicted_latency_ms(arch)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    val_acc = metrics.get("val/acc", float("nan"))
    target = cfg.hardware.get("target_ms")
    result = {
        "space": space.name,
        "solver": solver.hparams.get("solver", type(solver).__name__),
        "architecture": arch.keys,
        "timm": timm_string(arch, space),
        "predicted_latency_ms": predicted,
        "val_acc": val_acc,
        "target_ms": target,
        "objective": objective(Measurements(val_acc, latency_ms=predicted, device_power_w=objective.device_power_w)),
        "objective_name": objective.name,
        "lut": lut.source,
        "hardware": lut.hardware.get("backend"),
        "epochs": int(trainer.current_epoch),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
        "ddp": agreement.summary(),
    }
    if trainer.is_global_zero:
        arch = arch.with_meta(val_acc=val_acc, hardware=lut.hardware.get("backend"),
                              fingerprint_id=lut.hardware.get("fingerprint_id"))
        arch.save(out / "arch.json", space)
        atomic_write_text(out / "arch_timm.txt", result["timm"] + "\n")
        lut_copy = type(lut).from_dict(lut.to_dict(), source=lut.source)
        lut_copy.save(out / "lut.json")
        atomic_write_json(out / "summary.json", result)
        log_final_hparams(logger, search_hparams(cfg), {k: result[k] for k in ("val_acc", "predicted_latency_ms",
                                                                                  "objective")})
        print(format_result(result, arch, space))
    return result


def search_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings a sweep compares, for TensorBoard's hparams tab."""
    return {"solver": OmegaConf.to_container(cfg.solver, resolve=True), "space": cfg.space.name,
            "hardware": cfg.hardware.name, "target_ms": cfg.hardware.get("target_ms"), "seed": cfg.seed,
            "max_epochs": cfg.trainer.get("max_epochs"), "batch_size": cfg.data.get("batch_size"),
            "devices": str(cfg.trainer.get("devices")), "num_nodes": cfg.trainer.get("num_nodes", 1)}


def format_result(result: dict[str, Any], arch: Any, space: SearchSpace) -> str:
    lines = [
        "",
        f"Derived architecture ({result['solver']}, space '{space.name}'):",
        arch.describe(space),
        f"timm: {result['timm']}",
        f"predicted latency: {result['predicted_latency_ms']:.4f} ms on {result['hardware']}",
        f"validation accuracy (supernet weights): {result['val_acc']:.4f}",
        f"search wall time: {result['wall_time_s']:.1f} s",
        f"written to: {result['output_dir']}/arch.json",
    ]
    return "\n".join(lines)


def config_summary(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg, resolve=False), indent=1)
