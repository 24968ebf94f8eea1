"""Benchmark of the search tactics on a trained supernet: validation vs full vs ConcurrentNAS, and PopDB.

    python scripts/bench_tactics.py --supernet <run>/checkpoints/last.ckpt --seeds 0 1 2 --out outputs/bench_tactics \\
        --docs docs

Per seed, on one device (``--device``, default ``macs_proxy``: deterministic prices):

* ``tactic=validation`` (NSGA-II, population 50) with ``--reference-budget`` validations (2000); its hypervolume
  after 800 validations is read from its curve (a budget-800 run is the same run cut at 800: the search is
  deterministic and 800 is a whole number of generations);
* ``tactic=concurrent`` (``nas/conf/tactic/concurrent.yaml``: c = 20) for ``--concurrent-iterations`` populations;
  its first 5 populations are exactly a 100-validation run (the predictor of round i sees only the validations
  of rounds <= i);
* ``tactic=full`` (``nas/conf/tactic/full.yaml``: 80 + 20 validations);
* with ``--popdb``: a PopDB mask from the history of the first seed's validation run (the defaults of
  ``nas/conf/popdb.yaml``, as ``scripts/popdb.py`` makes it), then ``tactic=concurrent`` inside the mask;
* ``--reference-seeds`` runs only those seeds' validation runs to ``--reference-budget`` (the others to
  ``--compare-at``): a cheaper reference, from fewer seeds; ``--no-full`` skips ``tactic=full``;
* with ``--random-budget N``: random search (``algorithm=random``) with N validations, against NSGA-II's
  hypervolume at N read from the validation run's curve (N a whole number of generations);
* ``--predictor`` takes several predictors (``ridge auto mlp constant``): the concurrent and full runs of each.

``--data fashion_mnist`` measures a supernet trained on that data (its held-out split, seed 0); ``--val-batches``
scores the first batches of it only (a cheaper, noisier validation, the same for every run). ``--runs-dir`` keeps
every run's ``hv.csv`` and ``pareto.json`` (as ``subnet_search.py`` writes them) in ``<runs-dir>/<tactic>/seed<s>``.
The reference hypervolume is the best ``tactic=validation`` hypervolume at ``--reference-budget`` over the seeds.
All runs share one validation store (same supernet, same BatchNorm batches), so a sub-network is validated once
for the whole benchmark and every run computes what a standalone ``subnet_search.py`` run computes. Writes
``bench.json`` and, with ``--docs``, ``tactics_hv.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.trained_supernet import (
    add_supernet_arguments,
    check_supernet_arguments,
    device_target,
    group_settings,
    hypervolume_at,
    keep_run,
    output_folder,
    store_path,
    trained_supernet,
)
from nas.cli import compose_config
from nas.errors import ConfigError
from nas.io import agg_figure, atomic_write_json, atomic_write_text, write_figure
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import AlgorithmConfig, BudgetedSearch
from nas.subnet_search.evaluation import file_digest
from nas.subnet_search.hypervolume import Normalisation
from nas.subnet_search.popdb import build_mask, format_mask_report, load_mask, read_history
from nas.subnet_search.run import TimedValidator
from nas.subnet_search.search_objectives import ObjectiveSpace
from nas.subnet_search.store import ValidationStore
from nas.subnet_search.tactics import PredictorSearch, TacticConfig


def curve(result: Any) -> list[tuple[int, float]]:
    return [(h.validations, h.hypervolume) for h in result.history]


def needed(points: list[tuple[int, float]], level: float) -> int | None:
    """Validations after which the curve first reaches ``level`` (``None``: never)."""
    return next((n for n, hv in points if hv >= level), None)


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--space", default="tiny")
    add_supernet_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="macs_proxy")
    ap.add_argument("--predictor", nargs="+", default=["ridge"], dest="predictors",
                    help="predictor(s) of the concurrent and full runs, e.g. ridge auto mlp constant")
    ap.add_argument("--random-budget", type=int, default=0, help="random search with this many validations (0: none)")
    ap.add_argument("--reference-budget", type=int, default=2000)
    ap.add_argument("--reference-seeds", type=int, nargs="+", default=None,
                    help="seeds whose validation run goes to --reference-budget (default all); the others stop at "
                         "--compare-at (or --random-budget if larger)")
    ap.add_argument("--no-full", action="store_true", help="skip tactic=full")
    ap.add_argument("--compare-at", type=int, default=800, help="validation-tactic budget to compare with")
    ap.add_argument("--concurrent-iterations", type=int, default=20)
    ap.add_argument("--popdb", action="store_true")
    ap.add_argument("--hv-reference", type=float, nargs=2, default=None,
                    help="reference point in normalised (error, latency); default (1, 1)")
    ap.add_argument("--bn-batches", type=int, default=1)
    ap.add_argument("--cache-dir", default=".cache/spnas")
    ap.add_argument("--out", default="outputs/bench_tactics")
    ap.add_argument("--docs", default=None)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def check_args(args: argparse.Namespace) -> None:
    """Refuse settings that cannot be benchmarked, before the supernet is loaded."""
    check_supernet_arguments(args)
    if args.reference_seeds is not None and not set(args.reference_seeds) & set(args.seeds):
        raise ConfigError(f"--reference-seeds {args.reference_seeds} names none of --seeds {args.seeds}")
    if args.random_budget < 0:
        raise ConfigError(f"--random-budget must be >= 0, got {args.random_budget}")
    for name in args.predictors:
        group_settings("predictor", name)  # an unknown predictor is one error line naming the choices
    if len(set(args.predictors)) != len(args.predictors):
        raise ConfigError(f"--predictor lists a predictor twice: {args.predictors}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every tactic for every seed (and PopDB), write ``bench.json`` (``tactics_hv.png`` with ``--docs``)."""
    check_args(args)
    out = output_folder(args.out, args.threads)

    space, datamodule, evaluator = trained_supernet(args.space, args.supernet, args.bn_batches, "child", args.data,
                                                    args.val_batches)
    codec = GenomeCodec(space)
    target = device_target(args.device, space, datamodule, args.cache_dir)
    names = ["error", "latency"]

    def objective_space(c: GenomeCodec) -> ObjectiveSpace:
        return ObjectiveSpace.build(c, names, [target], datamodule.in_channels, datamodule.num_classes)

    objectives = objective_space(codec)
    norm = Normalisation.build(names, objectives.bounds(args.device), args.hv_reference)
    digest = file_digest(args.supernet)
    store = ValidationStore(store_path(args, out), digest, space.digest,
                            {args.device: target.fingerprint})
    algorithm = AlgorithmConfig.from_config(group_settings("algorithm", "nsga2"))
    predictors = {name: group_settings("predictor", name) for name in args.predictors}
    concurrent = TacticConfig.from_config({**group_settings("tactic", "concurrent"),
                                           "iterations": args.concurrent_iterations})
    full = TacticConfig.from_config(group_settings("tactic", "full"))
    validator = TimedValidator(evaluator)
    runs: dict[str, Any] = {}
    validation_keys: dict[int, list[str]] = {}

    def record(name: str, seed: int, result: Any, extra: dict[str, Any] | None = None,
               predictor: str | None = None) -> None:
        label = name if predictor is None else f"{name}-{predictor}"
        runs[f"{label}/seed{seed}"] = {"tactic": name, "predictor": predictor, "seed": seed,
                                       "validations": result.consumed, "curve": curve(result), **(extra or {})}
        if args.runs_dir:
            keep_run(Path(args.runs_dir) / label / f"seed{seed}", result, codec, objectives, norm,
                     {"supernet": args.supernet, "supernet_digest": digest, "data": args.data, "tactic": name,
                      "predictor": predictor, "seed": seed, "validation_samples": evaluator.num_val_samples,
                      "bn_batches": args.bn_batches})
        print(f"{label:<22} seed {seed}: {result.consumed:5d} validations, hypervolume "
              f"{result.history[-1].hypervolume:.5f}  ({validator.count} supernet evaluations so far, "
              f"{time.strftime('%H:%M:%S')})", flush=True)

    def predictor_search(objective_space: ObjectiveSpace, tactic: TacticConfig, seed: int,
                         predictor: str) -> PredictorSearch:
        return PredictorSearch(objective_space, args.device, validator, store, algorithm, tactic.validations(),
                               seed, norm, progress=True, tactic=tactic, predictor_config=predictors[predictor])

    for seed in args.seeds:
        budget = (args.reference_budget if args.reference_seeds is None or seed in args.reference_seeds
                  else max(args.compare_at, args.random_budget))
        result = BudgetedSearch(objectives, args.device, validator, store, algorithm, budget, seed,
                                norm, progress=True).run()
        record("validation", seed, result)
        validation_keys[seed] = result.keys
        if args.random_budget:
            random = dataclasses.replace(algorithm, name="random")
            record("random", seed, BudgetedSearch(objectives, args.device, validator, store, random,
                                                  args.random_budget, seed, norm, progress=True).run())
        for predictor in args.predictors:
            for name, tactic in (("concurrent", concurrent), ("full", full))[:1 if args.no_full else 2]:
                search = predictor_search(objectives, tactic, seed, predictor)
                record(name, seed, search.run(), {"rounds": search.rounds}, predictor)

    mask_doc = None
    if args.popdb:
        popdb = compose_config("popdb", [f"space={args.space}"])
        history = out / f"history_validation_seed{args.seeds[0]}.jsonl"
        lines = [store.get(k) for k in validation_keys[args.seeds[0]]]
        atomic_write_text(history, "".join(json.dumps(r) + "\n" for r in lines))
        mask_doc = build_mask(space, read_history(history, space, codec), threshold=float(popdb.threshold),
                              min_cluster_size=int(popdb.min_cluster_size), min_samples=popdb.min_samples,
                              source=str(history))
        atomic_write_json(out / "mask.json", mask_doc)
        print(format_mask_report(mask_doc))
        masked_objectives = objective_space(GenomeCodec(space, load_mask(out / "mask.json", space)))
        for seed in args.seeds:
            search = predictor_search(masked_objectives, concurrent, seed, args.predictors[0])
            record("concurrent_popdb", seed, search.run(), {"rounds": search.rounds}, args.predictors[0])

    summary = summarise(runs, args)
    doc = {"supernet": args.supernet, "supernet_digest": digest, "space": space.name, "data": args.data,
           "device": args.device, "predictors": predictors, "random_budget": args.random_budget,
           "tactics": {"concurrent": dataclasses.asdict(concurrent), "full": dataclasses.asdict(full)},
           "algorithm": dataclasses.asdict(algorithm), "normalisation": norm.describe(),
           "validation_samples": evaluator.num_val_samples, "bn_batches": args.bn_batches,
           "supernet_evaluations": validator.count,
           "validations_per_second": round(validator.count / max(validator.seconds, 1e-9), 3),
           "mask": mask_doc, "summary": summary, "runs": runs}
    atomic_write_json(out / "bench.json", doc)
    print_summary(summary, args)
    if args.docs:
        plot(runs, summary, Path(args.docs) / "tactics_hv.png", args)
    return doc


