"""The one architecture type that flows through the framework.

A :class:`LayerChoice` fixes one MBConv layer (kernel size, expansion ratio, SE ratio, or the skip-op); an
:class:`Architecture` is one choice per layer of a :class:`~nas.space.SearchSpace`. The supernet derives it,
the runtime model prices it, the child network builds it, JSON stores it and timm reads its string form.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import ArchitectureError
from nas.io import atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from nas.space.search_space import SearchSpace

ARCH_FORMAT = "spnas-architecture"
ARCH_FORMAT_VERSION = 1


def format_number(value: float) -> str:
    """Shortest faithful text for a ratio: ``6`` for 6.0, ``0.25`` for 0.25."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class LayerChoice:
    """One MBConv layer's decision. ``expansion == 0`` is the skip-op (the layer is removed)."""

    kernel: int = 3
    expansion: float = 6.0
    se_ratio: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "expansion", float(self.expansion))
        object.__setattr__(self, "se_ratio", float(self.se_ratio))
        object.__setattr__(self, "kernel", int(self.kernel))

    @classmethod
    def skip(cls) -> LayerChoice:
        """The skip-op: the layer is dropped and its input passes through the residual path."""
        return cls(kernel=0, expansion=0.0, se_ratio=0.0)

    @property
    def is_skip(self) -> bool:
        return self.expansion == 0.0

    @property
    def key(self) -> str:
        """Compact, stable text form: ``k5_e6_se0.25`` or ``skip``."""
        if self.is_skip:
            return "skip"
        return f"k{self.kernel}_e{format_number(self.expansion)}_se{format_number(self.se_ratio)}"

    def to_dict(self) -> dict[str, Any]:
        if self.is_skip:
            return {"op": "skip"}
        return {
            "op": "mbconv",
            "kernel": self.kernel,
            "expansion": _plain(self.expansion),
            "se_ratio": _plain(self.se_ratio),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "layer") -> LayerChoice:
        if isinstance(data, str):
            return cls.from_key(data, where)
        if not isinstance(data, dict):
            raise ArchitectureError(f"{where}: expected an object like "
                                    f'{{"op": "mbconv", "kernel": 3, "expansion": 6, "se_ratio": 0.25}} '
                                    f'or {{"op": "skip"}}, got {data!r}')
        op = data.get("op", "mbconv")
        if op == "skip":
            return cls.skip()
        if op != "mbconv":
            raise ArchitectureError(f"{where}: unknown op {op!r}; use 'mbconv' or 'skip'")
        unknown = set(data) - {"op", "kernel", "expansion", "se_ratio"}
        if unknown:
            raise ArchitectureError(f"{where}: unknown field(s) {sorted(unknown)}; "
                                    "allowed: op, kernel, expansion, se_ratio")
        try:
            kernel = data["kernel"]
            expansion = data["expansion"]
        except KeyError as missing:
            raise ArchitectureError(f"{where}: missing field {missing}") from None
        se_ratio = data.get("se_ratio", 0.0)
        for name, value in (("kernel", kernel), ("expansion", expansion), ("se_ratio", se_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ArchitectureError(f"{where}: {name} must be a number, got {value!r}")
        if float(kernel) != int(kernel):
            raise ArchitectureError(f"{where}: kernel must be an integer, got {kernel!r}")
        if expansion <= 0:
            raise ArchitectureError(f"{where}: expansion must be > 0 (write {{\"op\": \"skip\"}} for the skip-op), "
                                    f"got {expansion!r}")
        return cls(kernel=int(kernel), expansion=float(expansion), se_ratio=float(se_ratio))

    @classmethod
    def from_key(cls, key: str, where: str = "layer") -> LayerChoice:
        """Parse ``k5_e6_se0.25`` / ``skip``."""
        if key == "skip":
            return cls.skip()
        parts = dict()
        for token in key.split("_"):
            for prefix in ("se", "k", "e"):
                if token.startswith(prefix):
                    parts[prefix] = token[len(prefix):]
                    break
        try:
            return cls(kernel=int(parts["k"]), expansion=float(parts["e"]), se_ratio=float(parts.get("se", 0)))
        except (KeyError, ValueError):
            raise ArchitectureError(f"{where}: cannot parse layer key {key!r}; expected e.g. 'k5_e6_se0.25' "
                                    "or 'skip'") from None


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class Architecture:
    """One discrete network of a search space: a :class:`LayerChoice` for each of its layers (fixed ones too)."""

    layers: tuple[LayerChoice, ...]
    space_name: str = ""
    space_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def keys(self) -> list[str]:
        return [layer.key for layer in self.layers]

    # ----------------------------------------------------------------- validation
    def validate(self, space: SearchSpace) -> Architecture:
        """Check every choice against ``space``; raise :class:`ArchitectureError` naming layer and value."""
        source = self.meta.get("source", "architecture")
        if len(self.layers) != len(space.layers):
            raise ArchitectureError(
                f"{source}: has {len(self.layers)} layers but space '{space.name}' has {len(space.layers)}. "
                f"Was it derived in another space? Pass the matching space=... override.")
        for spec, choice in zip(space.layers, self.layers):
            problem = spec.check_choice(choice)
            if problem:
                raise ArchitectureError(f"{source}: layer {spec.index} ({spec.name}): {problem}. "
                                        f"Fix the file or select the space it was searched in (space=...).")
        return self

    # ----------------------------------------------------------------- serialisation
    def to_dict(self, timm: dict[str, Any] | None = None) -> dict[str, Any]:
        """JSON-ready form; ``timm`` (``nas.space.timm_interop.timm_record``) adds timm's ``arch_def`` and kwargs."""
        out: dict[str, Any] = {
            "format": ARCH_FORMAT,
            "format_version": ARCH_FORMAT_VERSION,
            "space": self.space_name,
            "space_digest": self.space_digest,
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if timm is not None:
            out["timm"] = timm
        if self.meta:
            out["meta"] = {k: v for k, v in self.meta.items() if k != "source"}
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture") -> Architecture:
        if not isinstance(data, dict):
            raise ArchitectureError(f"{source}: expected a JSON object with 'format' and 'layers', got "
                                    f"{type(data).__name__}")
        fmt = data.get("format")
        if fmt != ARCH_FORMAT:
            raise ArchitectureError(f"{source}: 'format' is {fmt!r}, expected {ARCH_FORMAT!r}. "
                                    "Is this an architecture file written by search.py?")
        version = data.get("format_version")
        if version != ARCH_FORMAT_VERSION:
            raise ArchitectureError(f"{source}: format_version {version!r} is not supported (this version reads "
                                    f"{ARCH_FORMAT_VERSION}); re-derive it with this version of the framework.")
        layers = data.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ArchitectureError(f"{source}: 'layers' must be a non-empty list")
        choices = tuple(LayerChoice.from_dict(item, where=f"{source}: layers[{i}]") for i, item in enumerate(layers))
        meta = dict(data.get("meta") or {})
        meta["source"] = source
        return cls(layers=choices, space_name=str(data.get("space", "")),
                   space_digest=str(data.get("space_digest", "")), meta=meta)

    def save(self, path: str | os.PathLike, timm: dict[str, Any] | None = None) -> Path:
        """Atomically write the architecture JSON (with timm's ``arch_def`` when ``timm`` is given)."""
        return atomic_write_json(path, self.to_dict(timm))

    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace | None = None) -> Architecture:
        """Read an architecture JSON; when ``space`` is given, validate against it."""
        path = Path(path)
        if not path.is_file():
            raise ArchitectureError(f"architecture file {path} does not exist; pass the arch.json written by "
                                    "search.py (it lies in the run's output folder)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArchitectureError(f"{path}: not valid JSON ({err})") from None
        arch = cls.from_dict(data, source=str(path))
        if space is not None:
            arch.validate(space)
        return arch

    def with_meta(self, **meta: Any) -> Architecture:
        return Architecture(self.layers, self.space_name, self.space_digest, {**self.meta, **meta})

    def describe(self, space: SearchSpace) -> str:
        """A short human-readable table of the layers."""
        lines = []
        for spec, choice in zip(space.layers, self.layers):
            tag = "fixed" if not spec.searchable else ""
            lines.append(f"  {spec.index:2d} {spec.name:<10} r{spec.input_resolution:<4} "
                         f"{spec.in_channels:>4}->{spec.out_channels:<4} s{spec.stride}  {choice.key:<16} {tag}")
        return "\n".join(lines)

