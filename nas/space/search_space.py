"""Search spaces: a MobileNetV2/MnasNet-style backbone with per-layer MBConv candidates.

A space is read from a Hydra config (``nas/conf/space/*.yaml``). The backbone is a stem convolution, a list of
stages (output channels, stride of the first layer, number of layers) and a head (1x1 conv, pooling,
classifier). Every MBConv layer of a stage is searchable over kernel size, expansion ratio (plus the skip-op
where the layer keeps its shape) and Squeeze-and-Excitation ratio, unless the stage fixes its choice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from timm.layers import make_divisible

from nas.errors import SpaceError
from nas.space.architecture import Architecture, LayerChoice, format_number

ACTIVATIONS = ("relu", "relu6", "silu", "hard_swish")


@dataclass(frozen=True)
class Candidates:
    """The choices one layer may take. Lists are sorted ascending; ``se_ratios`` may contain 0 (no SE)."""

    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[float, ...] = (3.0, 6.0)
    se_ratios: tuple[float, ...] = (0.0, 0.25, 0.5)
    skip: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str) -> Candidates:
        _reject_unknown(cfg, {"kernels", "expansions", "se_ratios", "skip"}, where)
        kernels = tuple(int(k) for k in _as_list(cfg.get("kernels", cls.kernels), f"{where}.kernels"))
        expansions = tuple(float(e) for e in _as_list(cfg.get("expansions", cls.expansions), f"{where}.expansions"))
        se_ratios = tuple(float(s) for s in _as_list(cfg.get("se_ratios", cls.se_ratios), f"{where}.se_ratios"))
        for k in kernels:
            if k < 1 or k % 2 == 0:
                raise SpaceError(f"{where}.kernels: {k} is not a positive odd kernel size")
        for e in expansions:
            if e <= 0:
                raise SpaceError(f"{where}.expansions: {e} must be > 0 (the skip-op is set with skip: true)")
        for s in se_ratios:
            if not 0 <= s < 1:
                raise SpaceError(f"{where}.se_ratios: {s} must lie in [0, 1)")
        for name, values in (("kernels", kernels), ("expansions", expansions), ("se_ratios", se_ratios)):
            if not values:
                raise SpaceError(f"{where}.{name}: needs at least one value")
            if list(values) != sorted(set(values)):
                raise SpaceError(f"{where}.{name}: {list(values)} must be strictly ascending without repeats")
        return cls(kernels, expansions, se_ratios, bool(cfg.get("skip", cls.skip)))


@dataclass(frozen=True)
class LayerSpec:
    """One MBConv layer position of the backbone."""

    index: int
    stage: int
    block: int
    in_channels: int
    out_channels: int
    stride: int
    input_resolution: int
    candidates: Candidates
    fixed: LayerChoice | None = None

    @property
    def name(self) -> str:
        return f"s{self.stage}.b{self.block}"

    @property
    def searchable(self) -> bool:
        return self.fixed is None and len(self.choices()) > 1

    @property
    def can_skip(self) -> bool:
        """The skip-op exists only where the layer keeps its shape (stride 1, same channels)."""
        return (self.fixed is None and self.candidates.skip and self.stride == 1
                and self.in_channels == self.out_channels)

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def output_resolution(self) -> int:
        return -(-self.input_resolution // self.stride)

    def mid_channels(self, expansion: float) -> int:
        """Depthwise channels for an expansion ratio, rounded as timm does (``make_divisible``)."""
        if expansion == 1.0:
            return self.in_channels
        return int(make_divisible(self.in_channels * expansion))

    def se_channels(self, se_ratio: float, expansion: float | None = None) -> int:
        """Reduced SE channels, as timm computes them: ``round(mid * se_ratio / expansion)``."""
        if se_ratio == 0:
            return 0
        expansion = expansion if expansion is not None else max(self.candidates.expansions)
        return max(1, int(round(self.mid_channels(expansion) * se_ratio / expansion)))

    def choices(self) -> list[LayerChoice]:
        """Every choice this layer may take, skip-op first when allowed."""
        if self.fixed is not None:
            return [self.fixed]
        c = self.candidates
        out = [LayerChoice.skip()] if self.can_skip else []
        out += [LayerChoice(k, e, s) for k, e, s in itertools.product(c.kernels, c.expansions, c.se_ratios)]
        return out

    def check_choice(self, choice: LayerChoice) -> str | None:
        """``None`` if ``choice`` is valid here, else a sentence naming the bad value and the allowed ones."""
        if self.fixed is not None:
            if choice != self.fixed:
                return f"this layer is fixed to {self.fixed.key}, got {choice.key}"
            return None
        c = self.candidates
        if choice.is_skip:
            if not self.can_skip:
                why = ("skip is disabled in this space" if not c.skip else
                       "the layer changes shape (stride or channels), so it cannot be skipped")
                return f"skip is not allowed here: {why}"
            return None
        if choice.kernel not in c.kernels:
            return f"kernel {choice.kernel} is not a candidate; allowed: {list(c.kernels)}"
        if choice.expansion not in c.expansions:
            return (f"expansion {format_number(choice.expansion)} is not a candidate; allowed: "
                    f"{[format_number(e) for e in c.expansions]}" + (" or skip" if self.can_skip else ""))
        if choice.se_ratio not in c.se_ratios:
            return (f"se_ratio {format_number(choice.se_ratio)} is not a candidate; allowed: "
                    f"{[format_number(s) for s in c.se_ratios]}")
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index, "stage": self.stage, "block": self.block,
            "in": self.in_channels, "out": self.out_channels, "stride": self.stride,
            "resolution": self.input_resolution,
            "fixed": self.fixed.key if self.fixed else None,
            "kernels": list(self.candidates.kernels),
            "expansions": list(self.candidates.expansions),
            "se_ratios": list(self.candidates.se_ratios),
            "skip": self.can_skip,
        }


@dataclass(frozen=True)
class StemSpec:
    channels: int
    kernel: int = 3
    stride: int = 2


@dataclass(frozen=True)
class HeadSpec:
    channels: int
    dropout: float = 0.0


@dataclass(frozen=True)
class SearchSpace:
    """A backbone plus per-layer candidates. Build it with :meth:`from_config`."""

    name: str
    resolution: int
    act: str
    stem: StemSpec
    head: HeadSpec
    layers: tuple[LayerSpec, ...]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SearchSpace:
        """Build from a plain mapping (an OmegaConf node converted with ``to_container``)."""
        cfg = _to_plain(cfg)
        if not isinstance(cfg, Mapping):
            raise SpaceError(f"space config must be a mapping, got {type(cfg).__name__}")
        _reject_unknown(cfg, {"name", "resolution", "act", "stem", "head", "candidates", "stages"}, "space")
        name = str(cfg.get("name", "custom"))
        where = f"space '{name}'"
        resolution = _positive_int(cfg.get("resolution"), f"{where}.resolution")
        act = str(cfg.get("act", "relu"))
        if act not in ACTIVATIONS:
            raise SpaceError(f"{where}.act: {act!r} is not supported; choose one of {list(ACTIVATIONS)}")
        stem_cfg = cfg.get("stem") or {}
        _reject_unknown(stem_cfg, {"channels", "kernel", "stride"}, f"{where}.stem")
        stem = StemSpec(_positive_int(stem_cfg.get("channels"), f"{where}.stem.channels"),
                        _positive_int(stem_cfg.get("kernel", 3), f"{where}.stem.kernel"),
                        _stride(stem_cfg.get("stride", 2), f"{where}.stem.stride"))
        head_cfg = cfg.get("head") or {}
        _reject_unknown(head_cfg, {"channels", "dropout"}, f"{where}.head")
        head = HeadSpec(_positive_int(head_cfg.get("channels"), f"{where}.head.channels"),
                        float(head_cfg.get("dropout", 0.0)))
        default_candidates = Candidates.from_config(cfg.get("candidates") or {}, f"{where}.candidates")
        stages = cfg.get("stages")
        if not isinstance(stages, Sequence) or not stages:
            raise SpaceError(f"{where}.stages: needs a non-empty list of stages")

        layers: list[LayerSpec] = []
        channels = stem.channels
        res = -(-resolution // stem.stride)
        for s, stage in enumerate(stages):
            at = f"{where}.stages[{s}]"
            if not isinstance(stage, Mapping):
                raise SpaceError(f"{at}: expected a mapping with channels/stride/repeats")
            _reject_unknown(stage, {"channels", "stride", "repeats", "fixed", "candidates"}, at)
            out_ch = _positive_int(stage.get("channels"), f"{at}.channels")
            stride = _stride(stage.get("stride", 1), f"{at}.stride")
            repeats = _positive_int(stage.get("repeats", 1), f"{at}.repeats")
            cand = default_candidates
            if stage.get("candidates"):
                merged = {"kernels": cand.kernels, "expansions": cand.expansions,
                          "se_ratios": cand.se_ratios, "skip": cand.skip, **stage["candidates"]}
                cand = Candidates.from_config(merged, f"{at}.candidates")
            fixed = None
            if stage.get("fixed") is not None:
                fixed = LayerChoice.from_dict({"op": "mbconv", **stage["fixed"]}, where=f"{at}.fixed")
            for b in range(repeats):
                spec = LayerSpec(index=len(layers), stage=s, block=b, in_channels=channels,
                                 out_channels=out_ch, stride=stride if b == 0 else 1,
                                 input_resolution=res, candidates=cand, fixed=fixed)
                _check_se_nesting(spec, at)
                layers.append(spec)
                channels = out_ch
                res = spec.output_resolution
        space = cls(name=name, resolution=resolution, act=act, stem=stem, head=head, layers=tuple(layers))
        if not space.searchable_layers:
            raise SpaceError(f"{where}: no layer has more than one candidate; nothing to search")
        return space

    # ------------------------------------------------------------------ queries
    @property
    def searchable_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if layer.searchable]

    @property
    def final_channels(self) -> int:
        return self.layers[-1].out_channels

    @property
    def final_resolution(self) -> int:
        return self.layers[-1].output_resolution

    def num_architectures(self) -> int:
        total = 1
        for layer in self.layers:
            total *= len(layer.choices())
        return total

    def describe(self) -> dict[str, Any]:
        """Canonical description; its hash is the space digest."""
        return {
            "name": self.name, "resolution": self.resolution, "act": self.act,
            "stem": {"channels": self.stem.channels, "kernel": self.stem.kernel, "stride": self.stem.stride},
            "head": {"channels": self.head.channels},
            "layers": [layer.describe() for layer in self.layers],
        }

    @property
    def digest(self) -> str:
        """Short hash of everything that changes the layers' shapes or candidates (not the name)."""
        desc = self.describe()
        desc.pop("name")
        blob = json.dumps(desc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ architectures
    def largest(self) -> Architecture:
        """Every searchable layer at its largest kernel, expansion and SE ratio."""
        return self._uniform(lambda c: LayerChoice(c.kernels[-1], c.expansions[-1], c.se_ratios[-1]))

    def smallest(self) -> Architecture:
        """Every skippable layer skipped, others at their smallest choice."""
        def pick(spec: LayerSpec) -> LayerChoice:
            return spec.choices()[0]
        return self.architecture([pick(spec) for spec in self.layers])

    def _uniform(self, make: Any) -> Architecture:
        return self.architecture([spec.fixed or make(spec.candidates) for spec in self.layers])

    def architecture(self, layers: Sequence[LayerChoice], **meta: Any) -> Architecture:
        """Wrap choices as an :class:`Architecture` of this space and validate them."""
        arch = Architecture(tuple(layers), self.name, self.digest, meta)
        return arch.validate(self)

    def sample(self, generator: Any) -> Architecture:
        """A uniformly random architecture; ``generator`` is a ``random.Random``."""
        return self.architecture([generator.choice(spec.choices()) for spec in self.layers])


# ---------------------------------------------------------------------- helpers
def _to_plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def _reject_unknown(cfg: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(cfg) - allowed
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise SpaceError(f"{where}: expected a list, got {value!r}")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpaceError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _stride(value: Any, where: str) -> int:
    if value not in (1, 2):
        raise SpaceError(f"{where}: stride must be 1 or 2, got {value!r}")
    return int(value)


def _check_se_nesting(spec: LayerSpec, where: str) -> None:
    """SE groups must nest (0.25 inside 0.5) and not depend on the expansion choice."""
    if spec.fixed is not None:
        return
    previous = 0
    for se in spec.candidates.se_ratios:
        if se == 0:
            continue
        sizes = {spec.se_channels(se, e) for e in spec.candidates.expansions}
        if len(sizes) != 1:
            raise SpaceError(f"{where}: SE channels for se_ratio {se} differ between expansion ratios "
                             f"({sorted(sizes)}) at {spec.in_channels} input channels; use channel counts "
                             "that are multiples of 8")
        size = sizes.pop()
        if size <= previous:
            raise SpaceError(f"{where}: se_ratios give {size} SE channels for {se}, not more than the previous "
                             f"ratio's {previous}; use fewer or larger ratios for {spec.in_channels} channels")
        previous = size
