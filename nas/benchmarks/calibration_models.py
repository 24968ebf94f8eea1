"""Refit a validation run's calibration with other models and score each on the run's held-out networks.

    python scripts/calibration_ablation.py outputs/validate/<date>/<time> [more run folders]
    python scripts/calibration_ablation.py docs/measurements/validation_*.json    # with lut_<same>.json beside

Reads the run's ``lut.json`` (the calibration networks' LUT sums per stage, layer counts and measurements, in
``meta.calibration``) and ``validation.json`` (the held-out random networks' per-stage sums and measurements),
fits each model with :func:`nas.cost.measurement_core.fit_network_calibration` on all calibration networks or on the
first 24 (the previous default), and prints MAPE / max APE / mean signed error (%) on the held-out networks. No
measurement is made: every model sees the same measured numbers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nas.benchmarks import benchmark_command, command_parser
from nas.cost.measurement_core import calibrated_ms, fit_network_calibration
from nas.cost.validation import runtime_model_metrics
from nas.errors import ConfigError


def predict(fit: dict, rows: list[dict]) -> np.ndarray:
    """Each held-out network priced by ``fit`` with the one price formula (:func:`calibrated_ms`)."""
    return np.asarray([calibrated_ms(r["stage_op_sum_ms"] if fit["stage_scales"] else [r["predicted_plain_ms"]],
                                     r["kept_ops"], r["se_ops"], fit) for r in rows])


def models(cal: dict, count: int) -> dict[str, dict]:
    """The calibration models fitted on the first ``count`` calibration networks."""
    n = min(count, cal["networks"])
    sums, measured = cal["op_sum_ms"][:n], cal["measured_ms"][:n]
    kept, se, stages = cal["kept_ops"][:n], cal["se_ops"][:n], (cal.get("stage_op_sum_ms") or [None] * n)[:n]
    return {
        f"scale + overhead ({n} nets)": fit_network_calibration(sums, measured),
        f"one scale, per-op, per-SE, overhead ({n} nets)": fit_network_calibration(sums, measured, kept, se),
        f"stage scales, per-op, per-SE, overhead ({n} nets)": fit_network_calibration(sums, measured, kept, se,
                                                                                      stages),
    }


def run_files(path: Path) -> tuple[Path, Path]:
    """``(lut.json, validation.json)`` of a run folder, or of ``validation_X.json`` with ``lut_X.json`` beside it."""
    if path.is_dir():
        return path / "lut.json", path / "validation.json"
    return path.with_name(path.name.replace("validation", "lut", 1)), path


def ablate_runs(folders: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`ablate` every run that has both files; a run without them is skipped, named on stderr (a glob
    such as ``docs/measurements/validation_*.json`` may catch a run whose LUT was not kept), and none at all is a
    :class:`~nas.errors.ConfigError`."""
    import sys

    scores, skipped = {}, []
    for folder in folders:
        missing = [str(p) for p in run_files(Path(folder)) if not p.is_file()]
        if missing:
            skipped.append(f"{folder}: {missing[0]} does not exist")
            continue
        scores[folder] = ablate(folder)
    if not scores:
        raise ConfigError(f"{skipped[0]}; pass validate-runtime-model run folders, or validation_X.json files with "
                          "lut_X.json beside them")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return scores


def ablate(folder: str) -> dict[str, dict[str, float]]:
    """Print and return, per model, MAPE / max APE / mean signed error (%) on the run's held-out networks."""
    lut_path, val_path = run_files(Path(folder))
    lut = json.loads(lut_path.read_text())
    val = json.loads(val_path.read_text())
    cal = lut["meta"]["calibration"]
    rows = val["rows"]
    measured = np.array([r["measured_ms"] for r in rows])
    print(f"{folder}: space {val['space']['name']}, seed {val['seed']}, N={len(rows)}, "
          f"floor {val['repeatability']['mape_pct']:.2f} %")
    scores = {}
    for count in (24, cal["networks"]):
        for name, fit in models(cal, count).items():
            m = runtime_model_metrics(predict(fit, rows), measured)  # the predictor kit's measures
            used = "stage scales" if fit["stage_scales"] else f"scale {fit['scale']:.3f}"
            scores[name] = {"mape_pct": m["mape_pct"], "max_ape_pct": m["max_ape_pct"],
                            "mean_signed_pct": m["mean_signed_error_pct"]}
            print(f"  {name:<52} MAPE {m['mape_pct']:5.2f} %  max {m['max_ape_pct']:5.2f} %  "
                  f"signed {m['mean_signed_error_pct']:+5.2f} %  ({used})")
    return scores


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("runs", nargs="+", help="validate-runtime-model run folders or validation_X.json files")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``python scripts/calibration_ablation.py <run folder or validation_X.json> ...``."""
    return benchmark_command(parser(), lambda args: ablate_runs(args.runs), argv)
