"""λ tuning for a runtime target (thesis Sec 6.3, Eq 6.2) with the Optuna sweeper: the sweep report.

``python search.py -m hparams_search=lambda_for_target hardware.target_ms=...`` runs one full search per trial;
each returns ``acc_val * (R / R_T)^w`` (:func:`nas.search.objectives.target_objective`). When the sweep ends,
:class:`LambdaSweepReport` collects the trials' ``summary.json`` / ``arch.json`` and writes into the sweep folder:

* ``lambda_sweep.json``: every trial (λ, objective, accuracy, predicted runtime, architecture) and the best one;
* ``best_arch.json``: the best trial's architecture (the file ``train.py arch=...`` takes);
* ``objective_vs_trial.png``: objective per trial with the running best, and runtime per trial against R_T.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from nas.errors import ConfigError
from nas.io import atomic_write_bytes, atomic_write_json, null_non_finite

log = logging.getLogger(__name__)

REPORT_FORMAT = "spnas-lambda-sweep"
REPORT_VERSION = 1


def collect_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One record per finished trial folder (``<sweep_dir>/<job number>/summary.json``), in trial order."""
    sweep_dir = Path(sweep_dir)
    trials = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: _job_number(p.parent.name)):
        run_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        arch_meta = {}
        if (run_dir / "arch.json").is_file():
            arch_meta = json.loads((run_dir / "arch.json").read_text()).get("meta", {})
        trials.append({
            "trial": _job_number(run_dir.name),
            "lambda_": arch_meta.get("lambda_"),
            "objective": summary["objective"],
            "val_acc": summary["val_acc"],
            "predicted_latency_ms": summary["predicted_latency_ms"],
            "target_ms": summary.get("target_ms"),
            "meets_target": (summary.get("target_ms") is None
                             or summary["predicted_latency_ms"] <= summary["target_ms"]),
            "architecture": summary["architecture"],
            "run_dir": str(run_dir),
        })
    return trials


def _job_number(name: str) -> int:
    return int(name) if name.isdigit() else 1 << 30


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the highest finite objective (ties: the earlier trial)."""
    finite = [t for t in trials if isinstance(t["objective"], (int, float)) and math.isfinite(t["objective"])]
    if not finite:
        raise ConfigError("no finished trial with a finite objective in the sweep folder; check the trials' logs")
    return max(finite, key=lambda t: (t["objective"], -t["trial"]))


def objective_plot(trials: list[dict[str, Any]], target_ms: float | None) -> bytes:
    """PNG: objective per trial with the running best (top), predicted runtime per trial vs R_T (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    xs = [t["trial"] for t in trials]
    objective = [t["objective"] for t in trials]
    running, best = [], -math.inf
    for value in objective:
        best = max(best, value)
        running.append(best)
    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(xs, objective, "o", label="trial")
    top.step(xs, running, where="post", label="best so far")
    for t in trials:
        if t["lambda_"] is not None:
            top.annotate(f"λ={t['lambda_']:.3g}", (t["trial"], t["objective"]), fontsize=6,
                         textcoords="offset points", xytext=(3, 3))
    top.set_ylabel("objective (Eq 6.2)")
    top.legend(fontsize=7)
    bottom.plot(xs, [t["predicted_latency_ms"] for t in trials], "s", color="tab:orange", label="predicted R")
    if target_ms is not None:
        bottom.axhline(target_ms, color="grey", linestyle="--", label="target R_T")
    bottom.set_ylabel("runtime (ms)")
    bottom.set_xlabel("trial")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_sweep_report(sweep_dir: str | Path, sampler: str | None = None) -> dict[str, Any]:
    """Write ``lambda_sweep.json``, ``best_arch.json`` and ``objective_vs_trial.png`` into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    trials = collect_trials(sweep_dir)
    if not trials:
        raise ConfigError(f"{sweep_dir} holds no finished trial (no */summary.json); pass the folder of a "
                          "`search.py -m hparams_search=lambda_for_target ...` sweep")
    best = best_trial(trials)
    target = best["target_ms"]
    report = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "target_ms": target, "sampler": sampler,
              "num_trials": len(trials), "best": best, "trials": trials}
    atomic_write_json(sweep_dir / "lambda_sweep.json", null_non_finite(report))
    best_arch = Path(best["run_dir"]) / "arch.json"
    if best_arch.is_file():
        atomic_write_bytes(sweep_dir / "best_arch.json", best_arch.read_bytes())
    atomic_write_bytes(sweep_dir / "objective_vs_trial.png", objective_plot(trials, target))
    log.info("λ sweep: best trial %d, λ=%s, objective %.4f, accuracy %.4f, %.4g ms (target %s ms) -> %s",
             best["trial"], best["lambda_"], best["objective"], best["val_acc"], best["predicted_latency_ms"],
             target, sweep_dir / "lambda_sweep.json")
    return report


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a core dependency
    _HydraCallback = object  # type: ignore[assignment,misc]


class LambdaSweepReport(_HydraCallback):
    """Hydra callback (``hydra.callbacks``): writes the sweep report when the multirun ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Refuse to start a λ-for-target sweep without a target (it would silently maximise accuracy)."""
        from omegaconf import OmegaConf

        from nas.cli import main_guard

        def check() -> None:
            target = None if OmegaConf.is_missing(config.hardware, "target_ms") else config.hardware.target_ms
            if target is None or float(target) <= 0:
                raise ConfigError("hparams_search=lambda_for_target needs the runtime target: add "
                                  "hardware.target_ms=<ms on the target hardware> (> 0)")

        main_guard(check)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sampler = str(config.hydra.sweeper.get("sampler", {}).get("_target_", "")) or None
        report = write_sweep_report(sweep_dir, sampler)
        best = report["best"]
        print(f"\nλ sweep ({report['num_trials']} trials, target {report['target_ms']} ms): best λ = "
              f"{best['lambda_']}, objective {best['objective']:.4f}, accuracy {best['val_acc']:.4f}, predicted "
              f"{best['predicted_latency_ms']:.4g} ms\nreport: {sweep_dir / 'lambda_sweep.json'}; architecture: "
              f"{sweep_dir / 'best_arch.json'}; plot: {sweep_dir / 'objective_vs_trial.png'}")
