"""Scalar objectives over what a run measures: one implementation each, selected with ``objective=``.

Every objective maps :class:`Measurements` (validation accuracy and the hardware costs of one network) to one
number to **maximise**. They are shared by the λ sweep (``search.py``), HyperPower (``hyperpower.py``) and, later,
the sub-network search's single-objective mode.

========================  ===========================================================================  ==========
``objective=``            value                                                                        source
========================  ===========================================================================  ==========
``accuracy``              ``Acc``                                                                      --
``target_runtime``        ``Acc * (R / R_T)^w``, ``w = 0`` if ``R <= R_T`` else ``-1``                  thesis Eq 6.2
``monas_mixed``           ``alpha * Acc - (1 - alpha) * Energy``, ``alpha in [0, 1]``                   MONAS Eq 1
``monas_budget``          ``Acc`` if ``cost <= budget`` else ``0`` (cost: power by default)             MONAS Eq 2
``monas_accuracy``        ``1 - Energy*`` if ``Acc >= threshold`` else ``0``                            MONAS Eq 3
``pfp``                   ``Acc - (lat / THRES) * PENALTY`` if ``lat > THRES`` else ``Acc``            PFP-NAS Alg. 1
========================  ===========================================================================  ==========

**What "energy" and "power" are.** Measured values are used where the hardware gives them: power in W through
NVML on a CUDA GPU (:mod:`nas.hyperpower.measure`), energy in mJ. Where only latency exists (every LUT backend,
the λ sweep), energy is ``latency_ms * device_power_w`` (ms x W = mJ) with ``device_power_w`` the device's power
figure from the config (e.g. its TDP or a measured average), and power is ``device_power_w`` itself; without
that figure an objective that needs energy or power is a :class:`~nas.errors.ConfigError`, never a made-up value.
``Energy`` in MONAS Eq 1 is in units of ``energy_unit_mj`` (the exchange rate between one unit of accuracy and
energy); ``Energy*`` in Eq 3 is ``(E - energy_min_mj) / (energy_max_mj - energy_min_mj)`` clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from nas.cost.vocabulary import UNITS
from nas.errors import ConfigError

COSTS = ("latency_ms", "power_w", "energy_mj", "memory_mb")  # canonical names, units in nas.cost.vocabulary


@dataclass(frozen=True)
class Measurements:
    """One network's validation accuracy (in [0, 1]) and hardware costs; a cost is ``None`` if not measured."""

    accuracy: float
    latency_ms: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None
    memory_mb: float | None = None
    device_power_w: float | None = None  # the device's power figure, for energy/power derived from latency

    def cost(self, name: str) -> float:
        """``latency_ms``, ``memory_mb``, ``power_w`` or ``energy_mj``, derived from latency where documented."""
        if name not in COSTS:
            raise ConfigError(f"unknown cost {name!r}; choose one of {list(COSTS)}")
        value = getattr(self, name)
        if value is None and name == "energy_mj" and self.latency_ms is not None and self.device_power_w:
            value = self.latency_ms * self.device_power_w
        if value is None and name == "power_w" and self.device_power_w:
            value = self.device_power_w
        if value is None:
            hint = {"power_w": "power is measured through NVML on a CUDA GPU; or set the objective's "
                               "device_power_w (W) to use the device's power figure",
                    "energy_mj": "set the objective's device_power_w (W): energy = latency x device power",
                    }.get(name, "this run does not measure it")
            raise ConfigError(f"the objective needs {name}, which is not available: {hint}")
        return float(value)


def target_objective(accuracy: float, runtime_ms: float, target_ms: float | None) -> float:
    """Thesis Eq 6.2: ``acc * (R / R_T)^w`` with ``w = 0`` if ``R <= R_T`` else ``-1`` (accuracy without target)."""
    if target_ms is None:
        return accuracy
    if target_ms <= 0:
        raise ConfigError(f"hardware.target_ms must be > 0, got {target_ms}")
    return accuracy if runtime_ms <= target_ms else accuracy * (target_ms / runtime_ms)


class Objective:
    """Base: ``objective(measurements) -> float`` to maximise; subclasses check their settings on construction."""

    name: ClassVar[str] = ""
    direction: ClassVar[str] = "maximize"
    device_power_w: float | None = None

    def __call__(self, m: Measurements) -> float:
        raise NotImplementedError

    def evaluate(self, accuracy: float, **costs: float | None) -> float:
        """Shorthand: build :class:`Measurements` (with this objective's ``device_power_w``) and score it."""
        return self(Measurements(accuracy=accuracy, device_power_w=self.device_power_w, **costs))

    def _check_power(self) -> None:
        if self.device_power_w is not None and not self.device_power_w > 0:
            raise ConfigError(f"objective {self.name}: device_power_w must be > 0 W, got {self.device_power_w}")


@dataclass(frozen=True)
class Accuracy(Objective):
    """Plain validation accuracy."""

    name: ClassVar[str] = "accuracy"
    device_power_w: float | None = None

    def __call__(self, m: Measurements) -> float:
        return float(m.accuracy)


@dataclass(frozen=True)
class TargetRuntime(Objective):
    """Thesis Eq 6.2 (:func:`target_objective`) on the predicted or measured latency."""

    name: ClassVar[str] = "target_runtime"
    target_ms: float | None = None
    device_power_w: float | None = None

    def __post_init__(self) -> None:
        if self.target_ms is not None and not self.target_ms > 0:
            raise ConfigError(f"objective target_runtime: target_ms must be > 0 ms, got {self.target_ms}")

    def __call__(self, m: Measurements) -> float:
        return target_objective(m.accuracy, m.cost("latency_ms"), self.target_ms)