def summarise(runs: dict[str, Any], args: Any) -> dict[str, Any]:
    """The reference hypervolume and, per seed, each tactic against it and against the validation tactic (per
    predictor: ``concurrent_<predictor>_at_100`` ...), and NSGA-II against random search at ``--random-budget``."""
    reference = max(hypervolume_at(r["curve"], args.reference_budget) for r in runs.values()
                    if r["tactic"] == "validation")
    rows: dict[str, Any] = {"reference_hypervolume": reference, "per_seed": {}}
    for seed in args.seeds:
        row: dict[str, Any] = {}
        val = runs[f"validation/seed{seed}"]["curve"]
        row["validation_at_compare"] = hypervolume_at(val, args.compare_at)
        row["validation_at_100"] = hypervolume_at(val, 100)
        row["validation_validations_to_99pct_reference"] = needed(val, 0.99 * reference)
        if f"random/seed{seed}" in runs:
            row["nsga2_at_random_budget"] = hypervolume_at(val, args.random_budget)
            row["random_at_random_budget"] = hypervolume_at(runs[f"random/seed{seed}"]["curve"], args.random_budget)
        for p in args.predictors:
            for name in ("concurrent", "full", "concurrent_popdb"):
                key = f"{name}-{p}/seed{seed}"
                if key not in runs:
                    continue
                c = runs[key]["curve"]
                row[f"{name}_{p}_at_100"] = hypervolume_at(c, 100)
                row[f"{name}_{p}_validations_to_99pct_reference"] = needed(c, 0.99 * reference)
            row[f"concurrent_{p}_over_validation_pct"] = (100.0 * row[f"concurrent_{p}_at_100"]
                                                          / row["validation_at_compare"])
            popdb = runs.get(f"concurrent_popdb-{p}/seed{seed}")
            if popdb is not None:
                unmasked = runs[f"concurrent-{p}/seed{seed}"]["curve"][-1][1]
                row["concurrent_popdb_final"] = popdb["curve"][-1][1]
                row["concurrent_final"] = unmasked
                row["popdb_over_unmasked_pct"] = 100.0 * popdb["curve"][-1][1] / unmasked
        rows["per_seed"][seed] = row
    return rows


