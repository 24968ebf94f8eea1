"""Versioned latency lookup tables (LUTs): JSON keyed by layer signature, plus a hardware fingerprint.

File format (``format: spnas-lut``, ``version: 3``)::

    {
      "format": "spnas-lut", "version": 3, "unit": "ms",
      "space": {"name": "tiny", "digest": "8b36d3bd041af250"},        # what the LUT was profiled for
      "hardware": {"backend": "onnxruntime-cpu", "threads": 1, "batch_size": 1,
                   "fingerprint": {...}, "fingerprint_id": "3f2a..."},
      "created": "2026-11-23T10:00:00+00:00",
      "scale": 1.08, "per_op_ms": -0.011, "per_se_op_ms": 0.02, "overhead_ms": -0.05,  # network calibration
      "stage_scales": [1.21, 1.12, 1.05, 1.02, 1.07, 1.10],          # one per cost group (stage); [] = none
      "entries": {"mbconv_r16_i16_o24_s2_k5_e6_se0.25_relu": {"ms": 0.41, "iqr_ms": 0.01, "runs": 30}, ...}
    }

A network's runtime is ``R = sum_s stage_scales[s] * (sum of its entries in stage s) + per_op_ms * (MBConv layers
kept) + per_se_op_ms * (those with SE) + overhead_ms``; without stage scales (too few calibration networks, or a
version-1/2 file) every stage's scale is ``scale``. Stages are the cost groups of
``nas.cost.signatures.cost_groups`` (stem with the first stage, head with the last). The coefficients are fitted on
whole networks measured together with the ops (``nas.cost.signatures.calibration_networks``, fitted by
``nas.cost.measurement_core.fit_network_calibration``) and absorb what a per-op sum cannot see: ops inside a network
run slower or faster than alone in proportion to their work (cache and memory state, which differ between the early
high-resolution stages and the late weight-heavy ones: ``stage_scales``); each op timed alone pays a per-call cost
that a network pays differently (``per_op_ms``, usually negative); an SE block costs more inside a network than
alone (``per_se_op_ms``); and a per-network constant (``overhead_ms``). Without calibration they are 1, 0, 0 and 0:
the plain sum of Eq 5.8. Version-1 files (scale and overhead only) are read with both per-op terms 0, version-1 and
-2 files with every stage scale equal to ``scale``. See docs/latency.md.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas.cost.measurement_core import LUT_FORMAT, LUT_VERSION, calibrated_ms
from nas.errors import LUTError
from nas.io import atomic_write_json

READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class LatencyEntry:
    """One measured op: median runtime in ms, its inter-quartile range and the number of timed runs."""

    ms: float
    iqr_ms: float = 0.0
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "iqr_ms": self.iqr_ms, "runs": self.runs}


@dataclass
class LatencyLUT:
    """A latency LUT in memory. ``path`` is where it was read from (for error messages)."""

    entries: dict[str, LatencyEntry]
    hardware: dict[str, Any]
    space: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    overhead_ms: float = 0.0
    scale: float = 1.0
    per_op_ms: float = 0.0
    per_se_op_ms: float = 0.0
    stage_scales: list[float] = field(default_factory=list)  # per cost group; empty: ``scale`` for every stage
    version: int = LUT_VERSION  # of the file it was read from (1: scale and overhead only; 2: no stage scales)

    def stage_scale(self, group: int) -> float:
        """The multiplier of the LUT entries of cost group (stage) ``group``: its stage scale, else ``scale``."""
        return self.stage_scales[group] if self.stage_scales else self.scale

    def check_groups(self, count: int, space_name: str = "") -> None:
        """Error unless the stage scales (if any) are one per cost group of the space (``count`` groups)."""
        if self.stage_scales and len(self.stage_scales) != count:
            raise LUTError(f"{self.source}: {len(self.stage_scales)} stage scales, but space '{space_name}' has "
                           f"{count} cost groups (stages); this LUT was calibrated for another space. Re-profile "
                           "for this space.")

    def network_ms(self, op_sum_ms: float, kept_ops: float = 0.0, se_ops: float = 0.0,
                   stage_op_sums: list[float] | None = None) -> float:
        """Calibrated runtime of a network whose LUT entries sum to ``op_sum_ms`` (``stage_op_sums``: split by
        cost group, needed when the LUT has stage scales) and that keeps ``kept_ops`` MBConv layers (searchable
        and fixed, not stem and head), ``se_ops`` of them with SE: :func:`~nas.cost.measurement_core.calibrated_ms`,
        the one price formula."""
        if self.stage_scales:
            if stage_op_sums is None or len(stage_op_sums) != len(self.stage_scales):
                raise LUTError(f"{self.source}: this LUT has {len(self.stage_scales)} stage scales; pass the "
                               "network's LUT sum per stage (nas.cost.signatures.network_op_groups)")
            return float(calibrated_ms(stage_op_sums, kept_ops, se_ops, self.calibration))
        return float(calibrated_ms([op_sum_ms], kept_ops, se_ops, self.calibration))

    @property
    def calibration(self) -> dict[str, Any]:
        """The network calibration's coefficients."""
        return {"scale": self.scale, "per_op_ms": self.per_op_ms, "per_se_op_ms": self.per_se_op_ms,
                "overhead_ms": self.overhead_ms, "stage_scales": list(self.stage_scales)}

    def describe_calibration(self) -> str:
        """``1.031*sum-0.0110*ops+0.0150*se_ops+0.021 ms`` (with stage scales: ``[1.21,1.12,...]*stage_sums...``):
        the calibration as a formula, for logs and reports."""
        factor = (f"[{','.join(f'{v:.3f}' for v in self.stage_scales)}]*stage_sums" if self.stage_scales
                  else f"{self.scale:.3f}*sum")
        return f"{factor}{self.per_op_ms:+.4f}*ops{self.per_se_op_ms:+.4f}*se_ops{self.overhead_ms:+.4f} ms"

    @property
    def source(self) -> str:
        return self.path or "in-memory LUT"

    # ------------------------------------------------------------------ lookups
    def ms(self, key: str, origin: str = "") -> float:
        """Runtime of ``key`` in ms; a clear :class:`LUTError` if it is missing."""
        entry = self.entries.get(key)
        if entry is None:
            raise LUTError(
                f"{self.source}: no entry {key!r}" + (f" (needed by {origin})" if origin else "")
                + ". The LUT does not cover this space/data shape: re-profile it (python scripts/profile_lut.py "
                  "with the same space=, data= and hardware= overrides), or point hardware.lut_path at a LUT "
                  "profiled for this space.")
        return entry.ms

    def check_covers(self, keys: Mapping[str, str]) -> None:
        """Raise one error listing every missing key (``keys`` maps key -> where it is needed)."""
        missing = [(k, origin) for k, origin in keys.items() if k not in self.entries]
        if missing:
            shown = "\n".join(f"  - {k}  (needed by {origin})" for k, origin in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise LUTError(
                f"{self.source}: missing {len(missing)} of {len(keys)} entries the search needs:\n{shown}{more}\n"
                "Re-profile for this space (python scripts/profile_lut.py space=... hardware=...), or drop "
                "hardware.lut_path to let search.py profile the local machine.")

    def check_space(self, name: str, digest: str) -> None:
        """Error if the LUT records a different space than the one being searched."""
        lut_digest = self.space.get("digest")
        if lut_digest and lut_digest != digest:
            raise LUTError(
                f"{self.source}: this LUT was made for space '{self.space.get('name')}' (digest {lut_digest}), "
                f"but the search uses space '{name}' (digest {digest}). Select the space it was made for "
                "(space=...), or profile a LUT for this space (drop hardware.lut_path, or run "
                "scripts/profile_lut.py with this space).")

    def check_hardware(self, fingerprint_id: str, strict: bool = False) -> bool:
        """Warn (or, with ``strict``, raise) when the LUT was measured on other hardware/settings."""
        lut_id = self.hardware.get("fingerprint_id")
        if lut_id and lut_id != fingerprint_id:
            providers = self.hardware.get("providers")
            names = (", providers=" + "+".join(str(p.get("name")) for p in providers if isinstance(p, dict))
                     if isinstance(providers, list) else "")
            names = f", precision={self.hardware.get('precision', 'fp32')}" + names
            msg = (f"{self.source}: LUT fingerprint {lut_id} ({self.hardware.get('backend')}, "
                   f"threads={self.hardware.get('threads')}, batch={self.hardware.get('batch_size')}{names}) does not "
                   f"match the selected hardware ({fingerprint_id}); its latencies may not hold here. Re-profile "
                   "on this device" + (" (drop hardware.lut_path), or set hardware.strict=false to use it anyway "
                                       "with a warning." if strict else ", or set hardware.strict=true to make this "
                                       "an error."))
            if strict:
                raise LUTError(msg)
            warnings.warn(msg, stacklevel=2)
            return False
        return True

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "version": LUT_VERSION,
            "unit": "ms",
            "space": self.space,
            "hardware": self.hardware,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "meta": self.meta,
            "scale": self.scale,
            "per_op_ms": self.per_op_ms,
            "per_se_op_ms": self.per_se_op_ms,
            "overhead_ms": self.overhead_ms,
            "stage_scales": list(self.stage_scales),
            "entries": {k: e.to_dict() for k, e in sorted(self.entries.items())},
        }

    def save(self, path: str | os.PathLike) -> Path:
        if not self.created:  # when it was measured: copies (a run's lut.json) keep this time
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = atomic_write_json(path, self.to_dict())
        self.path = str(path)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "LUT") -> LatencyLUT:
        if not isinstance(data, dict):
            raise LUTError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != LUT_FORMAT:
            raise LUTError(f"{source}: 'format' is {data.get('format')!r}, expected {LUT_FORMAT!r}; this is not "
                           "a LUT written by this framework (scripts/profile_lut.py or the device runner).")
        if data.get("version") not in READABLE_VERSIONS:
            raise LUTError(f"{source}: LUT version {data.get('version')!r} is not supported (expected one of "
                           f"{list(READABLE_VERSIONS)}); re-profile with this version.")
        if data.get("unit", "ms") != "ms":
            raise LUTError(f"{source}: unit {data.get('unit')!r} is not supported; LUT entries must be in ms")
        hardware = data.get("hardware")
        if not isinstance(hardware, dict):
            raise LUTError(f"{source}: 'hardware' must be an object with backend, threads, batch_size, "
                           "fingerprint_id")
        raw = data.get("entries")
        if not isinstance(raw, dict) or not raw:
            raise LUTError(f"{source}: 'entries' must be a non-empty object mapping layer signatures to "
                           "{\"ms\": ...}")
        entries = {}
        for key, value in raw.items():
            where = f"{source}: entries[{key!r}]"
            if not isinstance(value, dict) or "ms" not in value:
                raise LUTError(f"{where}: expected an object with 'ms', got {value!r}")
            ms = value["ms"]
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                raise LUTError(f"{where}: 'ms' must be a finite, non-negative number, got {ms!r}; re-profile "
                               "this entry")
            entries[key] = LatencyEntry(float(ms), float(value.get("iqr_ms", 0.0)), int(value.get("runs", 0)))
        space = data.get("space") or {}
        if not isinstance(space, dict):
            raise LUTError(f"{source}: 'space' must be an object with name and digest")
        overhead = data.get("overhead_ms", 0.0)
        if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not math.isfinite(overhead):
            raise LUTError(f"{source}: 'overhead_ms' must be a finite number (ms added once per network), got "
                           f"{overhead!r}")
        scale = data.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise LUTError(f"{source}: 'scale' must be a finite number > 0 (multiplier on the per-op sum), got "
                           f"{scale!r}")
        per_op = {}
        for name, what in (("per_op_ms", "ms per MBConv layer kept"), ("per_se_op_ms", "ms per SE layer kept")):
            value = data.get(name, 0.0) if data.get("version") != 1 else 0.0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LUTError(f"{source}: '{name}' must be a finite number ({what}), got {value!r}")
            per_op[name] = float(value)
        stage_scales = (data.get("stage_scales") or []) if data.get("version", 0) >= 3 else []
        if not isinstance(stage_scales, list) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                for v in stage_scales):
            raise LUTError(f"{source}: 'stage_scales' must be a list of finite numbers > 0 (one multiplier per "
                           f"stage), got {stage_scales!r}")
        return cls(entries=entries, hardware=hardware, space=space, created=str(data.get("created", "")),
                   meta=dict(data.get("meta") or {}), path=source, overhead_ms=float(overhead), scale=float(scale),
                   version=int(data["version"]), stage_scales=[float(v) for v in stage_scales], **per_op)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyLUT:
        path = Path(path)
        if not path.is_file():
            raise LUTError(f"LUT file {path} does not exist; check hardware.lut_path, or drop it to profile "
                           "the local machine")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LUTError(f"{path}: malformed LUT, not valid JSON ({err}). Regenerate it (scripts/profile_lut.py, "
                           "or the device runner), or drop hardware.lut_path to profile this machine.") from None
        return cls.from_dict(data, source=str(path))
