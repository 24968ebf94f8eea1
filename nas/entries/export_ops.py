"""Export a space's candidate ops as ONNX files + manifest for measurement on the target device.

    spnas export-ops out=ops_tiny                                 # tiny space, digits (1x32x32, 10 classes)
    spnas export-ops space=cifar data=cifar10 hardware.backend.threads=4 out=ops_cifar

The folder holds ``device_runner.py`` and the ``measurement_core.py`` it imports; copy it to the device, then there
(needs only onnxruntime and numpy): ``python3 ops_tiny/device_runner.py ops_tiny --out lut.json``,
and back here: ``python search.py hardware.lut_path=lut.json``. Threads, batch size, warm-up, repeats and cache
flush come from the ``hardware=`` config and are recorded in the manifest (the runner can override them).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas.cli import hydra_command
from nas.cost.backends import build_backend
from nas.cost.device_export import RUNNER_FILES, export_space_ops
from nas.space.search_space import SearchSpace


def export(cfg: DictConfig) -> Path:
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    backend = build_backend(cfg.hardware.backend)
    out = Path(str(cfg.out))
    manifest = export_space_ops(space, backend, datamodule.in_channels, datamodule.num_classes, out,
                                rounds=int(cfg.rounds), progress=bool(cfg.progress))
    runner, core = RUNNER_FILES  # export_space_ops copied both beside the ops
    n_ops = len(list((out / "ops").glob("*.onnx")))
    print(f"exported {n_ops} ops of space '{space.name}' ({space.digest}) and {backend.calibration_networks} "
          f"calibration networks to {out} (manifest {manifest.name}, runner {runner.name} and {core.name} copied "
          "alongside).\n"
          f"On the device: python3 {out.name}/device_runner.py {out.name} --out lut.json\n"
          f"Then: python search.py space={space.name} hardware.lut_path=lut.json")
    return manifest


#: ``main`` (the Hydra app) and ``run_command`` (``spnas export-ops``: the command line checked first, then run)
main, run_command = hydra_command(export, "export_ops")
