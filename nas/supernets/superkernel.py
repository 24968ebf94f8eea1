"""Searchable superkernels (thesis Ch. 5, Eq 5.1-5.5; Ch. 6, Eq 6.3-6.4).

One :class:`SuperMBConv` holds the weights of the largest candidate MBConv of a layer. Nested subsets of
those weights encode every candidate:

* kernel size (Eq 5.1-5.2): the 3x3 core of the kxk depthwise kernel is always used; each outer shell
  (5x5 \\ 3x3, 7x7 \\ 5x5) is used when its group norm exceeds a learned threshold ``t_k``;
* expansion ratio and skip-op (Eq 5.3): the depthwise channels of e=3 are the first channels of e=6; the
  second group is used when its norm exceeds ``t_e6``; where the layer keeps its shape, the first group has a
  threshold ``t_e3`` too, and dropping it removes the whole layer (skip-op, residual path only);
* SE ratio (Eq 6.3): the squeeze conv of the SE path is a superkernel over its output channels; se=0.25 is
  the first half of se=0.5 and dropping the first group removes the SE path.

Indicators are hard in the forward pass and relaxed for the backward pass (sigmoid by default, Sec 5.2;
straight-through estimator as a variant, Sec 6.2). Thresholds are ordinary ``nn.Parameter`` s trained in the
same gradient step as the weights (Eq 5.6).

Implementation choices (documented in ``docs/method.md``):

* group norm: the thesis compares the *squared* L2 norm of a group with its threshold. The default
  ``norm="mean_square"`` divides that squared norm by the number of weights in the group, so one threshold
  initialisation (0) and one threshold learning rate work for every layer size; ``norm="squared"`` is the
  literal Eq 5.2 and ``norm="l2"`` the official code's plain norm.
* channel and SE masks are applied to the activations *after* BatchNorm and the activation function, and the
  skip gate multiplies the whole residual branch, so a dropped group contributes exactly zero (masking the
  weights before BN lets BN's shift make dropped channels non-zero again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.blocks import MBConv, make_act
from nas.errors import ConfigError
from nas.space.architecture import LayerChoice
from nas.space.search_space import LayerSpec

RELAXATIONS = ("sigmoid", "ste")
NORMS = ("mean_square", "squared", "l2")


def relaxed_indicator(score: torch.Tensor, relaxation: str = "sigmoid") -> torch.Tensor:
    """``1(score > 0)`` in the forward pass; the relaxation's gradient in the backward pass.

    ``sigmoid``: gradient of ``sigmoid(score)`` (thesis default); ``ste``: straight-through, gradient 1.
    """
    hard = (score > 0).to(score.dtype)
    if relaxation == "sigmoid":
        soft = torch.sigmoid(score)
    elif relaxation == "ste":
        soft = score
    else:
        raise ConfigError(f"unknown relaxation {relaxation!r}; choose one of {list(RELAXATIONS)}")
    return hard + (soft - soft.detach())


def group_norm(weight: torch.Tensor, count: int, norm: str) -> torch.Tensor:
    """Group-lasso norm of one weight subset (``weight`` is already masked to the subset)."""
    sq = weight.pow(2).sum()
    if norm == "mean_square":
        return sq / max(count, 1)
    if norm == "squared":
        return sq
    if norm == "l2":
        return sq.clamp_min(1e-12).sqrt()
    raise ConfigError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")


def nested_levels(indicators: torch.Tensor) -> torch.Tensor:
    """Cumulative products ``[d1, d1*d2, ...]``: group j is used only if all groups before it are."""
    return torch.cumprod(indicators, 0) if indicators.numel() else indicators


def level_of(indicators: torch.Tensor) -> int:
    """Number of leading ones of a hard indicator vector (the index of the chosen candidate)."""
    level = 0
    for value in indicators.detach().tolist():
        if value <= 0.5:
            break
        level += 1
    return level


@dataclass
class LayerDecision:
    """The indicator values of one searchable layer (hard forward values, relaxed gradients).

    ``kernel[j]`` gates kernel shell j+1; ``expansion`` gates the channel groups (its first entry is the
    skip gate when the layer can be skipped); ``se`` gates the SE groups (its first entry turns the SE path on
    when se=0 is a candidate).
    """

    kernel: torch.Tensor
    expansion: torch.Tensor
    se: torch.Tensor

    def map(self, fn) -> LayerDecision:  # noqa: ANN001
        return LayerDecision(fn(self.kernel), fn(self.expansion), fn(self.se))


class SuperMBConv(nn.Module):
    """A searchable MBConv layer: one set of weights that encodes every candidate op of ``spec``."""

    def __init__(self, spec: LayerSpec, act: str = "relu", relaxation: str = "sigmoid",
                 norm: str = "mean_square") -> None:
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"unknown relaxation {relaxation!r}; choose one of {list(RELAXATIONS)}")
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
        self.spec = spec
        self.relaxation = relaxation
        self.norm = norm
        cand = spec.candidates
        self.kernels = tuple(cand.kernels)
        self.expansions = tuple(cand.expansions)
        self.se_ratios = tuple(cand.se_ratios)
        self.can_skip = spec.can_skip
        self.has_residual = spec.has_residual
        self.stride = spec.stride
        self.kmax = self.kernels[-1]

        # channel groups of the depthwise superkernel (nested prefixes, Eq 5.3)
        self.mid_sizes = [spec.mid_channels(e) for e in self.expansions]
        if self.mid_sizes != sorted(set(self.mid_sizes)):
            raise ConfigError(f"layer {spec.name}: expansion ratios {self.expansions} give non-increasing "
                              f"channel counts {self.mid_sizes}")
        mid = self.mid_sizes[-1]
        self.mid_channels = mid

        # point-wise expansion at the largest width
        self.conv_pw: nn.Module | None = None
        if mid != spec.in_channels:
            self.conv_pw = nn.Conv2d(spec.in_channels, mid, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid)
            self.act1 = make_act(act)

        # depthwise superkernel and its kernel-shell masks (Eq 5.1-5.2)
        self.weight_dw = nn.Parameter(torch.empty(mid, 1, self.kmax, self.kmax))
        masks = []
        previous = torch.zeros(self.kmax, self.kmax)
        for k in self.kernels:
            inner = torch.zeros(self.kmax, self.kmax)
            lo = (self.kmax - k) // 2
            inner[lo:lo + k, lo:lo + k] = 1
            masks.append(inner - previous)
            previous = inner
        self.register_buffer("kernel_masks", torch.stack(masks), persistent=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = make_act(act)

        # SE path with a squeeze superkernel over its reduced channels (Eq 6.3)
        self.se_sizes = [spec.se_channels(s) for s in self.se_ratios if s > 0]
        self.se_optional = 0.0 in self.se_ratios
        if self.se_sizes:
            rd = self.se_sizes[-1]
            self.conv_reduce = nn.Conv2d(mid, rd, 1, bias=True)
            self.se_act = make_act(act)
            self.conv_expand = nn.Conv2d(rd, mid, 1, bias=True)

        self.conv_pwl = nn.Conv2d(mid, spec.out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(spec.out_channels)

        # thresholds, initialised at 0: every group starts in use (the largest op)
        self.t_kernel = nn.Parameter(torch.zeros(len(self.kernels) - 1))
        self.t_expansion = nn.Parameter(torch.zeros(len(self.expansions) - 1 + int(self.can_skip)))
        self.t_se = nn.Parameter(torch.zeros(max(len(self.se_sizes) - 1 + int(self.se_optional), 0)))
        nn.init.normal_(self.weight_dw, 0.0, (2.0 / (self.kmax * self.kmax)) ** 0.5)

    # ------------------------------------------------------------------ thresholds -> indicators
    def thresholds(self) -> list[nn.Parameter]:
        return [self.t_kernel, self.t_expansion, self.t_se]

    def kernel_weight(self, kernel_ind: torch.Tensor) -> torch.Tensor:
        """Eq 5.1-5.2 generalised to 3 < 5 < 7: ``w_k = w_3 + d5 * (w_5\\3 + d7 * w_7\\5)``."""
        levels = nested_levels(kernel_ind)
        w = self.weight_dw * self.kernel_masks[0]
        for j in range(1, len(self.kernels)):
            w = w + levels[j - 1] * (self.weight_dw * self.kernel_masks[j])
        return w

    def _channel_groups(self) -> list[tuple[int, int]]:
        bounds = [0, *self.mid_sizes]
        return [(bounds[j], bounds[j + 1]) for j in range(len(self.mid_sizes))]

    def _se_groups(self) -> list[tuple[int, int]]:
        bounds = [0, *self.se_sizes]
        return [(bounds[j], bounds[j + 1]) for j in range(len(self.se_sizes))]

    def decision(self) -> LayerDecision:
        """Indicators from the current weights and thresholds (Eq 5.2, 5.3, 6.3)."""
        w = self.weight_dw
        kernel_scores = []
        for j in range(1, len(self.kernels)):
            shell = w * self.kernel_masks[j]
            count = int(self.kernel_masks[j].sum().item()) * self.mid_channels
            kernel_scores.append(group_norm(shell, count, self.norm))
        kernel_ind = self._indicators(kernel_scores, self.t_kernel)

        # channel norms on the kernel-decided superkernel w_k (nesting as in the thesis' code)
        wk = self.kernel_weight(kernel_ind)
        k_eff = self.kernels[level_of(kernel_ind)]
        groups = self._channel_groups()
        if not self.can_skip:
            groups = groups[1:]
        exp_scores = [group_norm(wk[a:b], (b - a) * k_eff * k_eff, self.norm) for a, b in groups]
        exp_ind = self._indicators(exp_scores, self.t_expansion)

        se_scores = []
        if self.se_sizes:
            se_groups = self._se_groups()
            if not self.se_optional:
                se_groups = se_groups[1:]
            wr = self.conv_reduce.weight
            se_scores = [group_norm(wr[a:b], wr[a:b].numel(), self.norm) for a, b in se_groups]
        se_ind = self._indicators(se_scores, self.t_se)
        return LayerDecision(kernel_ind, exp_ind, se_ind)

    def _indicators(self, scores: Sequence[torch.Tensor], thresholds: torch.Tensor) -> torch.Tensor:
        if not scores:
            return thresholds.new_zeros(0)
        return relaxed_indicator(torch.stack(scores) - thresholds, self.relaxation)

    def fixed_decision(self, choice: LayerChoice) -> LayerDecision:
        """Constant 0/1 indicators that select ``choice`` (for evaluation and tests)."""
        problem = self.spec.check_choice(choice)
        if problem:
            from nas.errors import ArchitectureError

            raise ArchitectureError(f"layer {self.spec.index} ({self.spec.name}): {problem}")
        dev = self.weight_dw.device

        def ones(n: int, level: int) -> torch.Tensor:
            return torch.tensor([1.0 if j < level else 0.0 for j in range(n)], device=dev)

        if choice.is_skip:
            return LayerDecision(torch.zeros(len(self.kernels) - 1, device=dev),
                                 torch.zeros(self.t_expansion.numel(), device=dev),
                                 torch.zeros(self.t_se.numel(), device=dev))
        k_level = self.kernels.index(choice.kernel)
        e_level = self.expansions.index(choice.expansion) + int(self.can_skip)
        nonzero = [s for s in self.se_ratios if s > 0]
        s_level = (nonzero.index(choice.se_ratio) + int(self.se_optional)) if choice.se_ratio > 0 else 0
        return LayerDecision(ones(len(self.kernels) - 1, k_level), ones(self.t_expansion.numel(), e_level),
                             ones(self.t_se.numel(), s_level))

    def choice_of(self, decision: LayerDecision) -> LayerChoice:
        """Read the discrete choice off hard indicator values."""
        e_level = level_of(decision.expansion)
        if self.can_skip:
            if e_level == 0:
                return LayerChoice.skip()
            e_level -= 1
        kernel = self.kernels[level_of(decision.kernel)]
        s_level = level_of(decision.se)
        nonzero = [s for s in self.se_ratios if s > 0]
        if self.se_optional:
            se = 0.0 if s_level == 0 else nonzero[s_level - 1]
        else:
            se = nonzero[s_level] if nonzero else 0.0
        return LayerChoice(kernel, self.expansions[e_level], se)

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _group_multiplier(indicators: torch.Tensor, groups: list[tuple[int, int]], gated_first: bool) -> torch.Tensor:
        """Per-channel multiplier over nested groups: 1 for the first group, ``d1*...*dj`` for group j.

        With ``gated_first`` the first indicator gates group 0 and is applied by the caller (skip gate on the
        branch, on/off gate of the SE path), so group j uses the product of indicators 1..j.
        """
        levels = nested_levels(indicators[1:] if gated_first else indicators)
        parts = [indicators.new_ones(groups[0][1] - groups[0][0])]
        parts += [levels[j - 1].expand(b - a) for j, (a, b) in enumerate(groups) if j > 0]
        return torch.cat(parts)

    def forward(self, x: torch.Tensor, decision: LayerDecision) -> torch.Tensor:
        """The selected candidate op, computed with no activation-sized tensor beyond those of the largest op.

        The channel mask of the expansion decision multiplies the activations after BatchNorm (see the module
        docstring); it is applied where it costs nothing: to the SE path's pooled vector and, by linearity, to
        the projection's weights (``conv(x * m, W) = conv(x, W * m)`` over input channels). The output is the
        same as masking the activations, without saving a masked copy of them for the backward pass.
        """
        shortcut = x
        if self.conv_pw is not None:
            x = self.act1(self.bn1(self.conv_pw(x)))
        wk = self.kernel_weight(decision.kernel)
        x = F.conv2d(x, wk, None, self.stride, self.kmax // 2, 1, self.mid_channels)
        x = self.act2(self.bn2(x))
        channel_mult = self._group_multiplier(decision.expansion, self._channel_groups(), self.can_skip).view(
            1, -1, 1, 1)
        if self.se_sizes:
            s = x.mean((2, 3), keepdim=True) * channel_mult
            rd_mult = self._group_multiplier(decision.se, self._se_groups(), self.se_optional)
            h = self.se_act(self.conv_reduce(s)) * rd_mult.view(1, -1, 1, 1)
            gate = torch.sigmoid(self.conv_expand(h))
            if self.se_optional:  # SE off means "multiply by 1", not by sigmoid(bias)
                gate = 1.0 + decision.se[0] * (gate - 1.0)
            x = x * gate
        x = F.conv2d(x, self.conv_pwl.weight * channel_mult)
        if self.can_skip:  # skip gate d: d * BN(x) is BN(x) with affine (d*gamma, d*beta), through the module
            d = decision.expansion[0]  # so that a synchronised BatchNorm swapped in for DDP still applies
            x = functional_call(self.bn3, {"weight": self.bn3.weight * d, "bias": self.bn3.bias * d}, (x,))
        else:
            x = self.bn3(x)
        return x + shortcut if self.has_residual else x

    # ------------------------------------------------------------------ child extraction
    def extract(self, choice: LayerChoice, act: str) -> MBConv | None:
        """A plain :class:`MBConv` for ``choice`` holding the corresponding slice of these weights."""
        from nas.space.networks import build_layer

        block = build_layer(self.spec, choice, act)
        if block is None:
            return None
        mid = self.spec.mid_channels(choice.expansion)
        k = choice.kernel
        lo = (self.kmax - k) // 2
        with torch.no_grad():
            if block.conv_pw is not None:
                block.conv_pw.weight.copy_(self.conv_pw.weight[:mid])
                _copy_bn(block.bn1, self.bn1, mid)
            block.conv_dw.weight.copy_(self.weight_dw[:mid, :, lo:lo + k, lo:lo + k])
            _copy_bn(block.bn2, self.bn2, mid)
            if isinstance(block.se, nn.Module) and hasattr(block.se, "conv_reduce"):
                rd = block.se.conv_reduce.out_channels
                block.se.conv_reduce.weight.copy_(self.conv_reduce.weight[:rd, :mid])
                block.se.conv_reduce.bias.copy_(self.conv_reduce.bias[:rd])
                block.se.conv_expand.weight.copy_(self.conv_expand.weight[:mid, :rd])
                block.se.conv_expand.bias.copy_(self.conv_expand.bias[:mid])
            block.conv_pwl.weight.copy_(self.conv_pwl.weight[:, :mid])
            _copy_bn(block.bn3, self.bn3, self.spec.out_channels)
        return block


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, n: int) -> None:
    dst.weight.copy_(src.weight[:n])
    dst.bias.copy_(src.bias[:n])
    dst.running_mean.copy_(src.running_mean[:n])
    dst.running_var.copy_(src.running_var[:n])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
