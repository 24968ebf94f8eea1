"""What ``python search.py`` does, as a function of its Hydra config (so tests and sweeps can call it)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nas.cli import resume_command
from nas.cost.backends import build_backend
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import obtain_lut_once
from nas.errors import Interrupted
from nas.io import atomic_write_text, finite_or_none
from nas.search.callbacks import PreemptionCheckpoint, RankAgreement, SearchClock, ThreadRebalance
from nas.search.checkpoint import AtomicCheckpointIO
from nas.search.global_batchnorm import sync_batchnorm_arguments
from nas.search.monitoring import build_logger, log_final_hparams
from nas.search.objectives import Measurements, build_objective
from nas.search.preflight import check_search_config, check_trainer_config
from nas.search.solvers.base import SearchModule
from nas.space.search_space import SearchSpace
from nas.space.timm_interop import timm_record, timm_string

log = logging.getLogger(__name__)


def instantiate_solver(solver_cfg: Any, space: SearchSpace, in_channels: int, num_classes: int,
                       lut: LatencyLUT) -> SearchModule:
    """The solver of a ``solver=`` config node (``nas/conf/solver/*.yaml``: every setting comes from there)."""
    # objects are passed after instantiation: Hydra would turn dataclasses (space, LUT) into configs
    return instantiate(solver_cfg, _partial_=True)(space=space, in_channels=in_channels, num_classes=num_classes,
                                                   lut=lut)


def build_search(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate space, data, backend, LUT and solver from ``cfg`` (no training).

    The data is checked before the LUT is obtained (profiling is the costly part), and the global seed is set
    after it: profiling builds modules and draws inputs from the global RNG, so seeding earlier would make the
    result depend on whether the LUT was cached.
    """
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    check = getattr(datamodule, "check_available", None)
    if check is not None:
        check()
    backend = build_backend(cfg.hardware.backend)
    lut = obtain_lut_once(space, backend, datamodule.in_channels, datamodule.num_classes,
                          cache_dir=cfg.paths.cache_dir, lut_path=cfg.hardware.get("lut_path"),
                          strict=bool(cfg.hardware.get("strict", False)), progress=bool(cfg.get("progress", True)))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    solver = instantiate_solver(cfg.solver, space, datamodule.in_channels, datamodule.num_classes, lut)
    return {"space": space, "datamodule": datamodule, "backend": backend, "lut": lut, "solver": solver}


def checkpoint_callbacks(out: Path, every_n_train_steps: int | None) -> list[ModelCheckpoint]:
    """End-of-epoch checkpoints ``epochNNN.ckpt`` and, with ``every_n_train_steps``, mid-epoch ``stepNNNNNN.ckpt``.

    Both keep ``last.ckpt`` as the latest state (the one to resume from).
    """
    callbacks = [ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch:03d}",
                                 auto_insert_metric_name=False, save_last=True, save_top_k=1, every_n_epochs=1)]
    if every_n_train_steps:
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:06d}",
                                         auto_insert_metric_name=False, save_last=True, save_top_k=1,
                                         every_n_train_steps=int(every_n_train_steps)))
    return callbacks


def resume_hint(ckpt: str) -> str:
    """The command line of this run with ``ckpt_path=<ckpt>`` (:func:`nas.cli.resume_command`)."""
    return resume_command("ckpt_path", ckpt)


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Run one search and write ``arch.json``, ``arch_timm.txt`` and ``lut.json``; the result is the run's summary
    (``spnas search`` writes it to ``summary.json``: :data:`nas.entries.hydra_apps.SEARCH`).

    Every input is checked before data is loaded or a LUT profiled (``nas.search.preflight``). SIGTERM and
    Ctrl-C during the fit save ``checkpoints/last.ckpt`` and raise :class:`~nas.errors.Interrupted`; no result
    file is written then.
    """
    start = time.perf_counter()
    check_search_config(cfg)
    check_trainer_config(cfg.trainer)
    objective = build_objective(cfg.get("objective"), cfg.hardware.get("target_ms"))  # checked before any work
    out = Path(cfg.paths.output_dir)
    logger = build_logger(cfg)  # before the costly part: a missing logger package fails first
    parts = build_search(cfg)
    space, datamodule, lut, solver = parts["space"], parts["datamodule"], parts["lut"], parts["solver"]
    log.info("Space '%s': %d layers (%d searchable), %.3g architectures; LUT %s",
             space.name, len(space.layers), len(space.searchable_layers), space.num_architectures(), lut.source)

    agreement, clock = RankAgreement(), SearchClock(start)
    preemption = PreemptionCheckpoint(out / "checkpoints" / "last.ckpt", resume_hint)
    sync = sync_batchnorm_arguments(cfg.trainer)  # CPU processes: BatchNorm over the global batch
    callbacks = [agreement, clock, preemption, ThreadRebalance(),
                 *checkpoint_callbacks(out, cfg.checkpoint.get("every_n_train_steps"))]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks,
                                      plugins=[AtomicCheckpointIO(), *sync.pop("layer_sync", [])], **sync)
    try:
        trainer.fit(solver, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:  # the signal came outside a training step (validation, epoch end) or under DDP
        raise Interrupted(signal.SIGTERM, preemption.message(signal.SIGTERM, trainer)) from None

    arch = solver.derive_architecture()
    predicted = solver.predicted_latency_ms(arch)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    val_acc = finite_or_none(metrics.get("val/acc"))
    target = cfg.hardware.get("target_ms")
    result = {
        "space": space.name,
        "solver": solver.solver_name,
        "architecture": arch.keys,
        "timm": timm_string(arch, space),
        "predicted_latency_ms": predicted,
        "val_acc": val_acc,
        "target_ms": target,
        "objective": None if val_acc is None else objective(
            Measurements(val_acc, latency_ms=predicted, device_power_w=objective.device_power_w)),
        "objective_name": objective.name,
        "lut": lut.source,
        "hardware": lut.hardware.get("backend"),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "wall_time_s": round(clock.elapsed(), 2),
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
        log_final_hparams(logger, result["config"], {k: result[k] for k in ("val_acc", "predicted_latency_ms",
                                                                               "objective")})
        report = format_result(result, arch, space)
        print(report)
        write_to_log_files(report)
    return result


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's full configuration with every interpolation resolved: what summary.json and TensorBoard's hparams
    tab record (Lightning's logger flattens it to ``solver/optimizer/lr`` style keys)."""
    return OmegaConf.to_container(cfg, resolve=True)


ACCURACY_LABELS = {"random": "validation accuracy (best sample, trained from scratch for its epochs)"}
OUTPUT_FILES = ("arch.json", "arch_timm.txt", "lut.json", "summary.json", "checkpoints/last.ckpt", "tb/")


def format_result(result: dict[str, Any], arch: Any, space: SearchSpace) -> str:
    """The block printed at the end of a search (and written to the run's log file)."""
    accuracy = result["val_acc"]
    label = ACCURACY_LABELS.get(str(result["solver"]), "validation accuracy (supernet weights)")
    lines = [
        "",
        f"Derived architecture ({result['solver']}, space '{space.name}'):",
        f"  {'#':>2} {'layer':<10} {'res':<5}   {'in->out':<9}{'s':<2}  {'choice':<16}",
        arch.describe(space),
        f"timm: {result['timm']}",
        f"predicted latency: {result['predicted_latency_ms']:.4f} ms on {result['hardware']}",
        f"{label}: " + ("n/a (no validation ran)" if accuracy is None else f"{accuracy:.4f}"),
        f"search wall time: {result['wall_time_s']:.1f} s ({result['steps']} steps)",
        f"written to {result['output_dir']}/: {', '.join(OUTPUT_FILES)}",
    ]
    return "\n".join(lines)


def write_to_log_files(text: str) -> None:
    """Append ``text`` to the log files of the root logger (Hydra's ``<run>/search.log``), not to the console."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("nas.search.result", logging.INFO, __file__, 0, text, None, None))
