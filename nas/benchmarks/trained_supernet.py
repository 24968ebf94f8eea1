"""Set-up shared by the benchmarks of a trained supernet (:mod:`nas.benchmarks.subnet_search_algorithms`,
:mod:`nas.benchmarks.subnet_tactics`, :mod:`nas.benchmarks.weight_sharing_truth`).

They measure one supernet checkpoint with ``subnet_search.py``'s settings, composed by
:func:`nas.cli.compose_config` (``nas/conf/subnet_search.yaml`` with ``data=<data>``, scikit-learn's digits by
default, and seed 0: every benchmark sees the same split and the same BatchNorm batches), while each keeps its own
command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nas.cli import compose_config
from nas.cost.backends import build_backend
from nas.cost.profiler import obtain_lut
from nas.errors import ConfigError
from nas.space.search_space import SearchSpace
from nas.subnet_search.evaluation import SupernetEvaluator, checkpoint_info, load_supernet
from nas.subnet_search.report import write_hv_csv, write_pareto
from nas.subnet_search.search_objectives import Target


def output_folder(out: str, threads: int) -> Path:
    """The benchmark's ``--out`` folder, created; torch limited to ``--threads`` threads."""
    torch.set_num_threads(threads)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_supernet_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every benchmark of a trained supernet shares: ``--data``, ``--val-batches``, ``--store``,
    ``--runs-dir`` (checked by :func:`check_supernet_arguments`)."""
    ap.add_argument("--data", default="digits", help="data=... the supernet was trained on (seed 0's split)")
    ap.add_argument("--val-batches", type=int, default=None, help="validation batches per sub-network (default all)")
    ap.add_argument("--store", default=None, help="validations.jsonl shared with other benchmarks of this supernet "
                                                   "(default <out>/validations.jsonl)")
    ap.add_argument("--runs-dir", default=None, help="keep each run's hv.csv and pareto.json under this folder")


def check_supernet_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad :func:`add_supernet_arguments` option in one :class:`ConfigError` line, before any work."""
    if args.val_batches is not None and args.val_batches < 1:
        raise ConfigError(f"--val-batches must be >= 1, got {args.val_batches}")


def store_path(args: argparse.Namespace, out: Path) -> Path:
    """The validation store of the benchmark: ``--store``, else ``<out>/validations.jsonl``."""
    return Path(args.store) if args.store else out / "validations.jsonl"


def bench_config(space: str, overrides: Sequence[str] = (), data: str = "digits") -> DictConfig:
    """``subnet_search.py``'s config for ``space=<space>`` and ``data=<data>`` (seed 0: the split the supernet
    training of the same data and seed held out), with ``overrides``."""
    return compose_config("subnet_search", [f"space={space}", f"data={data}", "seed=0", *overrides])


def group_settings(group: str, name: str) -> dict[str, Any]:
    """The settings of option ``name`` of config group ``group`` (``algorithm``, ``tactic``, ``predictor``,
    ``hardware``) as ``subnet_search.py`` composes them, as a plain dict."""
    return OmegaConf.to_container(compose_config("subnet_search", [f"{group}={name}"])[group], resolve=True)


def supernet_evaluator(path: str, space: SearchSpace, datamodule: Any, bn_batches: int, via: str = "child",
                       ckpt: dict[str, Any] | None = None, val_batches: int | None = None) -> SupernetEvaluator:
    """An evaluator of the supernet checkpoint ``path`` (``ckpt``: its :func:`checkpoint_info`, read if not
    given), BatchNorm re-estimated per sub-network on ``bn_batches`` batches drawn with seed 0; a checkpoint of
    another space is one ``ConfigError`` line."""
    ckpt = checkpoint_info(path, space) if ckpt is None else ckpt
    net = load_supernet(ckpt, space, datamodule.in_channels, datamodule.num_classes, path)
    return SupernetEvaluator.from_datamodule(net, datamodule, bn_batches, seed=0, val_batches=val_batches, via=via)


def trained_supernet(space_name: str, supernet: str, bn_batches: int, via: str, data: str = "digits",
                     val_batches: int | None = None) -> tuple[SearchSpace, Any, SupernetEvaluator]:
    """The space, the data module of ``data=<data>`` (seed 0, the space's resolution) and an evaluator of the
    supernet checkpoint ``supernet`` scoring the first ``val_batches`` validation batches (``None``: all)."""
    cfg = bench_config(space_name, data=data)
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    return space, datamodule, supernet_evaluator(supernet, space, datamodule, bn_batches, via, val_batches=val_batches)


def device_target(name: str, space: SearchSpace, datamodule: Any, cache_dir: str,
                  lut_path: str | None = None) -> Target:
    """Target device ``hardware=<name>`` priced with ``lut_path`` or the cached (else profiled) LUT."""
    backend = build_backend(group_settings("hardware", name)["backend"])
    lut = obtain_lut(space, backend, datamodule.in_channels, datamodule.num_classes, cache_dir=cache_dir,
                     lut_path=lut_path, progress=True)
    return Target.from_lut(name, space, lut, datamodule.in_channels, datamodule.num_classes)


def keep_run(folder: Path, result: Any, codec: Any, objectives: Any, norm: Any, header: dict[str, Any]) -> None:
    """A benchmark run's ``hv.csv`` and ``pareto.json`` in ``folder``, as ``subnet_search.py`` writes them (the
    members' architectures inside ``pareto.json``; no per-member files)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_pareto(folder, {**header, **objectives.describe()}, [result], codec, objectives.names,
                 {result.target: norm}, {t.name: t.fingerprint for t in objectives.targets}, arch_files=False)
    write_hv_csv(folder / "hv.csv", [result], {result.target: norm})


def hypervolume_at(curve: Sequence[Sequence[float]], validations: int) -> float:
    """Hypervolume after at most ``validations`` validations: that of the last point ``(validations, hv)`` of
    ``curve`` at or before it (0 before the first)."""
    below = [hv for n, hv in curve if n <= validations]
    return below[-1] if below else 0.0
