"""How fast is this network on my device? Predicted (plain per-op sum and calibrated) and measured latency.

    spnas latency arch=<run>/arch.json                                      # tiny space, ONNX Runtime
    taskset -c 1 spnas latency arch=timm:spnasnet_100 space=mnasnet num_classes=1000
    spnas latency arch="ds_r1_k3_s1_c16 | ir_r1_k5_s2_e6_c24 ..." space=cifar measure=false

``arch=`` takes every form of :mod:`nas.space.references`. The prediction uses the LUT the search would use for
this space, data shape and hardware (``hardware.lut_path``, or the cache, profiled when missing; ``in_channels=``
and ``num_classes=`` set the shape, so no data set is needed). The measurement (``measure=false`` skips it)
times the network with the LUT's procedure (warm-up, interleaved timed runs after a cache flush, the backend's
statistic) and reports its spread (inter-quartile range) and the device's repeatability on it: the statistic of
its even-numbered sessions' runs against that of its odd-numbered ones (of its even- against its odd-numbered
runs with ``hardware.backend.sessions=1``), the floor below which no prediction can be checked. With
``drift_references=N`` (default 8, 0: off) N of the LUT's calibration networks are measured again in the same
interleaved rounds as the network (``nas.cost.drift``): their times now against the LUT's give the drift since the
LUT was profiled, which rescales the prediction and gives the range the measurement should fall in (on a shared
machine that drift can exceed the model's error). Writes ``latency.json`` to the
run folder.
"""

from __future__ import annotations

import os
import time
from typing import Any

from omegaconf import DictConfig

from nas.cli import hydra_command
from nas.cost.backends import build_backend, summarize
from nas.cost.drift import check_references, describe_drift, drift_fields, measure_network
from nas.cost.profiler import obtain_lut
from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import OpSpec
from nas.cost.validation import split_halves
from nas.errors import ConfigError
from nas.run_shell import Task
from nas.space.networks import build_child
from nas.space.references import load_architecture
from nas.space.search_space import SearchSpace


def latency(cfg: DictConfig) -> dict[str, Any]:
    space = SearchSpace.from_config(cfg.space)
    in_channels, num_classes = int(cfg.in_channels), int(cfg.num_classes)
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    references = check_references(cfg.get("drift_references", 0))
    arch = load_architecture(str(cfg.arch), space, in_channels, num_classes)
    backend = build_backend(cfg.hardware.backend)
    lut = obtain_lut(space, backend, in_channels, num_classes, cache_dir=cfg.paths.cache_dir,
                     lut_path=cfg.hardware.get("lut_path"), strict=bool(cfg.hardware.get("strict", False)),
                     progress=bool(cfg.progress))
    model = RuntimeModel(space, lut, in_channels, num_classes)
    net = build_child(space, arch, in_channels, num_classes)
    kept = sum(1 for c in arch.layers if not c.is_skip)
    result: dict[str, Any] = {
        "arch": str(cfg.arch) if len(str(cfg.arch)) <= 200 else str(cfg.arch)[:197] + "...",
        "architecture": arch.keys, "space": space.name, "in_channels": in_channels, "num_classes": num_classes,
        "parameters": sum(p.numel() for p in net.parameters()), "kept_layers": kept,
        "hardware": backend.hardware_record(), "lut": lut.source, "calibration": lut.calibration,
        "predicted_plain_ms": model.plain_sum(arch), "predicted_ms": model.predict(arch),
    }
    hw = result["hardware"]
    print(f"network: {kept} MBConv layers kept, {result['parameters']:,} parameters, space '{space.name}', input "
          f"{in_channels}x{space.resolution}x{space.resolution}, {num_classes} classes; {backend.name}, "
          f"{hw['threads']} thread(s), batch {hw['batch_size']}")
    print(f"{'predicted, plain per-op sum (Eq 5.8):':<40}{result['predicted_plain_ms']:10.4f} ms")
    print(f"{'predicted, calibrated:':<40}{result['predicted_ms']:10.4f} ms  ({lut.describe_calibration()}; "
          f"LUT {lut.source})")
    if cfg.measure:
        samples: dict[str, list[list[float]]] = {}
        load_before = os.getloadavg()
        start = time.perf_counter()
        op = OpSpec("network", (in_channels, space.resolution, space.resolution), lambda: net.eval(), "network")
        entry, drift, why_none = measure_network(op, space, lut, backend, in_channels, num_classes,
                                                 references, samples_out=samples)
        statistic = getattr(backend, "statistic", "median")
        first, second, between = split_halves(samples["network"])
        halves = [summarize(first, statistic).ms, summarize(second, statistic).ms] if first and second \
            else [entry.ms, entry.ms]
        result.update({
            "measured_ms": entry.ms, "measured_iqr_ms": entry.iqr_ms, "measured_runs": entry.runs,
            "statistic": statistic, "repeatability_ms": abs(halves[0] - halves[1]),
            "repeatability_pct": 100 * abs(halves[0] - halves[1]) / entry.ms,
            "error_pct": 100 * (result["predicted_ms"] - entry.ms) / entry.ms,
            "plain_error_pct": 100 * (result["predicted_plain_ms"] - entry.ms) / entry.ms,
            "measure_seconds": round(time.perf_counter() - start, 2),
            "load_average": {"before": [round(v, 2) for v in load_before],
                             "after": [round(v, 2) for v in os.getloadavg()]},
        })
        result.update(drift_fields(drift, result["predicted_ms"], entry.ms))
        label = f"measured ({statistic} of {entry.runs} runs):"
        print(f"{label:<40}{entry.ms:10.4f} ms  (spread: IQR {entry.iqr_ms:.4f} ms; calibrated prediction "
              f"{result['error_pct']:+.2f} %, plain sum {result['plain_error_pct']:+.2f} %)")
        split = "two sessions" if between == "sessions" else "split halves"
        print(f"{f'device repeatability ({split}):':<40}{result['repeatability_ms']:10.4f} ms  "
              f"({result['repeatability_pct']:.2f} % of the measurement; load average {load_before[0]:.2f} -> "
              f"{os.getloadavg()[0]:.2f})")
        print(describe_drift(result, why_none))
    return result


#: ``main`` (the Hydra app) and ``run_command`` (``spnas latency``: the command line checked first, then run);
#: the run shell writes ``latency.json``
main, run_command = hydra_command(Task(latency, summary="latency.json"), "latency")
