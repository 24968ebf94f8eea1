"""Validate the LUT runtime model: predicted vs measured end-to-end latency of N random networks.

    taskset -c 1 python scripts/validate_runtime_model.py                  # cifar space, ONNX Runtime, 1 thread, N=100
    python scripts/validate_runtime_model.py space=tiny n=20 hardware.lut_path=<run>/lut.json

Writes ``validation.json`` (metrics, settings, one row per network), ``validation.png`` (predicted vs measured
scatter, like the thesis' Fig 5.5) and, in joint mode, ``lut.json`` (the LUT measured with the networks) to the
run folder, and prints MAPE, RMSE and Kendall's τ for the plain per-op sum and for the calibrated model.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nas.cli import main_guard
from nas.cost.backends import build_backend
from nas.cost.lut import LatencyLUT
from nas.cost.validation import plot_predicted_vs_measured, validate_runtime_model
from nas.io import atomic_write_json, null_non_finite
from nas.space.search_space import SearchSpace


def validate(cfg: DictConfig) -> dict:
    space = SearchSpace.from_config(cfg.space)
    backend = build_backend(cfg.hardware.backend)
    lut = None
    if cfg.hardware.get("lut_path"):
        lut = LatencyLUT.load(cfg.hardware.lut_path)
        lut.check_hardware(backend.fingerprint_id(), strict=bool(cfg.hardware.get("strict", False)))
    out = Path(cfg.paths.output_dir)
    start = time.perf_counter()
    result = validate_runtime_model(space, backend, int(cfg.in_channels), int(cfg.num_classes), n=int(cfg.n),
                                    seed=int(cfg.seed), lut=lut, progress=bool(cfg.progress))
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    used = result.pop("lut")
    if result["mode"] == "joint":
        used.save(out / "lut.json")
    atomic_write_json(out / "validation.json", null_non_finite(result))
    plot_predicted_vs_measured(result, out / "validation.png")
    hw = result["hardware"]
    print(f"space '{space.name}', {hw['backend']}, threads={hw['threads']}, batch={hw['batch_size']}, "
          f"cache flush {hw['cache_flush_mb']} MB, statistic {hw['statistic']}, N={result['n']} "
          f"(seed {result['seed']}), mode {result['mode']}, {hw['repeats']} timed runs per network, "
          f"{result['wall_time_s']} s")
    calibrated = f"calibrated ({result['scale']:.3f}*sum{result['overhead_ms']:+.3f})"
    for label, key in (("per-op sum", "plain_sum"), (calibrated, "calibrated")):
        m = result[key]
        print(f"{label:<32} MAPE {m['mape_pct']:6.2f} %  max {m['max_ape_pct']:6.2f} %  RMSE {m['rmse_ms']:.4f} ms  "
              f"mean signed {m['mean_signed_error_pct']:+6.2f} %  Kendall tau {m['kendall_tau']:.3f}")
    rep = result["repeatability"]
    print(f"{'repeatability (split halves)':<32} MAPE {rep['mape_pct']:6.2f} %  Kendall tau {rep['kendall_tau']:.3f}  "
          f"(median IQR of runs {rep['median_iqr_pct']:.1f} % of the median): the noise ceiling")
    print(f"measured range {result['calibrated']['measured_range_ms'][0]:.3f}-"
          f"{result['calibrated']['measured_range_ms'][1]:.3f} ms; written to {out}/validation.json, validation.png")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="validate")
def main(cfg: DictConfig) -> None:
    main_guard(lambda: validate(cfg))


if __name__ == "__main__":
    main()
