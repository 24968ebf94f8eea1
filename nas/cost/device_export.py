"""Device-side profiling, torch side: export every distinct candidate op of a space as ONNX plus a manifest.

The "portable agent" idea of the PFP-NAS paper: the target device never sees torch, the framework or the data.
It receives a folder of small ONNX files, ``manifest.json`` and copies of ``nas/cost/device_runner.py`` and
``nas/cost/measurement_core.py`` (onnxruntime, numpy and the standard library only; :func:`ship_runner`), which
time them there and write a LUT JSON that ``search.py`` reads with ``hardware.lut_path=...``.

Manifest (``format: spnas-op-export``, ``version: 1`` for fp32 models, ``2`` for int8)::

    {
      "format": "spnas-op-export", "version": 1,
      "space": {"name": "tiny", "digest": "..."}, "in_channels": 1, "num_classes": 10,
      "settings": {"threads": 1, "batch_size": 1, "warmup": 10, "repeats": 50, "rounds": 10,
                   "sessions": 2, "cache_flush_mb": 2.0, "statistic": "p10",     # sessions: optional, default 1
                   "providers": [{"name": "CPUExecutionProvider", "options": {}}]},  # optional, default the CPU's
      "ops": [{"key": "mbconv_r16_...", "file": "ops/0003.onnx", "input_shape": [1, 16, 16, 16],
               "sha256": "...", "origin": "layer 1 (s1b0) k3_e3_se0"}, ...],
      "networks": [{"name": "network_0", "file": "networks/network_0.onnx", "input_shape": [...],
                    "sha256": "...", "ops": ["stem_...", "mbconv_...", ..., "head_..."],
                    "groups": [0, 0, ..., 5]}, ...]                 # each op's stage (cost group)
    }

``networks`` are the calibration networks of the LUT's network calibration (see ``nas.cost.lut``); ``groups``
(optional for the runner) names each op's cost group, for the per-stage scales.

int8 (``hardware.backend.precision=int8``): every file is quantised here, by the backend's own
:meth:`~nas.cost.backends.OnnxRuntimeCPU.model_bytes` (the fp32 export quantised by
:func:`nas.cost.quantization.quantize_synthetic`), so the device runs exactly the models ``profile-lut`` measures
at int8 and needs no quantiser. The manifest is then version 2 and adds ``"precision": "int8"`` and
``"quantization": {...}`` (the recipe, :data:`nas.cost.quantization.INT8_RECIPE`), which the runner puts in its
LUT's fingerprint as the framework's int8 backend does. An fp32 export is version 1, without these fields, as
before precisions existed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nas.cost import device_runner, measurement_core
from nas.cost.backends import LatencyBackend, OnnxRuntimeCPU
from nas.cost.measurement_core import MANIFEST_FORMAT, normalize_providers
from nas.cost.signatures import calibration_network_groups, calibration_networks, required_ops
from nas.errors import ConfigError
from nas.io import atomic_write_bytes, atomic_write_json
from nas.space.search_space import SearchSpace

MANIFEST_NAME = "manifest.json"
#: the files the device needs besides the export: the runner (its CLI) and the measurement core it imports
RUNNER_FILES = (Path(device_runner.__file__), Path(measurement_core.__file__))


def ship_runner(out_dir: str | os.PathLike) -> list[Path]:
    """Copy :data:`RUNNER_FILES` into ``out_dir`` (``python3 out_dir/device_runner.py out_dir`` runs there with
    numpy and onnxruntime only); return the copies."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(source, out / source.name)) for source in RUNNER_FILES]


def export_space_ops(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int,
                     out_dir: str | os.PathLike, *, rounds: int = 10, opset: int = 17,
                     providers: list[dict[str, Any]] | None = None, progress: bool = True) -> Path:
    """Write ``out_dir/ops/*.onnx``, ``out_dir/networks/*.onnx`` and ``out_dir/manifest.json``, and ship the runner
    beside them (:func:`ship_runner`); return the manifest.

    Each file is the model ``backend`` measures (:meth:`~nas.cost.backends.OnnxRuntimeCPU.model_bytes`: fp32, or
    quantised to int8 here when its precision is int8). The measurement settings (threads, batch size, warm-up,
    repeats, rounds, sessions, cache flush, execution providers) are taken from ``backend`` (the ``hardware=``
    config) and recorded in the manifest, which the runner follows by default; ``providers`` (normalised) replaces
    the backend's: the target device's, which this machine's onnxruntime need not have.
    """
    if not isinstance(backend, OnnxRuntimeCPU):
        raise ConfigError(f"device export measures with ONNX Runtime; select hardware=cpu_onnx or cpu_onnx_int8 (got "
                          f"backend '{backend.name}')")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).exists():
            raise ConfigError(f"{out} exists, is not empty and holds no op export; choose an empty or new folder")
        for sub in ("ops", "networks"):  # an earlier export here: replace it, leave no stale files
            shutil.rmtree(out / sub, ignore_errors=True)
    ops = required_ops(space, in_channels, num_classes)
    networks, network_keys = calibration_networks(space, in_channels, num_classes, backend.calibration_networks)
    network_groups = calibration_network_groups(space, backend.calibration_networks)
    precision = backend.precision
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": 1 if precision == "fp32" else 2,  # fp32: the manifest of before precisions (MANIFEST_VERSIONS)
        "space": {"name": space.name, "digest": space.digest},
        "in_channels": in_channels,
        "num_classes": num_classes,
        **({} if precision == "fp32" else {"precision": precision, "quantization": backend.quantization}),
        "settings": {"threads": backend.threads, "batch_size": backend.batch_size, "warmup": backend.warmup,
                     "repeats": backend.repeats, "rounds": rounds, "sessions": backend.sessions,
                     "cache_flush_mb": backend.cache_flush_mb,
                     "statistic": backend.statistic,
                     "providers": normalize_providers(backend.providers if providers is None else providers)},
        "ops": [],
        "networks": [],
    }
    items = [("ops", f"ops/{i:04d}.onnx", op) for i, op in enumerate(ops.values())]
    items += [("networks", f"networks/{name}.onnx", op) for name, op in networks.items()]
    action = "Exporting" if precision == "fp32" else f"Exporting and quantising to {precision}"
    for group, rel, op in tqdm(items, desc=f"{action} {len(ops)} ops + {len(networks)} networks (ONNX)",
                               unit="file", disable=not progress, leave=False):
        shape = [backend.batch_size, *op.input_shape]
        data = backend.model_bytes(op.build(), tuple(shape), opset=opset)
        atomic_write_bytes(out / rel, data)
        record = {"file": rel, "input_shape": shape, "sha256": hashlib.sha256(data).hexdigest()}
        if group == "ops":
            manifest["ops"].append({"key": op.key, **record, "origin": op.origin})
        else:
            manifest["networks"].append({"name": op.key, **record, "ops": network_keys[op.key],
                                         "groups": network_groups[op.key]})
    path = atomic_write_json(out / MANIFEST_NAME, manifest)
    ship_runner(out)
    return path
