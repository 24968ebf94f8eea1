"""Export a space's candidate ops as ONNX files + manifest for measurement on the target device.

    spnas export-ops out=ops_tiny                                 # tiny space, digits (1x32x32, 10 classes)
    spnas export-ops space=cifar data=cifar10 hardware.backend.threads=4 out=ops_cifar
    spnas export-ops hardware=cpu_onnx_int8 \
        'hardware.backend.providers=[XnnpackExecutionProvider,CPUExecutionProvider]' out=ops_phone   # int8, a phone

The folder holds ``device_runner.py`` and the ``measurement_core.py`` it imports; copy it to the device, then there
(needs only onnxruntime and numpy): ``python3 ops_tiny/device_runner.py ops_tiny --out lut.json``,
and back here: ``python search.py hardware.lut_path=lut.json``. Threads, batch size, warm-up, repeats, cache
flush and execution providers come from the ``hardware=`` config and are recorded in the manifest (the runner can
override them). The providers are the device's: this machine's onnxruntime build need not have them (the runner
checks them on the device). With ``hardware=cpu_onnx_int8`` the models are quantised here, as ``profile-lut``
quantises them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nas.cli import hydra_command
from nas.cost.backends import build_backend, onnx_providers
from nas.cost.device_export import RUNNER_FILES, export_space_ops
from nas.cost.measurement_core import describe_providers, missing_providers
from nas.space.search_space import SearchSpace


def export(cfg: DictConfig) -> Path:
    import onnxruntime as ort

    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    settings: dict[str, Any] = OmegaConf.to_container(cfg.hardware.backend, resolve=True)  # type: ignore[assignment]
    # the execution providers are the device's, recorded for its runner: nothing runs on them here, so the backend
    # (which exports and quantises) is built on the CPU's, and this build need not have them
    providers = onnx_providers(settings.pop("providers"), available_only=False) if "providers" in settings else None
    backend = build_backend(OmegaConf.create(settings))
    out = Path(str(cfg.out))
    manifest = export_space_ops(space, backend, datamodule.in_channels, datamodule.num_classes, out,
                                rounds=int(cfg.rounds), providers=providers, progress=bool(cfg.progress))
    runner, core = RUNNER_FILES  # export_space_ops copied both beside the ops
    n_ops = len(list((out / "ops").glob("*.onnx")))
    elsewhere = missing_providers(providers or [], ort.get_available_providers())
    print(f"exported {n_ops} {backend.precision} ops of space '{space.name}' ({space.digest}) and "
          f"{backend.calibration_networks} calibration networks to {out} (manifest {manifest.name}, runner "
          f"{runner.name} and {core.name} copied alongside; providers {describe_providers(providers or [])}"
          + (f", of which {', '.join(elsewhere)} not in this onnxruntime build: the device's runner checks them"
             if elsewhere else "") + ").\n"
          f"On the device: python3 {out.name}/device_runner.py {out.name} --out lut.json\n"
          f"Then: python search.py space={space.name} hardware.lut_path=lut.json"
          + ("" if backend.precision == "fp32" else f" hardware.backend.precision={backend.precision}"))
    return manifest


#: ``main`` (the Hydra app) and ``run_command`` (``spnas export-ops``: the command line checked first, then run)
main, run_command = hydra_command(export, "export_ops")
