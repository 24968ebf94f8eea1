"""Benchmark of the sub-network search on a real supernet: NSGA-II vs random search, warm vs cold start.

    python scripts/bench_subnet_search.py --supernet <run>/checkpoints/last.ckpt --seeds 0 1 2 --budget 500 \\
        --out outputs/bench_subnet --docs docs

For each seed: NSGA-II and random search with ``--budget`` validations on device A (``--device-a``); then on
device B (``--device-b``) NSGA-II from a random first population (cold) and seeded with device A's NSGA-II front
(warm start, source 002 §4.4 / Fig 8). All runs share one validation store (same supernet, same BN-calibration
batches: a sub-network's error is the same number in every run), so a sub-network is validated once for the whole
benchmark; each run still consumes exactly ``--budget`` distinct sub-networks, i.e. computes what a standalone
``subnet_search.py`` run computes. Writes ``bench.json`` (hypervolume per generation of every run, validations per
second) and figures (``--docs``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.trained_supernet import (
    add_supernet_arguments,
    check_supernet_arguments,
    device_target,
    hypervolume_at,
    keep_run,
    output_folder,
    store_path,
    trained_supernet,
)
from nas.io import agg_figure, atomic_write_json, write_figure
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import AlgorithmConfig, BudgetedSearch
from nas.subnet_search.evaluation import file_digest
from nas.subnet_search.hypervolume import Normalisation
from nas.subnet_search.run import TimedValidator
from nas.subnet_search.search_objectives import ObjectiveSpace
from nas.subnet_search.store import ValidationStore


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--space", default="tiny")
    add_supernet_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--device-a", default="macs_proxy")
    ap.add_argument("--device-b", default="cpu_onnx")
    ap.add_argument("--lut-a", default=None, help="a LUT file for device A (else the cache / profiling)")
    ap.add_argument("--lut-b", default=None, help="a LUT file for device B")
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--via", default="child", choices=["child", "supernet"])
    ap.add_argument("--cache-dir", default=".cache/spnas")
    ap.add_argument("--out", default="outputs/bench_subnet")
    ap.add_argument("--docs", default=None, help="folder for the figures (e.g. docs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-warm", action="store_true", help="only NSGA-II vs random search on device A")
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every search, write ``bench.json`` (and the figures with ``--docs``); returns the report."""
    check_supernet_arguments(args)
    out = output_folder(args.out, args.threads)

    space, datamodule, evaluator = trained_supernet(args.space, args.supernet, args.bn_batches, args.via, args.data,
                                                    args.val_batches)
    codec = GenomeCodec(space)
    targets = {name: device_target(name, space, datamodule, args.cache_dir, lut_path)
               for name, lut_path in ((args.device_a, args.lut_a), (args.device_b, args.lut_b))}
    objectives = ObjectiveSpace.build(codec, ["error", "latency"], list(targets.values()), datamodule.in_channels,
                                      datamodule.num_classes)
    norms = {n: Normalisation.build(objectives.names, objectives.bounds(n)) for n in targets}
    store = ValidationStore(store_path(args, out), file_digest(args.supernet), space.digest,
                            {n: t.fingerprint for n, t in targets.items()})
    validator = TimedValidator(evaluator)
    runs: dict[str, dict] = {}

    def search(label: str, algorithm: str, device: str, seed: int, initial: np.ndarray | None = None) -> list:
        cfg = AlgorithmConfig(name=algorithm, population=args.population)
        result = BudgetedSearch(objectives, device, validator, store, cfg, args.budget, seed, norms[device],
                                initial=initial, progress=True).run()
        runs[label] = {"algorithm": algorithm, "device": device, "seed": seed, "warm": initial is not None,
                       "validations": result.consumed,
                       "curve": [[h.generation, h.validations, h.hypervolume] for h in result.history],
                       "front": [{"key": result.keys[i], "error": float(result.F[i][0]),
                                  "latency_ms": float(result.F[i][1])} for i in result.front()]}
        if args.runs_dir:
            keep_run(Path(args.runs_dir) / label.replace("/", "_"), result, codec, objectives, norms[device],
                     {"supernet": args.supernet, "data": args.data, "algorithm": algorithm, "seed": seed,
                      "warm": initial is not None, "validation_samples": evaluator.num_val_samples,
                      "bn_batches": args.bn_batches})
        print(f"{label}: hypervolume {result.history[-1].hypervolume:.4f} after {result.consumed} validations "
              f"({len(result.history)} generations); supernet evaluations so far {validator.count}", flush=True)
        return [result.genes[i] for i in result.front()]

    for seed in args.seeds:
        front_a = search(f"nsga2/{args.device_a}/seed{seed}", "nsga2", args.device_a, seed)
        search(f"random/{args.device_a}/seed{seed}", "random", args.device_a, seed)
        if not args.no_warm:
            search(f"nsga2-cold/{args.device_b}/seed{seed}", "nsga2", args.device_b, seed)
            search(f"nsga2-warm/{args.device_b}/seed{seed}", "nsga2", args.device_b, seed,
                   initial=np.array(front_a))

    report = {"supernet": args.supernet, "supernet_digest": file_digest(args.supernet), "space": space.name,
              "data": args.data,
              "budget": args.budget, "population": args.population, "seeds": args.seeds,
              "devices": {n: {"lut_fingerprint": t.fingerprint, "normalisation": norms[n].describe()}
                          for n, t in targets.items()},
              "supernet_evaluations": validator.count, "validation_seconds": round(validator.seconds, 2),
              "validations_per_second": round(validator.count / max(validator.seconds, 1e-9), 3),
              "validation_samples": evaluator.num_val_samples, "bn_batches": args.bn_batches,
              "threads": args.threads, "runs": runs}
    atomic_write_json(out / "bench.json", report)
    print(summarise(report))
    if args.docs:
        figures(report, Path(args.docs))
    return report


