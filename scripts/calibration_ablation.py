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

import json
import sys
from pathlib import Path

import numpy as np

from nas.cost.measurement_core import calibrated_ms, fit_network_calibration
from nas.cost.validation import runtime_model_metrics


def predict(fit: dict, rows: list[dict]) -> np.ndarray:
    """Each held-out network priced by ``fit`` with the one price formula (:func:`calibrated_ms`)."""
    return np.asarray([calibrated_ms(r["stage_op_sum_ms"] if fit["stage_scales"] else [r["predicted_plain_ms"]],
                                     r["kept_ops"], r["se_ops"], fit) for r in rows])


def models(cal: dict, count: int) -> dict[str, dict]:
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


def main(folders: list[str]) -> None:
    for folder in folders:
        lut_path, val_path = run_files(Path(folder))
        lut = json.loads(lut_path.read_text())
        val = json.loads(val_path.read_text())
        cal = lut["meta"]["calibration"]
        rows = val["rows"]
        measured = np.array([r["measured_ms"] for r in rows])
        print(f"{folder}: space {val['space']['name']}, seed {val['seed']}, N={len(rows)}, "
              f"floor {val['repeatability']['mape_pct']:.2f} %")
        for count in (24, cal["networks"]):
            for name, fit in models(cal, count).items():
                m = runtime_model_metrics(predict(fit, rows), measured)
                used = "stage scales" if fit["stage_scales"] else f"scale {fit['scale']:.3f}"
                print(f"  {name:<52} MAPE {m['mape_pct']:5.2f} %  max {m['max_ape_pct']:5.2f} %  "
                      f"signed {m['mean_signed_error_pct']:+5.2f} %  ({used})")


if __name__ == "__main__":
    main(sys.argv[1:])
