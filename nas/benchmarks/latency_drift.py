"""Latency drift: the temporal floor of a machine, and whether the measurement protocol moves op times.

    python scripts/bench_latency_drift.py --space tiny --repetitions 4 --interval 300 \
        --json docs/measurements/drift_tiny.json
    python scripts/bench_latency_drift.py --space mnasnet --num-classes 1000 --protocol timm:spnasnet_100 \
        --repetitions 0 --alternations 2 --json docs/measurements/drift_protocol_mnasnet.json

Two measurements, each with the LUT's own procedure (``hardware=`` backend: sessions, warm-up, interleaved rounds in a
fresh order, cache flush, statistic; :func:`nas.cost.profiler.profile_ops`):

* **temporal floor** (``--repetitions K``, ``--interval S``): the LUT's protocol (every op of the space and its
  calibration networks, in one interleaved run) repeated K times, S seconds apart. Per repetition after the first,
  the ratio of each network's and each op's time to the first repetition's, summarised by the median |ratio - 1|
  and the median ratio (the common drift), beside the *in-run floor* of each repetition (each network's first
  session against its second: what a validation reports). The in-run floor cannot see a machine that speeds up or
  slows down between runs; the temporal floor is that drift.
* **protocol** (``--protocol ARCH``, ``--alternations A``): the ops of one network, timed (a) in a short rotation of
  only those ops and the network (how ``latency.py`` re-measured ops before the drift check) and (b) in the LUT's
  rotation over every op of the space (and the network), alternated A times in one process. The ratio (a)/(b) per op,
  and of their sums, says whether an op costs the same in both settings; a ratio off 1 that repeats across
  alternations is the protocol, one that moves between alternations is drift.

Writes ``--json`` (conditions, load averages, every repetition's figures). Load on the machine is the caller's:
run it idle, then again beside a load, to get both floors.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.benchmarks import benchmark_command, command_parser
from nas.cli import compose_config
from nas.cost.backends import LatencyBackend, build_backend, summarize
from nas.cost.measurement_core import cpu_model
from nas.cost.profiler import profile_ops
from nas.cost.signatures import OpSpec, calibration_networks, network_op_keys, required_ops
from nas.cost.validation import split_halves
from nas.errors import ConfigError
from nas.io import atomic_write_json
from nas.space.networks import build_child
from nas.space.references import load_architecture
from nas.space.search_space import SearchSpace

FORMAT, VERSION = "spnas-latency-drift", 1


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("--space", default="tiny", help="search space (nas/conf/space/)")
    p.add_argument("--hardware", default="cpu_onnx", help="hardware config (nas/conf/hardware/)")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--repetitions", type=int, default=4, help="temporal floor: LUT protocol runs (0: skip)")
    p.add_argument("--interval", type=float, default=300.0, help="seconds from one repetition's start to the next")
    p.add_argument("--protocol", default=None, help="protocol comparison on this architecture (latency.py's arch=)")
    p.add_argument("--alternations", type=int, default=2, help="protocol: (a, b) pairs")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("overrides", nargs="*", help="hardware overrides, e.g. hardware.backend.sessions=4")
    return p


def _in_run_floor(samples: dict[str, list[list[float]]], names: Sequence[str], statistic: str) -> float | None:
    """Mean over ``names`` of |first half - second half| / their mean (halves as the validation's floor splits
    them, :func:`~nas.cost.validation.split_halves`), in %."""
    values = []
    for name in names:
        first, second, _ = split_halves(samples[name])
        if first and second:
            a, b = summarize(first, statistic).ms, summarize(second, statistic).ms
            values.append(abs(a - b) / ((a + b) / 2))
    return 100 * float(np.mean(values)) if values else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


def _ratios_summary(ratios: np.ndarray) -> dict[str, float]:
    return {"median_ratio": float(np.median(ratios)), "median_abs_dev_pct": float(100 * np.median(np.abs(ratios - 1))),
            "p90_abs_dev_pct": float(100 * np.quantile(np.abs(ratios - 1), 0.9)),
            "spread_pct": float(100 * np.median(np.abs(ratios / np.median(ratios) - 1)))}


def temporal(space: SearchSpace, backend: LatencyBackend, args: argparse.Namespace) -> dict[str, Any]:
    """The LUT's protocol repeated ``args.repetitions`` times, ``args.interval`` s apart."""
    ops = required_ops(space, args.in_channels, args.num_classes)
    nets, _ = calibration_networks(space, args.in_channels, args.num_classes, backend.calibration_networks)
    runs: list[dict[str, Any]] = []
    first: dict[str, float] = {}
    start = time.monotonic()
    for k in range(args.repetitions):
        wait = start + k * args.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        load = os.getloadavg()[0]
        samples: dict[str, list[list[float]]] = {}
        began = time.monotonic()
        measured = profile_ops({**ops, **nets}, backend, progress=False, rounds=backend.repeats, samples_out=samples)
        times = {key: e.ms for key, e in measured.items()}
        run = {"repetition": k, "minutes": round((began - start) / 60, 2),
               "seconds": round(time.monotonic() - began, 1),
               "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
               "in_run_floor_networks_pct": _in_run_floor(samples, list(nets), backend.statistic),
               "in_run_floor_ops_pct": _in_run_floor(samples, list(ops), backend.statistic),
               "network_ms": {n: times[n] for n in nets}}
        if k == 0:
            first = times
        else:
            run["networks"] = _ratios_summary(np.array([times[n] / first[n] for n in nets]))
            run["ops"] = _ratios_summary(np.array([times[o] / first[o] for o in ops]))
        runs.append(run)
        drift = (f"networks x{run['networks']['median_ratio']:.3f} (median |dev| "
                 f"{run['networks']['median_abs_dev_pct']:.2f} %), ops x{run['ops']['median_ratio']:.3f} "
                 f"(median |dev| {run['ops']['median_abs_dev_pct']:.2f} %)" if k else "reference")
        floors = ", ".join(f"{part} {_pct(run[f'in_run_floor_{part}_pct'])}" for part in ("networks", "ops"))
        print(f"repetition {k} at {run['minutes']:.1f} min ({run['seconds']:.0f} s, load {run['load_before']:.2f} -> "
              f"{run['load_after']:.2f}): in-run floor {floors}; against repetition 0: {drift}", flush=True)
    return {"ops": len(ops), "networks": len(nets), "interval_s": args.interval, "runs": runs}


