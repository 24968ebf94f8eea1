"""Profile the latency LUT of a space on the selected hardware backend and cache it.

    python scripts/profile_lut.py                                  # tiny space, ONNX Runtime CPU, 1 thread
    python scripts/profile_lut.py space=mnasnet data=imagenet data.root=/data hardware.backend.threads=4 out=lut.json
"""

from __future__ import annotations

import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from nas.cli import main_guard
from nas.cost.backends import build_backend
from nas.cost.profiler import cache_path, obtain_lut
from nas.space.search_space import SearchSpace


def profile(cfg: DictConfig) -> None:
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    backend = build_backend(cfg.hardware.backend)
    path = cache_path(cfg.paths.cache_dir, space, backend, datamodule.in_channels, datamodule.num_classes)
    if cfg.force and path.exists():
        path.unlink()
    cached = path.exists()
    start = time.perf_counter()
    lut = obtain_lut(space, backend, datamodule.in_channels, datamodule.num_classes,
                     cache_dir=cfg.paths.cache_dir, progress=bool(cfg.progress))
    seconds = time.perf_counter() - start
    if cfg.out:
        lut.save(cfg.out)
    print(f"space '{space.name}' ({space.digest}), {len(lut.entries)} ops on {backend.name} "
          f"(threads={backend.threads}, batch={backend.batch_size}, fingerprint {backend.fingerprint_id()})")
    what = "read from cache" if cached else f"profiled {lut.meta.get('profiled_ops', 0)} ops"
    print(f"{what} in {seconds:.1f} s; LUT: {path}"
          + (f" and {cfg.out}" if cfg.out else ""))


@hydra.main(version_base="1.3", config_path="../conf", config_name="profile")
def main(cfg: DictConfig) -> None:
    main_guard(lambda: profile(cfg))


if __name__ == "__main__":
    main()
