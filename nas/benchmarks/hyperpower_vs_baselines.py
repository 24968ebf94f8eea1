"""HyperPower vs vanilla constrained BO vs constrained random search (vs random walk) on digits (thesis Sec 3.4).

    python scripts/bench_hyperpower.py --out docs/hyperpower --seeds 0 1 2 --trials 30

1. profiles ``--samples`` random networks of the tiny space once (peak CPU inference memory), reports the
   10-fold CV RMSPE of the linear (Eq 3.3) and the quadratic-feature cost model, and sets the memory limit to the
   median measured memory, so that about half of the random configurations violate it;
2. runs every method for every seed with the same budget (``--trials`` evaluations) and the same cost models;
3. writes ``bench.json`` (every run's ``hyperpower.json`` summary, the RMSPEs, the machine), ``results.md`` (the
   tables), ``convergence.png`` (best validation error vs evaluations, like Fig 3.5) and ``violations.png``
   (constraint-violating proposals vs evaluations, and error vs memory of every candidate, like Fig 3.6).

``--out`` is relative to the current folder (run it from the project folder: ``docs/hyperpower``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.benchmarks import benchmark_command, command_parser
from nas.cli import compose_config
from nas.errors import ConfigError
from nas.hyperpower.cost_models import CostModel
from nas.hyperpower.study import evaluations_to_reach, make_structure, profile_cost_models, run_hyperpower
from nas.io import agg_figure, atomic_write_json, atomic_write_text, null_non_finite, write_figure
from nas.run_shell import Task, run_task

COLORS = {"hyperpower": "tab:red", "vanilla_bo": "tab:blue", "random": "tab:green", "random_walk": "tab:orange"}
METHODS = ["hyperpower", "vanilla_bo", "random", "random_walk"]


def plots(runs: list[dict], limit: float, out: Path) -> None:
    """``convergence.png`` (cf. Fig 3.5) and ``violations.png`` (cf. Fig 3.6) in ``out``."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig = agg_figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in methods:
        curves = np.array([[np.nan if v is None else v for v in r["best_error_curve"]] for r in runs
                           if r["method"] == method], float)
        x = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax.plot(x, 100 * c, color=COLORS[method], alpha=0.25, lw=0.8)
        ax.plot(x, 100 * np.nanmean(curves, 0), color=COLORS[method], lw=2, label=f"{method} (mean of {len(curves)})")
    ax.set_xlabel("function evaluations")
    ax.set_ylabel("best validation error so far (%)")
    ax.set_title("digits, tiny space, memory constraint (cf. thesis Fig 3.5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(out / "convergence.png", fig, dpi=120)

    fig = agg_figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for method in methods:
        counts = np.array([np.cumsum([bool(t["violated"]) for t in r["trials"]]) for r in runs
                           if r["method"] == method], float)
        left.plot(np.arange(1, counts.shape[1] + 1), counts.mean(0), color=COLORS[method], lw=2, label=method)
        points = [(t["measured"]["memory_mb"], 100 * t["val_error"]) for r in runs if r["method"] == method
                  for t in r["trials"] if t["trained"] and t["val_error"] is not None]
        if points:
            m, e = zip(*points)
            right.scatter(m, e, s=12, color=COLORS[method], alpha=0.6, label=method)
    left.set_xlabel("function evaluations")
    left.set_ylabel("constraint-violating proposals (mean over seeds)")
    left.legend(fontsize=8)
    right.axvline(limit, color="grey", ls="--", label=f"limit {limit:.3f} MB")
    right.set_xlabel("measured peak inference memory (MB)")
    right.set_ylabel("validation error (%) of trained candidates")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle("cf. thesis Fig 3.6")
    fig.tight_layout()
    write_figure(out / "violations.png", fig, dpi=120)


def markdown(report: dict) -> str:
    """The results as Markdown tables (per run, and per method over seeds) for docs/hyperpower.md."""
    rows, w = report["summary"], f"{report['within_points']:g} pt"
    lines = [f"| method | seed | best val. error | evals to own best + {w} | evals to best of all + {w} | "
             "violating proposals | violating networks trained | trained (stopped early) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r["best_val_error"] is None else f"{100 * r['best_val_error']:.2f} %"
        lines.append(f"| {r['method']} | {r['seed']} | {best} | {r['evals_to_within_own_best']} | "
                     f"{r['evals_to_within_best_of_all_methods'] or 'not reached'} | "
                     f"{r['violating_proposals']} | {r['violating_trained']} | {r['trained']} ({r['stopped_early']}) | "
                     f"{r['wall_time_s']:.0f} |")
    lines += ["", f"| method | mean best val. error (sd) | mean evals to own best + {w} | runs reaching best of all + "
              f"{w} (mean evals) | violating proposals (total) | violating networks trained (total) |",
              "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        errors = [r["best_val_error"] for r in mine if r["best_val_error"] is not None]
        own = [r["evals_to_within_own_best"] for r in mine if r["evals_to_within_own_best"]]
        common = [r["evals_to_within_best_of_all_methods"] for r in mine
                  if r["evals_to_within_best_of_all_methods"]]
        sd = f" ({100 * np.std(errors, ddof=1):.2f})" if len(errors) > 1 else ""
        lines.append(f"| {method} | {100 * np.mean(errors):.2f} %{sd} | {np.mean(own):.1f} | {len(common)}/{len(mine)}"
                     f"{f' ({np.mean(common):.1f})' if common else ''} | "
                     f"{sum(r['violating_proposals'] for r in mine)} | {sum(r['violating_trained'] for r in mine)} |")
    return "\n".join(lines) + "\n"


def summary_rows(runs: list[dict], seeds: list[int], within: float) -> list[dict[str, Any]]:
    """One row per run: evaluations until the best error so far is within ``within`` points of the run's own final
    best, and of the best final validation error of the seed's methods."""
    summary = []
    for seed in seeds:
        seed_runs = [r for r in runs if r["seed"] == seed]
        finals = [r["best"]["val_error"] for r in seed_runs if r["best"]]
        common = min(finals) + within / 100 if finals else None
        for r in seed_runs:
            final = r["best"]["val_error"] if r["best"] else None
            summary.append({
                "method": r["method"], "seed": seed, "evaluations": r["num_trials"], "trained": r["num_trained"],
                "stopped_early": r["num_pruned"], "violating_proposals": r["violating_proposals"],
                "violating_trained": r["violating_trained"], "model_errors": r["model_errors"],
                "best_val_error": final,
                "evals_to_within_own_best": (None if final is None else
                                             evaluations_to_reach(r["best_error_curve"], final + within / 100)),
                "evals_to_within_best_of_all_methods": (None if common is None else
                                                        evaluations_to_reach(r["best_error_curve"], common)),
                "wall_time_s": r["wall_time_s"]})
    return summary


def rmspe_cv(structure: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:  # noqa: N803
    """10-fold cross-validated RMSPE (%) of the linear (Eq 3.3) and the quadratic-feature memory model, fitted on
    the cost as written (``linear``, ``quadratic``) and on its log (``*_log_scale``, the default scale)."""
    return {f + ("_log_scale" if scale == "log" else ""):
            CostModel.fit("memory_mb", X, y, structure.feature_names, 10, f, scale=scale).rmspe_cv
            for f in ("linear", "quadratic") for scale in ("linear", "log")}


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("--out", default="docs/hyperpower")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--samples", type=int, default=100, help="networks profiled for the cost models")
    ap.add_argument("--features", default="quadratic", choices=["linear", "quadratic"])
    ap.add_argument("--quantile", type=float, default=0.5, help="memory limit = this quantile of the profile")
    ap.add_argument("--within", type=float, default=0.5,
                    help="points of error: evaluations until the best so far is within this of the final best")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild bench.json and the figures from <out>/runs/*/hyperpower.json (e.g. of a cut run)")
    ap.add_argument("overrides", nargs="*", default=["data.limit=600", "data.batch_size=16", "trainer.max_epochs=2"])
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Profile, run every method and seed (or only reload the runs), write the report; returns it."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    models_path = out / "runs" / "cost_models.json"
    profile_cfg = compose_config("hyperpower", [*args.overrides, "hyperpower.constraints.memory_mb=1",
                                                f"paths.output_dir={out}/runs/profile"])
    structure = make_structure(profile_cfg)

    if args.report_only:
        runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*_seed*/hyperpower.json"))]
        runs = [r for r in runs if r["method"] in args.methods]
        if not runs or not models_path.is_file():
            raise ConfigError(f"--report-only: no runs of {args.methods} in {out / 'runs'} (or no "
                              f"{models_path.name}); run the benchmark with --out {args.out} first")
        runs.sort(key=lambda r: (r["seed"], args.methods.index(r["method"])))
        seeds = sorted({r["seed"] for r in runs})
        limit = float(runs[0]["constraints"]["memory_mb"])
        profile = json.loads(models_path.read_text())
        y = np.array(profile["models"]["memory_mb"]["actual"])
        X = structure.features_matrix(profile["configs"])  # noqa: N806
        features = profile["models"]["memory_mb"]["features"]
    else:
        seeds, features = args.seeds, args.features
        resolution = int(profile_cfg.space.resolution)
        models = profile_cost_models(structure, ["memory_mb"], (1, 1, resolution, resolution), 1, 10, args.samples,
                                     10, features, 0)
        X, y = structure.features_matrix(models.configs), np.array(models.models["memory_mb"].actual)  # noqa: N806
        limit = float(np.quantile(y, args.quantile))
        models.save(models_path)
        logging.info("memory: %.3f-%.3f MB, limit %.4f MB (%.0f %% of %d random networks violate); RMSPE %s",
                     y.min(), y.max(), limit, 100 * float(np.mean(y > limit)), len(y), rmspe_cv(structure, X, y))
        runs = []
        for seed in seeds:
            for method in args.methods:
                run_dir = out / "runs" / f"{method}_seed{seed}"
                resume = [f"resume={run_dir}"] if (run_dir / "trials.jsonl").is_file() else []  # a cut benchmark
                run_cfg = compose_config("hyperpower", [
                    *args.overrides, f"seed={seed}", f"hyperpower.method={method}",
                    f"hyperpower.n_trials={args.trials}", f"hyperpower.constraints.memory_mb={limit}",
                    f"hyperpower.cost_models.path={models_path}", f"paths.output_dir={run_dir}", *resume])
                # in the run shell, as spnas hyperpower runs it: seeded, timed, hyperpower.json written
                runs.append(run_task(Task(run_hyperpower, summary="hyperpower.json"), run_cfg))
                atomic_write_json(out / "bench_partial.json",
                                  {"runs": [{k: v for k, v in r.items() if k != "trials"} for r in runs]})

    rmspe = rmspe_cv(structure, X, y)
    summary = summary_rows(runs, seeds, args.within)
    report = {
        "format": "spnas-hyperpower-bench", "version": 1, "overrides": args.overrides, "seeds": seeds,
        "trials": runs[0]["num_trials"] if runs else args.trials, "within_points": args.within,
        "memory_limit_mb": limit, "violating_fraction_of_random": float(np.mean(y > limit)),
        "profiled_networks": len(y), "cost_model_features_used": features, "rmspe_cv_pct": rmspe,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch_threads": torch.get_num_threads()},
        "wall_time_s": round(time.perf_counter() - start, 1), "summary": summary,
    }
    atomic_write_json(out / "bench.json", null_non_finite(report))
    atomic_write_text(out / "results.md", markdown(report))
    plots(runs, limit, out)
    (out / "bench_partial.json").unlink(missing_ok=True)
    print(json.dumps(null_non_finite({k: v for k, v in report.items() if k != "summary"}), indent=1))
    for row in summary:
        print(f"{row['method']:12s} seed {row['seed']}: best {row['best_val_error']}, violating proposals "
              f"{row['violating_proposals']}, violating trained {row['violating_trained']}, "
              f"evals to own best+{args.within}pt "
              f"{row['evals_to_within_own_best']}, to best-of-all+{args.within}pt "
              f"{row['evals_to_within_best_of_all_methods']}, {row['wall_time_s']} s")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/bench_hyperpower.py [--out ...] [--seeds ...] [-- overrides]``."""
    return benchmark_command(parser(), run, argv)
