"""Hypervolume of a front on normalised objectives (source 002 §4.1, Eq 2 and Fig 2).

Objectives are normalised with *fixed* bounds, never with the points found so far, so hypervolumes of different
runs, generations and algorithms are comparable: ``f' = (f - lo) / (hi - lo)`` with error in [0, 1] and latency /
MACs / parameters between the space's smallest and largest possible value (``ObjectiveSpace.bounds``). The
hypervolume is the area (volume) dominated by the front and bounded by the reference point in that normalised
space, computed by pymoo's ``HV`` indicator. The bounds and the reference point are written into ``hv.csv``
and ``pareto.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nas.errors import ConfigError


@dataclass(frozen=True)
class Normalisation:
    """Fixed per-objective bounds and the reference point (in normalised units)."""

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    reference: tuple[float, ...]

    @classmethod
    def build(cls, names: Sequence[str], bounds: Sequence[tuple[float, float]],
              reference: Sequence[float] | None = None) -> Normalisation:
        """Bounds from ``ObjectiveSpace.bounds``; ``reference`` defaults to 1 in every normalised objective.

        A reference point that no possible point dominates (a coordinate at or below the normalised ideal 0)
        gives a hypervolume of 0 for every front: that is a configuration error, raised before any validation.
        """
        lower = tuple(float(b[0]) for b in bounds)
        upper = tuple(float(b[1]) if b[1] > b[0] else float(b[0]) + 1.0 for b in bounds)
        ref = tuple(float(r) for r in (reference if reference is not None else [1.0] * len(names)))
        if len(ref) != len(names):
            raise ConfigError(f"hv.reference has {len(ref)} values but there are {len(names)} objectives "
                              f"{list(names)}")
        bad = [f"{n}={r:g}" for n, r in zip(names, ref) if not np.isfinite(r) or r <= 0.0]
        if bad:
            raise ConfigError(f"hv.reference {list(ref)} (normalised units, 0 = best possible value) is not "
                              f"dominated by any sub-network: {', '.join(bad)} <= 0; use values > 0 "
                              "(default 1 = the worst value in the space)")
        return cls(tuple(names), lower, upper, ref)

    def normalise(self, F: np.ndarray) -> np.ndarray:
        F = np.atleast_2d(np.asarray(F, dtype=np.float64))
        return (F - np.array(self.lower)) / (np.array(self.upper) - np.array(self.lower))

    def hypervolume(self, F: np.ndarray) -> float:
        """Hypervolume of the (raw-unit) points ``F`` in normalised space; 0 for an empty set."""
        F = np.asarray(F, dtype=np.float64)
        if F.size == 0:
            return 0.0
        Fn = self.normalise(F)
        Fn = Fn[np.all(Fn < np.array(self.reference), axis=1)]
        if len(Fn) == 0:
            return 0.0
        return float(HV(ref_point=np.array(self.reference))(Fn))

    def describe(self) -> dict[str, Any]:
        return {"normalised": "f' = (f - lower) / (upper - lower)",
                "objectives": list(self.names), "lower": list(self.lower), "upper": list(self.upper),
                "reference_point": list(self.reference), "indicator": "pymoo.indicators.hv.HV"}


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (minimisation)."""
    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=int)


def front_2d(F: np.ndarray) -> np.ndarray:
    """Indices of the exact non-dominated set of many 2-objective points, by one sort (O(n log n)).

    Hand-written because pymoo's non-dominated sorting is quadratic, and the exact front of a whole space
    (292,032 networks for ``space=tiny``) is enumerated in the tests.
    """
    F = np.asarray(F, dtype=np.float64)
    order = np.lexsort((F[:, 1], F[:, 0]))
    best = np.minimum.accumulate(F[order, 1])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = F[order[1:], 1] < best[:-1]
    return order[keep]