def protocol(space: SearchSpace, backend: LatencyBackend, args: argparse.Namespace) -> dict[str, Any]:
    """One network's ops in a short rotation (a) and in the space's full rotation (b), alternated."""
    arch = load_architecture(args.protocol, space, args.in_channels, args.num_classes)
    keys = list(dict.fromkeys(network_op_keys(space, arch, args.in_channels, args.num_classes)))
    every = required_ops(space, args.in_channels, args.num_classes)
    network = OpSpec("network", (args.in_channels, space.resolution, space.resolution),
                     lambda: build_child(space, arch, args.in_channels, args.num_classes), args.protocol)
    pairs = []
    for a in range(args.alternations):
        short = profile_ops({**{k: every[k] for k in keys}, "network": network}, backend, progress=False,
                            rounds=backend.repeats, seed=a)
        full = profile_ops({**every, "network": network}, backend, progress=False, rounds=backend.repeats, seed=a)
        ratios = np.array([short[k].ms / full[k].ms for k in keys])
        pair = {"alternation": a, "load": round(os.getloadavg()[0], 2),
                "short_op_sum_ms": sum(short[k].ms for k in keys), "full_op_sum_ms": sum(full[k].ms for k in keys),
                "short_network_ms": short["network"].ms, "full_network_ms": full["network"].ms,
                "op_ratio": _ratios_summary(ratios),
                "per_op_ratio": {k: round(float(r), 4) for k, r in zip(keys, ratios)}}
        pairs.append(pair)
        print(f"alternation {a}: {len(keys)} ops, short/full rotation: op sum {pair['short_op_sum_ms']:.3f} / "
              f"{pair['full_op_sum_ms']:.3f} ms (x{pair['short_op_sum_ms'] / pair['full_op_sum_ms']:.3f}), median "
              f"op x{pair['op_ratio']['median_ratio']:.3f}; network {pair['short_network_ms']:.3f} / "
              f"{pair['full_network_ms']:.3f} ms (x{pair['short_network_ms'] / pair['full_network_ms']:.3f}); "
              f"load {pair['load']:.2f}", flush=True)
    return {"arch": args.protocol, "ops": len(keys), "space_ops": len(every), "alternations": pairs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, print, write ``--json``; returns the document."""
    if args.repetitions < 0 or args.alternations < 1 or args.interval < 0:
        raise ConfigError("--repetitions must be >= 0, --alternations >= 1 and --interval >= 0")
    if args.repetitions == 1:
        raise ConfigError("--repetitions must be 0 (skip) or >= 2: drift is a repetition against the first")
    cfg = compose_config("validate", [f"space={args.space}", f"hardware={args.hardware}", *args.overrides])
    space = SearchSpace.from_config(cfg.space)
    backend = build_backend(cfg.hardware.backend)
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "space": space.name,
                           "hardware": backend.hardware_record(), "cpu": cpu_model(), "machine": platform.node(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_before": list(os.getloadavg())}
    if args.protocol:
        doc["protocol"] = protocol(space, backend, args)
    if args.repetitions:
        doc["temporal"] = temporal(space, backend, args)
    doc["load_after"] = list(os.getloadavg())
    if args.json:
        atomic_write_json(args.json, doc)
        print(f"written to {args.json}")
    return doc


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/bench_latency_drift.py [--space tiny] [--repetitions 4] [--json ...]``."""
    return benchmark_command(parser(), run, argv)
