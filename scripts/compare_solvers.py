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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nas.cli import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]

SOLVERS = ["single_path", "single_path_ste", "single_path_softmax", "multi_path", "multi_path_gumbel", "proxyless",
           "random"]
SOLVER_OVERRIDES = {"multi_path_gumbel": ["solver=multi_path", "solver.weighting=gumbel"]}


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="search", overrides=overrides)


def run_search_process(overrides: list[str], log_path: Path) -> tuple[int, float]:
    """Run ``search.py`` with ``overrides``; returns (exit status, peak RSS of that process in MiB)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "search.py"), *overrides], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0  # Linux reports KiB


def retrain(space: Any, arch: Any, cfg: Any, epochs: int, seed: int) -> dict[str, float]:
    """Train ``arch`` from scratch with ``recipe=default`` (what ``train.py`` uses) for ``epochs`` epochs, through
    :func:`nas.search.training.train_child`; val and test accuracy."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from nas.search.training import load_recipe, recipe_arguments, train_child
    from nas.space.networks import build_child

    recipe = load_recipe("default")
    pl.seed_everything(seed, verbose=False)
    datamodule = instantiate(cfg.data)
    net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trained = train_child(net, datamodule, **recipe_arguments(recipe.train), trainer=trainer)
    return {"retrained_val_acc": trained["val_acc"], "retrained_test_acc": trained["test_acc"],
            "parameters": trained["parameters"]}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {std:.2g}"


