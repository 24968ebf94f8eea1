"""Shared fixtures: small spaces and LUTs so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nas.cli import CONFIG_DIR
from nas.cost.backends import MacsProxy
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import profile_space
from nas.space.search_space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]

# at most 2 threads, and no more than this process's share of the cores it may run on (taskset; with pytest-xdist,
# `-n 2`, each worker gets its share): extra threads only spin. The commands the tests start inherit the share
# through OMP_NUM_THREADS, so two workers' subprocesses do not oversubscribe the cores either.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, CORES // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# the registry of live spnas processes (nas.threads) of the tests and the commands they start: their own folder, not
# the user's, so a test's thread count does not depend on what else runs on the machine
if not os.environ.get("SPNAS_RUNTIME_DIR"):
    os.environ["SPNAS_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="spnas-test-runtime-")
    atexit.register(shutil.rmtree, os.environ["SPNAS_RUNTIME_DIR"], True)

MICRO_SPACE = {
    "name": "micro",
    "resolution": 16,
    "act": "relu",
    "stem": {"channels": 8, "kernel": 3, "stride": 2},
    "head": {"channels": 32},
    "candidates": {"kernels": [3, 5], "expansions": [3, 6], "se_ratios": [0, 0.25, 0.5], "skip": True},
    "stages": [
        {"channels": 8, "stride": 1, "repeats": 1, "fixed": {"kernel": 3, "expansion": 1, "se_ratio": 0}},
        {"channels": 16, "stride": 2, "repeats": 2},
        {"channels": 24, "stride": 1, "repeats": 2},
    ],
}


def load_space(name: str) -> SearchSpace:
    return SearchSpace.from_config(yaml.safe_load((CONFIG_DIR / "space" / f"{name}.yaml").read_text()))


@pytest.fixture(scope="session")
def onnx_lut_cache(tmp_path_factory) -> Path:
    """One LUT cache for the end-to-end runs on ONNX Runtime with the same fast settings (the tiny space, one
    channel, 10 classes: digits and Fashion-MNIST alike): the suite profiles that LUT once, as a user's second
    command reuses the first one's. Under pytest-xdist the workers share it (LUT files are written atomically)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = tmp_path_factory.getbasetemp().parent / "lut-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("lut-cache")


@pytest.fixture
def micro_space() -> SearchSpace:
    return SearchSpace.from_config(MICRO_SPACE)


@pytest.fixture
def tiny_space() -> SearchSpace:
    return load_space("tiny")


def proxy_lut(space: SearchSpace, in_channels: int = 1, num_classes: int = 10) -> LatencyLUT:
    """A deterministic, monotone LUT (MACs-proportional cost model) for tests of the runtime math."""
    return profile_space(space, MacsProxy(), in_channels, num_classes, progress=False)


@pytest.fixture
def micro_lut(micro_space: SearchSpace) -> LatencyLUT:
    return proxy_lut(micro_space)


#: the plain SGD most solver tests train with (small steps, no Nesterov, no weight decay)
TEST_SGD = {"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}

SOLVER_CLASSES = {"single_path": "SinglePathSearch", "single_path_ste": "SinglePathSTESearch",
                  "single_path_softmax": "SinglePathSoftmaxSearch", "multi_path": "MultiPathSearch",
                  "proxyless": "ProxylessSearch", "random": "RandomSearch"}


def solver_settings(name: str, **settings: Any) -> dict[str, Any]:
    """``conf/solver/<name>.yaml`` resolved (the only place solver defaults live), with ``settings`` merged in."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=[f"solver={name}"])
    base = OmegaConf.create(OmegaConf.to_container(cfg.solver, resolve=True))
    return OmegaConf.to_container(OmegaConf.merge(base, settings))


def make_solver(name: str, space: SearchSpace, lut: LatencyLUT, in_channels: int = 1, num_classes: int = 10,
                **settings: Any) -> Any:
    """A solver as search.py builds it from its YAML, with test-sized ``settings`` (e.g. ``optimizer={"lr": .05}``,
    ``lr_scheduler=None``) merged over the file's values."""
    from nas.search.pipeline import instantiate_solver

    return instantiate_solver(solver_settings(name, **settings), space, in_channels, num_classes, lut)


def write_idx(path, array, compress: bool) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``."""
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as stream:
            stream.write(data)
    else:
        path.write_bytes(data)


def make_idx_set(folder, n_train: int = 120, n_test: int = 30, compress: bool = True, size: int = 28):
    """A small IDX set in ``folder``: class-dependent images (a bright square whose row is the label)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label: 2 * label + 3, 4:20] = 250
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)
    return folder
