"""Differentiable runtime model over the single-path space (thesis Eq 5.8-5.10, 6.5-6.8).

``R = R_const + sum_i R_i``: the stem, the head and fixed layers are constants; each searchable layer's
``R_i`` is a function of its indicators. Two forms:

* ``exact`` (default): every candidate op of a layer is measured, and ``R_i`` is the multilinear
  interpolation of the layer's LUT entries by the nested indicators::

      R_i = sum_{k,e,s} P_k(d_kernel) * P_e(d_expansion) * P_s(d_se) * LUT_i[k, e, s]

  where ``P(level j) = d_1 ... d_j (1 - d_{j+1})`` (the skip level costs 0). At any discrete architecture
  (indicators in {0, 1}) this is exactly the sum of that architecture's LUT entries; between them it is
  differentiable in every threshold. It generalises Eq 5.9 (expansion, skip) and Eq 6.8 (SE) to any number of
  candidates and drops the approximations below.
* ``thesis``: Eq 5.9-5.10 and 6.5-6.8 as written: 5x5 runtimes by expansion (Eq 5.9), 3x3 runtimes
  approximated by scaling with ``R_3x3,6 / R_5x5,6`` (Eq 5.10), and the SE path as a multiplicative factor
  ``s_{k,e} = R_{k,e,se} / R_{k,e,0}`` interpolated by kernel and expansion indicators (Eq 6.6-6.8), assuming
  ``s_0.25 ~ s_0.5``. Kept for comparison with the thesis; it needs kernels {3, 5} and expansions {3, 6}.

Both are then calibrated to whole networks by the LUT (``nas.cost.lut``)::

    R = sum_s scale_s * (R_const,s + sum_{i in s} R_i) + per_op_ms * (fixed layers + sum_i P_i(kept))
        + per_se_op_ms * sum_i P_i(kept) P_i(SE > 0) + overhead_ms

where ``scale_s`` is the LUT's scale of cost group (stage) ``s`` (``nas.cost.signatures.cost_groups``: the stem
counts with the first stage, the head with the last; one ``scale`` for all stages where the LUT has no stage
scales), so ``R`` stays linear in every layer's cost and the form of each ``R_i`` (exact or thesis) is untouched;

``P_i(kept) = 1 - P_i(skip)`` is the probability that layer ``i`` is not the skip-op (its indicator
``d_e3`` of Eq 5.9 for two expansions) and ``P_i(SE > 0) = d_se`` (Eq 6.8) the probability that it has SE, so
the counts are differentiable too.

One cost model for every solver: :meth:`RuntimeModel.forward` prices the single-path indicators,
:meth:`RuntimeModel.expected` the expected runtime ``E[R]`` of per-layer categorical distributions over the
candidates (multi-path, Gumbel, ProxylessNAS), and :meth:`RuntimeModel.predict` a discrete architecture (what
every solver reports). All three apply the same calibration (:meth:`RuntimeModel.calibrate`); at a discrete
architecture (one-hot probabilities, indicators in {0, 1}) they agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nas.cost.lut import LatencyLUT
from nas.cost.measurement_core import calibrated_ms
from nas.cost.signatures import cost_groups, head_key, layer_key, stem_key
from nas.errors import ConfigError
from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import SearchSpace
from nas.supernets.superkernel import LayerDecision

FORMS = ("exact", "thesis")


def level_probabilities(indicators: torch.Tensor) -> torch.Tensor:
    """``[1-d1, d1(1-d2), d1 d2 (1-d3), ..., d1...dm]`` for nested indicators ``d`` (length m -> m+1)."""
    one = indicators.new_ones(1)
    cum = torch.cat([one, torch.cumprod(indicators, 0)])
    nxt = torch.cat([indicators, indicators.new_zeros(1)])
    return cum * (1 - nxt)


class RuntimeModel(nn.Module):
    """Predicted network runtime in ms, differentiable in the supernet's indicators."""

    def __init__(self, space: SearchSpace, lut: LatencyLUT, in_channels: int, num_classes: int,
                 form: str = "exact") -> None:
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"unknown runtime model form {form!r}; choose one of {list(FORMS)}")
        self.space = space
        self.form = form
        self.lut = lut
        self.in_channels = in_channels
        self.num_classes = num_classes
        stem_group, self.layer_groups, head_group, self.num_groups = cost_groups(space)
        lut.check_groups(self.num_groups, space.name)
        stem_ms = lut.ms(stem_key(space, in_channels), "stem")
        head_ms = lut.ms(head_key(space, num_classes), "head")
        const = stem_ms + head_ms
        group_const = [0.0] * self.num_groups  # the constant ops' raw ms per cost group
        group_const[stem_group] += stem_ms
        group_const[head_group] += head_ms
        self.searchable: list[int] = []
        self.fixed_kept = 0
        self.fixed_se = 0
        tables = []
        for spec in space.layers:
            if not spec.searchable:
                choice = spec.choices()[0]
                key = layer_key(spec, choice, space.act)
                if key is not None:
                    ms = lut.ms(key, f"layer {spec.index} ({spec.name})")
                    const += ms
                    group_const[self.layer_groups[spec.index]] += ms
                    self.fixed_kept += 1
                    self.fixed_se += int(choice.se_ratio > 0)
                continue
            self.searchable.append(spec.index)
            tables.append(self._layer_table(spec))
        self.register_buffer("constant_ms", torch.tensor(const, dtype=torch.float64).float())
        # derived from the LUT like the categorical buffers below: not saved in checkpoints
        self.register_buffer("group_constant_ms", torch.tensor(group_const, dtype=torch.float64).float(),
                             persistent=False)
        for i, table in zip(self.searchable, tables):
            self.register_buffer(f"table_{i}", table)
        # categorical form (one entry per candidate of spec.choices(), skip first): raw ms, kept and SE kept (0 / 1).
        # Derived from the LUT, so not saved in checkpoints (which keep loading across versions).
        for i in self.searchable:
            spec = space.layers[i]
            row = [0.0 if (key := layer_key(spec, c, space.act)) is None
                   else lut.ms(key, f"layer {spec.index} ({spec.name}) {c.key}") for c in spec.choices()]
            self.register_buffer(f"choice_ms_{i}", torch.tensor(row), persistent=False)
            self.register_buffer(f"choice_kept_{i}", torch.tensor([0.0 if c.is_skip else 1.0
                                                                   for c in spec.choices()]), persistent=False)
            self.register_buffer(f"choice_se_{i}", torch.tensor([0.0 if c.is_skip or c.se_ratio == 0 else 1.0
                                                                 for c in spec.choices()]), persistent=False)
            self.register_buffer(f"se_levels_{i}", torch.tensor([1.0 if r > 0 else 0.0
                                                                 for r in spec.candidates.se_ratios]),
                                 persistent=False)
        if form == "thesis":
            self._check_thesis_form()

    def _layer_table(self, spec) -> torch.Tensor:  # noqa: ANN001
        """``T[k, e, s]`` in ms; the expansion axis starts with the skip level (0 ms) when skip is allowed."""
        c = spec.candidates
        e_levels: list[float | None] = ([None] if spec.can_skip else []) + list(c.expansions)
        table = torch.zeros(len(c.kernels), len(e_levels), len(c.se_ratios))
        for ki, k in enumerate(c.kernels):
            for ei, e in enumerate(e_levels):
                if e is None:
                    continue
                for si, s in enumerate(c.se_ratios):
                    choice = LayerChoice(k, e, s)
                    table[ki, ei, si] = self.lut.ms(layer_key(spec, choice, self.space.act),
                                                    f"layer {spec.index} ({spec.name}) {choice.key}")
        return table

    def table(self, index: int) -> torch.Tensor:
        return getattr(self, f"table_{index}")

    def _check_thesis_form(self) -> None:
        for spec in self.space.searchable_layers:
            c = spec.candidates
            if c.kernels != (3, 5) or c.expansions != (3.0, 6.0):
                raise ConfigError(f"runtime form 'thesis' (Eq 5.9-5.10) needs kernels [3, 5] and expansions "
                                  f"[3, 6]; layer {spec.index} has {list(c.kernels)} / {list(c.expansions)}. "
                                  "Use solver.runtime_form=exact.")

    # ------------------------------------------------------------------ the calibration (one place)
    def calibrate(self, group_sums: Sequence[torch.Tensor | float], kept: torch.Tensor | float,
                  se_kept: torch.Tensor | float) -> torch.Tensor | float:
        """``sum_s scale_s * group_sums[s] + per_op_ms * kept + per_se_op_ms * se_kept + overhead_ms``: the LUT's
        network calibration, applied by every entry point of this model to the (expected) LUT sum of each cost
        group (stage), the (expected) number of MBConv layers kept and the (expected) number of those with SE.
        It is :func:`~nas.cost.measurement_core.calibrated_ms`, the one price formula of the framework and the
        device runner (floats, or tensors on the differentiable paths)."""
        return calibrated_ms(group_sums, kept, se_kept, self.lut.calibration)

    def _group_accumulator(self) -> list[torch.Tensor]:
        return [self.group_constant_ms[g] for g in range(self.num_groups)]

    # ------------------------------------------------------------------ differentiable R
    def forward(self, decisions: Sequence[LayerDecision | None]) -> torch.Tensor:
        """Calibrated ``R`` in ms for the single-path indicators (Eq 5.8 with Eq 5.9-5.10 / 6.5-6.8 per layer)."""
        groups = self._group_accumulator()
        kept = self.constant_ms.new_tensor(float(self.fixed_kept))
        se_kept = self.constant_ms.new_tensor(float(self.fixed_se))
        for i in self.searchable:
            dec = decisions[i]
            if dec is None:
                raise ConfigError(f"no decision for searchable layer {i}; pass supernet.decisions()")
            layer = self.layer_runtime_exact(i, dec) if self.form == "exact" else self.layer_runtime_thesis(i, dec)
            g = self.layer_groups[i]
            groups[g] = groups[g] + layer
            p_kept = self.layer_kept(i, dec)
            kept = kept + p_kept
            se_kept = se_kept + p_kept * (level_probabilities(dec.se) * getattr(self, f"se_levels_{i}")).sum()
        return self.calibrate(groups, kept, se_kept)

    def layer_kept(self, i: int, dec: LayerDecision) -> torch.Tensor:
        """``P(layer i is not the skip-op)``: ``1 - P(skip level)``, i.e. the first expansion indicator when the
        layer can be skipped (``d_e3`` of Eq 5.9), else 1."""
        if not self.space.layers[i].can_skip:
            return dec.expansion.new_ones(())
        return 1 - level_probabilities(dec.expansion)[0]

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """Calibrated ``E[R]`` in ms under per-layer categorical distributions over the candidates.

        ``probabilities[j]`` is the distribution of the ``j``-th searchable layer over ``spec.choices()`` (skip
        first where allowed), as the multi-path supernet orders its paths. ``R`` is linear in the per-stage LUT
        sums and in the counts of kept layers, so ``E[R]`` is the calibration of their expectations.
        """
        if len(probabilities) != len(self.searchable):
            raise ConfigError(f"expected {len(self.searchable)} per-layer distributions, got {len(probabilities)}")
        groups = self._group_accumulator()
        kept = self.constant_ms.new_tensor(float(self.fixed_kept))
        se_kept = self.constant_ms.new_tensor(float(self.fixed_se))
        for i, p in zip(self.searchable, probabilities):
            g = self.layer_groups[i]
            groups[g] = groups[g] + (p * getattr(self, f"choice_ms_{i}").to(p.dtype)).sum()
            kept = kept + (p * getattr(self, f"choice_kept_{i}").to(p.dtype)).sum()
            se_kept = se_kept + (p * getattr(self, f"choice_se_{i}").to(p.dtype)).sum()
        return self.calibrate(groups, kept, se_kept)

    def layer_runtime_exact(self, i: int, dec: LayerDecision) -> torch.Tensor:
        pk = level_probabilities(dec.kernel)
        pe = level_probabilities(dec.expansion)
        ps = level_probabilities(dec.se)
        return torch.einsum("k,e,s,kes->", pk, pe, ps, self.table(i).to(pk.dtype))

    def layer_runtime_thesis(self, i: int, dec: LayerDecision) -> torch.Tensor:
        """Eq 5.9, 5.10 and 6.6-6.8 for one layer (kernels {3,5}, expansions {3,6})."""
        spec = self.space.layers[i]
        t = self.table(i)  # [k, e(+skip), s]
        off = 1 if spec.can_skip else 0
        d_k5 = dec.kernel[0]
        d_e3 = dec.expansion[0] if spec.can_skip else dec.expansion.new_ones(())
        d_e6 = dec.expansion[off]
        se = list(spec.candidates.se_ratios)
        s0 = se.index(0.0) if 0.0 in se else None
        s1 = next((j for j, s in enumerate(se) if s > 0), None)
        base = s0 if s0 is not None else 0
        r53, r56 = t[1, off, base], t[1, off + 1, base]
        r_e = d_e3 * (r53 + d_e6 * (r56 - r53))                              # Eq 5.9
        rho = t[0, off + 1, base] / r56
        r_ke = rho * r_e + r_e * (1 - rho) * d_k5                            # Eq 5.10
        if s0 is None or s1 is None:
            return r_ke
        scale = t[:, off:, s1] / t[:, off:, s0]                              # Eq 6.5: s_{k,e,0.25}
        s_e6 = d_k5 * scale[1, 1] + (1 - d_k5) * scale[0, 1]                 # Eq 6.6
        s_e3 = d_k5 * scale[1, 0] + (1 - d_k5) * scale[0, 0]                 # Eq 6.7
        d_se = dec.se[0]
        return (1 - d_se) * r_ke + d_se * (d_e6 * s_e6 + (1 - d_e6) * s_e3) * r_ke   # Eq 6.8

    # ------------------------------------------------------------------ discrete architectures
    def plain_sum(self, arch: Architecture) -> float:
        """The thesis' uncalibrated Eq 5.8 for a discrete architecture: stem + non-skipped layers + head."""
        arch.validate(self.space)
        total = self.lut.ms(stem_key(self.space, self.in_channels), "stem")
        total += self.lut.ms(head_key(self.space, self.num_classes), "head")
        for spec, choice in zip(self.space.layers, arch.layers):
            key = layer_key(spec, choice, self.space.act)
            if key is not None:
                total += self.lut.ms(key, f"layer {spec.index} ({spec.name})")
        return total

    def group_sums(self, arch: Architecture) -> list[float]:
        """The plain LUT sum of a discrete architecture split by cost group (stage); sums to :meth:`plain_sum`."""
        arch.validate(self.space)
        stem_group, _, head_group, _ = cost_groups(self.space)
        sums = [0.0] * self.num_groups
        sums[stem_group] += self.lut.ms(stem_key(self.space, self.in_channels), "stem")
        sums[head_group] += self.lut.ms(head_key(self.space, self.num_classes), "head")
        for spec, choice in zip(self.space.layers, arch.layers):
            key = layer_key(spec, choice, self.space.act)
            if key is not None:
                sums[self.layer_groups[spec.index]] += self.lut.ms(key, f"layer {spec.index} ({spec.name})")
        return sums

    def predict(self, arch: Architecture) -> float:
        """Calibrated runtime (ms) of a discrete architecture: the one discrete entry point, which every solver
        reports and which :meth:`forward` and :meth:`expected` equal at that architecture."""
        kept = sum(1 for choice in arch.layers if not choice.is_skip)
        se_kept = sum(1 for choice in arch.layers if not choice.is_skip and choice.se_ratio > 0)
        return float(self.calibrate(self.group_sums(arch), kept, se_kept))

