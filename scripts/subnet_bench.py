"""Set-up shared by the sub-network search benchmarks (``bench_subnet_search.py``, ``bench_tactics.py``).

Not an entry point. Both benchmark one trained supernet on scikit-learn's digits with the project's config files
read directly (no Hydra composition, so each benchmark keeps its own command line).
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas.cli import CONFIG_DIR
from nas.cost.backends import build_backend
from nas.cost.profiler import obtain_lut
from nas.space.search_space import SearchSpace
from nas.subnet_search.evaluation import SupernetEvaluator, checkpoint_info, load_supernet
from nas.subnet_search.search_objectives import Target


def conf(group: str, name: str) -> dict[str, Any]:
    """``nas/conf/<group>/<name>.yaml`` as a plain dict (interpolations resolved)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"), resolve=True)


def digits_supernet(space_name: str, supernet: str, bn_batches: int, via: str) -> tuple[SearchSpace, Any,
                                                                                         SupernetEvaluator]:
    """The space, the digits data module (seed 0, the space's resolution) and an evaluator of the supernet
    checkpoint ``supernet`` (BatchNorm re-estimated on ``bn_batches`` batches drawn with seed 0)."""
    space = SearchSpace.from_config(OmegaConf.load(CONFIG_DIR / "space" / f"{space_name}.yaml"))
    data_cfg = OmegaConf.load(CONFIG_DIR / "data" / "digits.yaml")
    data_cfg.image_size = space.resolution
    data_cfg.seed = 0
    datamodule = instantiate(data_cfg)
    net = load_supernet(checkpoint_info(supernet, space), space, datamodule.in_channels, datamodule.num_classes,
                        supernet)
    return space, datamodule, SupernetEvaluator.from_datamodule(net, datamodule, bn_batches, seed=0, via=via)


def device_target(name: str, space: SearchSpace, datamodule: Any, cache_dir: str,
                  lut_path: str | None = None) -> Target:
    """Target device ``nas/conf/hardware/<name>.yaml`` priced with ``lut_path`` or the cached (else profiled) LUT."""
    backend = build_backend(conf("hardware", name)["backend"])
    lut = obtain_lut(space, backend, datamodule.in_channels, datamodule.num_classes, cache_dir=cache_dir,
                     lut_path=lut_path, progress=True)
    return Target.from_lut(name, space, lut, datamodule.in_channels, datamodule.num_classes)