def print_summary(summary: dict[str, Any], args: Any) -> None:
    print(f"\nreference hypervolume (best tactic=validation at {args.reference_budget}): "
          f"{summary['reference_hypervolume']:.5f}")
    for seed, row in summary["per_seed"].items():
        print(f"seed {seed}: " + ", ".join(f"{k}={v:.5f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items()))


def plot(runs: dict[str, Any], summary: dict[str, Any], path: Path, args: Any) -> None:
    """Hypervolume against validations of every run (log scale), and 99 % of the reference."""
    colours = {"validation": "tab:blue", "random": "tab:orange", "concurrent": "tab:red", "full": "tab:green",
               "concurrent_popdb": "tab:purple"}
    styles = dict(zip(args.predictors, ["-", "--", ":", "-."] * len(args.predictors)))
    fig = agg_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    seen = set()
    for r in runs.values():
        x, y = zip(*r["curve"])
        name = r["tactic"] if r.get("predictor") is None else f"{r['tactic']} ({r['predictor']})"
        label = name if name not in seen else None
        seen.add(name)
        ax.plot(x, y, marker="." if len(x) < 30 else None, color=colours[r["tactic"]], alpha=0.8, label=label,
                ls=styles.get(r.get("predictor"), "-"))
    ref = summary["reference_hypervolume"]
    ax.axhline(0.99 * ref, color="0.4", ls="--", lw=1, label="99 % of the reference")
    ax.set_xscale("log")
    ax.set_xlabel("validations (supernet evaluations)")
    ax.set_ylabel("hypervolume (normalised error x latency)")
    ax.set_title(f"search tactics, {len(args.seeds)} seeds, device {args.device}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    write_figure(path, fig, dpi=120, bbox_inches="tight")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/bench_tactics.py --supernet <ckpt> [...]``."""
    return benchmark_command(parser(), run, argv)
