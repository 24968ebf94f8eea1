"""Runtime-model validation: predicted (LUT sum) vs measured end-to-end latency of random networks.

The thesis validates its per-layer model on 100 random networks (Section 5.3.2, Fig 5.5: 1.76 % mean error,
RMSE 1.32 ms on a Pixel 1). This module repeats that study for any space and backend and adds Kendall's τ,
which is what a search needs: that the model *ranks* networks like the device does.

Two modes:

* ``joint`` (no LUT given): the space's ops, the LUT's calibration networks and the N validation networks are
  measured in the same interleaved rounds, so slow load drift on a shared machine hits all of them alike and
  the error measured is the model's, not the drift's.
* ``lut`` (a LUT given, e.g. the one a search used or one written by the device runner): only the networks
  are measured now; the error then also contains any drift since the LUT was profiled.
"""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from nas.cost.backends import LatencyBackend
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import calibrate_networks, profile_ops
from nas.cost.signatures import OpSpec, calibration_networks, network_op_keys, required_ops
from nas.errors import ConfigError
from nas.io import atomic_write_bytes
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace


def sample_architectures(space: SearchSpace, n: int, seed: int) -> list[Architecture]:
    """``n`` distinct, uniformly sampled architectures of ``space`` (seeded with ``seed``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"the number of networks must be an integer >= 2 (Kendall's tau needs pairs), got {n!r}")
    if n > space.num_architectures():
        raise ConfigError(f"space '{space.name}' has only {space.num_architectures()} architectures; ask for "
                          f"n <= {space.num_architectures()}")
    rng = random.Random(seed)
    seen: dict[tuple[str, ...], Architecture] = {}
    while len(seen) < n:
        arch = space.sample(rng)
        seen.setdefault(tuple(arch.keys), arch)
    return list(seen.values())


def runtime_model_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE and max APE (%), RMSE (ms), mean signed error (%) and Kendall's τ of predicted vs measured."""
    from scipy.stats import kendalltau

    predicted = np.asarray(predicted, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    ape = np.abs(predicted - measured) / measured
    tau = kendalltau(predicted, measured).statistic
    return {
        "n": int(len(measured)),
        "mape_pct": float(100 * ape.mean()),
        "max_ape_pct": float(100 * ape.max()),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mean_signed_error_pct": float(100 * np.mean((predicted - measured) / measured)),
        "kendall_tau": float(tau) if math.isfinite(tau) else float("nan"),
        "measured_range_ms": [float(measured.min()), float(measured.max())],
    }


def repeatability(samples: dict[str, list[float]], names: list[str], statistic: str) -> dict[str, float]:
    """The measurement's own noise ceiling: the networks' even-numbered runs vs their odd-numbered runs.

    Both halves span the whole measurement (interleaved rounds), so this is how well the device agrees with
    itself; no runtime model can rank or predict the measurements better than this (MAPE, Kendall's τ).
    """
    from nas.cost.backends import summarize

    if min(len(samples[n]) for n in names) < 2:  # one timed run (e.g. the MACs proxy): nothing to compare
        return {"mape_pct": float("nan"), "kendall_tau": float("nan"), "median_iqr_pct": float("nan")}
    first = np.array([summarize(samples[n][0::2], statistic).ms for n in names])
    second = np.array([summarize(samples[n][1::2], statistic).ms for n in names])
    metrics = runtime_model_metrics(first, second)
    return {"mape_pct": metrics["mape_pct"], "kendall_tau": metrics["kendall_tau"],
            "median_iqr_pct": float(100 * np.median([np.subtract(*np.percentile(samples[n], [75, 25]))
                                                     / np.median(samples[n]) for n in names]))}


def validate_runtime_model(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int, *,
                           n: int = 100, seed: int = 0, lut: LatencyLUT | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Measure ``n`` random networks end to end on ``backend`` and compare them with the LUT runtime model.

    Every measurement (ops and networks) uses the backend's procedure: warm-up, then ``repeats`` timed runs
    spread over interleaved rounds (one timed run per op per round here), each after the backend's cache flush;
    the backend's statistic is kept. Returns metrics for the plain per-op sum and for the LUT's calibrated
    model (``scale * sum + overhead``, fitted on calibration networks that are *not* the validation networks),
    and one row per network. The LUT used is returned under ``"lut"``.
    """
    archs = sample_architectures(space, n, seed)
    shape = (in_channels, space.resolution, space.resolution)
    nets = {f"validation_{i}": OpSpec(f"validation_{i}", shape,
                                      lambda a=a: build_child(space, a, in_channels, num_classes), f"network {i}")
            for i, a in enumerate(archs)}
    rounds = backend.repeats
    samples: dict[str, list[float]] = {}
    if lut is None:
        mode = "joint"
        ops = required_ops(space, in_channels, num_classes)
        cal_ops, cal_keys = calibration_networks(space, in_channels, num_classes, backend.calibration_networks)
        measured = profile_ops({**ops, **cal_ops, **nets}, backend, progress, rounds=rounds, samples_out=samples)
        entries = {k: measured[k] for k in ops}
        scale, overhead, record = calibrate_networks({k: measured[k].ms for k in cal_ops}, cal_keys, entries)
        lut = LatencyLUT(entries=entries, hardware=backend.hardware_record(),
                         space={"name": space.name, "digest": space.digest}, overhead_ms=overhead, scale=scale,
                         meta={"in_channels": in_channels, "num_classes": num_classes,
                               "calibration": {"networks": len(cal_ops), **record}})
    else:
        mode = "lut"
        lut.check_space(space.name, space.digest)
        measured = profile_ops(nets, backend, progress, rounds=rounds, samples_out=samples)
    rows = []
    for i, arch in enumerate(archs):
        keys = network_op_keys(space, arch, in_channels, num_classes)
        plain = sum(lut.ms(k, f"network {i}") for k in keys)
        entry = measured[f"validation_{i}"]
        rows.append({"architecture": arch.keys, "ops": len(keys), "predicted_plain_ms": plain,
                     "predicted_ms": lut.network_ms(plain), "measured_ms": entry.ms, "measured_iqr_ms": entry.iqr_ms})
    meas = np.array([r["measured_ms"] for r in rows])
    return {
        "mode": mode,
        "space": {"name": space.name, "digest": space.digest},
        "hardware": backend.hardware_record(),
        "n": len(rows),
        "seed": seed,
        "scale": lut.scale,
        "overhead_ms": lut.overhead_ms,
        "calibration_networks": int(lut.meta.get("calibration", {}).get("networks", 0)),
        "plain_sum": runtime_model_metrics(np.array([r["predicted_plain_ms"] for r in rows]), meas),
        "calibrated": runtime_model_metrics(np.array([r["predicted_ms"] for r in rows]), meas),
        "repeatability": repeatability(samples, list(nets), backend.statistic),
        "rows": rows,
        "lut": lut,
    }


def plot_predicted_vs_measured(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Scatter of predicted vs measured latency with the y = x line (like the thesis' Fig 5.5); atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    meas = np.array([r["measured_ms"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, field, marker in (("per-op sum", "predicted_plain_ms", "x"), ("calibrated", "predicted_ms", "o")):
        pred = np.array([r[field] for r in rows])
        metrics = result["plain_sum" if field == "predicted_plain_ms" else "calibrated"]
        ax.scatter(meas, pred, s=14, marker=marker, alpha=0.7,
                   label=f"{label}: MAPE {metrics['mape_pct']:.2f} %, τ {metrics['kendall_tau']:.3f}")
    lo = min(meas.min(), min(min(r["predicted_plain_ms"], r["predicted_ms"]) for r in rows)) * 0.97
    hi = max(meas.max(), max(max(r["predicted_plain_ms"], r["predicted_ms"]) for r in rows)) * 1.03
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    hw = result["hardware"]
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"space '{result['space']['name']}', {hw['backend']}, {hw['threads']} thread(s), N={result['n']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
