"""Training a derived architecture from scratch (what ``python train.py`` runs).

After training and testing, the network is exported to ONNX (checked with ``onnx.checker`` and against the
torch outputs in ONNX Runtime), its latency is measured on the ``hardware=`` backend and compared with the
runtime model's prediction from the LUT (Eq 5.8: ``R = sum_i R_i``, with the LUT's network calibration).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from models.child import ChildNet
from nas.cli import resume_command
from nas.cost.drift import describe_drift
from nas.cost.measurement_core import describe_placement, describe_providers
from nas.errors import ConfigError, Interrupted
from nas.io import finite_or_none
from nas.search.callbacks import PreemptionCheckpoint, ThreadRebalance
from nas.search.checkpoint import AtomicCheckpointIO
from nas.search.monitoring import build_logger
from nas.search.optimization import OptimizerFactory, SchedulerFactory, build_optimizer, step_schedule
from nas.search.preflight import check_train_config, check_trainer_config
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.space.references import load_architecture as load_reference
from nas.space.search_space import SearchSpace

log = logging.getLogger(__name__)


class ChildTrainingModule(pl.LightningModule):
    """Cross-entropy training of a :class:`ChildNet`; accuracy per split (torchmetrics); ``nas/conf/train.yaml``.

    ``optimizer`` is a ``_partial_`` torch optimiser, ``lr_scheduler`` a ``_partial_`` per-step schedule called with
    ``(optimizer, total_steps=...)`` (``None``: constant rate).
    """

    def __init__(self, net: ChildNet, *, optimizer: OptimizerFactory, lr_scheduler: SchedulerFactory | None,
                 label_smoothing: float) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        num_classes = net.head.classifier.out_features
        self.accuracy = nn.ModuleDict({f"{split}_acc": MulticlassAccuracy(num_classes, average="micro")
                                       for split in ("train", "val", "test")})
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler"], logger=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        on_step = split == "train"
        self.accuracy[f"{split}_acc"](logits.detach(), y)
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        self.log(f"{split}/acc", self.accuracy[f"{split}_acc"], on_step=on_step, on_epoch=not on_step,
                 prog_bar=split != "train")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_factory, [{"params": list(self.net.parameters())}],
                                    "train.optimizer")
        schedule = step_schedule(self.lr_scheduler_factory, optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, **({"lr_scheduler": schedule[0]} if schedule else {})}


def recipe_arguments(train: DictConfig) -> dict[str, Any]:
    """The ``train`` node of a recipe (``nas/conf/recipe/``) as :func:`train_child`'s keyword arguments:
    ``optimizer`` and ``lr_scheduler`` instantiated (``_partial_``), ``label_smoothing`` a float."""
    return {"optimizer": instantiate(train.optimizer), "lr_scheduler": instantiate(train.lr_scheduler),
            "label_smoothing": float(train.label_smoothing)}


def load_recipe(name: str = "default", overrides: Sequence[str] = ()) -> DictConfig:
    """``recipe=<name>`` composed as ``train.py`` composes it: ``train.*`` (give it to :func:`recipe_arguments`)
    and ``trainer.max_epochs``; a bad name is one :class:`~nas.errors.ConfigError` line."""
    from nas.cli import compose_config

    return compose_config("train", [f"recipe={name}", *overrides])


def train_child(net: ChildNet, datamodule: pl.LightningDataModule, *, optimizer: OptimizerFactory,
                lr_scheduler: SchedulerFactory | None, label_smoothing: float, trainer: pl.Trainer,
                test: bool = True, ckpt_path: str | None = None) -> dict[str, Any]:
    """Train ``net`` from scratch with one recipe: the one child-training function of the package.

    ``trainer`` decides epochs, device, logging and callbacks (e.g. a pruning callback, which may end the fit by
    raising). Returns ``val_acc`` (the last validation of the fit), ``test_acc`` (``None`` without ``test``),
    ``epochs`` and ``parameters``; a metric that does not exist or is not finite is ``None``.
    """
    net.train()  # a caller may have measured it in eval mode, and Lightning keeps the modes it finds
    module = ChildTrainingModule(net, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                 label_smoothing=float(label_smoothing))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    val_acc = finite_or_none(trainer.callback_metrics.get("val/acc"))  # JSON holds no NaN
    if val_acc is None and ckpt_path is not None and trainer.limit_val_batches:
        # resumed from a checkpoint taken after the last epoch: the fit ran no validation, so measure it here
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)
        val_acc = finite_or_none(metrics[0].get("val/acc")) if metrics else None
    test_acc = None
    if test:
        metrics = trainer.test(module, datamodule=datamodule, verbose=False)
        test_acc = finite_or_none(metrics[0].get("test/acc")) if metrics else None
    return {"val_acc": val_acc, "test_acc": test_acc, "epochs": int(trainer.current_epoch),
            "parameters": sum(p.numel() for p in net.parameters())}


def retrain_from_scratch(space: SearchSpace, arch: Architecture, data_cfg: DictConfig, epochs: int, seed: int,
                         recipe: str = "default", test: bool = True) -> dict[str, Any]:
    """Train ``arch`` from scratch in this process, on the CPU, with ``recipe=<recipe>`` (``train.py``'s
    recipe) for ``epochs`` epochs on the data module of ``data_cfg``, everything seeded with ``seed`` (torch's
    deterministic algorithms on): :func:`train_child`'s result, without a checkpoint, a log or an ONNX export
    (the benchmarks that rank or compare many networks)."""
    arguments = recipe_arguments(load_recipe(recipe).train)
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = instantiate(data_cfg)
    net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    return train_child(net, datamodule, **arguments, trainer=trainer, test=test)


def load_architecture(path: str, space: SearchSpace, in_channels: int = 3, num_classes: int = 1000) -> Architecture:
    """``arch=``: an arch.json, block strings of any length, timm's arch_def or ``timm:<model>``
    (:func:`nas.space.references.load_architecture`)."""
    return load_reference(path, space, in_channels, num_classes)


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data`` (seeded by the run shell) and report test accuracy; the result is the run's
    summary (``spnas train`` writes it to ``train_summary.json``: :data:`nas.entries.hydra_apps.TRAIN`)."""
    check_train_config(cfg)
    check_trainer_config(cfg.trainer)
    providers = check_providers(cfg)  # a provider this onnxruntime lacks fails now, not after training
    int8 = int8_export_requested(cfg)  # so does a precision other than fp32 or int8
    out = Path(cfg.paths.output_dir)
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    check = getattr(datamodule, "check_available", None)
    if check is not None:
        check()
    arch = load_architecture(str(cfg.arch), space, datamodule.in_channels, datamodule.num_classes)
    net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch:03d}",
                                 auto_insert_metric_name=False, save_last=True, monitor="val/acc", mode="max")
    # SIGTERM / Ctrl-C: save a resumable checkpoint after the running step, say so and print the resume command
    preemption = PreemptionCheckpoint(out / "checkpoints" / "last.ckpt", lambda p: resume_command("ckpt_path", p))
    logger = build_logger(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger,
                                      callbacks=[checkpoint, preemption, ThreadRebalance()],
                                      plugins=[AtomicCheckpointIO()])
    try:
        trained = train_child(net, datamodule, **recipe_arguments(cfg.train), trainer=trainer,
                              ckpt_path=cfg.get("ckpt_path"))
    except SIGTERMException:  # the signal came outside a training step (validation, epoch end)
        raise Interrupted(signal.SIGTERM, preemption.message(signal.SIGTERM, trainer)) from None
    result = {
        "architecture": arch.keys,
        "parameters": trained["parameters"],
        "val_acc": trained["val_acc"],
        "test_acc": trained["test_acc"],
        "epochs": trained["epochs"],
        "resumed_from": cfg.get("ckpt_path"),  # the run shell's wall_time_s is then this process's share only
        "checkpoint": str(out / "checkpoints" / "last.ckpt"),
    }
    export_cfg = cfg.train.get("export") or {}
    if trainer.is_global_zero and export_cfg.get("onnx", True):
        result.update(export_and_check(net, out / "model.onnx", float(export_cfg.get("atol", 1e-4)),
                                       batch_size=int(cfg.hardware.backend.get("batch_size", 1)),
                                       providers=providers))
        int8_model = None
        if int8:
            int8_result = export_int8_and_check(
                out / "model.onnx", out / "model_int8.onnx", datamodule,
                batch_size=int(cfg.hardware.backend.get("batch_size", 1)), providers=providers,
                calibration_images=int(export_cfg.get("int8_calibration_images", 64)))
            int8_model = (out / "model_int8.onnx").read_bytes()
            result.update(int8_result)
            if result["onnx_test_acc"] is not None and result["int8_test_acc"] is not None:
                result["int8_acc_delta"] = result["int8_test_acc"] - result["onnx_test_acc"]
        if export_cfg.get("latency", True):
            result.update(predicted_vs_measured(cfg, space, arch, net, datamodule.in_channels,
                                                datamodule.num_classes, int8_model=int8_model))
    if trainer.is_global_zero:
        print(f"\ntrained {' '.join(arch.keys)} ({result['parameters']} parameters) for {result['epochs']} epochs: "
              f"test accuracy {_fmt(result['test_acc'])} (val {_fmt(result['val_acc'])}); outputs in {out}")
        if "onnx" in result:
            print(f"ONNX: {result['onnx']} (onnx.checker passed; ONNX Runtime vs torch max |diff| "
                  f"{result['onnx_max_abs_diff']:.2e} on {describe_providers(result['onnx_providers'])}; "
                  f"{describe_placement(result['onnx_node_placement'])})")
        if "measured_latency_ms" in result:
            print(f"latency on {result['latency_backend']}: predicted {result['predicted_latency_ms']:.4f} ms, "
                  f"measured {result['measured_latency_ms']:.4f} ms (IQR {result['measured_latency_iqr_ms']:.4f}, "
                  f"{result['latency_error_pct']:+.2f} %); "
                  + describe_drift(result))
        if "int8_onnx" in result:
            print(f"int8: {result['int8_onnx']} (onnx.checker passed; {result['int8_qdq_nodes']} QuantizeLinear/"
                  f"DequantizeLinear nodes): test accuracy {_fmt(result['int8_test_acc'])} vs fp32 "
                  f"{_fmt(result['onnx_test_acc'])} in ONNX Runtime (torch {_fmt(result['test_acc'])}) on "
                  f"{result['onnx_test_images']} test images")
        if result.get("int8_measured_latency_ms") is not None:
            predicted = result.get("int8_predicted_latency_ms")
            print(f"int8 latency: measured {result['int8_measured_latency_ms']:.4f} ms (IQR "
                  f"{result['int8_measured_latency_iqr_ms']:.4f})"
                  + (f", predicted {predicted:.4f} ms ({result['int8_latency_error_pct']:+.2f} %)"
                     if predicted is not None else ", no int8 prediction (the LUT is fp32; "
                     "hardware=cpu_onnx_int8 predicts int8 latency)"))
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def check_providers(cfg: DictConfig) -> list[dict[str, Any]]:
    """The ONNX Runtime execution providers of train.py's ONNX check: ``hardware.backend.providers`` where the
    hardware backend is ONNX Runtime, else the CPU's; a provider the onnxruntime build lacks is a
    :class:`~nas.errors.ConfigError` (:func:`nas.cost.backends.onnx_providers`)."""
    from nas.cost.backends import onnx_providers

    return onnx_providers((cfg.hardware.get("backend") or {}).get("providers"))


