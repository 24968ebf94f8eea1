"""What ``python search.py`` does, as a function of its Hydra config (so tests and sweeps can call it)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from nas.cost.backends import build_backend
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import obtain_lut_once
from nas.errors import ConfigError
from nas.io import atomic_write_json, atomic_write_text
from nas.search.callbacks import RankAgreement
from nas.search.checkpoint import AtomicCheckpointIO
from nas.search.global_batchnorm import sync_batchnorm_arguments
from nas.search.monitoring import log_final_hparams
from nas.search.preflight import check_trainer_config
from nas.search.solvers.base import SearchModule
from nas.space.search_space import SearchSpace
from nas.space.timm_interop import timm_record, timm_string

log = logging.getLogger(__name__)


def target_objective(accuracy: float, runtime_ms: float, target_ms: float | None) -> float:
    """Eq 6.2: ``acc * (R / R_T)^w`` with ``w = 0`` if ``R <= R_T`` else ``-1`` (plain accuracy without target)."""
    if target_ms is None:
        return accuracy
    if target_ms <= 0:
        raise ConfigError(f"hardware.target_ms must be > 0, got {target_ms}")
    return accuracy if runtime_ms <= target_ms else accuracy * (target_ms / runtime_ms)


def instantiate_solver(solver_cfg: Any, space: SearchSpace, in_channels: int, num_classes: int,
                       lut: LatencyLUT) -> SearchModule:
    """The solver of a ``solver=`` config node (``conf/solver/*.yaml``: every setting comes from there)."""
    # objects are passed after instantiation: Hydra would turn dataclasses (space, LUT) into configs
    return instantiate(solver_cfg, _partial_=True)(space=space, in_channels=in_channels, num_classes=num_classes,
                                                   lut=lut)


def build_search(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate space, data, backend, LUT and solver from ``cfg`` (no training)."""
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    backend = build_backend(cfg.hardware.backend)
    lut = obtain_lut_once(space, backend, datamodule.in_channels, datamodule.num_classes,
                     cache_dir=cfg.paths.cache_dir, lut_path=cfg.hardware.get("lut_path"),
                     strict=bool(cfg.hardware.get("strict", False)), progress=bool(cfg.get("progress", True)))
    solver = instantiate_solver(cfg.solver, space, datamodule.in_channels, datamodule.num_classes, lut)
    return {"space": space, "datamodule": datamodule, "backend": backend, "lut": lut, "solver": solver}


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Run one search and write ``arch.json``, ``arch_timm.txt``, ``lut.json`` and ``summary.json``."""
    start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    check_trainer_config(cfg.trainer)
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
        "solver": solver.solver_name,
        "architecture": arch.keys,
        "timm": timm_string(arch, space),
        "predicted_latency_ms": predicted,
        "val_acc": val_acc,
        "target_ms": target,
        "objective": target_objective(val_acc, predicted, target),
        "lut": lut.source,
        "hardware": lut.hardware.get("backend"),
        "epochs": int(trainer.current_epoch),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
        "ddp": agreement.summary(),
        "config": resolved_config(cfg),
    }
    if trainer.is_global_zero:
        arch = arch.with_meta(val_acc=val_acc, hardware=lut.hardware.get("backend"),
                              fingerprint_id=lut.hardware.get("fingerprint_id"))
        arch.save(out / "arch.json", timm=timm_record(arch, space))
        atomic_write_text(out / "arch_timm.txt", result["timm"] + "\n")
        lut_copy = type(lut).from_dict(lut.to_dict(), source=lut.source)
        lut_copy.save(out / "lut.json")
        atomic_write_json(out / "summary.json", result)
        log_final_hparams(logger, result["config"], {k: result[k] for k in ("val_acc", "predicted_latency_ms",
                                                                               "objective")})
        print(format_result(result, arch, space))
    return result


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's full configuration with every interpolation resolved: what summary.json and TensorBoard's hparams
    tab record (Lightning's logger flattens it to ``solver/optimizer/lr`` style keys)."""
    return OmegaConf.to_container(cfg, resolve=True)


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
