"""HyperPower vs vanilla constrained BO vs constrained random search (vs random walk) on digits (thesis Sec 3.4).

    python scripts/bench_hyperpower.py --out docs/hyperpower --seeds 0 1 2 --trials 30

1. profiles ``--samples`` random networks of the tiny space once (peak CPU inference memory), reports the
   10-fold CV RMSPE of the linear (Eq 3.3) and the quadratic-feature cost model, and sets the memory limit to the
   median measured memory, so that about half of the random configurations violate it;
2. runs every method for every seed with the same budget (``--trials`` evaluations) and the same cost models;
3. writes ``bench.json`` (every run's ``hyperpower.json`` summary, the RMSPEs, the machine), ``convergence.png``
   (best validation error vs evaluations, like Fig 3.5) and ``violations.png`` (constraint-violating proposals vs
   evaluations, and error vs memory of every candidate, like Fig 3.6).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from nas.cli import CONFIG_DIR
from nas.hyperpower.cost_models import CostModel
from nas.hyperpower.study import evaluations_to_reach, make_structure, profile_cost_models, run_hyperpower
from nas.io import atomic_write_bytes, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"hyperpower": "tab:red", "vanilla_bo": "tab:blue", "random": "tab:green", "random_walk": "tab:orange"}


def compose(overrides: list[str]):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("hyperpower", overrides=overrides)


def plots(runs: list[dict], limit: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, ax = plt.subplots(figsize=(6, 4))
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out / "convergence.png", buffer.getvalue())

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out / "violations.png", buffer.getvalue())


def markdown(report: dict) -> str:
    """The results as Markdown tables (per run, and per method over seeds) for docs/hyperpower.md."""
    rows = report["summary"]
    lines = ["| method | seed | best val. error | evals to own best + 1 pt | evals to best of all + 1 pt | "
             "violating proposals | violating networks trained | trained (stopped early) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r["best_val_error"] is None else f"{100 * r['best_val_error']:.2f} %"
        lines.append(f"| {r['method']} | {r['seed']} | {best} | {r['evals_to_within_1pt_of_own_best']} | "
                     f"{r['evals_to_within_1pt_of_best_of_all_methods'] or 'not reached'} | "
                     f"{r['violating_proposals']} | {r['violating_trained']} | {r['trained']} ({r['stopped_early']}) | "
                     f"{r['wall_time_s']:.0f} |")
    lines += ["", "| method | mean best val. error | mean evals to own best + 1 pt | runs reaching best of all + 1 pt "
              "(mean evals) | violating proposals (total) | violating networks trained (total) |",
              "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        errors = [r["best_val_error"] for r in mine if r["best_val_error"] is not None]
        own = [r["evals_to_within_1pt_of_own_best"] for r in mine if r["evals_to_within_1pt_of_own_best"]]
        common = [r["evals_to_within_1pt_of_best_of_all_methods"] for r in mine
                  if r["evals_to_within_1pt_of_best_of_all_methods"]]
        lines.append(f"| {method} | {100 * np.mean(errors):.2f} % | {np.mean(own):.1f} | {len(common)}/{len(mine)}"
                     f"{f' ({np.mean(common):.1f})' if common else ''} | "
                     f"{sum(r['violating_proposals'] for r in mine)} | {sum(r['violating_trained'] for r in mine)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/hyperpower")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["hyperpower", "vanilla_bo", "random", "random_walk"])
    parser.add_argument("--samples", type=int, default=100, help="networks profiled for the cost models")
    parser.add_argument("--features", default="quadratic", choices=["linear", "quadratic"])
    parser.add_argument("--quantile", type=float, default=0.5, help="memory limit = this quantile of the profile")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild bench.json and the figures from <out>/runs/*/hyperpower.json (e.g. of a cut run)")
    parser.add_argument("overrides", nargs="*", default=["data.limit=600", "data.batch_size=16",
                                                         "trainer.max_epochs=2"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    models_path = out / "runs" / "cost_models.json"
    if args.report_only:
        runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*_seed*/hyperpower.json"))]
        runs = [r for r in runs if r["method"] in args.methods]
        runs.sort(key=lambda r: (r["seed"], args.methods.index(r["method"])))
        args.seeds = sorted({r["seed"] for r in runs})
        limit = float(runs[0]["constraints"]["memory_mb"])
        profile = json.loads(models_path.read_text())
        y = np.array(profile["models"]["memory_mb"]["actual"])
        cfg = compose([*args.overrides, "hyperpower.constraints.memory_mb=1",
                       f"paths.output_dir={out}/runs/profile"])
        structure = make_structure(cfg)
        X = structure.features_matrix(profile["configs"])  # noqa: N806
        args.features = profile["models"]["memory_mb"]["features"]
    else:
        base = [*args.overrides, f"paths.output_dir={out}/runs/profile"]
        cfg = compose([*base, "hyperpower.constraints.memory_mb=1"])
        structure = make_structure(cfg)
        resolution = int(cfg.space.resolution)
        models = profile_cost_models(structure, ["memory_mb"], (1, 1, resolution, resolution), 1, 10, args.samples,
                                     10, args.features, 0)
        model = models.models["memory_mb"]
        X, y = structure.features_matrix(models.configs), np.array(model.actual)
        rmspe = {f: CostModel.fit("memory_mb", X, y, structure.feature_names, 10, f).rmspe_cv
                 for f in ("linear", "quadratic")}
        limit = float(np.quantile(y, args.quantile))
        violating_fraction = float(np.mean(y > limit))
        models.save(models_path)
        logging.info("memory: %.3f-%.3f MB, limit %.4f MB (%.0f %% of %d random networks violate); RMSPE %s",
                     y.min(), y.max(), limit, 100 * violating_fraction, len(y), rmspe)

        runs = []
        for seed in args.seeds:
            for method in args.methods:
                run_cfg = compose([*args.overrides, f"seed={seed}", f"hyperpower.method={method}",
                                   f"hyperpower.n_trials={args.trials}", f"hyperpower.constraints.memory_mb={limit}",
                                   f"hyperpower.cost_models.path={models_path}",
                                   f"paths.output_dir={out}/runs/{method}_seed{seed}"])
                result = run_hyperpower(run_cfg)
                runs.append(result)
                atomic_write_json(out / "bench_partial.json",
                                  {"runs": [{k: v for k, v in r.items() if k != "trials"} for r in runs]})

    rmspe = {f: CostModel.fit("memory_mb", X, y, structure.feature_names, 10, f).rmspe_cv
             for f in ("linear", "quadratic")}
    violating_fraction = float(np.mean(y > limit))
    summary = []
    for seed in args.seeds:
        seed_runs = [r for r in runs if r["seed"] == seed]
        finals = [r["best"]["val_error"] for r in seed_runs if r["best"]]
        common = min(finals) + 0.01 if finals else None
        for r in seed_runs:
            summary.append({
                "method": r["method"], "seed": seed, "evaluations": r["num_trials"], "trained": r["num_trained"],
                "stopped_early": r["num_pruned"], "violating_proposals": r["violating_proposals"],
                "violating_trained": r["violating_trained"], "model_errors": r["model_errors"],
                "best_val_error": r["best"]["val_error"] if r["best"] else None,
                "evals_to_within_1pt_of_own_best": r["evaluations_to_within_1pct"],
                "evals_to_within_1pt_of_best_of_all_methods": (None if common is None else
                                                               evaluations_to_reach(r["best_error_curve"], common)),
                "wall_time_s": r["wall_time_s"]})
    report = {
        "format": "spnas-hyperpower-bench", "version": 1, "overrides": args.overrides, "seeds": args.seeds,
        "trials": runs[0]["num_trials"] if runs else args.trials,
        "memory_limit_mb": limit, "violating_fraction_of_random": violating_fraction,
        "profiled_networks": len(y), "cost_model_features_used": args.features, "rmspe_cv_pct": rmspe,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch_threads": torch.get_num_threads()},
        "wall_time_s": round(time.perf_counter() - start, 1), "summary": summary,
    }
    from nas.io import null_non_finite

    atomic_write_json(out / "bench.json", null_non_finite(report))
    atomic_write_text(out / "results.md", markdown(report))
    plots(runs, limit, out)
    (out / "bench_partial.json").unlink(missing_ok=True)
    print(json.dumps(null_non_finite({k: v for k, v in report.items() if k != "summary"}), indent=1))
    for row in summary:
        print(f"{row['method']:12s} seed {row['seed']}: best {row['best_val_error']}, violating proposals "
              f"{row['violating_proposals']}, violating trained {row['violating_trained']}, evals to own best+1pt "
              f"{row['evals_to_within_1pt_of_own_best']}, to best-of-all+1pt "
              f"{row['evals_to_within_1pt_of_best_of_all_methods']}, {row['wall_time_s']} s")


if __name__ == "__main__":
    main()