def int8_export_requested(cfg: DictConfig) -> bool:
    """Whether train.py also writes ``model_int8.onnx``: ``train.export.int8``, by default (null) whether
    ``hardware.backend.precision`` is int8; a precision other than fp32 or int8 is a
    :class:`~nas.errors.ConfigError` (checked before training)."""
    from nas.cost.backends import check_precision

    backend = cfg.hardware.get("backend") or {}
    precision = check_precision(backend.get("precision", "fp32"))
    export_cfg = cfg.train.get("export") or {}
    if not export_cfg.get("onnx", True):
        return False
    requested = export_cfg.get("int8")
    return precision == "int8" if requested is None else bool(requested)


def calibration_images_of(datamodule: pl.LightningDataModule, count: int, batch_size: int) -> list[Any]:
    """``count`` images of ``datamodule`` (rounded down to whole batches of ``batch_size``, at least one) as float32
    arrays of ``batch_size`` images: the validation split (not augmented), the training split when it is empty."""
    import numpy as np

    datamodule.setup("fit")
    images: list[Any] = []
    for loader in (datamodule.val_dataloader, datamodule.train_dataloader):
        for x, _ in loader():
            images.extend(x.numpy())
            if len(images) >= count:
                break
        if images:
            break
    if not images:
        raise ConfigError("the data module has no images to calibrate the int8 model on")
    usable = max(batch_size, count // batch_size * batch_size)
    images = (images * (usable // len(images) + 1))[:usable]  # repeated when the split has fewer
    return [np.stack(images[i:i + batch_size]).astype(np.float32) for i in range(0, usable, batch_size)]


def onnx_test_accuracy(session: Any, datamodule: pl.LightningDataModule, batch_size: int) -> tuple[float, int]:
    """Top-1 accuracy of an ONNX Runtime ``session`` (fixed batch dimension ``batch_size``) on the data module's test
    split, and the number of test images: each test batch is cut into ``batch_size`` chunks (the last one padded)."""
    import numpy as np

    name = session.get_inputs()[0].name
    correct = total = 0
    datamodule.setup("test")
    for x, y in datamodule.test_dataloader():
        images, labels = x.numpy().astype(np.float32), y.numpy()
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            n = len(chunk)
            if n < batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
            logits = session.run(None, {name: chunk})[0][:n]
            correct += int((logits.argmax(1) == labels[start:start + n]).sum())
            total += n
    return (correct / total if total else float("nan")), total


def export_int8_and_check(fp32_path: Path, path: Path, datamodule: pl.LightningDataModule, batch_size: int = 1,
                          providers: Any = None, calibration_images: int = 64) -> dict[str, Any]:
    """Quantise the exported ``fp32_path`` to int8 (:func:`nas.cost.quantization.quantize_int8`, calibrated on
    images of ``datamodule``), write ``path``, run ``onnx.checker`` on it, and measure the test accuracy of both
    models in ONNX Runtime on ``providers`` (``onnx_test_acc``: fp32, ``int8_test_acc``: int8)."""
    import onnx
    import onnxruntime as ort

    from nas.cost.backends import onnx_providers
    from nas.cost.measurement_core import create_session
    from nas.cost.quantization import quantize_int8
    from nas.io import atomic_write_bytes

    providers = onnx_providers(providers)
    batches = calibration_images_of(datamodule, calibration_images, batch_size)
    data = quantize_int8(fp32_path.read_bytes(), batches)
    atomic_write_bytes(path, data)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    qdq = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    accuracy = {}
    for label, source in (("onnx", fp32_path), ("int8", path)):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        accuracy[label], images = onnx_test_accuracy(create_session(ort, str(source), options, providers),
                                                     datamodule, batch_size)
    return {"int8_onnx": str(path), "int8_qdq_nodes": qdq, "int8_calibration_images": len(batches) * batch_size,
            "onnx_test_acc": finite_or_none(accuracy["onnx"]), "int8_test_acc": finite_or_none(accuracy["int8"]),
            "onnx_test_images": images}


def export_and_check(net: ChildNet, path: Path, atol: float = 1e-4, batch_size: int = 1,
                     providers: Any = None) -> dict[str, Any]:
    """Export ``net`` to ONNX, run ``onnx.checker`` and compare ONNX Runtime on ``providers`` (default the CPU's)
    with torch on a random batch; count the nodes ONNX Runtime places off the first provider
    (``onnx_node_placement``, :func:`~nas.cost.measurement_core.node_placement`; a warning when there are any).

    Raises :class:`~nas.errors.ConfigError` naming the difference when the outputs
    differ by more than ``atol`` (absolute, on logits).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    from nas.cost.backends import export_onnx, onnx_providers
    from nas.cost.measurement_core import create_session, node_placement

    providers = onnx_providers(providers)

    net = net.eval()
    shape = (batch_size, net.stem[0].in_channels, net.space.resolution, net.space.resolution)
    export_onnx(net, shape, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = create_session(ort, str(path), options, providers)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= atol:
        raise ConfigError(f"{path}: ONNX Runtime output differs from torch by {diff:.3g} (> train.export.atol="
                          f"{atol}) on {describe_providers(providers)}; the export is not faithful. Report it with "
                          "the architecture, or raise train.export.atol if the difference is acceptable.")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    placement = node_placement(ort, str(path), options, providers)
    if placement["fallback_nodes"]:
        log.warning("ONNX Runtime runs %s", describe_placement(placement))
    return {"onnx": str(path), "onnx_opset": int(model.opset_import[0].version), "onnx_max_abs_diff": diff,
            "onnx_providers": providers, "onnx_node_placement": placement}


def predicted_vs_measured(cfg: DictConfig, space: SearchSpace, arch: Architecture, net: ChildNet,
                          in_channels: int, num_classes: int, int8_model: bytes | None = None) -> dict[str, Any]:
    """The runtime model's prediction for ``arch`` and the network's measured latency.

    ``predicted_latency_ms`` comes from the LUT the search uses for this space and hardware
    (``hardware.lut_path`` or the cache). The network is measured in the same interleaved rounds as the LUT's
    reference networks (``train.export.drift_references`` of its calibration networks, :mod:`nas.cost.drift`), whose
    times now against the LUT's give the drift since the LUT was profiled: ``drift_predicted_ms`` (the prediction
    rescaled), ``drift_range_ms`` and whether it covers the measurement.

    With ``int8_model`` (train.py's ``model_int8.onnx``), that model is measured too, on the hardware backend's
    settings at int8 (``int8_measured_latency_ms``); where the hardware's precision is int8, the prediction is the
    int8 LUT's (``int8_predicted_latency_ms`` = ``predicted_latency_ms``, and ``measured_latency_ms`` is the network
    quantised as its ops were, on synthetic inputs), else there is no int8 prediction (``None``).
    """
    from nas.cost.backends import build_backend
    from nas.cost.drift import DEFAULT_REFERENCES, check_references, drift_fields, measure_network
    from nas.cost.profiler import obtain_lut
    from nas.cost.runtime_model import RuntimeModel
    from nas.cost.signatures import OpSpec

    backend = build_backend(cfg.hardware.backend)
    lut = obtain_lut(space, backend, in_channels, num_classes, cache_dir=cfg.paths.cache_dir,
                     lut_path=cfg.hardware.get("lut_path"), strict=bool(cfg.hardware.get("strict", False)),
                     progress=bool(cfg.get("progress", True)))
    predicted = RuntimeModel(space, lut, in_channels, num_classes).predict(arch)
    network = OpSpec("network", (in_channels, space.resolution, space.resolution), lambda: net.eval(),
                     "trained network")
    references = check_references(cfg.train.export.get("drift_references", DEFAULT_REFERENCES))
    entry, drift, _ = measure_network(network, space, lut, backend, in_channels, num_classes, references)
    precision = getattr(backend, "precision", "fp32")
    result = {"latency_backend": backend.name, "latency_threads": backend.threads, "lut": lut.source,
              "latency_precision": precision,
              "predicted_latency_ms": predicted, "measured_latency_ms": entry.ms,
              "measured_latency_iqr_ms": entry.iqr_ms,
              "latency_error_pct": 100 * (predicted - entry.ms) / entry.ms,
              **drift_fields(drift, predicted, entry.ms)}
    if int8_model is not None:
        result.update(measure_int8_model(backend, int8_model, (in_channels, space.resolution, space.resolution),
                                         predicted if precision == "int8" else None))
    return result


def measure_int8_model(backend: Any, model: bytes, input_shape: tuple[int, int, int],
                       predicted: float | None) -> dict[str, Any]:
    """``model`` (int8 ONNX) timed as the LUT's models are (``sessions`` sessions, warm-up, ``repeats`` interleaved
    rounds, the backend's statistic) on ``backend``'s settings at int8; ``None`` fields where the backend is not
    ONNX Runtime."""
    from nas.cost.backends import OnnxRuntimeCPU, summarize
    from nas.cost.measurement_core import time_interleaved

    empty = {"int8_measured_latency_ms": None, "int8_measured_latency_iqr_ms": None,
             "int8_predicted_latency_ms": predicted, "int8_latency_error_pct": None}
    if not isinstance(backend, OnnxRuntimeCPU):
        log.warning("model_int8.onnx is not timed: hardware.backend is %s, not ONNX Runtime", backend.name)
        return empty
    shape = (backend.batch_size, *input_shape)
    with backend.threads_context():
        runs = {"int8": backend.model_sessions(model, shape)}
        for run in runs["int8"]:
            backend.time_calls(run, backend.warmup)
        samples = time_interleaved(runs, backend.time_calls, backend.repeats, backend.repeats)
    entry = summarize([t for session in samples["int8"] for t in session], backend.statistic)
    return {**empty, "int8_measured_latency_ms": entry.ms, "int8_measured_latency_iqr_ms": entry.iqr_ms,
            "int8_latency_error_pct": None if predicted is None else 100 * (predicted - entry.ms) / entry.ms}
