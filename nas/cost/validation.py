"""Runtime-model validation: predicted (LUT sum) vs measured end-to-end latency of random networks.

The thesis validates its per-layer model on 100 random networks (Section 5.3.2, Fig 5.5: 1.76 % mean error,
RMSE 1.32 ms on a Pixel 1). This module repeats that study for any space and backend and adds Kendall's τ,
which is what a search needs: that the model *ranks* networks like the device does.

Two modes:

* ``joint`` (no LUT given): the space's ops, the LUT's calibration networks and the N validation networks are
  measured in the same interleaved rounds, so slow load drift on a shared machine hits all of them alike and
  the error measured is the model's, not the drift's.
* ``lut`` (a LUT given, e.g. the one a search used or one written by the device runner): only the networks
  are measured now; the error then also contains any drift since the LUT was profiled. The LUT's reference
  networks (:mod:`nas.cost.drift`) are measured in the same rounds, so the drift is measured too and the model
  is also scored with its predictions rescaled by it (``calibrated_drift``).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from nas.cost.backends import LatencyBackend
from nas.cost.drift import DEFAULT_REFERENCES, measure_with_references
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import calibrate_networks, profile_ops
from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import (
    OpSpec,
    arch_kept_ops,
    arch_se_ops,
    calibration_architectures,
    calibration_network_groups,
    calibration_networks,
    cost_groups,
    network_op_keys,
    required_ops,
)
from nas.errors import ConfigError
from nas.estimation import kendall_tau, mape_pct, relative_errors
from nas.io import atomic_write_bytes
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace


def sample_architectures(space: SearchSpace, n: int, seed: int,
                         exclude: list[Architecture] = ()) -> list[Architecture]:
    """``n`` distinct, uniformly sampled architectures of ``space`` (seeded with ``seed``), none of ``exclude``
    (e.g. the calibration networks, so that validation is on held-out networks only)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"the number of networks must be an integer >= 2 (Kendall's tau needs pairs), got {n!r}")
    excluded = {tuple(a.keys) for a in exclude}
    if n > space.num_architectures() - len(excluded):
        raise ConfigError(f"space '{space.name}' has only {space.num_architectures()} architectures "
                          f"({len(excluded)} used for calibration); ask for n <= "
                          f"{space.num_architectures() - len(excluded)}")
    rng = random.Random(seed)
    seen: dict[tuple[str, ...], Architecture] = {}
    while len(seen) < n:
        arch = space.sample(rng)
        if tuple(arch.keys) not in excluded:
            seen.setdefault(tuple(arch.keys), arch)
    return list(seen.values())


# held-out designs at the edges of the space (name -> P(skip), P(SE > 0)), sampled with the validation seed
DESIGNS = {"se_free": (0.3, 0.0), "se_only": (0.3, 1.0), "skip_heavy": (0.7, 0.5), "skip_free": (0.0, 0.5)}


def design_architectures(space: SearchSpace, seed: int, per_design: int = 2,
                         exclude: list[Architecture] = ()) -> dict[str, Architecture]:
    """``per_design`` random networks of each of :data:`DESIGNS` (SE-free, SE-only, skip-heavy, skip-free),
    seeded with ``seed`` and none of ``exclude`` (the calibration networks): named, held-out test networks."""
    from nas.cost.signatures import sample_mix

    rng = random.Random(f"designs-{seed}")
    excluded = {tuple(a.keys) for a in exclude}
    out: dict[str, Architecture] = {}
    for name, (p_skip, p_se) in DESIGNS.items():
        for j in range(per_design):
            for _ in range(1000):
                arch = sample_mix(space, rng, p_skip, p_se)
                if tuple(arch.keys) not in excluded and all(a.keys != arch.keys for a in out.values()):
                    out[f"{name}_{j}"] = arch
                    break
    return out


