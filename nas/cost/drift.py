"""How far has the machine moved since its LUT was profiled? Reference networks re-measured with the LUT's protocol.

A LUT is used long after it was profiled, and a machine's speed moves: on a shared VM, the same networks measured
minutes apart differed by 10-30 % (docs/latency.md, "Drift"), far above the in-run floor (the two sessions of one
run, 0.1-1 %), which cannot see it. A LUT already carries the networks to check this with: its calibration networks
(:func:`nas.cost.signatures.calibration_networks`, deterministic for a space and count), whose times measured in the
LUT's own interleaved rounds are stored in ``meta.calibration.measured_ms``. Measured again now, in the same
interleaved rounds as the network being priced and with the same backend settings (the LUT's protocol: whole
networks among other models, each session warmed, every timed run after the cache flush), each reference network
gives a ratio now/then. Their median is the drift factor that rescales the LUT's prediction; their spread, widened
by the calibration's own error on its networks, is the range the measurement should fall in.

Only whole networks are re-measured, not a network's ops: ops timed in a short rotation of a dozen models do not
run as they did in the LUT's rotation over every op of the space (docs/latency.md, "Drift"), so pricing re-measured
ops with the old calibration mixes two protocols.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.cost.backends import LatencyBackend
from nas.cost.lut import LatencyEntry, LatencyLUT
from nas.cost.measurement_core import calibrated_ms
from nas.cost.profiler import profile_ops
from nas.cost.signatures import OpSpec, calibration_networks
from nas.errors import ConfigError, whole_number
from nas.space.search_space import SearchSpace

#: reference networks re-measured by default (spread over the range of the LUT's calibration networks)
DEFAULT_REFERENCES = 8
#: share of the calibration networks' relative residuals the model's error band covers
ERROR_BAND_QUANTILE = 0.95


@dataclass(frozen=True)
class DriftReference:
    """A calibration network of the LUT, to be measured again: its op and its time in the LUT."""

    name: str
    op: OpSpec
    lut_ms: float


@dataclass(frozen=True)
class Drift:
    """Reference networks' times now against the LUT's: ``ratios`` (now / then), their median ``factor`` and
    range [``low``, ``high``], and ``error_band`` (relative: the calibration's own error on its networks)."""

    ratios: dict[str, float]
    factor: float
    low: float
    high: float
    error_band: float

    def rescale(self, predicted_ms: float) -> tuple[float, tuple[float, float]]:
        """The prediction rescaled by the drift factor, and the range the measurement should fall in:
        ``predicted * [low * (1 - band), high * (1 + band)]``."""
        return (predicted_ms * self.factor,
                (predicted_ms * self.low * (1 - self.error_band), predicted_ms * self.high * (1 + self.error_band)))

    def to_dict(self) -> dict[str, Any]:
        return {"references": len(self.ratios), "factor": self.factor, "low": self.low, "high": self.high,
                "error_band": self.error_band, "ratios": dict(self.ratios)}

    def describe(self) -> str:
        """``x1.124 (8 reference networks: 1.093-1.151)``."""
        return f"x{self.factor:.3f} ({len(self.ratios)} reference networks: {self.low:.3f}-{self.high:.3f})"


def reference_networks(space: SearchSpace, lut: LatencyLUT, in_channels: int, num_classes: int,
                       count: int = DEFAULT_REFERENCES) -> tuple[dict[str, DriftReference], str]:
    """Up to ``count`` of the LUT's calibration networks, spread evenly over the range of their stored times
    (the fastest and the slowest included), keyed ``reference_<network>``; and, when there are none, why.

    The networks are rebuilt from the space (:func:`~nas.cost.signatures.calibration_networks` is deterministic);
    that they are the LUT's is checked against the per-network LUT sums the LUT stored when it was fitted, so a LUT
    made otherwise (an old format, other calibration networks) yields none rather than wrong references.
    """
    record = lut.meta.get("calibration") or {}
    measured, sums = record.get("measured_ms") or [], record.get("op_sum_ms") or []
    total = int(record.get("networks") or 0)
    if count < 1:
        return {}, "drift check off (references=0)"
    if not total or len(measured) != total or len(sums) != total:
        return {}, "the LUT stores no calibration networks' times"
    ops, keys = calibration_networks(space, in_channels, num_classes, total)
    names = list(keys)
    for name, stored in zip(names, sums):
        if any(k not in lut.entries for k in keys[name]) or \
                not math.isclose(round(sum(lut.entries[k].ms for k in keys[name]), 6), stored, abs_tol=2e-6):
            return {}, f"the LUT's calibration networks are not this space's ({name} does not match)"
    order = sorted(range(total), key=lambda i: measured[i])
    count = min(count, total)
    picks = sorted({order[round(j * (total - 1) / max(1, count - 1))] for j in range(count)})
    refs = {}
    for i in picks:
        key = f"reference_{names[i]}"
        refs[key] = DriftReference(names[i], dataclasses.replace(ops[names[i]], key=key), float(measured[i]))
    return refs, ""


def calibration_error_band(lut: LatencyLUT, quantile: float = ERROR_BAND_QUANTILE) -> float:
    """The ``quantile`` of the calibrated model's absolute relative error on the LUT's own calibration networks
    (in-sample, from the LUT's ``meta.calibration``); 0 when the LUT does not store them."""
    record = lut.meta.get("calibration") or {}
    measured = record.get("measured_ms") or []
    if not measured:
        return 0.0
    stages = record.get("stage_op_sum_ms") if lut.stage_scales else None
    errors = []
    for i, ms in enumerate(measured):
        groups = stages[i] if stages else [record["op_sum_ms"][i]]
        predicted = calibrated_ms(groups, record["kept_ops"][i], record["se_ops"][i], lut.calibration)
        errors.append(abs(predicted - ms) / ms)
    return float(np.quantile(errors, quantile))


def estimate_drift(references: dict[str, DriftReference], measured_ms: dict[str, float],
                   error_band: float = 0.0) -> Drift:
    """The :class:`Drift` of ``references`` given their times now (``measured_ms``, same keys)."""
    ratios = {key: measured_ms[key] / ref.lut_ms for key, ref in references.items()}
    values = np.array(list(ratios.values()))
    return Drift(ratios=ratios, factor=float(np.median(values)), low=float(values.min()),
                 high=float(values.max()), error_band=float(error_band))


def check_references(value: Any) -> int:
    """``drift_references`` as an integer >= 0 (0: no drift check); one-line :class:`ConfigError` otherwise."""
    references = whole_number(value)
    if references is None or references < 0:
        raise ConfigError(f"drift_references must be an integer >= 0 (0: no drift check), got {value!r}")
    return references


def measure_with_references(ops: dict[str, OpSpec], space: SearchSpace, lut: LatencyLUT, backend: LatencyBackend,
                            in_channels: int, num_classes: int, references: int = DEFAULT_REFERENCES,
                            progress: bool = False, samples_out: dict[str, list[list[float]]] | None = None
                            ) -> tuple[dict[str, LatencyEntry], Drift | None, str]:
    """Measure ``ops`` with the backend's procedure, in the same interleaved rounds as ``references`` of the LUT's
    calibration networks (:func:`reference_networks`); returns their entries (the references' too), the
    :class:`Drift` since the LUT (``None`` when the LUT has no references, or ``references=0``) and, then, why."""
    refs, why_none = reference_networks(space, lut, in_channels, num_classes, references)
    measured = profile_ops({**{k: r.op for k, r in refs.items()}, **ops}, backend, progress=progress,
                           rounds=backend.repeats, samples_out=samples_out)
    drift = estimate_drift(refs, {k: measured[k].ms for k in refs}, calibration_error_band(lut)) if refs else None
    return measured, drift, why_none


def measure_network(network: OpSpec, space: SearchSpace, lut: LatencyLUT, backend: LatencyBackend,
                    in_channels: int, num_classes: int, references: int = DEFAULT_REFERENCES,
                    samples_out: dict[str, list[list[float]]] | None = None
                    ) -> tuple[LatencyEntry, Drift | None, str]:
    """:func:`measure_with_references` of one network: its entry, the drift since the LUT and, without one, why."""
    measured, drift, why_none = measure_with_references({network.key: network}, space, lut, backend, in_channels,
                                                        num_classes, references, samples_out=samples_out)
    return measured[network.key], drift, why_none


def drift_fields(drift: Drift | None, predicted_ms: float, measured_ms: float, prefix: str = "") -> dict[str, Any]:
    """A result's drift fields: ``drift`` (:meth:`Drift.to_dict`), ``drift_predicted_ms`` (the prediction
    rescaled), ``drift_range_ms``, ``drift_error_pct`` and ``drift_range_covers`` (whether the range holds the
    measurement); only ``drift: None`` without a drift check. Keys start with ``prefix``."""
    if drift is None:
        return {f"{prefix}drift": None}
    rescaled, (low, high) = drift.rescale(predicted_ms)
    return {f"{prefix}drift": drift.to_dict(), f"{prefix}drift_predicted_ms": rescaled,
            f"{prefix}drift_range_ms": [low, high],
            f"{prefix}drift_error_pct": 100 * (rescaled - measured_ms) / measured_ms,
            f"{prefix}drift_range_covers": bool(low <= measured_ms <= high)}


def describe_drift(fields: dict[str, Any], why_none: str = "", prefix: str = "") -> str:
    """One line from a result's :func:`drift_fields`: the drift factor and range, the rescaled prediction, its
    error and whether its range covers the measurement (or why there was no drift check)."""
    drift = fields.get(f"{prefix}drift")
    if drift is None:
        return f"drift since the LUT not checked: {why_none or 'no reference networks'}"
    low, high = fields[f"{prefix}drift_range_ms"]
    return (f"drift since the LUT x{drift['factor']:.3f} ({drift['references']} reference networks: "
            f"{drift['low']:.3f}-{drift['high']:.3f}): prediction rescaled {fields[f'{prefix}drift_predicted_ms']:.4f}"
            f" ms ({fields[f'{prefix}drift_error_pct']:+.2f} %), range {low:.4f}-{high:.4f} ms (the references' "
            f"range widened by the calibration's {100 * drift['error_band']:.1f} % error band) "
            f"{'covers' if fields[f'{prefix}drift_range_covers'] else 'misses'} the measurement")