def hv_at(curve: list, validations: int) -> float:
    """Hypervolume after ``validations`` validations of a curve of ``[generation, validations, hypervolume]``."""
    return hypervolume_at([(n, hv) for _gen, n, hv in curve], validations)


def summarise(report: dict) -> str:
    """The hypervolumes at the budget per seed, and warm against cold start by generation."""
    runs, budget = report["runs"], report["budget"]
    lines = [f"\nhypervolume at {budget} validations (normalised error x latency, reference (1, 1)):"]
    for seed in report["seeds"]:
        n = next(r for r in runs.values() if r["algorithm"] == "nsga2" and r["seed"] == seed and not r["warm"])
        r = next(r for r in runs.values() if r["algorithm"] == "random" and r["seed"] == seed)
        lines.append(f"  seed {seed}: NSGA-II {hv_at(n['curve'], budget):.4f}  random {hv_at(r['curve'], budget):.4f}")
    lines.append("warm vs cold start on the second device (hypervolume by generation 1..5):")
    for seed in report["seeds"]:
        cold = next((r for k, r in runs.items() if k.startswith("nsga2-cold") and r["seed"] == seed), None)
        warm = next((r for k, r in runs.items() if k.startswith("nsga2-warm") and r["seed"] == seed), None)
        if cold is None or warm is None:
            continue
        lines.append(f"  seed {seed}: warm {[round(c[2], 4) for c in warm['curve'][:5]]}  "
                     f"cold {[round(c[2], 4) for c in cold['curve'][:5]]}")
    lines.append(f"{report['supernet_evaluations']} supernet evaluations, {report['validations_per_second']} "
                 f"validations/s ({report['validation_samples']} validation images, {report['bn_batches']} BN batches)")
    return "\n".join(lines)


def figures(report: dict, docs: Path) -> None:
    """``subnet_search_hv.png`` (hypervolume curves) and ``subnet_search_front.png`` (fronts of the first seed)."""
    runs = report["runs"]
    device_a = next(iter(report["devices"]))
    fig = agg_figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    colours = {"nsga2": "tab:blue", "random": "tab:orange"}
    for r in runs.values():
        if r["warm"] or r["device"] != device_a:
            continue
        c = np.array(r["curve"])
        axes[0].plot(c[:, 1], c[:, 2], color=colours[r["algorithm"]], alpha=0.8,
                     label=f"{r['algorithm']} seed {r['seed']}")
    axes[0].set_xlabel("validations")
    axes[0].set_ylabel("hypervolume")
    axes[0].set_title(f"NSGA-II vs random search ({device_a})")
    axes[0].legend(fontsize=7)
    for r in runs.values():
        if r["device"] == device_a:
            continue
        c = np.array(r["curve"])
        axes[1].plot(c[:, 0], c[:, 2], color="tab:green" if r["warm"] else "tab:gray", marker=".",
                     label=f"{'warm' if r['warm'] else 'cold'} seed {r['seed']}")
    axes[1].set_xlabel("generation")
    axes[1].set_ylabel("hypervolume")
    axes[1].set_title(f"warm start from the other device's front ({list(report['devices'])[1]})")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    write_figure(docs / "subnet_search_hv.png", fig, dpi=110)
    fig = agg_figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for r in runs.values():
        if r["seed"] != report["seeds"][0] or r["warm"] or r["device"] != device_a:
            continue
        pts = sorted((m["latency_ms"], m["error"]) for m in r["front"])
        x, y = zip(*pts)
        ax.step(x, y, where="post", marker="o", ms=3, color=colours[r["algorithm"]], label=r["algorithm"])
    ax.set_xlabel(f"latency (ms, {device_a})")
    ax.set_ylabel("top-1 error (supernet weights)")
    ax.set_title(f"Pareto fronts at {report['budget']} validations, seed {report['seeds'][0]}")
    ax.legend()
    fig.tight_layout()
    write_figure(docs / "subnet_search_front.png", fig, dpi=110)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/bench_subnet_search.py --supernet <ckpt> [...]``."""
    return benchmark_command(parser(), run, argv)
