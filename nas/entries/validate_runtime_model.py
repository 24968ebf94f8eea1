"""Validate the LUT runtime model: predicted vs measured end-to-end latency of N random networks.

    taskset -c 1 spnas validate-runtime-model                  # cifar space, ONNX Runtime, 1 thread, N=100
    taskset -c 1 spnas validate-runtime-model space=mnasnet num_classes=1000 n=50 seed=1
    spnas validate-runtime-model space=tiny n=20 hardware.lut_path=<run>/lut.json

Besides the N random networks it measures, in the same interleaved rounds, the ``named`` networks (held-out
SE-free / SE-only / skip-heavy / skip-free designs, the space's smallest and largest, and the published networks
that fit the space, e.g. timm:spnasnet_100 in space=mnasnet) and reports each one's error.

Writes ``validation.json`` (metrics, settings, one row per network; ``calibrated.mape_pct``,
``calibrated.max_ape_pct`` and ``repeatability.mape_pct`` among them), ``validation.png`` (predicted vs measured
scatter, like the thesis' Fig 5.5) and, in joint mode, ``lut.json`` (the LUT measured with the networks) to the
run folder, and prints MAPE, RMSE and Kendall's τ for the plain per-op sum and for the calibrated model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import DictConfig

from nas.cli import hydra_command
from nas.cost.backends import build_backend
from nas.cost.drift import check_references
from nas.cost.lut import LatencyLUT
from nas.cost.signatures import calibration_architectures
from nas.cost.validation import design_architectures, plot_predicted_vs_measured, validate_runtime_model
from nas.errors import ArchitectureError
from nas.run_shell import Task
from nas.space.architecture import Architecture
from nas.space.references import load_architecture
from nas.space.search_space import SearchSpace


def named_networks(cfg: DictConfig, space: SearchSpace, calibration: list[Architecture]) -> dict[str, Architecture]:
    """``cfg.named``: ``designs`` (held-out edge designs), or any ``arch=`` reference; references that do not fit
    the space (e.g. a published ImageNet network in the cifar space) are left out with a note."""
    out: dict[str, Architecture] = {}
    for ref in cfg.get("named") or []:
        ref = str(ref)
        if ref == "designs":
            out.update(design_architectures(space, int(cfg.seed), exclude=calibration))
            continue
        try:
            out[ref] = load_architecture(ref, space, int(cfg.in_channels), int(cfg.num_classes))
        except ArchitectureError as err:
            print(f"note: {ref} left out: {str(err).splitlines()[0][:160]}")
    return out


def validate(cfg: DictConfig) -> dict:
    space = SearchSpace.from_config(cfg.space)
    backend = build_backend(cfg.hardware.backend)
    lut = None
    if cfg.hardware.get("lut_path"):
        lut = LatencyLUT.load(cfg.hardware.lut_path)
        lut.check_hardware(backend.fingerprint_id(), strict=bool(cfg.hardware.get("strict", False)))
    references = check_references(cfg.get("drift_references", 0))
    out = Path(cfg.paths.output_dir)
    calibration = calibration_architectures(space, backend.calibration_networks) if lut is None else []
    named = named_networks(cfg, space, calibration)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = validate_runtime_model(space, backend, int(cfg.in_channels), int(cfg.num_classes), n=int(cfg.n),
                                    seed=int(cfg.seed), lut=lut, progress=bool(cfg.progress), named=named,
                                    drift_references=references)
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    result["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    used = result.pop("lut")
    if result["mode"] == "joint":
        used.save(out / "lut.json")
    plot_predicted_vs_measured(result, out / "validation.png")
    hw = result["hardware"]
    print(f"space '{space.name}', {hw['backend']}, threads={hw['threads']}, batch={hw['batch_size']}, "
          f"cache flush {hw['cache_flush_mb']} MB, statistic {hw['statistic']}, N={result['n']} "
          f"(seed {result['seed']}), mode {result['mode']}, {hw['repeats']} timed runs x "
          f"{hw.get('sessions', 1)} session(s) per network, "
          f"{result['wall_time_s']} s, load average {result['load_average']['before'][0]:.2f} -> "
          f"{result['load_average']['after'][0]:.2f}")
    calibrated = f"calibrated ({used.describe_calibration()})"
    lines = [("per-op sum (Eq 5.8)", "plain_sum", ""), (calibrated, "calibrated", "")]
    if (d := result["drift"]) is not None:
        lines.append((f"calibrated x drift {d['factor']:.3f}", "calibrated_drift",
                      f"  (drift since the LUT: {d['references']} reference networks {d['low']:.3f}-{d['high']:.3f}, "
                      f"LUT {used.created})"))
    for label, key, note in lines:
        m = result[key]
        print(f"{label:<44} MAPE {m['mape_pct']:6.2f} %  max {m['max_ape_pct']:6.2f} %  RMSE {m['rmse_ms']:.4f} ms  "
              f"mean signed {m['mean_signed_error_pct']:+6.2f} %  Kendall tau {m['kendall_tau']:.3f}{note}")
    if d is None and result["mode"] == "lut":
        print(f"drift since the LUT not checked: {result['drift_note']}")
    rep = result["repeatability"]
    label = f"repeatability (halves: {rep['between']})"
    print(f"{label:<44} MAPE {rep['mape_pct']:6.2f} %  Kendall tau {rep['kendall_tau']:.3f}  "
          f"(median IQR of runs {rep['median_iqr_pct']:.1f} % of the median): the noise floor")
    for name, row in result["named"].items():
        note = " (a calibration network: in-sample)" if row["calibration_network"] else ""
        print(f"{name:<44} measured {row['measured_ms']:8.4f} ms  calibrated {row['predicted_ms']:8.4f} ms "
              f"({row['error_pct']:+6.2f} %)  plain sum {row['predicted_plain_ms']:8.4f} ms "
              f"({row['plain_error_pct']:+6.2f} %){note}")
    print(f"measured range {result['calibrated']['measured_range_ms'][0]:.3f}-"
          f"{result['calibrated']['measured_range_ms'][1]:.3f} ms; written to {out}/validation.json, validation.png")
    return result


#: ``main`` (the Hydra app) and ``run_command`` (``spnas validate-runtime-model``: the command line checked
#: first, then run)
main, run_command = hydra_command(Task(validate, summary="validation.json"), "validate")