@dataclass(frozen=True)
class MonasMixed(Objective):
    """MONAS Eq 1: ``R = alpha * Acc - (1 - alpha) * Energy``, ``alpha in [0, 1]`` (Energy in energy_unit_mj)."""

    name: ClassVar[str] = "monas_mixed"
    alpha: float = 0.8
    energy_unit_mj: float = 1.0
    device_power_w: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"objective monas_mixed: alpha must lie in [0, 1] (MONAS Eq 1), got {self.alpha}")
        if not self.energy_unit_mj > 0:
            raise ConfigError(f"objective monas_mixed: energy_unit_mj must be > 0, got {self.energy_unit_mj}")
        self._check_power()

    def __call__(self, m: Measurements) -> float:
        energy = m.cost("energy_mj") / self.energy_unit_mj
        return self.alpha * m.accuracy - (1.0 - self.alpha) * energy


@dataclass(frozen=True)
class MonasBudget(Objective):
    """MONAS Eq 2: ``R = Acc`` if ``cost <= budget`` else ``0`` (cost: peak power by default)."""

    name: ClassVar[str] = "monas_budget"
    budget: float = 1.0
    cost: str = "power_w"
    device_power_w: float | None = None

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ConfigError(f"objective monas_budget: unknown cost {self.cost!r}; choose one of {list(COSTS)}")
        if not self.budget > 0:
            raise ConfigError(f"objective monas_budget: budget must be > 0 {UNITS[self.cost]} (a {self.cost} limit), "
                              f"got {self.budget}")
        self._check_power()

    def __call__(self, m: Measurements) -> float:
        return float(m.accuracy) if m.cost(self.cost) <= self.budget else 0.0


@dataclass(frozen=True)
class MonasAccuracy(Objective):
    """MONAS Eq 3: ``R = 1 - Energy*`` if ``Acc >= threshold`` else ``0``, ``Energy*`` normalised to [0, 1]."""

    name: ClassVar[str] = "monas_accuracy"
    threshold: float = 0.9
    energy_max_mj: float = 1.0
    energy_min_mj: float = 0.0
    device_power_w: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"objective monas_accuracy: threshold is an accuracy in [0, 1], got {self.threshold}")
        if not (0.0 <= self.energy_min_mj < self.energy_max_mj):
            raise ConfigError("objective monas_accuracy: needs 0 <= energy_min_mj < energy_max_mj to normalise "
                              f"energy, got {self.energy_min_mj} and {self.energy_max_mj}")
        self._check_power()

    def normalised_energy(self, m: Measurements) -> float:
        """``Energy*``: energy scaled to [0, 1] by the configured range (clipped)."""
        span = self.energy_max_mj - self.energy_min_mj
        return min(1.0, max(0.0, (m.cost("energy_mj") - self.energy_min_mj) / span))

    def __call__(self, m: Measurements) -> float:
        return 1.0 - self.normalised_energy(m) if m.accuracy >= self.threshold else 0.0


@dataclass(frozen=True)
class PfpScore(Objective):
    """PFP-NAS Algorithm 1: ``Acc - (lat / THRES) * PENALTY`` if ``lat > THRES`` else ``Acc``.

    The score jumps down by at least ``PENALTY`` when the latency crosses ``THRES``: a network just over the
    threshold scores below every network under it with accuracy above ``Acc - PENALTY``.
    """

    name: ClassVar[str] = "pfp"
    thres: float = 1.0
    penalty: float = 1.0
    cost: str = "latency_ms"
    device_power_w: float | None = None

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ConfigError(f"objective pfp: unknown cost {self.cost!r}; choose one of {list(COSTS)}")
        if not self.thres > 0:
            raise ConfigError(f"objective pfp: THRES (thres) must be > 0 {UNITS[self.cost]} (a {self.cost} limit), "
                              f"got {self.thres}")
        if not self.penalty >= 0:
            raise ConfigError(f"objective pfp: PENALTY (penalty) must be >= 0, got {self.penalty}")
        self._check_power()

    def __call__(self, m: Measurements) -> float:
        latency = m.cost(self.cost)
        if latency > self.thres:
            return m.accuracy - (latency / self.thres) * self.penalty
        return float(m.accuracy)


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (Accuracy, TargetRuntime, MonasMixed,
                                                                   MonasBudget, MonasAccuracy, PfpScore)}


def build_objective(cfg: Mapping[str, Any] | None, target_ms: float | None = None) -> Objective:
    """The objective of an ``objective=`` config node (``name`` plus its settings), checked now.

    Without a node: Eq 6.2 with ``target_ms`` when it is set, else plain accuracy (what ``search.py`` did).
    """
    if cfg is None:
        return TargetRuntime(target_ms) if target_ms is not None else Accuracy()
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    settings = dict(cfg)
    name = str(settings.pop("name", ""))
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    allowed = {f.name for f in fields(cls)}
    unknown = set(settings) - allowed
    if unknown:
        raise ConfigError(f"objective {name}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    numeric = {f.name for f in fields(cls) if isinstance(f.default, (int, float)) or f.name == "device_power_w"}
    for key, value in settings.items():
        if key not in numeric or (value is None and key == "device_power_w"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"objective {name}: {key} must be a finite number, got {value!r} (set "
                              f"objective.{key}=...)")
        settings[key] = float(value)
    return cls(**settings)
