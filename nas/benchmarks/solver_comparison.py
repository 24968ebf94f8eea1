"""Same-run comparison of search solvers on one space / data / LUT / epoch budget, over several seeds.

    python scripts/compare_solvers.py --epochs 6 --seeds 0 1 --retrain-epochs 4 --out outputs/compare
    python scripts/compare_solvers.py --solvers single_path multi_path --override data.limit=600

For every solver and seed it runs ``search.py`` (a separate process, so its peak memory is its own; the LUT is
profiled once and shared through the cache), then retrains the derived network from scratch with one fixed
recipe (``recipe=default`` for ``--retrain-epochs`` epochs, the same seed for every solver), measures its latency
on the same backend, and writes:

* ``runs.json``: one record per (solver, seed);
* ``comparison.md``: per solver, retrained validation and test accuracy (mean ± std over seeds), predicted
  (LUT) and measured latency, distance to the runtime target, search wall time and peak memory (max RSS of the
  search process);
* ``acc_vs_latency.png``: retrained validation accuracy vs predicted latency, one point per run.

Finished runs (``runs/<solver>/seed<k>/record.json``) are not searched again, so an interrupted comparison
resumes; with another ``--retrain-epochs`` they are only retrained again.
``multi_path_gumbel`` means ``solver=multi_path solver.weighting=gumbel``.

Study A (``spnas study-solvers``, :mod:`nas.studies.solver_study`) is the larger form of this comparison: the
two share the set-up (:class:`~nas.studies.solver_study.SearchSetting`), the search processes
(:func:`nas.cli.run_entry`) and the mean ± std of the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.benchmarks import benchmark_command, command_parser
from nas.cli import compose_config, run_entry
from nas.io import agg_figure, atomic_write_json, atomic_write_text, null_non_finite, write_figure
from nas.search.training import retrain_from_scratch
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.studies.solver_study import SearchSetting, mean_std

SOLVERS = ["single_path", "single_path_ste", "single_path_softmax", "multi_path", "multi_path_gumbel", "proxyless",
           "random"]
SOLVER_OVERRIDES = {"multi_path_gumbel": ["solver=multi_path", "solver.weighting=gumbel"]}


def cell(values: list[Any]) -> str:
    """``mean ± std`` of the values that exist (``n/a`` if none does)."""
    mean, std, n = mean_std(values)
    return "n/a" if n == 0 else f"{mean:.4g} ± {std:.2g}"


def table(records: list[dict[str, Any]], target_ms: float) -> str:
    """The comparison as a Markdown table, one row per solver."""
    head = ("| solver | runs | retrained val acc | retrained test acc | predicted ms | measured ms | "
            "pred. − target ms | search wall s | search peak RSS MiB |")
    lines = [head, "|" + "---|" * 9]
    for solver in dict.fromkeys(r["solver"] for r in records):
        rs = [r for r in records if r["solver"] == solver]
        lines.append(" | ".join([
            f"| {solver}", str(len(rs)),
            cell([r["retrained_val_acc"] for r in rs]), cell([r["retrained_test_acc"] for r in rs]),
            cell([r["predicted_latency_ms"] for r in rs]), cell([r["measured_latency_ms"] for r in rs]),
            cell([r["predicted_latency_ms"] - target_ms for r in rs]),
            cell([r["search_wall_s"] for r in rs]), cell([r["search_peak_rss_mib"] for r in rs]) + " |"]))
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], target_ms: float, path: Path) -> None:
    """Retrained validation accuracy against predicted latency, one point per run."""
    fig = agg_figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for solver in dict.fromkeys(r["solver"] for r in records):
        rs = [r for r in records if r["solver"] == solver]
        ax.scatter([r["predicted_latency_ms"] for r in rs], [r["retrained_val_acc"] for r in rs], label=solver)
    ax.axvline(target_ms, color="grey", linestyle="--", label="target")
    ax.set_xlabel("predicted latency of the derived net (ms, LUT)")
    ax.set_ylabel("validation accuracy after retraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=120)


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__, full=False)
    ap.add_argument("--solvers", nargs="+", default=SOLVERS, choices=SOLVERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=6, help="search epochs (the same budget for every solver)")
    ap.add_argument("--retrain-epochs", type=int, default=4)
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--hardware", default="cpu_onnx")
    ap.add_argument("--target-ms", type=float, default=None,
                    help="runtime target; default: midway between the smallest and largest net of the LUT")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every search")
    ap.add_argument("--out", type=Path, default=Path("outputs") / "compare")
    return ap


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Search, retrain and measure every (solver, seed) not recorded yet; write the report; returns the records."""
    from tqdm import tqdm

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    common = [f"space={args.space}", f"data={args.data}", f"hardware={args.hardware}", f"paths.cache_dir={cache}",
              "progress=false", *args.override]
    setting = SearchSetting.compose(common)
    space = setting.space
    target = args.target_ms if args.target_ms is not None else setting.target_ms(0.5, digits=4)
    print(f"space {args.space}, data {args.data}, hardware {args.hardware}, target {target} ms, "
          f"{args.epochs} search epochs, seeds {args.seeds}, retrain {args.retrain_epochs} epochs")
    records: list[dict[str, Any]] = []
    jobs = [(s, seed) for seed in args.seeds for s in args.solvers]  # seed-major: every solver gets seed 0 first
    for solver, seed in tqdm(jobs, desc="solver runs"):
        run_dir = out / "runs" / solver / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = [*common, *SOLVER_OVERRIDES.get(solver, [f"solver={solver}"]), f"seed={seed}",
                     f"trainer.max_epochs={args.epochs}", f"hardware.target_ms={target}", f"hydra.run.dir={run_dir}"]
        record_path = run_dir / "record.json"
        old = json.loads(record_path.read_text()) if record_path.is_file() else None
        if old is not None and old.get("retrain_epochs", 4) == args.retrain_epochs:
            records.append(old)
            continue
        if old is None:  # search (a finished search is only retrained again with other --retrain-epochs)
            start = time.perf_counter()
            status, usage = run_entry("search", overrides, run_dir / "search.log")
            if status != 0:
                tqdm.write(f"{solver} seed {seed}: search failed (exit {status}); see {run_dir / 'search.log'}")
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            old = {"search_val_acc": summary["val_acc"], "search_wall_s": summary["wall_time_s"],
                   "search_process_s": round(time.perf_counter() - start, 2),
                   "search_peak_rss_mib": usage.ru_maxrss / 1024.0,  # Linux reports KiB
                   "predicted_latency_ms": summary["predicted_latency_ms"]}
        arch = Architecture.load(run_dir / "arch.json", space)
        net = build_child(space, arch, setting.in_channels, setting.num_classes).eval()
        measured = setting.backend.measure(net, (setting.in_channels, space.resolution, space.resolution)).ms
        data_cfg = compose_config("search", [*common, f"seed={seed}"]).data
        trained = retrain_from_scratch(space, arch, data_cfg, args.retrain_epochs, seed)
        record = {"solver": solver, "seed": seed, "architecture": arch.keys,
                  "predicted_latency_ms": old["predicted_latency_ms"], "measured_latency_ms": measured,
                  **{k: old[k] for k in ("search_val_acc", "search_wall_s", "search_process_s",
                                         "search_peak_rss_mib")},
                  "retrain_epochs": args.retrain_epochs, "retrained_val_acc": trained["val_acc"],
                  "retrained_test_acc": trained["test_acc"], "parameters": trained["parameters"]}
        atomic_write_json(record_path, null_non_finite(record))
        records.append(record)
    runs = {"target_ms": target, "epochs": args.epochs, "seeds": args.seeds, "space": args.space,
            "data": args.data, "hardware": args.hardware, "retrain_epochs": args.retrain_epochs, "runs": records}
    atomic_write_json(out / "runs.json", null_non_finite(runs))
    if not records:
        return records
    text = (f"Space `{args.space}`, data `{args.data}`, hardware `{args.hardware}` (LUT {setting.lut.source}), "
            f"target {target} ms, {args.epochs} search epochs, seeds {args.seeds}, retrain {args.retrain_epochs} "
            "epochs (same recipe for every net). Mean ± std over seeds.\n\n" + table(records, target) + "\n")
    atomic_write_text(out / "comparison.md", text)
    plot(records, target, out / "acc_vs_latency.png")
    print(text)
    print(f"written to {out}/comparison.md, runs.json, acc_vs_latency.png")
    return records


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``python scripts/compare_solvers.py [--solvers ...] [--seeds ...] [...]``."""
    return benchmark_command(parser(), run, argv)