def runtime_model_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE and max APE (%), the share of networks predicted within ±10 % (%, nn-Meter's measure), RMSE (ms), mean
    signed error (%) and Kendall's τ (NaN where undefined) of predicted vs measured (the predictor kit's measures,
    :mod:`nas.estimation`)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    relative = relative_errors(measured, predicted)
    return {
        "n": int(len(measured)),
        "mape_pct": mape_pct(measured, predicted),
        "max_ape_pct": float(100 * np.abs(relative).max()),
        "within_10_pct": float(100 * np.mean(np.abs(relative) <= 0.10)),  # share of networks within +-10 % (nn-Meter)
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mean_signed_error_pct": float(100 * np.mean(relative)),
        "kendall_tau": kendall_tau(predicted, measured),
        "measured_range_ms": [float(measured.min()), float(measured.max())],
    }


def split_halves(sessions: list[list[float]]) -> tuple[list[float], list[float], str]:
    """Two halves of one item's timed runs (one list per session) for a repeatability check, and what they split:
    the even-numbered sessions' runs against the odd-numbered ones' where there are several sessions
    (``"sessions"``: the check includes how much a model's latency depends on the session it is loaded in), else
    the even-numbered runs against the odd-numbered ones (``"runs"``)."""
    if len(sessions) >= 2:
        return [t for s in sessions[0::2] for t in s], [t for s in sessions[1::2] for t in s], "sessions"
    runs = sessions[0] if sessions else []
    return runs[0::2], runs[1::2], "runs"


def repeatability(samples: dict[str, list[list[float]]], names: list[str], statistic: str) -> dict[str, Any]:
    """The measurement's own noise ceiling: each network measured twice, by :func:`split_halves` (its
    even-numbered sessions against its odd-numbered ones, or with one session its even-numbered runs against its
    odd-numbered runs).

    Both halves span the whole measurement (interleaved rounds), so this is how well the device agrees with
    itself; no runtime model can rank or predict the measurements better than this (MAPE, Kendall's τ).
    """
    from nas.cost.backends import summarize

    halves = {n: split_halves(samples[n]) for n in names}
    between = "sessions" if all(basis == "sessions" for _, _, basis in halves.values()) else "runs"
    if min(min(len(a), len(b)) for a, b, _ in halves.values()) < 1:  # one timed run (e.g. the MACs proxy)
        return {"mape_pct": float("nan"), "kendall_tau": float("nan"), "median_iqr_pct": float("nan"),
                "between": between}
    first = np.array([summarize(halves[n][0], statistic).ms for n in names])
    second = np.array([summarize(halves[n][1], statistic).ms for n in names])
    metrics = runtime_model_metrics(first, second)
    pooled = {n: [t for s in samples[n] for t in s] for n in names}
    return {"mape_pct": metrics["mape_pct"], "kendall_tau": metrics["kendall_tau"],
            "median_iqr_pct": float(100 * np.median([np.subtract(*np.percentile(pooled[n], [75, 25]))
                                                     / np.median(pooled[n]) for n in names])),
            "between": between}


