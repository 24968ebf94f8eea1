"""Truth check of weight sharing: Kendall τ between supernet-measured and retrained error (DESIGN "Truth check").

    python scripts/supernet_truth.py --checkpoint supernet=<run>/checkpoints/last.ckpt \
        --checkpoint single_path=<other run>/checkpoints/last.ckpt --pareto <subnet run>/pareto.json \
        --n-front 4 --n-random 4 --epochs 6 --out outputs/truth --docs docs

Picks ``--n-front`` members of a ``pareto.json`` front (spread over it) and ``--n-random`` seeded random
sub-networks, retrains each from scratch once (``nas.search.training.train_child``, ``train.py``'s ``recipe=default``)
and measures its validation error; then measures each sub-network's error with every checkpoint's shared weights
(BatchNorm statistics re-estimated per sub-network, as ``subnet_search.py`` does) and reports Kendall's τ between
the two rankings per checkpoint. Writes ``truth.json`` and a scatter plot.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import kendalltau

from nas.cli import CONFIG_DIR
from nas.io import atomic_write_json, finite_or_none
from nas.search.training import load_recipe, recipe_arguments, train_child
from nas.space.architecture import Architecture, LayerChoice
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace
from nas.subnet_search.evaluation import SupernetEvaluator, checkpoint_info, file_digest, load_supernet


def pick_architectures(space: SearchSpace, pareto: str | None, n_front: int, n_random: int,
                       seed: int) -> list[tuple[str, Architecture]]:
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


def retrain(space: SearchSpace, arch: Architecture, data_cfg, epochs: int, seed: int) -> float:  # noqa: ANN001
    """Validation error of ``arch`` trained from scratch (``train.py``'s ``recipe=default``, ``epochs`` epochs)."""
    recipe = load_recipe("default")
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = instantiate(data_cfg)
    net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, deterministic=True)
    trained = train_child(net, datamodule, **recipe_arguments(recipe.train), trainer=trainer, test=False)
    return 1.0 - trained["val_acc"] if trained["val_acc"] is not None else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.from_config(OmegaConf.load(CONFIG_DIR / "space" / f"{args.space}.yaml"))
    data_cfg = OmegaConf.load(CONFIG_DIR / "data" / "digits.yaml")
    data_cfg.image_size = space.resolution
    data_cfg.seed = 0
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    for path in checkpoints.values():
        checkpoint_info(path, space)  # fail early on a wrong file
    archs = pick_architectures(space, args.pareto, args.n_front, args.n_random, args.seed)

    rows = []
    start = time.perf_counter()
    for i, (kind, arch) in enumerate(archs):
        err = retrain(space, arch, data_cfg, args.epochs, args.seed)
        rows.append({"kind": kind, "key": " ".join(arch.keys), "retrained_error": err})
        print(f"[{i + 1}/{len(archs)}] {kind:6s} retrained error {err:.4f}  {' '.join(arch.keys)}", flush=True)
    retrain_s = time.perf_counter() - start

    datamodule = instantiate(data_cfg)
    report = {"space": space.name, "epochs": args.epochs, "seed": args.seed, "retrain_seconds": round(retrain_s, 1),
              "architectures": rows, "checkpoints": {}}
    retrained = np.array([r["retrained_error"] for r in rows])
    for label, path in checkpoints.items():
        ckpt = checkpoint_info(path, space)
        net = load_supernet(ckpt, space, datamodule.in_channels, datamodule.num_classes, path)
        evaluator = SupernetEvaluator.from_datamodule(net, datamodule, args.bn_batches, seed=0, via="child")
        measured = np.array([evaluator.validate(arch)["error"] for _, arch in archs])
        tau, p = kendalltau(measured, retrained)
        solver = (ckpt.get("hyper_parameters") or {}).get("solver")
        report["checkpoints"][label] = {"path": path, "digest": file_digest(path), "solver": solver,
                                        "supernet_error": measured.tolist(),
                                        "kendall_tau": finite_or_none(tau),
                                        "p_value": finite_or_none(p)}
        print(f"{label} ({solver}): Kendall tau {tau:.3f} (p {p:.3f}) over {len(archs)} sub-networks", flush=True)
    atomic_write_json(out / "truth.json", report)
    if args.docs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for label, c in report["checkpoints"].items():
            ax.scatter(c["supernet_error"], retrained, label=f"{label} (τ = {c['kendall_tau']:.2f})")
        ax.set_xlabel("error with shared supernet weights")
        ax.set_ylabel(f"error retrained from scratch ({args.epochs} epochs)")
        ax.legend()
        fig.tight_layout()
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(args.docs) / "supernet_truth.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