def table(records: list[dict[str, Any]], target_ms: float) -> str:
    head = ("| solver | runs | retrained val acc | retrained test acc | predicted ms | measured ms | "
            "pred. − target ms | search wall s | search peak RSS MiB |")
    lines = [head, "|" + "---|" * 9]
    for solver in dict.fromkeys(r["solver"] for r in records):
        rs = [r for r in records if r["solver"] == solver]
        lines.append(" | ".join([
            f"| {solver}", str(len(rs)),
            mean_std([r["retrained_val_acc"] for r in rs]), mean_std([r["retrained_test_acc"] for r in rs]),
            mean_std([r["predicted_latency_ms"] for r in rs]), mean_std([r["measured_latency_ms"] for r in rs]),
            mean_std([r["predicted_latency_ms"] - target_ms for r in rs]),
            mean_std([r["search_wall_s"] for r in rs]), mean_std([r["search_peak_rss_mib"] for r in rs]) + " |"]))
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], target_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for solver in dict.fromkeys(r["solver"] for r in records):
        rs = [r for r in records if r["solver"] == solver]
        ax.scatter([r["predicted_latency_ms"] for r in rs], [r["retrained_val_acc"] for r in rs], label=solver)
    ax.axvline(target_ms, color="grey", linestyle="--", label="target")
    ax.set_xlabel("predicted latency of the derived net (ms, LUT)")
    ax.set_ylabel("validation accuracy after retraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solvers", nargs="+", default=SOLVERS, choices=SOLVERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6, help="search epochs (the same budget for every solver)")
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--hardware", default="cpu_onnx")
    parser.add_argument("--target-ms", type=float, default=None,
                        help="runtime target; default: midway between the smallest and largest net of the LUT")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every search")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "compare")
    args = parser.parse_args()

    from tqdm import tqdm

    from nas.cli import main_guard
    from nas.cost.profiler import obtain_lut
    from nas.cost.runtime_model import RuntimeModel
    from nas.io import atomic_write_json, atomic_write_text, null_non_finite
    from nas.space.architecture import Architecture
    from nas.space.search_space import SearchSpace

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    common = [f"space={args.space}", f"data={args.data}", f"hardware={args.hardware}", f"paths.cache_dir={cache}",
              "progress=false", *args.override]

    def run() -> None:
        from hydra.utils import instantiate

        cfg = compose(common)
        space = SearchSpace.from_config(cfg.space)
        datamodule = instantiate(cfg.data)
        backend = instantiate(cfg.hardware.backend)
        lut = obtain_lut(space, backend, datamodule.in_channels, datamodule.num_classes, cache_dir=cache,
                         lut_path=cfg.hardware.get("lut_path"), progress=True)
        model = RuntimeModel(space, lut, datamodule.in_channels, datamodule.num_classes)
        target = args.target_ms
        if target is None:
            lo, hi = model.predict(space.smallest()), model.predict(space.largest())
            target = round(lo + 0.5 * (hi - lo), 4)
        print(f"space {args.space}, data {args.data}, hardware {args.hardware}, target {target} ms, "
              f"{args.epochs} search epochs, seeds {args.seeds}, retrain {args.retrain_epochs} epochs")
        records: list[dict[str, Any]] = []
        jobs = [(s, seed) for seed in args.seeds for s in args.solvers]  # seed-major: every solver gets seed 0 first
        for solver, seed in tqdm(jobs, desc="solver runs"):
            run_dir = out / "runs" / solver / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            overrides = [*common, *SOLVER_OVERRIDES.get(solver, [f"solver={solver}"]), f"seed={seed}",
                         f"trainer.max_epochs={args.epochs}", f"hardware.target_ms={target}",
                         f"hydra.run.dir={run_dir}"]
            record_path = run_dir / "record.json"
            old = json.loads(record_path.read_text()) if record_path.is_file() else None
            if old is not None and old.get("retrain_epochs", 4) == args.retrain_epochs:
                records.append(old)
                continue
            if old is None:  # search (a finished search is only retrained again with other --retrain-epochs)
                start = time.perf_counter()
                status, rss = run_search_process(overrides, run_dir / "search.log")
                if status != 0:
                    tqdm.write(f"{solver} seed {seed}: search failed (exit {status}); see {run_dir / 'search.log'}")
                    continue
                summary = json.loads((run_dir / "summary.json").read_text())
                old = {"search_val_acc": summary["val_acc"], "search_wall_s": summary["wall_time_s"],
                       "search_process_s": round(time.perf_counter() - start, 2), "search_peak_rss_mib": rss,
                       "predicted_latency_ms": summary["predicted_latency_ms"]}
            arch = Architecture.load(run_dir / "arch.json", space)
            from nas.space.networks import build_child

            net = build_child(space, arch, datamodule.in_channels, datamodule.num_classes).eval()
            measured = backend.measure(net, (datamodule.in_channels, space.resolution, space.resolution)).ms
            record = {"solver": solver, "seed": seed, "architecture": arch.keys,
                      "predicted_latency_ms": old["predicted_latency_ms"], "measured_latency_ms": measured,
                      **{k: old[k] for k in ("search_val_acc", "search_wall_s", "search_process_s",
                                             "search_peak_rss_mib")},
                      "retrain_epochs": args.retrain_epochs,
                      **retrain(space, arch, compose([*common, f"seed={seed}"]), args.retrain_epochs, seed)}
            atomic_write_json(record_path, null_non_finite(record))
            records.append(record)
        runs = {"target_ms": target, "epochs": args.epochs, "seeds": args.seeds, "space": args.space,
                "data": args.data, "hardware": args.hardware, "retrain_epochs": args.retrain_epochs, "runs": records}
        atomic_write_json(out / "runs.json", null_non_finite(runs))
        if not records:
            return
        text = (f"Space `{args.space}`, data `{args.data}`, hardware `{args.hardware}` (LUT {lut.source}), target "
                f"{target} ms, {args.epochs} search epochs, seeds {args.seeds}, retrain {args.retrain_epochs} "
                "epochs (same recipe for every net). Mean ± std over seeds.\n\n" + table(records, target) + "\n")
        atomic_write_text(out / "comparison.md", text)
        plot(records, target, out / "acc_vs_latency.png")
        print(text)
        print(f"written to {out}/comparison.md, runs.json, acc_vs_latency.png")

    main_guard(run)


if __name__ == "__main__":
    main()
