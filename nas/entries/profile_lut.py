"""Profile the latency LUT of a space on the selected hardware backend and cache it.

    spnas profile-lut                                  # tiny space, ONNX Runtime CPU, 1 thread
    spnas profile-lut space=mnasnet in_channels=3 num_classes=1000 out=lut.json   # no ImageNet needed

The data shape (input channels, classes) comes from ``data=`` unless ``in_channels=`` and ``num_classes=`` are
given: then no data set is read or needed.
"""

from __future__ import annotations

import time

from hydra.utils import instantiate
from omegaconf import DictConfig

from nas.cli import hydra_command
from nas.cost.backends import build_backend
from nas.cost.profiler import cache_path, obtain_lut
from nas.errors import ConfigError
from nas.space.search_space import SearchSpace


def data_shape(cfg: DictConfig) -> tuple[int, int]:
    """``(in_channels, num_classes)``: the overrides when both are given, else the data module's."""
    in_channels, num_classes = cfg.get("in_channels"), cfg.get("num_classes")
    if in_channels is None or num_classes is None:
        datamodule = instantiate(cfg.data)
        in_channels = datamodule.in_channels if in_channels is None else in_channels
        num_classes = datamodule.num_classes if num_classes is None else num_classes
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ConfigError(f"in_channels and num_classes must be integers >= 1, got {in_channels} and {num_classes}")
    return int(in_channels), int(num_classes)


def profile(cfg: DictConfig) -> None:
    space = SearchSpace.from_config(cfg.space)
    in_channels, num_classes = data_shape(cfg)
    backend = build_backend(cfg.hardware.backend)
    path = cache_path(cfg.paths.cache_dir, space, backend, in_channels, num_classes)
    if cfg.force and path.exists():
        path.unlink()
    cached = path.exists()
    start = time.perf_counter()
    lut = obtain_lut(space, backend, in_channels, num_classes, cache_dir=cfg.paths.cache_dir,
                     progress=bool(cfg.progress))
    seconds = time.perf_counter() - start
    if cfg.out:
        lut.save(cfg.out)
    print(f"space '{space.name}' ({space.digest}), input {in_channels} channel(s), {num_classes} classes, "
          f"{len(lut.entries)} ops on {backend.name} "
          f"(threads={backend.threads}, batch={backend.batch_size}, precision={getattr(backend, 'precision', 'fp32')}, "
          f"fingerprint {backend.fingerprint_id()})")
    what = "read from cache" if cached else f"profiled {lut.meta.get('profiled_ops', 0)} ops"
    print(f"calibration {lut.describe_calibration()}; {what} in {seconds:.1f} s; LUT: {path}"
          + (f" and {cfg.out}" if cfg.out else ""))


#: ``main`` (the Hydra app) and ``run_command`` (``spnas profile-lut``: the command line checked first, then run)
main, run_command = hydra_command(profile, "profile")
