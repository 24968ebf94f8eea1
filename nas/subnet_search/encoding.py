"""Genome of a sub-network: one integer gene per searchable layer, indexing ``LayerSpec.choices()``.

The skip-op is one of the candidates (the first, where the layer may be skipped), so every genome decodes to a
different network and no two genes describe the same one (source 002 §4.2 had to patch NSGA-II's duplicate
check for encodings where unused genes alias networks; this encoding has no such genes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas.errors import ArchitectureError
from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import SearchSpace


def architecture_key(arch: Architecture) -> str:
    """Stable text key of an architecture (every layer, fixed ones too): ``"k3_e1_se0 skip k5_e6_se0.25 ..."``."""
    return " ".join(arch.keys)


class GenomeCodec:
    """Maps integer genomes to :class:`Architecture` s of ``space`` and back.

    ``allowed`` (a PopDB search mask, :mod:`nas.subnet_search.popdb`) restricts each searchable layer to a
    subset of its candidates, given as indices into ``LayerSpec.choices()``; genes then index that subset. The
    space, and so the supernet, is unchanged.
    """

    def __init__(self, space: SearchSpace, allowed: Sequence[Sequence[int]] | None = None) -> None:
        self.space = space
        self.layers = space.searchable_layers
        full = [spec.choices() for spec in self.layers]
        if allowed is None:
            self.choices: list[list[LayerChoice]] = full
        else:
            if len(allowed) != len(full):
                raise ArchitectureError(f"the mask lists {len(allowed)} layers, space '{space.name}' has "
                                        f"{len(full)} searchable layers")
            self.choices = [[options[i] for i in sorted(set(keep))] for options, keep in zip(full, allowed)]
            empty = [spec.index for spec, ch in zip(self.layers, self.choices) if not ch]
            if empty:
                raise ArchitectureError(f"the mask leaves no candidate in layer(s) {empty}")
        self.masked = allowed is not None
        self._index = [{choice: i for i, choice in enumerate(ch)} for ch in self.choices]
        self.xl = np.zeros(len(self.layers), dtype=int)
        self.xu = np.array([len(ch) - 1 for ch in self.choices], dtype=int)

    @property
    def n_var(self) -> int:
        return len(self.layers)

    @property
    def size(self) -> int:
        """Number of distinct genomes (= architectures of the space)."""
        return int(np.prod(self.xu + 1, dtype=np.int64))

    def decode(self, genes: Sequence[int] | np.ndarray) -> Architecture:
        genes = np.asarray(genes)
        if genes.shape != (self.n_var,):
            raise ArchitectureError(f"genome has {genes.shape} genes, space '{self.space.name}' has {self.n_var} "
                                    "searchable layers")
        choices = [spec.choices()[0] for spec in self.space.layers]  # fixed layers: their only candidate
        for g, spec, options in zip(genes, self.layers, self.choices):
            gi = int(round(float(g)))
            if not 0 <= gi < len(options):
                raise ArchitectureError(f"gene {gi} of layer {spec.index} ({spec.name}) is out of range "
                                        f"[0, {len(options) - 1}]")
            choices[spec.index] = options[gi]
        return self.space.architecture(choices)

    def encode(self, arch: Architecture) -> np.ndarray:
        arch.validate(self.space)
        genes = []
        for j, spec in enumerate(self.layers):
            gene = self._index[j].get(arch.layers[spec.index])
            if gene is None:
                raise ArchitectureError(f"layer {spec.index} ({spec.name}) is {arch.layers[spec.index].key}, which "
                                        "the search mask removed")
            genes.append(gene)
        return np.array(genes, dtype=int)

    def encode_layers(self, layers: Sequence[object], where: str) -> np.ndarray:
        """The genome of an architecture given as its layers' records (``LayerChoice.to_dict`` or keys), as
        ``validations.jsonl`` and ``validation.json`` store them."""
        choices = [LayerChoice.from_dict(c, f"{where}, layer {i}") for i, c in enumerate(layers)]
        return self.encode(self.space.architecture(choices))

    def key(self, genes: Sequence[int] | np.ndarray) -> str:
        return architecture_key(self.decode(genes))

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform genomes (each gene uniform over its layer's candidates)."""
        return rng.integers(self.xl, self.xu + 1, size=(n, self.n_var))

    def enumerate_all(self) -> np.ndarray:
        """Every genome of the space, shape ``(size, n_var)`` (only for small spaces: tests, exact fronts)."""
        grids = np.meshgrid(*[np.arange(u + 1) for u in self.xu], indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1)
