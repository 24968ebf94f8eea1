"""The hyperparameters HyperPower optimises (thesis Sec 3.4.1) and the child network they describe.

Structural hyperparameters, per searchable stage ``s`` of the chosen space (``nas/conf/space/*.yaml``):
``s{s}.width`` (a multiplier of the stage's channels, rounded to a multiple of 8 as timm does), ``s{s}.kernel``
and ``s{s}.expansion`` (from the space's candidates, the same for every layer of the stage) and ``s{s}.depth``
(1 .. the stage's repeats). Stages the space fixes stay as they are. Training hyperparameters: learning rate,
momentum and weight decay (ranges of Sec 3.4.1). The cost models' features ``â`` (Eq 3.2-3.3) are the
structural values themselves: channels, kernel size, expansion and depth of every searchable stage.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from timm.layers import make_divisible

from nas.errors import ConfigError
from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import SearchSpace


@dataclass(frozen=True)
class StageKnobs:
    """The structural choices of one searchable stage."""

    stage: int
    channels: int
    widths: tuple[float, ...]
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    max_depth: int

    def channel_choices(self) -> list[int]:
        return sorted({int(make_divisible(self.channels * w, 8)) for w in self.widths})


class StructureSpace:
    """Structural + training hyperparameters over a base space; builds the network of a parameter dict."""

    def __init__(self, space_cfg: Mapping[str, Any], widths: Sequence[float] = (0.5, 0.75, 1.0, 1.5),
                 lr: Sequence[float] = (1e-3, 0.1), momentum: Sequence[float] = (0.8, 0.95),
                 weight_decay: Sequence[float] = (1e-4, 1e-2)) -> None:
        self.space_cfg = copy.deepcopy(dict(space_cfg))
        base = SearchSpace.from_config(self.space_cfg)  # validates the base space
        if not widths or any(not float(w) > 0 for w in widths):
            raise ConfigError(f"hyperpower.structure.widths must be positive multipliers, got {list(widths)}")
        for name, (low, high) in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not 0 <= float(low) < float(high):
                raise ConfigError(f"hyperpower.training.{name}: needs 0 <= low < high, got [{low}, {high}]")
        candidates = self.space_cfg.get("candidates") or {}
        self.stages: list[StageKnobs] = []
        for s, stage in enumerate(self.space_cfg["stages"]):
            if stage.get("fixed") is not None:
                continue
            cand = {**candidates, **(stage.get("candidates") or {})}
            layer = next(spec for spec in base.layers if spec.stage == s)
            self.stages.append(StageKnobs(s, int(stage["channels"]), tuple(float(w) for w in widths),
                                          tuple(int(k) for k in cand.get("kernels", layer.candidates.kernels)),
                                          tuple(float(e) for e in cand.get("expansions",
                                                                            layer.candidates.expansions)),
                                          int(stage.get("repeats", 1))))
        if not self.stages:
            raise ConfigError(f"space '{base.name}' has no searchable stage for HyperPower")
        self.training = {"lr": FloatDistribution(float(lr[0]), float(lr[1]), log=True),
                         "momentum": FloatDistribution(float(momentum[0]), float(momentum[1])),
                         "weight_decay": FloatDistribution(float(weight_decay[0]), float(weight_decay[1]),
                                                           log=True)}
        self.name = base.name

    # ------------------------------------------------------------------ distributions
    def structural_distributions(self) -> dict[str, BaseDistribution]:
        """One categorical / int distribution per structural knob that has more than one value."""
        out: dict[str, BaseDistribution] = {}
        for st in self.stages:
            if len(st.channel_choices()) > 1:
                out[f"s{st.stage}.channels"] = CategoricalDistribution(st.channel_choices())
            if len(st.kernels) > 1:
                out[f"s{st.stage}.kernel"] = CategoricalDistribution(list(st.kernels))
            if len(st.expansions) > 1:
                out[f"s{st.stage}.expansion"] = CategoricalDistribution(list(st.expansions))
            if st.max_depth > 1:
                out[f"s{st.stage}.depth"] = IntDistribution(1, st.max_depth)
        return out

    def distributions(self) -> dict[str, BaseDistribution]:
        return {**self.structural_distributions(), **self.training}

    @property
    def feature_names(self) -> list[str]:
        return [f"s{st.stage}.{k}" for st in self.stages for k in ("channels", "kernel", "expansion", "depth")]

    def _value(self, params: Mapping[str, Any], st: StageKnobs, knob: str) -> float:
        key = f"s{st.stage}.{knob}"
        if key in params:
            return params[key]
        return {"channels": st.channel_choices()[0], "kernel": st.kernels[0], "expansion": st.expansions[0],
                "depth": st.max_depth}[knob]

    def features(self, params: Mapping[str, Any]) -> np.ndarray:
        """``â``: the structural hyperparameters of Eq 3.2-3.3 as a vector (order: :attr:`feature_names`)."""
        return np.array([float(self._value(params, st, k)) for st in self.stages
                         for k in ("channels", "kernel", "expansion", "depth")])

    def features_matrix(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.stack([self.features(c) for c in configs]) if configs else np.zeros((0, 4 * len(self.stages)))

    # ------------------------------------------------------------------ sampling and enumeration
    def sample_structures(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """``n`` uniformly random structural configurations."""
        dists = self.structural_distributions()
        out = []
        for _ in range(n):
            config = {}
            for key, d in dists.items():
                if isinstance(d, CategoricalDistribution):
                    config[key] = d.choices[int(rng.integers(len(d.choices)))]
                else:
                    config[key] = int(rng.integers(d.low, d.high + 1))
            out.append(config)
        return out

    def num_structures(self) -> int:
        total = 1
        for d in self.structural_distributions().values():
            total *= len(d.choices) if isinstance(d, CategoricalDistribution) else d.high - d.low + 1
        return total

    def enumerate_structures(self) -> list[dict[str, Any]]:
        """Every structural configuration (call only when :meth:`num_structures` is small)."""
        dists = self.structural_distributions()
        axes = [d.choices if isinstance(d, CategoricalDistribution) else range(d.low, d.high + 1)
                for d in dists.values()]
        return [dict(zip(dists, values)) for values in itertools.product(*axes)]

    # ------------------------------------------------------------------ networks
    def build(self, params: Mapping[str, Any]) -> tuple[SearchSpace, Architecture]:
        """The space with the chosen channels and depths, and the architecture with the chosen kernels/expansions."""
        cfg = copy.deepcopy(self.space_cfg)
        by_stage = {st.stage: st for st in self.stages}
        for s, stage in enumerate(cfg["stages"]):
            if s in by_stage:
                st = by_stage[s]
                stage["channels"] = int(self._value(params, st, "channels"))
                stage["repeats"] = int(self._value(params, st, "depth"))
        space = SearchSpace.from_config(cfg)
        layers = []
        for spec in space.layers:
            if spec.fixed is not None:
                layers.append(spec.fixed)
                continue
            st = by_stage[spec.stage]
            layers.append(LayerChoice(int(self._value(params, st, "kernel")),
                                      float(self._value(params, st, "expansion")), 0.0))
        return space, space.architecture(layers)

    def optimizer_config(self, params: Mapping[str, Any]) -> Callable[..., torch.optim.Optimizer]:
        """SGD (Nesterov) with the trial's learning rate, momentum and weight decay (Sec 3.4.1), as a factory."""
        return partial(torch.optim.SGD, lr=float(params["lr"]), momentum=float(params["momentum"]),
                       weight_decay=float(params["weight_decay"]), nesterov=True)
