"""Truth check of weight sharing: Kendall τ between supernet-measured and retrained error (DESIGN "Truth check").

    python scripts/supernet_truth.py --checkpoint supernet=<run>/checkpoints/last.ckpt \\
        --checkpoint single_path=<other run>/checkpoints/last.ckpt --pareto <subnet run>/pareto.json \\
        --n-front 4 --n-random 4 --epochs 6 --out outputs/truth --docs docs

Picks ``--n-front`` members of a ``pareto.json`` front (spread over it) and ``--n-random`` seeded random
sub-networks, retrains each from scratch once (``nas.search.training.retrain_from_scratch``, ``train.py``'s
``recipe=default``) and measures its validation error; then measures each sub-network's error with every
checkpoint's shared weights (BatchNorm statistics re-estimated per sub-network, as ``subnet_search.py`` does) and
reports Kendall's τ between the two rankings per checkpoint. Writes ``truth.json`` and, with ``--docs``, a scatter
plot ``supernet_truth.png``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from scipy.stats import kendalltau

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.trained_supernet import bench_config, output_folder, supernet_evaluator
from nas.errors import ConfigError
from nas.io import agg_figure, atomic_write_json, finite_or_none, null_non_finite, write_figure
from nas.search.training import retrain_from_scratch
from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import SearchSpace
from nas.subnet_search.evaluation import checkpoint_info, file_digest


def pick_architectures(space: SearchSpace, pareto: str | None, n_front: int, n_random: int,
                       seed: int) -> list[tuple[str, Architecture]]:
    """``n_front`` members spread over the front of ``pareto`` (a ``pareto.json``, or a ``bench.json`` of
    ``scripts/bench_subnet_search.py``: its first NSGA-II front), then ``n_random`` other seeded random ones."""
    picked: list[tuple[str, Architecture]] = []
    seen: set[tuple[str, ...]] = set()
    if pareto and n_front:
        doc = json.loads(Path(pareto).read_text())
        if "runs" in doc:  # a bench.json of scripts/bench_subnet_search.py: its first NSGA-II front
            front = next(r["front"] for r in doc["runs"].values() if r["algorithm"] == "nsga2")
            archs = [space.architecture([LayerChoice.from_key(k) for k in m["key"].split(" ")]) for m in front]
        else:
            members = next(iter(doc["devices"].values()))["members"]
            archs = [Architecture.from_dict(m["architecture"]) for m in members]
        idx = np.unique(np.linspace(0, len(archs) - 1, min(n_front, len(archs))).round().astype(int))
        for i in idx:
            arch = archs[i].validate(space)
            seen.add(tuple(arch.keys))
            picked.append(("front", arch))
    rng = random.Random(seed)
    while sum(1 for kind, _ in picked if kind == "random") < n_random:
        arch = space.sample(rng)
        if tuple(arch.keys) not in seen:
            seen.add(tuple(arch.keys))
            picked.append(("random", arch))
    return picked


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("--checkpoint", action="append", required=True, help="label=path (repeatable)")
    ap.add_argument("--pareto", default=None,
                    help="a pareto.json (or bench.json) whose front members are retrained")
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--n-front", type=int, default=4)
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/truth")
    ap.add_argument("--docs", default=None)
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Retrain, measure with every checkpoint, write ``truth.json`` (and the figure); returns the report."""
    out = output_folder(args.out, args.threads)
    cfg = bench_config(args.space)
    space = SearchSpace.from_config(cfg.space)
    bad = [item for item in args.checkpoint if "=" not in item]
    if bad:
        raise ConfigError(f"--checkpoint {bad[0]}: expected label=path, e.g. --checkpoint supernet=<ckpt>")
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    for path in checkpoints.values():
        checkpoint_info(path, space)  # fail early on a wrong file
    archs = pick_architectures(space, args.pareto, args.n_front, args.n_random, args.seed)

    rows = []
    start = time.perf_counter()
    for i, (kind, arch) in enumerate(archs):
        trained = retrain_from_scratch(space, arch, cfg.data, args.epochs, args.seed, test=False)
        err = 1.0 - trained["val_acc"] if trained["val_acc"] is not None else float("nan")
        rows.append({"kind": kind, "key": " ".join(arch.keys), "retrained_error": err})
        print(f"[{i + 1}/{len(archs)}] {kind:6s} retrained error {err:.4f}  {' '.join(arch.keys)}", flush=True)
    retrain_s = time.perf_counter() - start

    datamodule = instantiate(cfg.data)
    report: dict[str, Any] = {"space": space.name, "epochs": args.epochs, "seed": args.seed,
                              "retrain_seconds": round(retrain_s, 1), "architectures": rows, "checkpoints": {}}
    retrained = np.array([r["retrained_error"] for r in rows])
    for label, path in checkpoints.items():
        ckpt = checkpoint_info(path, space)
        evaluator = supernet_evaluator(path, space, datamodule, args.bn_batches, via="child", ckpt=ckpt)
        measured = np.array([evaluator.validate(arch)["error"] for _, arch in archs])
        tau, p = kendalltau(measured, retrained)
        solver = (ckpt.get("hyper_parameters") or {}).get("solver")
        report["checkpoints"][label] = {"path": path, "digest": file_digest(path), "solver": solver,
                                        "supernet_error": measured.tolist(),
                                        "kendall_tau": finite_or_none(tau),
                                        "p_value": finite_or_none(p)}
        print(f"{label} ({solver}): Kendall tau {tau:.3f} (p {p:.3f}) over {len(archs)} sub-networks", flush=True)
    atomic_write_json(out / "truth.json", null_non_finite(report))
    if args.docs:
        plot(report, retrained, Path(args.docs) / "supernet_truth.png")
    return report


def plot(report: dict[str, Any], retrained: np.ndarray, path: Path) -> None:
    """Supernet-measured against retrained error, one colour per checkpoint."""
    fig = agg_figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for label, c in report["checkpoints"].items():
        tau = "n/a" if c["kendall_tau"] is None else f"{c['kendall_tau']:.2f}"
        ax.scatter(c["supernet_error"], retrained, label=f"{label} (τ = {tau})")
    ax.set_xlabel("error with shared supernet weights")
    ax.set_ylabel(f"error retrained from scratch ({report['epochs']} epochs)")
    ax.legend()
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/supernet_truth.py --checkpoint label=<ckpt> [...]``."""
    return benchmark_command(parser(), run, argv)
