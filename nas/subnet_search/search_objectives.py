"""Objectives of the sub-network search (source 002 §4.1, Eq 1), all minimised, and hard constraints.

* ``error`` (top-1 error) or ``ce`` (cross-entropy) on the validation split: *validated* with the supernet's
  shared weights; the costly unit, done once per sub-network and shared by every target device;
* ``latency``: the calibrated cost model of a target device (``RuntimeModel.predict``: LUT sums per stage, their
  scales, per-op terms, overhead);
* ``macs``, ``params``: counted from the child network's layers.

Latency, MACs and parameters are additive over layers (a constant for stem, head and fixed layers plus one
table entry per searchable layer; the LUT's calibration, linear in each layer's entry, is folded into the
table), so their exact minimum and maximum over the space, used to normalise the hypervolume and to check
constraints, are sums of per-layer minima and maxima, and whole spaces can be priced at once (vectorised) for
tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nas.cost.backends import count_macs
from nas.cost.lut import LatencyLUT
from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import cost_groups, head_key, layer_key, stem_key
from nas.cost.vocabulary import unit
from nas.errors import ConfigError
from nas.space.networks import build_head, build_layer, build_stem
from nas.space.search_space import SearchSpace
from nas.subnet_search.encoding import GenomeCodec

VALIDATED = ("error", "ce")
COSTS = ("latency", "macs", "params")
OBJECTIVES = VALIDATED + COSTS
UNITS = {"error": "", "ce": "nats", **{name: unit(name) for name in COSTS}}  # costs: nas.cost.vocabulary
CONSTRAINTS = {"latency_ms": "latency", "macs": "macs", "params": "params"}


def lut_fingerprint(lut: LatencyLUT) -> str:
    """Digest of what a LUT predicts with: its hardware fingerprint, entries and network calibration."""
    blob = json.dumps({"hardware": lut.hardware.get("fingerprint_id"), "calibration": lut.calibration,
                       "entries": {k: v.ms for k, v in sorted(lut.entries.items())}}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Target:
    """One target device: its name and the calibrated runtime model of its LUT."""

    name: str
    runtime: RuntimeModel
    fingerprint: str = ""

    @classmethod
    def from_lut(cls, name: str, space: SearchSpace, lut: LatencyLUT, in_channels: int, num_classes: int) -> Target:
        return cls(name, RuntimeModel(space, lut, in_channels, num_classes), lut_fingerprint(lut))


@dataclass
class AdditiveTable:
    """``value = affine(const + sum_j table[j][gene_j])``; ``affine(v) = scale * v + offset``."""

    const: float
    tables: list[np.ndarray]
    scale: float = 1.0
    offset: float = 0.0

    def __call__(self, genes: np.ndarray) -> np.ndarray:
        """Values of a batch of genomes ``(n, n_var)``."""
        genes = np.atleast_2d(genes).astype(int)
        total = np.full(len(genes), self.const, dtype=np.float64)
        for j, table in enumerate(self.tables):
            total += table[genes[:, j]]
        return self.scale * total + self.offset

    def bounds(self) -> tuple[float, float]:
        """Exact minimum and maximum over the whole space."""
        lo = self.const + sum(float(t.min()) for t in self.tables)
        hi = self.const + sum(float(t.max()) for t in self.tables)
        a, b = self.scale * lo + self.offset, self.scale * hi + self.offset
        return (min(a, b), max(a, b))


def latency_table(codec: GenomeCodec, target: Target) -> AdditiveTable:
    """The runtime model of ``target`` as an additive table (equals ``RuntimeModel.predict``).

    The LUT's network calibration (``nas.cost.measurement_core.calibrated_ms``) is additive over layers too (each
    entry times its stage's scale, ``per_op_ms`` for each kept layer, ``per_se_op_ms`` for each kept SE layer), so
    it is folded into the entries: the vectorised form of the one price, tested equal to ``RuntimeModel.predict``
    (tests/test_cost_model.py).
    """
    runtime = target.runtime
    lut, space = runtime.lut, codec.space
    stem_group, layer_groups, head_group, count = cost_groups(space)
    lut.check_groups(count, space.name)

    def cost(spec: Any, choice: Any) -> float:
        key = layer_key(spec, choice, space.act)
        if key is None:
            return 0.0
        se = lut.per_se_op_ms if choice.se_ratio > 0 else 0.0
        scale = lut.stage_scale(layer_groups[spec.index])
        return scale * lut.ms(key, f"layer {spec.index} ({spec.name})") + lut.per_op_ms + se

    searchable = {spec.index for spec in codec.layers}
    const = (lut.stage_scale(stem_group) * lut.ms(stem_key(space, runtime.in_channels), "stem")
             + lut.stage_scale(head_group) * lut.ms(head_key(space, runtime.num_classes), "head") + lut.overhead_ms)
    const += sum(cost(spec, spec.choices()[0]) for spec in space.layers if spec.index not in searchable)
    tables = [np.array([cost(spec, choice) for choice in options], dtype=np.float64)
              for spec, options in zip(codec.layers, codec.choices)]
    return AdditiveTable(const, tables, 1.0, 0.0)


def structure_tables(codec: GenomeCodec, in_channels: int, num_classes: int) -> dict[str, AdditiveTable]:
    """MACs (millions) and parameters (millions) of every network, as additive tables over the layers."""
    space = codec.space

    def count(module: torch.nn.Module | None, shape: tuple[int, ...]) -> tuple[float, float]:
        if module is None:
            return 0.0, 0.0
        return count_macs(module, (1, *shape)) / 1e6, sum(p.numel() for p in module.parameters()) / 1e6

    stem_m, stem_p = count(build_stem(space, in_channels), (in_channels, space.resolution, space.resolution))
    head_m, head_p = count(build_head(space, num_classes),
                           (space.final_channels, space.final_resolution, space.final_resolution))
    macs_const, params_const = stem_m + head_m, stem_p + head_p
    searchable = {spec.index for spec in codec.layers}
    for spec in space.layers:
        if spec.index not in searchable:
            m, p = count(build_layer(spec, spec.choices()[0], space.act),
                         (spec.in_channels, spec.input_resolution, spec.input_resolution))
            macs_const, params_const = macs_const + m, params_const + p
    macs, params = [], []
    for spec, options in zip(codec.layers, codec.choices):
        shape = (spec.in_channels, spec.input_resolution, spec.input_resolution)
        counts = [count(build_layer(spec, choice, space.act), shape) for choice in options]
        macs.append(np.array([c[0] for c in counts]))
        params.append(np.array([c[1] for c in counts]))
    return {"macs": AdditiveTable(macs_const, macs), "params": AdditiveTable(params_const, params)}


@dataclass
class ObjectiveSpace:
    """The objectives and constraints of a search, priced per target device.

    ``names`` are the objectives in order (one of ``error``/``ce`` plus any of ``latency``, ``macs``,
    ``params``); ``constraints`` maps ``latency_ms`` / ``macs`` / ``params`` to an upper limit (hard constraints
    of the optimiser: ``g = value - limit <= 0``).
    """

    codec: GenomeCodec
    names: list[str]
    targets: list[Target]
    costs: dict[str, AdditiveTable]
    constraints: dict[str, float] = field(default_factory=dict)
    num_classes: int = 10
    latency: dict[str, AdditiveTable] = field(default_factory=dict)

    @classmethod
    def build(cls, codec: GenomeCodec, names: Sequence[str], targets: Sequence[Target], in_channels: int,
              num_classes: int, constraints: Mapping[str, Any] | None = None) -> ObjectiveSpace:
        names = [str(n) for n in names]
        check_objective_names(names)
        if not targets:
            raise ConfigError("no target device: set hardware=... (or devices=[...])")
        seen = set()
        for t in targets:
            if t.name in seen:
                raise ConfigError(f"device {t.name!r} is listed twice; give each target a distinct name")
            seen.add(t.name)
        limits = {}
        for key, value in (constraints or {}).items():
            if key not in CONSTRAINTS:
                raise ConfigError(f"unknown constraint {key!r}; choose from {sorted(CONSTRAINTS)}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"constraints.{key} must be a finite number, got {value!r}")
            limits[key] = float(value)
        space = cls(codec, names, list(targets), structure_tables(codec, in_channels, num_classes), limits,
                    num_classes)
        space.latency = {t.name: latency_table(codec, t) for t in targets}
        space.check_constraints_satisfiable()
        return space

    # ------------------------------------------------------------------ queries
    @property
    def validated(self) -> str:
        """The validated objective (``error`` or ``ce``)."""
        return next(n for n in self.names if n in VALIDATED)

    @property
    def n_obj(self) -> int:
        return len(self.names)

    @property
    def n_constr(self) -> int:
        return len(self.constraints)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def cost_table(self, name: str, target: str) -> AdditiveTable:
        return self.latency[target] if name == "latency" else self.costs[name]

    def costs_of(self, genes: np.ndarray, target: str) -> dict[str, float]:
        """Latency on ``target`` (ms), MACs and parameters (millions) of one genome."""
        g = np.asarray(genes)[None]
        return {"latency": float(self.latency[target](g)[0]), "macs": float(self.costs["macs"](g)[0]),
                "params": float(self.costs["params"](g)[0])}

    def violations(self, costs: Mapping[str, float]) -> np.ndarray:
        """``g_i = value - limit`` per constraint (feasible where all ``<= 0``)."""
        return np.array([costs[CONSTRAINTS[k]] - limit for k, limit in self.constraints.items()], dtype=np.float64)

    def vector(self, validated: Mapping[str, float], costs: Mapping[str, float]) -> np.ndarray:
        values = {**costs, **validated}
        return np.array([values[n] for n in self.names], dtype=np.float64)

    def bounds(self, target: str) -> list[tuple[float, float]]:
        """Fixed normalisation bounds per objective: error in [0, 1], cross-entropy in [0, ln C], latency /
        MACs / parameters between the space's exact minimum and maximum on ``target``."""
        out = []
        for n in self.names:
            if n == "error":
                out.append((0.0, 1.0))
            elif n == "ce":
                out.append((0.0, math.log(self.num_classes)))
            else:
                out.append(self.cost_table(n, target).bounds())
        return out

    def check_constraints_satisfiable(self) -> None:
        """A limit below the smallest value any sub-network reaches is an error naming that value."""
        for key, limit in self.constraints.items():
            name = CONSTRAINTS[key]
            tables = ([(t.name, self.latency[t.name]) for t in self.targets] if name == "latency"
                      else [("", self.costs[name])])
            for device, table in tables:
                lo = table.bounds()[0]
                if limit < lo:
                    where = f" on device {device!r}" if device else ""
                    raise ConfigError(f"constraints.{key}={limit:g} is below the smallest possible value{where}: "
                                      f"the fastest/smallest sub-network of space '{self.codec.space.name}' has "
                                      f"{lo:.6g} {UNITS[name]}; raise the limit to at least that")

    def describe(self) -> dict[str, Any]:
        return {"objectives": self.names, "units": {n: UNITS[n] for n in self.names},
                "constraints": dict(self.constraints)}


def check_objective_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objective(s) {unknown}; choose from {list(OBJECTIVES)} "
                          "(error or ce, plus any of latency, macs, params)")
    validated = [n for n in names if n in VALIDATED]
    if len(validated) != 1:
        raise ConfigError(f"objectives {list(names)} must contain exactly one validated objective (error or ce), "
                          f"got {validated or 'none'}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives {list(names)} lists an objective twice")