def validate_runtime_model(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int, *,
                           n: int = 100, seed: int = 0, lut: LatencyLUT | None = None, progress: bool = True,
                           named: dict[str, Architecture] | None = None,
                           drift_references: int = DEFAULT_REFERENCES) -> dict[str, Any]:
    """Measure ``n`` random networks end to end on ``backend`` and compare them with the LUT runtime model.

    Every measurement (ops and networks) uses the backend's procedure: each loaded in ``sessions`` sessions, each
    session warmed up, then ``repeats`` timed runs per session spread over interleaved rounds (one timed run per
    session per round here, in a fresh order each round), each after the backend's cache flush; the backend's
    statistic of all sessions' runs is kept. Returns metrics for the plain per-op sum (Eq 5.8) and for the LUT's
    calibrated model (``sum_s scale_s * stage sum_s + per_op_ms * kept + per_se_op_ms * SE + overhead``, fitted
    on calibration networks that are *not* the validation networks), one row per network, and one row per
    ``named`` network (e.g. the published ones, SE-free or skip-heavy designs) measured in the same rounds. The
    LUT used is returned under ``"lut"``. In lut mode ``drift_references`` of the LUT's calibration networks are
    measured in the same rounds (``drift``, and ``calibrated_drift``: the metrics of the rescaled predictions).
    """
    cal_archs = calibration_architectures(space, backend.calibration_networks) \
        if lut is None and backend.calibration_networks > 0 else []
    archs = sample_architectures(space, n, seed, exclude=cal_archs)
    named = dict(named or {})
    shape = (in_channels, space.resolution, space.resolution)

    def network(name: str, arch: Architecture, origin: str) -> OpSpec:
        return OpSpec(name, shape, lambda: build_child(space, arch, in_channels, num_classes), origin)

    nets = {f"validation_{i}": network(f"validation_{i}", a, f"network {i}") for i, a in enumerate(archs)}
    extra = {f"named_{name}": network(f"named_{name}", a, name) for name, a in named.items()}
    rounds = backend.repeats
    samples: dict[str, list[list[float]]] = {}
    drift, why_none = None, "joint mode: the LUT is measured with the networks"
    if lut is None:
        mode = "joint"
        ops = required_ops(space, in_channels, num_classes)
        cal_ops, cal_keys = calibration_networks(space, in_channels, num_classes, backend.calibration_networks)
        measured = profile_ops({**ops, **cal_ops, **nets, **extra}, backend, progress, rounds=rounds,
                               samples_out=samples)
        entries = {k: measured[k] for k in ops}
        calibration, record = calibrate_networks({k: measured[k].ms for k in cal_ops}, cal_keys, entries,
                                                 calibration_network_groups(space, backend.calibration_networks),
                                                 cost_groups(space)[3])
        lut = LatencyLUT(entries=entries, hardware=backend.hardware_record(),
                         space={"name": space.name, "digest": space.digest},
                         meta={"in_channels": in_channels, "num_classes": num_classes,
                               "calibration": {"networks": len(cal_ops), **record}}, **calibration)
    else:
        mode = "lut"
        lut.check_space(space.name, space.digest)
        lut.check_groups(cost_groups(space)[3], space.name)
        measured, drift, why_none = measure_with_references({**nets, **extra}, space, lut, backend, in_channels,
                                                            num_classes, drift_references, progress, samples)

    model = RuntimeModel(space, lut, in_channels, num_classes)  # the one price: RuntimeModel.predict

    def row(arch: Architecture, name: str) -> dict[str, Any]:
        entry = measured[name]
        return {"architecture": arch.keys, "ops": len(network_op_keys(space, arch, in_channels, num_classes)),
                "kept_ops": arch_kept_ops(space, arch), "se_ops": arch_se_ops(space, arch),
                "predicted_plain_ms": model.plain_sum(arch), "stage_op_sum_ms": model.group_sums(arch),
                "predicted_ms": model.predict(arch), "measured_ms": entry.ms, "measured_iqr_ms": entry.iqr_ms}

    rows = [row(a, f"validation_{i}") for i, a in enumerate(archs)]
    named_rows = {}
    for name, arch in named.items():
        r = row(arch, f"named_{name}")
        named_rows[name] = {**r, "calibration_network": tuple(arch.keys) in {tuple(a.keys) for a in cal_archs},
                            "error_pct": 100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"],
                            "plain_error_pct": 100 * (r["predicted_plain_ms"] - r["measured_ms"]) / r["measured_ms"]}
    meas = np.array([r["measured_ms"] for r in rows])
    return {
        "mode": mode,
        "space": {"name": space.name, "digest": space.digest},
        "hardware": backend.hardware_record(),
        "n": len(rows),
        "seed": seed,
        **lut.calibration,
        "calibration_networks": int(lut.meta.get("calibration", {}).get("networks", 0)),
        "plain_sum": runtime_model_metrics(np.array([r["predicted_plain_ms"] for r in rows]), meas),
        "calibrated": runtime_model_metrics(np.array([r["predicted_ms"] for r in rows]), meas),
        "drift": drift.to_dict() if drift is not None else None, "drift_note": why_none if drift is None else "",
        "calibrated_drift": runtime_model_metrics(drift.factor * np.array([r["predicted_ms"] for r in rows]), meas)
        if drift is not None else None,
        "repeatability": repeatability(samples, list(nets), backend.statistic),
        "named": named_rows,
        "rows": rows,
        "lut": lut,
    }


def plot_predicted_vs_measured(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Scatter of predicted vs measured latency with the y = x line (like the thesis' Fig 5.5); atomic PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    meas = np.array([r["measured_ms"] for r in rows])
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
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
    return atomic_write_bytes(path, buffer.getvalue())
